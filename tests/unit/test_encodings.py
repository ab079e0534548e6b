"""Encodings in onnxruntime: float, qdq, int4 and codebook give the same logits (≤ 1e-5 of the
logit scale, identical argmax); sizes shrink; INT4 is really packed; the true bits are recorded."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from qrdeploy.graphio import graph
from qrdeploy.hardening.passes import META_BITS, MuLawMap, WeightQuant, describe_model, harden
from tests.unit.onnx_builders import cnn, conv_transpose_net, inputs, mlp_matmul, ort_logits

MODELS = {
    "cnn": (cnn(0), (32, 1, 8, 8)),
    "cnn-transB0": (cnn(1, trans_b=0), (32, 1, 8, 8)),
    "matmul-transpose": (mlp_matmul(2, transpose=True), (32, 1, 8, 8)),
    "convtranspose": (conv_transpose_net(3), (32, 1, 4, 4)),
}


logits = ort_logits  # see its docstring: MatMulNBits accuracy level pinned to fp32


CASES = [(m, g, qz, b) for m in MODELS for g in ("tensor", "channel")
         for qz, b in (("uniform", 3), ("uniform", 4), ("companding", 3))]


@pytest.mark.parametrize(("name", "gran", "quantizer", "bits"), CASES,
                         ids=[f"{m}-{g}-{q}-b{b}" for m, g, q, b in CASES])
def test_every_encoding_matches_float(name: str, gran: str, quantizer: str, bits: int) -> None:
    model, shape = MODELS[name]
    x = inputs(7, shape)
    passes = [MuLawMap(255), WeightQuant(bits, gran, quantizer=quantizer)]
    ref = logits(harden(model, passes, "float")[0], x)
    scale = float(np.max(np.abs(ref)))
    for encoding in ("qdq", "int4"):
        hard, records = harden(model, passes, encoding)
        out = logits(hard, x)
        assert np.max(np.abs(out - ref)) <= 1e-5 * scale, encoding
        np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))
        assert {r.encoding for r in records if r.pass_kind == "quant"} == {
            f"codebook-{'uint4' if encoding == 'int4' else 'uint8'}"
            if quantizer == "companding" else encoding}


def test_sizes_shrink_and_int4_is_packed() -> None:
    model = cnn(0, hidden=64)
    sizes = {}
    for enc in ("float", "qdq", "int4"):
        hard, _ = harden(model, [WeightQuant(3, "channel")], enc)
        sizes[enc] = len(graph.model_to_bytes(hard))
        if enc == "int4":
            codes = graph.initializer_map(hard)["fc1.weight_quantized"]
            assert codes.data_type == onnx.TensorProto.INT4
            assert len(codes.raw_data) == (int(np.prod(codes.dims)) + 1) // 2
    assert sizes["int4"] < sizes["qdq"] < sizes["float"]


@pytest.mark.parametrize("encoding", ["float", "qdq", "int4"])
def test_metadata_records_true_bits(encoding: str) -> None:
    hard, _ = harden(cnn(0), [WeightQuant(3, layers="Conv"), WeightQuant(2, layers="Gemm")],
                     encoding)
    bits = json.loads(graph.get_metadata(hard)[META_BITS])
    assert sorted(bits.values()) == [2, 2, 3, 3]
    assert [r["bits"] for r in describe_model(hard)["layers"]] == [3, 3, 2, 2]


def test_codebook_graph_shape() -> None:
    hard, _ = harden(cnn(0), [WeightQuant(3, quantizer="companding", layers="fc2")], "qdq")
    ops = [n.op_type for n in hard.graph.node[:3]]
    assert ops == ["Cast", "Gather", "Mul"]
    cast = hard.graph.node[0]
    assert cast.attribute[0].i == onnx.TensorProto.INT64
    assert graph.initializer_map(hard)["fc2.weight_codes"].data_type == onnx.TensorProto.UINT8


def test_mnist_cnn_3bit_same_argmax_and_byte_identical() -> None:
    from tests.unit.onnx_builders import mnist_cnn

    model = mnist_cnn(0)
    x = inputs(3, (64, 1, 28, 28))
    ref = logits(model, x)
    outs = {}
    for enc in ("float", "qdq", "int4"):
        first = graph.model_to_bytes(harden(model, [WeightQuant(3)], enc)[0])
        assert first == graph.model_to_bytes(harden(model, [WeightQuant(3)], enc)[0])
        outs[enc] = logits(onnx.load_from_string(first), x)
    for enc in ("qdq", "int4"):
        np.testing.assert_array_equal(outs[enc].argmax(1), outs["float"].argmax(1))
        assert np.max(np.abs(outs[enc] - outs["float"])) <= 1e-5 * np.max(np.abs(ref))
