"""graph.py error paths: every one a GraphError with a one-line message."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from qrdeploy.errors import GraphError
from qrdeploy.graphio import graph
from tests.unit.onnx_builders import cnn


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="does not exist"):
        graph.load_model(tmp_path / "nope.onnx")


def test_truncated_file(tmp_path: Path) -> None:
    data = graph.model_to_bytes(cnn(0))
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphError, match="truncated|checker"):
        graph.load_model(path)


@pytest.mark.parametrize("payload", [b"\xff\xfe garbage \x00\x01" * 10, b"", b"hello world"],
                         ids=["binary", "empty", "text"])
def test_garbage_file(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(payload)
    with pytest.raises(GraphError, match="not a readable ONNX file|no graph nodes"):
        graph.load_model(path)


def _with_location(tmp_path: Path, location: str) -> Path:
    path = graph.save_model(cnn(0), tmp_path / "m.onnx", external_data=True)
    m = onnx.load_model(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../outside.data", "/etc/passwd", "sub/../../x.data"],
                         ids=["dotdot", "absolute", "nested-dotdot"])
def test_external_data_escaping_folder(tmp_path: Path, location: str) -> None:
    (tmp_path / "model").mkdir()
    path = _with_location(tmp_path / "model", location)
    with pytest.raises(GraphError, match="outside the model's folder"):
        graph.load_model(path)


def test_external_data_missing(tmp_path: Path) -> None:
    path = _with_location(tmp_path, "absent.data")
    with pytest.raises(GraphError, match="is missing"):
        graph.load_model(path)


def test_checker_rejects_invalid_graph(tmp_path: Path) -> None:
    m = cnn(0)
    m.graph.node[0].input[0] = "undefined_tensor"
    path = tmp_path / "bad.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(GraphError, match="checker rejects"):
        graph.load_model(path)


def test_no_default_opset() -> None:
    m = cnn(0)
    del m.opset_import[:]
    with pytest.raises(GraphError, match="no default-domain opset"):
        graph.opset_version(m)


def test_non_constant_weight_cannot_be_read() -> None:
    m = cnn(0)
    with pytest.raises(GraphError, match="not a constant"):
        graph._evaluate("input", graph._producers(m), graph.initializer_map(m))
