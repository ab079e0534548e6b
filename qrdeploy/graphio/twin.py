"""The dequantized float twin of a quantized ONNX classifier, whatever tool quantized it.

Integer kernels (QLinearConv, QLinearMatMul, QGemm, the com.microsoft QLinear* ops, ConvInteger,
MatMulInteger, MatMulNBits) are rewritten into the float op they compute, fed by
DequantizeLinear of their integer inputs and followed by QuantizeLinear of their output:

    QLinearConv(x_q, xs, xz, w_q, ws, wz, ys, yz, B)
        -> QuantizeLinear(Conv(DequantizeLinear(x_q), DequantizeLinear(w_q), B·xs·ws), ys, yz)

Weights come out as DequantizeLinear of constants (qrdeploy.gradients.prepare folds them into
float initializers; qrdeploy.spectral reads them as weight layers); what stays are the activation
QuantizeLinear / DequantizeLinear pairs, i.e. the fake-quantized float network that the integer
graph computes up to the rounding of its int32 accumulators. With `activations="float"` those
pairs are replaced by their un-rounded maps (clip(x/s + z, qmin, qmax), then (q − z)·s): the
float network with dequantized weights, keeping the range clipping (with uint8 codes and zero
point 0 it is the ReLU that onnxruntime's QDQ quantizer folds into the quantization).

The twin is for analysis and gradients (BPDA); the graph that is scored is always the original.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.errors import GraphError

MS = "com.microsoft"
#: ops the twin rewrites (default domain and com.microsoft unless noted)
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
               "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
               "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "ConvInteger",
               "MatMulInteger", "MatMulNBits")
#: ops that quantize an activation at run time
ACTIVATION_QUANT = ("QuantizeLinear", "DynamicQuantizeLinear")
#: integer element types that hold quantization codes
CODE_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
              TensorProto.INT4, TensorProto.UINT4)
_CODE_RANGE: dict[int, tuple[int, int]] = {
    TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535), TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15), TensorProto.INT4: (-8, 7),
}


def code_range(elem_type: int) -> tuple[int, int]:
    """(qmin, qmax) of an integer code type; GraphError for the float8 types and others."""
    if elem_type not in _CODE_RANGE:
        name = TensorProto.DataType.Name(elem_type)
        raise GraphError(f"quantization to {name} is not supported; supported codes: int8, "
                         "uint8, int16, uint16, int4, uint4")
    return _CODE_RANGE[elem_type]


@dataclass
class TwinInfo:
    """What the rewrite found: integer kernels by op type and whether activations are quantized
    at run time (then the original graph is scored and the twin only gives gradients)."""

    rewritten: Counter[str] = field(default_factory=Counter)
    activation_quant: bool = False
    activations: str = "ste"
    #: ConvInteger / MatMulInteger nodes whose weight scale could not be read (weights left in
    #: code units: fine for gradients, not for weight analysis)
    unscaled: list[str] = field(default_factory=list)

    @property
    def quantized(self) -> bool:
        return self.activation_quant or bool(self.rewritten)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Rewriter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.consts: dict[str, np.ndarray] = {}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _attrs(node).get("value")
                if isinstance(value, onnx.TensorProto):
                    self.consts[node.output[0]] = numpy_helper.to_array(value)
        self.new_inits: list[onnx.TensorProto] = []
        self.count = 0
        self.taken = {t.name for t in model.graph.initializer}
        self.taken |= {x for n in model.graph.node for x in (*n.input, *n.output)}
        self.producers = {o: n for n in model.graph.node for o in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in dict.fromkeys(n.input):
                self.readers.setdefault(i, []).append(n)
        self.unscaled: list[str] = []

    def fresh(self, hint: str) -> str:
        while True:
            self.count += 1
            name = f"qrd_twin/{hint}/{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def value(self, name: str, node: onnx.NodeProto, what: str) -> np.ndarray:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self.consts:
            return self.consts[name]
        raise GraphError(f"{node.op_type} node {node.name or node.output[0]!r}: its {what} is "
                         "computed at run time; qrdeploy reads quantization parameters only "
                         "when they are constants (re-quantize the model with static scales)")

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def dq(self, x: str, scale: str, zp: str | None, out: list[onnx.NodeProto],
           axis: int | None = None) -> str:
        y = self.fresh("dq")
        inputs = [x, scale] + ([zp] if zp else [])
        node = helper.make_node("DequantizeLinear", inputs, [y], name=y)
        if axis is not None:
            node.attribute.append(helper.make_attribute("axis", axis))
        out.append(node)
        return y

    def q(self, x: str, scale: str, zp: str | None, y: str, out: list[onnx.NodeProto]) -> None:
        inputs = [x, scale] + ([zp] if zp else [])
        out.append(helper.make_node("QuantizeLinear", inputs, [y], name=self.fresh("q")))


def _opt(node: onnx.NodeProto, k: int) -> str | None:
    return node.input[k] if len(node.input) > k and node.input[k] else None


def _weight_axis(r: _Rewriter, node: onnx.NodeProto, scale: str, axis: int) -> int | None:
    """The DequantizeLinear axis of a weight's scale: None per tensor, `axis` per channel."""
    return axis if r.value(scale, node, "weight scale").size > 1 else None


