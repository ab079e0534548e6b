"""Gradient rules for activation quantization: the straight-through estimator (STE).

An integer code tensor q = QuantizeLinear(x) carries a float cotangent in units of its codes.
- QuantizeLinear: q = sat(round(x/s) + z). dq/dx is taken as (1/s) where the unclipped code
  round(x/s) + z lies in [qmin, qmax] and 0 where it saturates: round's derivative is taken as 1
  (straight through), saturation's as its true derivative. This is torch's
  fake_quantize_per_tensor_affine / _per_channel_affine backward.
- DequantizeLinear: x = (q − z)·s, so dx/dq = s (exact).
- DynamicQuantizeLinear: its scale and zero point are computed from x; they are held constant
  (BPDA), and the code is treated as QuantizeLinear's (uint8; only a code rounded past the range
  end saturates).
Scale and zero point of QuantizeLinear / DequantizeLinear are constants (per tensor, per channel
with `axis`, or blocked with `block_size`) or run-time scalars (as DynamicQuantizeLinear gives).
They register into qrdeploy.gradients.rules.RULES on import.

Cost. An attack step through a QDQ graph runs these rules once per activation tensor, so they
are written for few elementwise passes. With constant scale and zero point the saturation mask
compares x with thresholds found when the graph is built: the smallest and the largest float32
x whose code round(x/s) + z lies in the range, found by bisection over the float32 values with
the IEEE division and round-half-to-even that onnxruntime uses, so the mask equals the
Div/Round/compare form for every x (per tensor it is x == clip(x, lo, hi), per channel two
comparisons). A QuantizeLinear whose only consumer is a DequantizeLinear of the same scale and
zero point (the activation pair of a QDQ graph) passes the cotangent through unscaled: s/s is
left out (the result differs from the scaled form in the last bits at most)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from qrdeploy.gradients.rules import Emitter, Grads, attrs, refuse, register
from qrdeploy.graphio.twin import code_range


def _broadcast_param(e: Emitter, node: onnx.NodeProto, k: int, x: str, what: str
                     ) -> np.ndarray | None:
    """Input k (scale or zero point) as float32, shaped to broadcast against x (None if absent)."""
    if len(node.input) <= k or not node.input[k]:
        return None
    value = e.value(node.input[k])
    if value is None:
        if len(e.shape(node.input[k])) == 0:  # a run-time scalar (DynamicQuantizeLinear's)
            return None
        raise refuse(node, f"a per-channel {what} computed at run time",
                     "quantize with constant scales")
    value = value.astype(np.float32)
    if value.size == 1 and value.ndim <= 1:
        return value.reshape(())
    a = attrs(node)
    rank = len(e.shape(x))
    axis = int(a.get("axis", 1)) % rank
    block = int(a.get("block_size", 0))
    if block > 0:
        dim = e.shape(x)[axis]
        if dim is None:
            raise refuse(node, "blocked quantization over an axis of unknown size",
                         "give the model a static input shape")
        return np.repeat(value, block, axis=axis).take(np.arange(int(dim)), axis=axis)
    shape = [1] * rank
    shape[axis] = -1
    return value.reshape(shape)


def _out_type(e: Emitter, node: onnx.NodeProto) -> int:
    if len(node.input) > 2 and node.input[2]:
        zp = e.value(node.input[2])
        if zp is not None:
            return int(onnx.helper.np_dtype_to_tensor_dtype(zp.dtype))
    declared = e.dtypes.get(node.output[0])
    if declared is not None:
        return declared
    return int(attrs(node).get("output_dtype", 0)) or TensorProto.UINT8


@register("QuantizeLinear", limits="constant or scalar scale and zero point; int8/uint8/int16/"
          "uint16/int4/uint4 codes")
def _quantize(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    x = node.input[0]
    scale = _broadcast_param(e, node, 1, x, "scale")
    zp = _broadcast_param(e, node, 2, x, "zero point")
    elem = _out_type(e, node)
    try:
        qmin, qmax = code_range(elem)
    except Exception as exc:
        raise refuse(node, f"codes of type {TensorProto.DataType.Name(elem)}",
                     "quantize to int8/uint8/int16/uint16/int4/uint4") from exc
    unscaled = node.output[0] in e.unscaled_codes  # g is already in x's units (a QDQ pair)
    if scale is not None and (zp is not None or len(node.input) <= 2 or not node.input[2]):
        lo, hi = code_thresholds(scale, np.zeros((), np.float32) if zp is None else zp, qmin, qmax)
        if lo.size == 1:  # per tensor: x == clip(x, lo, hi), one pass fewer than two compares
            clipped = e.op("Clip", [x, e.const(lo.reshape(()), "q_lo"),
                                    e.const(hi.reshape(()), "q_hi")])
            inside = e.op("Equal", [clipped, x], "q_inside")
        else:
            inside = e.op("And", [e.op("GreaterOrEqual", [x, e.const(lo, "q_lo")]),
                                  e.op("LessOrEqual", [x, e.const(hi, "q_hi")])], "q_inside")
        if not unscaled:
            g = e.op("Div", [g, e.const(scale, "q_scale")])
        # Cast and Mul: onnxruntime's broadcasting Where takes several times as long
        mask = e.op("Cast", [inside], "q_mask", to=TensorProto.FLOAT)
        return [e.op("Mul", [g, mask], "q_grad")] + [None] * (len(node.input) - 1)
    s = node.input[1] if scale is None else e.const(scale, "q_scale")
    z = None if zp is None else e.const(zp, "q_zp")
    if z is None and len(node.input) > 2 and node.input[2]:  # a run-time scalar zero point
        z = e.op("Cast", [node.input[2]], to=TensorProto.FLOAT)
    return [_ste(e, g, x, s, z, qmin, qmax)] + [None] * (len(node.input) - 1)


def _ordered(a: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the order of the values (-0.0 and +0.0 adjacent)."""
    b = np.asarray(a, np.float32).view(np.int32).astype(np.int64)
    out: np.ndarray = np.where(b < 0, -(b & 0x7FFFFFFF) - 1, b)
    return out


