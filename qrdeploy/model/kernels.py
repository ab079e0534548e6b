"""Which kernels onnxruntime actually runs for a model: the op types of the graph it executes
after its own fusions (e.g. DequantizeLinear -> Conv -> QuantizeLinear becomes QLinearConv),
grouped into integer kernels, float compute (Conv, Gemm, MatMul and their fused forms), the
conversions between them (QuantizeLinear / DequantizeLinear) and the rest."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from qrdeploy.core.runtime import SessionConfig, make_session

INTEGER = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
    "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearAdd",
    "QLinearMul", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearWhere", "QLinearReduceMean",
    "QAttention", "DynamicQuantizeLSTM", "QOrderedMatMul", "NhwcQLinearConv"})
FLOAT_COMPUTE = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "Gemm",
                           "FusedGemm", "MatMul", "FusedMatMul", "Attention"})
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear"})


#: MatMulNBits' accuracy_level that computes in integers (int8 activations); the others (unset,
#: fp32, fp16, bf16) dequantize the low-bit weights and compute in float (onnxruntime's
#: contrib-op documentation)
NBITS_INTEGER_LEVEL = 4


def optimized_ops(model: onnx.ModelProto, config: SessionConfig | None = None) -> Counter[str]:
    """Op types of the graph onnxruntime runs; a MatMulNBits that computes in float is
    counted as "MatMulNBits (float compute)"."""
    with tempfile.TemporaryDirectory(prefix="qrdeploy-kernels-") as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        make_session(model.SerializeToString(), config or SessionConfig("cpu"), path)
        optimized = onnx.load_model(path, load_external_data=False)
    return Counter(_kernel(n) for n in optimized.graph.node)


def _kernel(node: onnx.NodeProto) -> str:
    if node.op_type == "MatMulNBits":
        level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)
        return "MatMulNBits" if level == NBITS_INTEGER_LEVEL else "MatMulNBits (float compute)"
    return node.op_type


def kernel_summary(model: onnx.ModelProto, config: SessionConfig | None = None) -> dict[str, Any]:
    """{"integer": {op: n}, "float_compute": ..., "conversions": ..., "other": ..., "verdict":
    "integer" (weight layers run as integer kernels only) | "float" | "mixed"}."""
    ops = optimized_ops(model, config)
    groups: dict[str, dict[str, int]] = {"integer": {}, "float_compute": {}, "conversions": {},
                                         "other": {}}
    for op, n in sorted(ops.items()):
        key = ("integer" if op in INTEGER or op == "MatMulNBits"
               else "float_compute" if op in FLOAT_COMPUTE or op.startswith("MatMulNBits")
               else "conversions" if op in CONVERSIONS else "other")
        groups[key][op] = n
    verdict = ("integer" if groups["integer"] and not groups["float_compute"] else
               "float" if not groups["integer"] else "mixed")
    return {**groups, "verdict": verdict}
