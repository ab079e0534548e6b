"""`train --from model.onnx`: the float graph qrdeploy exported is a fine-tuning start, rebuilt
into the same network; anything else is refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from qrdeploy.errors import CheckpointError

torch = pytest.importorskip("torch")

from qrdeploy.train import load_trained  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {s.get_inputs()[0].name: x})[0])


@pytest.mark.parametrize("name,chw", [("mnist-standard", (1, 28, 28)),
                                      ("mnist-adversarial-strong-qat3", (1, 28, 28)),
                                      ("cifar10-standard", (3, 32, 32))])
def test_reference_graph_rebuilds_the_same_network(name: str, chw: tuple[int, ...]) -> None:
    path = MODELS / f"{name}.onnx"
    module, ck = load_trained(path)
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert ck.meta["config"] == json.loads(meta["qrdeploy.train_recipe"])
    assert ck.meta["kind"] == "model" and ck.meta["num_classes"] == 10
    x = np.random.default_rng(0).random((4, *chw), dtype=np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    # the same weights, bit for bit; the two runtimes' kernels differ in the last bits
    np.testing.assert_allclose(got, _logits(path, x), atol=1e-4, rtol=1e-4)
    state = module.state_dict()
    for t in onnx.load(str(path)).graph.initializer:
        if t.name in state:
            assert np.array_equal(state[t.name].numpy(), onnx.numpy_helper.to_array(t))


def test_hardened_graph_is_refused(tmp_path: Path) -> None:
    from qrdeploy.api import harden

    out = tmp_path / "h.onnx"
    harden(MODELS / "mnist-standard.onnx", out, bits=3)
    with pytest.raises(CheckpointError, match="hardened graph.*float model it was hardened from"):
        load_trained(out)


def _edited(tmp_path: Path, edit: str) -> Path:
    model = onnx.load(str(MODELS / "mnist-standard.onnx"))
    if edit == "no-recipe":
        keep = [p for p in model.metadata_props if p.key != "qrdeploy.train_recipe"]
        del model.metadata_props[:]
        model.metadata_props.extend(keep)
    elif edit == "folded":
        next(p for p in model.metadata_props if p.key == "qrdeploy.bn").value = "folded"
    elif edit == "renamed":
        old = model.graph.initializer[0].name
        model.graph.initializer[0].name = "w0"
        for node in model.graph.node:
            node.input[:] = ["w0" if i == old else i for i in node.input]
    elif edit == "reshaped":
        first = model.graph.initializer[1]  # conv1.bias, 32 -> 16
        arr = onnx.numpy_helper.to_array(first)[:16].copy()
        first.CopyFrom(onnx.numpy_helper.from_array(arr, first.name))
    path = tmp_path / f"{edit}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("edit,match", [
    ("no-recipe", "no qrdeploy training recipe in its metadata"),
    ("folded", "batch norm folded"),
    ("renamed", "no initializer 'conv1.weight' of mnist-cnn"),
    ("reshaped", r"'conv1.bias' has shape \(16,\), mnist-cnn needs \(32,\)"),
])
def test_graphs_that_do_not_rebuild_are_refused(tmp_path: Path, edit: str, match: str) -> None:
    path = _edited(tmp_path, edit)
    with pytest.raises(CheckpointError, match=match) as info:
        load_trained(path)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_onnx_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00not a model")
    with pytest.raises(CheckpointError):
        load_trained(path)
