"""qrdeploy.graphio.prevalidate: valid models pass; each corrupt or oversized declaration is a
one-line GraphError raised before onnx.checker / onnxruntime see the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.errors import ConfigError, GraphError
from qrdeploy.graphio import graph
from qrdeploy.graphio.prevalidate import Limits, prevalidate, prevalidate_file
from qrdeploy.hardening.passes import WeightQuant, harden
from tests.unit.onnx_builders import cnn, conv_transpose_net, mlp_matmul, shared_weight_net

Mutation = Callable[[onnx.ModelProto], None]


def _init(m: onnx.ModelProto, name: str = "conv1.weight") -> TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def _save(m: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    path = folder / name
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("model", [
    cnn(0), cnn(1, bn=True), mlp_matmul(0, transpose=True, dynamo_reshape=True),
    conv_transpose_net(0), shared_weight_net(0), harden(cnn(0), [WeightQuant(3)], "int4")[0],
    harden(cnn(0), [WeightQuant(3)], "qdq")[0],
], ids=["cnn", "cnn-bn", "mlp-reshape", "conv-transpose", "shared", "int4", "qdq"])
def test_valid_models_pass(tmp_path: Path, model: onnx.ModelProto) -> None:
    loaded = prevalidate_file(_save(model, tmp_path))
    assert loaded.SerializeToString() == model.SerializeToString()


def test_valid_external_data_passes(tmp_path: Path) -> None:
    path = graph.save_model(cnn(0), tmp_path / "m.onnx", external_data=True)
    prevalidate_file(path)
    back = graph.initializer_map(graph.load_model(path))
    for name, t in graph.initializer_map(cnn(0)).items():
        np.testing.assert_array_equal(numpy_helper.to_array(back[name]), numpy_helper.to_array(t))


def _set_raw(data: bytes) -> Mutation:
    return lambda m: setattr(_init(m), "raw_data", data)


def _set_dims(dims: list[int]) -> Mutation:
    def mutate(m: onnx.ModelProto) -> None:
        t = _init(m)
        del t.dims[:]
        t.dims.extend(dims)
    return mutate


def _typed(field: str, values: list[int | float]) -> Mutation:
    def mutate(m: onnx.ModelProto) -> None:
        t = _init(m, "conv1.bias")
        t.ClearField("raw_data")
        getattr(t, field).extend(values)
    return mutate


def _constant_node(m: onnx.ModelProto) -> None:
    t = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    t.raw_data = t.raw_data[:3]
    m.graph.node.append(helper.make_node("Constant", [], ["c_out"], value=t))


def _negative_input_dim(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -3


def _nested_if(depth: int) -> Mutation:
    def body(level: int) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"o{level}", TensorProto.FLOAT, [1])
        if level == 0:
            const = helper.make_node("Constant", [], [f"o{level}"],
                                     value=numpy_helper.from_array(np.ones(1, np.float32)))
            return helper.make_graph([const], f"b{level}", [], [out])
        cond = helper.make_node("Constant", [], [f"c{level}"],
                                value=numpy_helper.from_array(np.array(True)))
        node = helper.make_node("If", [f"c{level}"], [f"o{level}"], then_branch=body(level - 1),
                                else_branch=body(level - 1))
        return helper.make_graph([cond, node], f"b{level}", [], [out])

    return lambda m: m.graph.node.extend(body(depth).node)


CASES: list[tuple[str, Mutation, Limits, str]] = [
    ("raw-short", _set_raw(b"\x00" * 7), Limits(), "holds 7 bytes of raw_data, expected 144"),
    ("raw-long", _set_raw(b"\x00" * 4000), Limits(), "holds 4,000 bytes of raw_data"),
    ("dim-negative", _set_dims([4, -1, 3, 3]), Limits(), r"dims \[4, -1, 3, 3\]"),
    ("dim-product-huge", _set_dims([2**40, 2**40, 3]), Limits(), "max_tensor_elements"),
    ("rank-17", _set_dims([1] * 17), Limits(), "rank 17, above Limits.max_rank"),
    ("dtype-unknown", lambda m: setattr(_init(m), "data_type", 99), Limits(),
     "data type 99, which is not a known ONNX tensor type"),
    ("dtype-undefined", lambda m: setattr(_init(m), "data_type", 0), Limits(),
     "data type 0"),
    ("dtype-int64-size", lambda m: setattr(_init(m), "data_type", TensorProto.INT64), Limits(),
     "expected 288 from its shape"),
    ("typed-count", _typed("float_data", [1.0, 2.0]), Limits(), "holds 2 values in float_data"),
    ("typed-wrong-field", _typed("int64_data", [1, 2, 3, 4]), Limits(),
     r"stores its values in \['int64_data'\], expected float_data"),
    ("typed-and-raw", lambda m: _init(m).float_data.append(1.0), Limits(),
     "mixes raw_data with typed data"),
    ("no-data", lambda m: _init(m).ClearField("raw_data"), Limits(), "holds 0 values"),
    ("constant-attribute", _constant_node, Limits(), "tensor 'c' .* holds 3 bytes of raw_data"),
    ("input-negative-dim", _negative_input_dim, Limits(), "negative dimension -3"),
    ("max-nodes", lambda m: None, Limits(max_nodes=3), "more than 3 nodes"),
    ("max-initializers", lambda m: None, Limits(max_initializers=2), "more than 2 initializers"),
    ("max-total-bytes", lambda m: None, Limits(max_total_bytes=1000),
     "more than 1,000 total bytes"),
    ("max-depth", _nested_if(3), Limits(max_depth=2), "nested deeper than 2"),
    ("max-file-bytes", lambda m: None, Limits(max_file_bytes=100), "above the limit of 100"),
]


@pytest.mark.parametrize(("mutate", "limits", "match"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_corrupt_declarations_are_refused(tmp_path: Path, mutate: Mutation, limits: Limits,
                                          match: str) -> None:
    m = cnn(0)
    mutate(m)
    path = _save(m, tmp_path)
    with pytest.raises(GraphError, match=match) as err:
        graph.load_model(path, limits=limits)
    assert "\n" not in str(err.value)


def test_nested_within_limit_passes() -> None:
    m = cnn(0)
    _nested_if(3)(m)
    prevalidate(m, ".", Limits(max_depth=3))  # no raise: depth 3 is allowed


def _external(tmp_path: Path, **entries: str) -> Path:
    path = graph.save_model(cnn(0), tmp_path / "m.onnx", external_data=True)
    m = onnx.load_model(str(path), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.external_data)
    for key, value in entries.items():
        found = [e for e in t.external_data if e.key == key]
        if found:
            found[0].value = value
        else:
            t.external_data.add(key=key, value=value)
    path.write_bytes(m.SerializeToString())
    return path


EXTERNAL_CASES = [
    ("offset-beyond-file", {"offset": "999999999"}, "the data file is truncated"),
    ("length-beyond-file", {"length": str(2**40)}, "the data file is truncated"),
    ("length-mismatch", {"length": "8"}, "declares 8 bytes of external data, expected"),
    ("offset-not-int", {"offset": "12abc"}, "offset '12abc'; expected a non-negative integer"),
    ("offset-negative", {"offset": "-4"}, "offset '-4'"),
    ("unknown-key", {"evil": "1"}, "external-data key 'evil'"),
    ("nul-in-location", {"location": "m.onnx.data\x00x"}, "outside the model's folder"),
    ("folder-location", {"location": "."}, "outside the model's folder"),
]


@pytest.mark.parametrize(("entries", "match"), [c[1:] for c in EXTERNAL_CASES],
                         ids=[c[0] for c in EXTERNAL_CASES])
def test_bad_external_entries(tmp_path: Path, entries: dict[str, str], match: str) -> None:
    with pytest.raises(GraphError, match=match):
        graph.load_model(_external(tmp_path, **entries))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_data_file_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.data")
    with pytest.raises(GraphError, match="not a regular file"):
        graph.load_model(_external(tmp_path, location="pipe.data"))


@pytest.mark.parametrize("field", ["max_nodes", "max_depth", "max_total_bytes"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True], ids=["zero", "negative", "float", "bool"])
def test_limits_are_validated(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"Limits.{field} must be an integer >= 1"):
        Limits(**{field: value})  # type: ignore[arg-type]


# ---------------------------------------------------------------- found by fuzzing


def _transpose_perm(m: onnx.ModelProto) -> None:
    node = next(n for n in m.graph.node if n.op_type == "Transpose")
    node.attribute[0].ints[:] = [0, 5]


def _rank1_conv(m: onnx.ModelProto) -> None:
    t = _init(m)
    del t.dims[:]
    t.dims.append(4 * 9)


def _dq_scale_mismatch(m: onnx.ModelProto) -> None:
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear")
    scale = next(t for t in m.graph.initializer if t.name == dq.input[1])
    scale.CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), scale.name))


def _bad_provenance(m: onnx.ModelProto) -> None:
    m.metadata_props.add(key="qrdeploy.harden", value='{"not": "a list"}')


FOUND = [
    ("transpose-perm", lambda: mlp_matmul(0, transpose=True), _transpose_perm,
     r"Transpose 'Transpose_2' has perm \[0, 5\] for a rank-2 weight"),
    ("conv-weight-rank-1", lambda: cnn(0), _rank1_conv,
     r"Conv node 'conv1' has a weight of shape \(36,\); expected rank >= 3"),
    ("dq-scale-size", lambda: harden(cnn(0), [WeightQuant(3, "channel")], "qdq")[0],
     _dq_scale_mismatch, "cannot evaluate the weight chain at DequantizeLinear node"),
    ("provenance-json", lambda: cnn(0), _bad_provenance,
     "metadata 'qrdeploy.harden' is not the JSON list qrdeploy writes"),
]


@pytest.mark.parametrize(("build", "mutate", "match"), [c[1:] for c in FOUND],
                         ids=[c[0] for c in FOUND])
def test_malformed_graphs_found_by_fuzzing(tmp_path: Path, build: Callable[[], onnx.ModelProto],
                                           mutate: Mutation, match: str) -> None:
    from qrdeploy.hardening.passes import describe_model

    m = build()
    mutate(m)
    with pytest.raises(GraphError, match=match):
        describe_model(graph.load_model(_save(m, tmp_path), check=False))


def test_non_utf8_text_is_refused(tmp_path: Path) -> None:
    m = cnn(0)
    m.metadata_props.add(key="qrdeploy.bits", value="{}")
    data = m.SerializeToString().replace(b"qrdeploy.bits", b"qrde\x86loy.bits")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(GraphError, match="StringStringEntryProto.key field holds bytes that are "
                                         "not UTF-8 text"):
        graph.load_model(path)