def _from_ordered(k: np.ndarray) -> np.ndarray:
    b = np.where(k < 0, (-(k + 1)) | -0x80000000, k)
    return np.asarray(b.astype(np.int32).view(np.float32), np.float32)


def code_thresholds(scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi), shaped as the broadcast of scale and zp: the smallest and the largest float32 x
    with qmin <= round_half_even(float32(x / s)) + z <= qmax. float32(x / s) is non-decreasing in x
    for s > 0, so each bound is one bisection over the ordered float32 values (32 steps)."""
    s, z = np.broadcast_arrays(np.asarray(scale, np.float32), np.asarray(zp, np.float32))
    s, z = s.astype(np.float32), z.astype(np.float32)

    def code(k: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(np.rint(np.divide(_from_ordered(k), s, dtype=np.float32)) + z)

    big = _ordered(np.full(s.shape, np.finfo(np.float32).max, np.float32))
    # lo: the first key whose code is >= qmin (codes rise with x); hi: the last one <= qmax
    a, b = -big.copy(), big.copy()
    for _ in range(33):
        mid = (a + b) // 2
        up = code(mid) >= qmin
        a, b = np.where(up, a, mid), np.where(up, mid, b)
    lo = b
    a, b = -big.copy(), big.copy()
    for _ in range(33):
        mid = (a + b + 1) // 2
        down = code(mid) <= qmax
        a, b = np.where(down, mid, a), np.where(down, b, mid)
    return _from_ordered(lo), _from_ordered(a)


def _ste(e: Emitter, g: str, x: str, s: str, z: str | None, qmin: int, qmax: int) -> str:
    """g/s where round(x/s) + z lies in [qmin, qmax], else 0 (a scale known only at run time)."""
    code = e.op("Round", [e.op("Div", [x, s])], "q_code")
    if z is not None:
        code = e.op("Add", [code, z])
    inside = e.op("And", [e.op("GreaterOrEqual", [code, e.const(np.float32(qmin))]),
                          e.op("LessOrEqual", [code, e.const(np.float32(qmax))])], "q_inside")
    mask = e.op("Cast", [inside], "q_mask", to=TensorProto.FLOAT)
    return e.op("Mul", [e.op("Div", [g, s]), mask], "q_grad")


@register("DequantizeLinear", limits="constant or scalar scale")
def _dequantize(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    scale = _broadcast_param(e, node, 1, node.input[0], "scale")
    if scale is not None and _pairs_with_quantize(e, node, scale):
        e.unscaled_codes.add(node.input[0])  # QuantizeLinear's rule leaves out 1/s
        return [g] + [None] * (len(node.input) - 1)
    s = node.input[1] if scale is None else e.const(scale, "dq_scale")
    return [e.op("Mul", [g, s], "dq_grad")] + \
        [None] * (len(node.input) - 1)


def _pairs_with_quantize(e: Emitter, node: onnx.NodeProto, scale: np.ndarray) -> bool:
    """Whether `node` (a DequantizeLinear) reads the codes of a QuantizeLinear that nothing else
    reads, with the same constant scale and zero point (the activation pair of a QDQ graph)."""
    q = e.producer.get(node.input[0])
    if q is None or q.op_type != "QuantizeLinear" or e.consumers.get(node.input[0], 0) != 1:
        return False
    if e.value(q.input[1]) is None:
        return False  # a run-time scale
    q_scale = _broadcast_param(e, q, 1, q.input[0], "scale")
    if q_scale is None or q_scale.shape != scale.shape or not np.array_equal(q_scale, scale):
        return False
    zps = []
    for n in (q, node):
        if len(n.input) <= 2 or not n.input[2]:
            zps.append(np.zeros(1))
            continue
        v = e.value(n.input[2])
        if v is None:
            return False  # a run-time zero point
        zps.append(v.astype(np.float64).reshape(-1))
    return bool(zps[0].shape == zps[1].shape and np.array_equal(zps[0], zps[1]))


@register("DynamicQuantizeLinear", limits="the run-time scale is held constant (BPDA)")
def _dynamic_quantize(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    if g is None:  # only the scale or zero point is used downstream: held constant
        return [None]
    if not node.output[1] or not node.output[2]:
        raise refuse(node, "an unnamed scale or zero-point output", "re-export the model")
    z = e.op("Cast", [node.output[2]], to=TensorProto.FLOAT)
    return [_ste(e, g, node.input[0], node.output[1], z, 0, 255)]
