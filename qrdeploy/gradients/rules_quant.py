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
They register into qrdeploy.gradients.rules.RULES on import."""

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
    s = node.input[1] if scale is None else e.const(scale, "q_scale")
    z = None if zp is None else e.const(zp, "q_zp")
    if z is None and len(node.input) > 2 and node.input[2]:  # a run-time scalar zero point
        z = e.op("Cast", [node.input[2]], to=TensorProto.FLOAT)
    return [_ste(e, g, x, s, z, qmin, qmax)] + [None] * (len(node.input) - 1)


def _ste(e: Emitter, g: str, x: str, s: str, z: str | None, qmin: int, qmax: int) -> str:
    """g/s where round(x/s) + z lies in [qmin, qmax], else 0."""
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
    s = node.input[1] if scale is None else e.const(scale, "dq_scale")
    return [e.op("Mul", [g, s], "dq_grad")] + \
        [None] * (len(node.input) - 1)


@register("DynamicQuantizeLinear", limits="the run-time scale is held constant (BPDA)")
def _dynamic_quantize(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    if g is None:  # only the scale or zero point is used downstream: held constant
        return [None]
    if not node.output[1] or not node.output[2]:
        raise refuse(node, "an unnamed scale or zero-point output", "re-export the model")
    z = e.op("Cast", [node.output[2]], to=TensorProto.FLOAT)
    return [_ste(e, g, node.input[0], node.output[1], z, 0, 255)]
