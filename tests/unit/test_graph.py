"""graph.py: weight-layer discovery, channel axes, weights behind chains, load/save, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qrdeploy.graphio import graph
from qrdeploy.hardening.passes import WeightQuant, harden
from tests.unit.onnx_builders import cnn, conv_transpose_net, mlp_matmul, shared_weight_net


@pytest.mark.parametrize(("model", "expected"), [
    (cnn(0), [("conv1", "Conv", 0), ("conv2", "Conv", 0), ("fc1", "Gemm", 0), ("fc2", "Gemm", 0)]),
    (cnn(0, trans_b=0), [("conv1", "Conv", 0), ("conv2", "Conv", 0), ("fc1", "Gemm", 1),
                         ("fc2", "Gemm", 1)]),
    (conv_transpose_net(0), [("up", "ConvTranspose", 1), ("fc", "Gemm", 0)]),
    (mlp_matmul(0), [("fc1", "MatMul", 1), ("fc2", "MatMul", 1)]),
], ids=["conv-gemm-transB1", "gemm-transB0", "convtranspose", "matmul"])
def test_weight_layers_order_and_channel_axis(
    model: onnx.ModelProto, expected: list[tuple[str, str, int]]
) -> None:
    layers = graph.weight_layers(model)
    assert [(lyr.node_name, lyr.op_type, lyr.channel_axis) for lyr in layers] == expected
    assert [lyr.index for lyr in layers] == list(range(len(expected)))


def test_weight_behind_transpose() -> None:
    m = mlp_matmul(0, transpose=True)
    fc1 = graph.weight_layers(m)[0]
    assert (fc1.weight_name, fc1.chain, fc1.shape, fc1.weight_shape) == (
        "fc1.weight", ("Transpose",), (64, 16), (16, 64))
    assert (fc1.channel_axis, fc1.weight_axis) == (1, 0)
    stored = numpy_helper.to_array(graph.initializer_map(m)["fc1.weight"])
    np.testing.assert_array_equal(graph.layer_weight(m, fc1), stored.T)


def test_attrs_bias_and_flags() -> None:
    conv1 = graph.weight_layers(cnn(0))[0]
    assert conv1.attrs["pads"] == [1, 1, 1, 1] and conv1.bias_name == "conv1.bias"
    assert not conv1.folded_bn and not conv1.shared and conv1.encoding == "float"


def test_shared_weight_is_flagged() -> None:
    layers = graph.weight_layers(shared_weight_net(0))
    assert [lyr.shared for lyr in layers] == [True, True, False]


@pytest.mark.parametrize("encoding", ["float", "qdq", "int4"])
def test_layer_weight_reads_every_encoding(encoding: str) -> None:
    m = mlp_matmul(0, transpose=True)
    ref, _ = harden(m, [WeightQuant(3, "channel")], "float")
    hard, _ = harden(m, [WeightQuant(3, "channel")], encoding)
    for a, b in zip(graph.weight_layers(ref), graph.weight_layers(hard), strict=True):
        assert b.encoding == encoding
        np.testing.assert_array_equal(graph.layer_weight(hard, b), graph.layer_weight(ref, a))


def test_layer_weight_reads_codebook() -> None:
    m = cnn(0)
    ref, _ = harden(m, [WeightQuant(3, "channel", quantizer="companding")], "float")
    hard, _ = harden(m, [WeightQuant(3, "channel", quantizer="companding")], "qdq")
    for a, b in zip(graph.weight_layers(ref), graph.weight_layers(hard), strict=True):
        assert b.encoding == "codebook" and b.weight_dtype == "uint8"
        np.testing.assert_array_equal(graph.layer_weight(hard, b), graph.layer_weight(ref, a))


def test_save_load_roundtrip_is_byte_stable(tmp_path: Path) -> None:
    m = cnn(0)
    a = graph.save_model(m, tmp_path / "a.onnx")
    b = graph.save_model(graph.load_model(a), tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes() == graph.model_to_bytes(m)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_external_data_roundtrip(tmp_path: Path) -> None:
    m = cnn(0)
    path = graph.save_model(m, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    assert path.stat().st_size < (tmp_path / "ext.onnx.data").stat().st_size
    back = graph.load_model(path)
    for t0, t1 in zip(m.graph.initializer, back.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(t0), numpy_helper.to_array(t1))


def test_metadata_copy_and_sorted() -> None:
    m = cnn(0)
    m2 = graph.set_metadata(m, {"b": "2", "a": "1"})
    assert graph.get_metadata(m) == {}
    assert graph.get_metadata(m2) == {"a": "1", "b": "2"}
    assert [p.key for p in m2.metadata_props] == ["a", "b"]


@pytest.mark.parametrize(("opset", "converted", "record"), [
    (11, 13, "11->13"), (23, 21, "23->21"), (17, 17, None)], ids=["old", "new", "inside"])
def test_opset_outside_range_is_converted_and_recorded(tmp_path: Path, opset: int,
                                                       converted: int, record: str | None) -> None:
    path = graph.save_model(cnn(0, opset=opset), tmp_path / "m.onnx")
    m = graph.load_model(path)
    assert graph.opset_version(m) == converted
    assert graph.get_metadata(m).get(graph.META_OPSET) == record


def test_int4_conversion_is_recorded() -> None:
    hard, _ = harden(cnn(0), [WeightQuant(3)], "int4")
    assert graph.opset_version(hard) == 21
    assert graph.get_metadata(hard)[graph.META_OPSET] == "17->21"


# ---- torch-exported graphs (legacy and dynamo exporters)

def _export(tmp_path: Path, bn: bool, dynamo: bool) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4) if bn else torch.nn.Identity()
            self.fc = torch.nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))

    torch.manual_seed(0)
    net = Net().eval()
    if bn:
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "m.onnx"
    x = torch.rand(1, 1, 8, 8)
    if dynamo:
        torch.onnx.export(net, (x,), dynamo=True, verbose=False).save(str(path))
    else:
        torch.onnx.export(net, (x,), str(path), dynamo=False)
    return graph.load_model(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("bn", "dynamo"), [(False, False), (True, False), (False, True),
                                            (True, True)],
                         ids=["legacy", "legacy-bn", "dynamo", "dynamo-bn"])
def test_torch_exports_folded_bn_and_int64_untouched(tmp_path: Path, bn: bool,
                                                     dynamo: bool) -> None:
    m = _export(tmp_path, bn, dynamo)
    layers = graph.weight_layers(m)
    assert [lyr.op_type for lyr in layers] == ["Conv", "Gemm"]
    assert [lyr.folded_bn for lyr in layers] == [bn, False]
    hard, records = harden(m, [WeightQuant(3, "channel")], "qdq")
    assert [r.folded_bn for r in records] == [bn, False]
    before = {t.name: t for t in m.graph.initializer if t.data_type != onnx.TensorProto.FLOAT}
    assert bool(before) is dynamo  # dynamo's graphs carry an int64 Reshape shape, legacy's none
    after = graph.initializer_map(hard)
    for name, t in before.items():  # e.g. dynamo's int64 Reshape shape
        assert after[name] == t