def _int_bias(r: _Rewriter, node: onnx.NodeProto, k: int, a_scale: str, b_scale: str,
              factor: float = 1.0) -> str | None:
    """An int32 bias (scale factor · a_scale · b_scale, zero point 0) as a float constant."""
    b = _opt(node, k)
    if b is None:
        return None
    value = r.value(b, node, "bias").astype(np.float32)
    scale = (r.value(a_scale, node, "input scale").astype(np.float32)
             * r.value(b_scale, node, "weight scale").astype(np.float32)).reshape(-1) \
        * np.float32(factor)
    return r.const((value * scale).astype(np.float32), "bias")


def _float_op(node: onnx.NodeProto, op: str, inputs: list[str], output: str,
              drop: tuple[str, ...] = ()) -> onnx.NodeProto:
    new = helper.make_node(op, inputs, [output], name=node.name or output)
    new.attribute.extend(a for a in node.attribute if a.name not in drop)
    return new


def _qlinear_conv(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    i = node.input
    x = r.dq(i[0], i[1], i[2], out)
    w = r.dq(i[3], i[4], i[5], out, _weight_axis(r, node, i[4], 0))
    b = _int_bias(r, node, 8, i[1], i[4])
    y = r.fresh("conv")
    out.append(_float_op(node, "Conv", [x, w] + ([b] if b else []), y))
    r.q(y, i[6], i[7], node.output[0], out)


def _qlinear_matmul(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    i = node.input
    if r.value(i[1], node, "input scale").size > 1:
        raise GraphError(f"QLinearMatMul node {node.name!r}: a per-row input scale is not "
                         "supported; quantize the activations per tensor")
    rank = len(r.value(i[3], node, "weight").shape) if i[3] in r.inits else 2
    a = r.dq(i[0], i[1], i[2], out)
    b = r.dq(i[3], i[4], i[5], out, _weight_axis(r, node, i[4], rank - 1))
    y = r.fresh("matmul")
    out.append(_float_op(node, "MatMul", [a, b], y))
    r.q(y, i[6], i[7], node.output[0], out)


def _qgemm(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    i = node.input
    attrs = _attrs(node)
    trans_b = int(attrs.get("transB", 0))
    a = r.dq(i[0], i[1], i[2], out)
    b = r.dq(i[3], i[4], i[5], out, _weight_axis(r, node, i[4], 0 if trans_b else 1))
    # com.microsoft QGemm: C is int32 with scale alpha · a_scale · b_scale; Gemm adds it as is
    c = _int_bias(r, node, 6, i[1], i[4], float(attrs.get("alpha", 1.0)))
    y_scale = _opt(node, 7)
    y = r.fresh("gemm") if y_scale else node.output[0]
    out.append(_float_op(node, "Gemm", [a, b] + ([c] if c else []), y))
    if y_scale:
        r.q(y, y_scale, _opt(node, 8), node.output[0], out)


def _qlinear_binary(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    i = node.input
    a = r.dq(i[0], i[1], _opt(node, 2), out)
    b = r.dq(i[3], i[4], _opt(node, 5), out)
    y = r.fresh("binary")
    out.append(_float_op(node, node.op_type.removeprefix("QLinear"), [a, b], y))
    r.q(y, i[6], _opt(node, 7), node.output[0], out)


def _qlinear_concat(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    i = node.input
    parts = [r.dq(i[k], i[k + 1], _opt(node, k + 2), out) for k in range(2, len(i), 3)]
    y = r.fresh("concat")
    out.append(_float_op(node, "Concat", parts, y))
    r.q(y, i[0], _opt(node, 1), node.output[0], out)


def _qlinear_unary(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    if int(_attrs(node).get("channels_last", 0)):
        raise GraphError(f"{node.op_type} node {node.name!r}: channels_last=1 is not supported; "
                         "quantize the model in NCHW layout")
    i = node.input
    x = r.dq(i[0], i[1], _opt(node, 2), out)
    y = r.fresh("unary")
    out.append(_float_op(node, node.op_type.removeprefix("QLinear"), [x], y,
                         drop=("channels_last",)))
    r.q(y, i[3], _opt(node, 4), node.output[0], out)


def _qlinear_softmax(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    """com.microsoft QLinearSoftmax (a quantized model's output probabilities): dequantize,
    Softmax on its axis, quantize; its `opset` attribute (the Softmax semantics it follows) is
    the same for the (N, K) logits a classifier ends with."""
    i = node.input
    x = r.dq(i[0], i[1], _opt(node, 2), out)
    y = r.fresh("softmax")
    out.append(_float_op(node, "Softmax", [x], y, drop=("opset",)))
    r.q(y, i[3], _opt(node, 4), node.output[0], out)


def _shifted(r: _Rewriter, x: str, zp: str | None, out: list[onnx.NodeProto]) -> str:
    """float(x) − float(zero point), for ConvInteger / MatMulInteger activations."""
    xf = r.fresh("cast")
    out.append(helper.make_node("Cast", [x], [xf], name=xf, to=TensorProto.FLOAT))
    if zp is None:
        return xf
    zf = r.fresh("cast")
    out.append(helper.make_node("Cast", [zp], [zf], name=zf, to=TensorProto.FLOAT))
    y = r.fresh("sub")
    out.append(helper.make_node("Sub", [xf, zf], [y], name=y))
    return y


def _weight_scale(r: _Rewriter, node: onnx.NodeProto) -> np.ndarray | None:
    """The weight scale of a ConvInteger / MatMulInteger, read from what quantize_dynamic puts
    after it: Cast(float) -> Mul(·, Mul(x_scale, w_scale)) with w_scale a constant."""
    readers = r.readers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Cast":
        return None
    muls = r.readers.get(readers[0].output[0], [])
    if len(muls) != 1 or muls[0].op_type != "Mul":
        return None
    other = [i for i in muls[0].input if i != readers[0].output[0]]
    prod = r.producers.get(other[0]) if other else None
    if prod is None or prod.op_type != "Mul":
        return None
    consts = [i for i in prod.input if i in r.inits or i in r.consts]
    if len(consts) != 1:
        return None
    return r.value(consts[0], prod, "weight scale").astype(np.float32)


def _integer_layer(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto], op: str,
                   axis: int) -> None:
    """ConvInteger / MatMulInteger as the float op on float(x) − x_zp with the dequantized
    weight (w − w_zp)·w_scale, divided by w_scale after, so that the output stays in the integer
    op's units for the Cast -> Mul(scales) that follows; without a readable scale the weight
    stays in code units."""
    x = _shifted(r, node.input[0], _opt(node, 2), out)
    w = r.value(node.input[1], node, "weight").astype(np.float32)
    zp_name = _opt(node, 3)
    shape = [1] * w.ndim
    shape[axis] = -1
    if zp_name is not None:
        w = w - r.value(zp_name, node, "weight zero point").astype(np.float32).reshape(
            shape if r.value(zp_name, node, "weight zero point").size > 1 else ())
    scale = _weight_scale(r, node)
    if scale is None:
        r.unscaled.append(node.name or node.output[0])
        out.append(_float_op(node, op, [x, r.const(w, "weight")], node.output[0]))
        return
    per = scale.reshape(shape) if scale.size > 1 else scale.reshape(())
    y = r.fresh(op.lower())
    out.append(_float_op(node, op, [x, r.const((w * per).astype(np.float32), "weight")], y))
    out_shape = [-1] + [1] * (w.ndim - 2) if op == "Conv" else [-1]
    inv = (np.float32(1) / scale).reshape(out_shape if scale.size > 1 else ())
    out.append(helper.make_node("Mul", [y, r.const(inv.astype(np.float32), "inv_scale")],
                                [node.output[0]], name=r.fresh("unscale")))


def _conv_integer(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    _integer_layer(r, node, out, "Conv", 0)


def _matmul_integer(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    _integer_layer(r, node, out, "MatMul", -1)


def unpack_matmulnbits(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                       k: int, n: int, bits: int, block_size: int) -> np.ndarray:
    """The float32 (K, N) weight of a MatMulNBits node: codes packed little-end first in
    uint8 blobs (N, blocks, bytes), value = (code − zero point) · scale per block, default zero
    point 2^(bits−1)."""
    blocks = -(-k // block_size)
    per_byte = 8 // bits
    raw = np.asarray(b, np.uint8).reshape(n, blocks, -1)
    codes = np.stack([(raw >> (bits * j)) & ((1 << bits) - 1) for j in range(per_byte)], -1)
    codes = codes.reshape(n, blocks, -1)[:, :, :block_size].astype(np.float32)  # (N, blk, bs)
    if zero_points is None:
        zp = np.full((n, blocks, 1), 1 << (bits - 1), np.float32)
    else:
        zraw = np.asarray(zero_points, np.uint8).reshape(n, -1)
        zs = np.stack([(zraw >> (bits * j)) & ((1 << bits) - 1) for j in range(per_byte)], -1)
        zp = zs.reshape(n, -1)[:, :blocks].astype(np.float32)[:, :, None]
    s = np.asarray(scales, np.float32).reshape(n, blocks, 1)
    w = ((codes - zp) * s).reshape(n, -1)[:, :k]  # (N, K)
    return np.ascontiguousarray(w.T)


def _matmul_nbits(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]) -> None:
    a = _attrs(node)
    if _opt(node, 4) is not None:
        raise GraphError(f"MatMulNBits node {node.name!r}: g_idx (act-order) is not supported; "
                         "quantize without act-order")
    zp_name = _opt(node, 3)
    zp = r.value(zp_name, node, "zero points") if zp_name else None
    if zp is not None and zp.dtype.kind == "f":
        raise GraphError(f"MatMulNBits node {node.name!r}: float zero points are not supported; "
                         "quantize with uint8 zero points or symmetric")
    w = unpack_matmulnbits(r.value(node.input[1], node, "weight"),
                           r.value(node.input[2], node, "scales"), zp, int(a["K"]), int(a["N"]),
                           int(a.get("bits", 4)), int(a["block_size"]))
    bias = _opt(node, 5)
    y = r.fresh("matmul") if bias else node.output[0]
    out.append(helper.make_node("MatMul", [node.input[0], r.const(w, "weight")], [y],
                                name=node.name or y))
    if bias:
        out.append(helper.make_node("Add", [y, bias], [node.output[0]], name=r.fresh("bias")))


_RULES = {
    "QLinearConv": _qlinear_conv, "QLinearMatMul": _qlinear_matmul, "QGemm": _qgemm,
    "QLinearAdd": _qlinear_binary, "QLinearMul": _qlinear_binary, "QLinearConcat": _qlinear_concat,
    "QLinearAveragePool": _qlinear_unary, "QLinearGlobalAveragePool": _qlinear_unary,
    "QLinearSigmoid": _qlinear_unary, "QLinearLeakyRelu": _qlinear_unary,
    "QLinearSoftmax": _qlinear_softmax, "ConvInteger": _conv_integer,
    "MatMulInteger": _matmul_integer, "MatMulNBits": _matmul_nbits,
}


def _is_quant_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx", MS)


def _code_ops_to_float(r: _Rewriter, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """MaxPool on integer codes -> DequantizeLinear, MaxPool, QuantizeLinear with the codes'
    own parameters (exact: the map is monotone), so the backward sees a float MaxPool."""
    params: dict[str, tuple[str, str | None]] = {}
    out: list[onnx.NodeProto] = []
    for node in nodes:
        if node.op_type == "QuantizeLinear" and len(node.input) >= 2:
            params[node.output[0]] = (node.input[1], _opt(node, 2))
        elif node.op_type in ("Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze",
                              "Transpose") and node.input and node.input[0] in params:
            params[node.output[0]] = params[node.input[0]]
        elif node.op_type == "MaxPool" and node.input[0] in params and len(node.output) == 1:
            scale, zp = params[node.input[0]]
            if r.value(scale, node, "scale").size == 1:
                x = r.dq(node.input[0], scale, zp, out)
                y = r.fresh("maxpool")
                out.append(_float_op(node, "MaxPool", [x], y))
                r.q(y, scale, zp, node.output[0], out)
                params[node.output[0]] = (scale, zp)
                continue
        out.append(node)
    return out


def _affine_activations(r: _Rewriter, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """activations="float": activation QuantizeLinear -> clip(x/s + z, qmin, qmax) and
    DequantizeLinear of a run-time tensor -> (q − z)·s, both in float (no rounding);
    DynamicQuantizeLinear's code output -> x/s + z with its run-time scale (its range covers x)."""
    consts = set(r.inits) | set(r.consts) | {t.name for t in r.new_inits}
    out: list[onnx.NodeProto] = []
    for node in nodes:
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts:
            _scalar_params(r, node)
            s, z = _float_params(r, node, out)
            d, a = r.fresh("div"), r.fresh("add")
            out.append(helper.make_node("Div", [node.input[0], s], [d], name=d))
            out.append(helper.make_node("Add", [d, z], [a], name=a))
            lo, hi = code_range(_code_type(r, node))
            out.append(helper.make_node(
                "Clip", [a, r.const(np.asarray(lo, np.float32), "lo"),
                 r.const(np.asarray(hi, np.float32), "hi")],
                [node.output[0]], name=r.fresh("clip")))
        elif node.op_type == "DequantizeLinear" and node.input[0] not in consts:
            _scalar_params(r, node)
            s, z = _float_params(r, node, out)
            xf = r.fresh("cast")
            out.append(helper.make_node("Cast", [node.input[0]], [xf], name=xf,
                                        to=TensorProto.FLOAT))
            d = r.fresh("sub")
            out.append(helper.make_node("Sub", [xf, z], [d], name=d))
            out.append(helper.make_node("Mul", [d, s], [node.output[0]], name=r.fresh("mul")))
        elif node.op_type == "DynamicQuantizeLinear":
            code, scale, zp = node.output
            keep_scale, keep_zp = scale or r.fresh("scale"), zp or r.fresh("zp")
            out.append(helper.make_node("DynamicQuantizeLinear", [node.input[0]],
                                        [r.fresh("codes"), keep_scale, keep_zp], name=node.name))
            zf, d = r.fresh("cast"), r.fresh("div")
            out.append(helper.make_node("Cast", [keep_zp], [zf], name=zf, to=TensorProto.FLOAT))
            out.append(helper.make_node("Div", [node.input[0], keep_scale], [d], name=d))
            out.append(helper.make_node("Add", [d, zf], [code], name=r.fresh("add")))
        else:
            out.append(node)
    return out


def _code_type(r: _Rewriter, node: onnx.NodeProto) -> int:
    zp = _opt(node, 2)
    if zp is not None:
        return int(helper.np_dtype_to_tensor_dtype(r.value(zp, node, "zero point").dtype))
    return int(_attrs(node).get("output_dtype", 0)) or TensorProto.UINT8


def _scalar_params(r: _Rewriter, node: onnx.NodeProto) -> None:
    if r.value(node.input[1], node, "scale").size != 1:
        raise GraphError(f"{node.op_type} node {node.name!r}: per-channel activation "
                         "quantization has no float twin; use the default straight-through "
                         "gradient (ste)")


def _float_params(r: _Rewriter, node: onnx.NodeProto, out: list[onnx.NodeProto]
                  ) -> tuple[str, str]:
    s = np.float32(r.value(node.input[1], node, "scale").reshape(()))
    zp_name = _opt(node, 2)
    z = np.float32(r.value(zp_name, node, "zero point").reshape(())) if zp_name else 0.0
    return r.const(np.asarray(s, np.float32), "scale"), r.const(np.asarray(z, np.float32), "zp")


def float_twin(model: onnx.ModelProto, activations: str = "ste"
               ) -> tuple[onnx.ModelProto, TwinInfo]:
    """A copy of `model` with every integer kernel rewritten to float ops between Dequantize- and
    QuantizeLinear (see the module doc), com.microsoft Q/DQ moved to the default domain, and, with
    activations="float", activation quantization replaced by its affine map. A model with no
    quantized op comes back unchanged (same object) with an empty TwinInfo."""
    if activations not in ("ste", "float"):
        raise GraphError(f"activations must be 'ste' or 'float', got {activations!r}")
    info = TwinInfo(activations=activations)
    graph_nodes = list(model.graph.node)
    inits = {t.name for t in model.graph.initializer}
    for node in graph_nodes:
        if node.op_type in _RULES and _is_quant_domain(node):
            info.rewritten[node.op_type] += 1
        elif node.op_type in ACTIVATION_QUANT and node.input[0] not in inits:
            info.activation_quant = True
    ms_qdq = any(n.domain == MS and n.op_type in ("QuantizeLinear", "DequantizeLinear")
                 for n in graph_nodes)
    if not info.quantized and not ms_qdq:
        return model, info
    info.activation_quant = info.activation_quant or any(
        t in info.rewritten for t in INTEGER_OPS if t != "MatMulNBits")
    r = _Rewriter(model)
    nodes: list[onnx.NodeProto] = []
    for node in graph_nodes:
        if node.op_type in _RULES and _is_quant_domain(node):
            _RULES[node.op_type](r, node, nodes)
        elif node.domain == MS and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            moved = onnx.NodeProto()
            moved.CopyFrom(node)
            moved.domain = ""
            nodes.append(moved)
        else:
            nodes.append(node)
    nodes = _code_ops_to_float(r, nodes)
    if activations == "float":
        nodes = _affine_activations(r, nodes)
    info.unscaled = list(r.unscaled)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(r.new_inits)
    del out.graph.value_info[:]
    _keep_used_opsets(out)
    return out, info


#: ops whose output holds integer codes, and the input positions of that output's scale and
#: zero point (QGemm gives float when it has no output scale)
OUTPUT_QPARAMS: dict[str, tuple[int, int]] = {
    "QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QGemm": (7, 8),
    "QLinearAdd": (6, 7), "QLinearMul": (6, 7), "QLinearConcat": (0, 1),
    "QLinearAveragePool": (3, 4), "QLinearGlobalAveragePool": (3, 4), "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4), "QLinearSoftmax": (3, 4)}


def dequantized_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """A model whose one output holds integer codes (a fully quantized model that ends in
    QuantizeLinear or a QLinear op, as converters of integer TFLite models write it), read as
    float through the producer's own output scale and zero point: a DequantizeLinear appended,
    the output keeping its name. These are the values the codes stand for (monotone in the codes:
    the top-1 stays), so margins and losses are in logit units, not codes that wrap around in
    int8 arithmetic. Returns (model, None) unchanged when the output is float, else (copy, the
    producer's op type); GraphError when the codes' scale cannot be read."""
    graph = model.graph
    if len(graph.output) != 1 or graph.output[0].type.tensor_type.elem_type not in CODE_TYPES:
        return model, None
    out = graph.output[0]
    node = next((n for n in graph.node if out.name in n.output), None)
    what = TensorProto.DataType.Name(out.type.tensor_type.elem_type)
    where = OUTPUT_QPARAMS.get(node.op_type) if node is not None else None
    if node is None or where is None or not _is_quant_domain(node) or len(node.input) <= where[0] \
            or not node.input[where[0]]:
        op = node.op_type if node is not None else "(input)"
        raise GraphError(f"the output {out.name!r} holds {what} values made by op {op}; qrdeploy "
                         "reads integer outputs only through the scale of the QuantizeLinear or "
                         "QLinear op that makes them: re-export the model with float logits")
    scale, zero = node.input[where[0]], _opt(node, where[1])
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    codes = f"{out.name}_codes"
    taken = {x for n in copy.graph.node for x in (*n.input, *n.output)}
    taken |= {t.name for t in copy.graph.initializer} | {i.name for i in copy.graph.input}
    while codes in taken:
        codes += "_"
    for n in copy.graph.node:
        n.output[:] = [codes if o == out.name else o for o in n.output]
        n.input[:] = [codes if i == out.name else i for i in n.input]
    dq = helper.make_node("DequantizeLinear", [codes, scale] + ([zero] if zero else []),
                          [out.name], name=f"{out.name}/read")
    axis = _attrs(node).get("axis") if node.op_type == "QuantizeLinear" else None
    if axis is not None:
        dq.attribute.append(helper.make_attribute("axis", int(axis)))
    copy.graph.node.append(dq)
    copy.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    return copy, node.op_type


def _keep_used_opsets(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


#: the weight input of each integer kernel that holds a layer's weight
_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "ConvInteger": 1,
                 "MatMulInteger": 1, "MatMulNBits": 1}


def stored_layers(model: onnx.ModelProto) -> dict[str, tuple[str, str, str, str]]:
    """How the file itself holds the weight of each integer kernel with a constant weight, keyed
    by the node's name (the name its float layer keeps in the twin): (op, weight dtype,
    encoding, weight initializer). The twin's rows show float ops and, for ConvInteger /
    MatMulInteger / MatMulNBits, float32 weights under the twin's own names; these are what the
    file ships."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, tuple[str, str, str, str]] = {}
    for node in model.graph.node:
        k = _WEIGHT_INPUT.get(node.op_type)
        if k is None or not node.name or len(node.input) <= k or node.input[k] not in inits:
            continue
        if node.op_type == "MatMulNBits":
            dtype, enc = f"uint{int(_attrs(node).get('bits', 4))}", "nbits"
        else:
            dtype = TensorProto.DataType.Name(inits[node.input[k]].data_type).lower()
            enc = "integer"
        out[node.name] = (node.op_type, dtype, enc, node.input[k])
    return out


def is_bpda(form: object) -> bool:
    """A recorded gradient form (`gradient_form`, in a model's or a run's info) is BPDA: the
    graph quantizes activations at run time."""
    return str(form or "").startswith("BPDA")


def gradient_form(info: TwinInfo | None) -> str:
    """How qrdeploy differentiates a graph whose twin rewrite found `info` (None or an empty
    TwinInfo: a float graph): what attack results record and `inspect` prints."""
    if info is None or not info.quantized:
        return "exact"
    if not info.activation_quant:
        return "exact (dequantized weights)"
    if info.activations == "float":
        return "BPDA (exact gradient of the dequantized float twin)"
    return "BPDA (STE of the dequantized twin)"


def summary(info: TwinInfo) -> Mapping[str, Any]:
    return {"integer_ops_in_file": dict(sorted(info.rewritten.items())),
            "activation_quant": info.activation_quant, "activations": info.activations}
