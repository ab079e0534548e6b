"""Gradient rules for activations, softmaxes, selections, reductions and ConvTranspose.

They register into qrdeploy.gradients.rules.RULES on import (qrdeploy.gradients.builder imports this
module). Where torch and the maths disagree at a kink, the rule follows torch, which the tests
compare against: HardSigmoid passes no gradient at the ends of its linear range, HardSwish uses the
slope x/3 + 1/2 up to and including x = 3, and ReduceMax splits the gradient evenly among tied
maxima (as torch.amax; torch.max(dim) would give it all to one index)."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from qrdeploy.gradients.rules import (
    Emitter,
    Grads,
    attrs,
    keep_dims,
    reduce_axes,
    refuse,
    register,
    unbroadcast,
    window_attrs,
)


def _f(value: float) -> np.ndarray:
    return np.asarray(value, np.float32)


def _mask(e: Emitter, boolean: str, hint: str = "mask") -> str:
    return e.op("Cast", [boolean], hint, to=TensorProto.FLOAT)


def _one(gout: Grads) -> str:
    g = gout[0]
    assert g is not None
    return g


@register("PRelu", limits="constant slope")
def _prelu(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    if need[1]:
        raise refuse(node, "a slope that depends on the input", "keep the slope a weight")
    x, slope = node.input[0], node.input[1]
    pos = e.op("Greater", [x, e.const(_f(0))])
    return [e.op("Mul", [_one(gout), e.op("Where", [pos, e.const(_f(1)), slope], "slope")],
                 "prelu_grad"), None]


@register("Sigmoid")
def _sigmoid(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    y = node.output[0]
    slope = e.op("Mul", [y, e.op("Sub", [e.const(_f(1)), y])], "sigmoid_slope")  # y (1 - y)
    return [e.op("Mul", [_one(gout), slope], "sigmoid_grad")]


@register("Tanh")
def _tanh(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    y = node.output[0]
    slope = e.op("Sub", [e.const(_f(1)), e.op("Mul", [y, y])], "tanh_slope")  # 1 - y^2
    return [e.op("Mul", [_one(gout), slope], "tanh_grad")]


@register("HardSigmoid", limits="no gradient at the ends of the linear range (as torch)")
def _hard_sigmoid(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    a = attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    t = e.op("Add", [e.op("Mul", [node.input[0], e.const(_f(alpha))]), e.const(_f(beta))])
    inside = e.op("And", [e.op("Greater", [t, e.const(_f(0))]),
                          e.op("Less", [t, e.const(_f(1))])])  # strict, as torch
    slope = e.op("Mul", [_mask(e, inside), e.const(_f(alpha))], "hsig_slope")
    return [e.op("Mul", [_one(gout), slope], "hsig_grad")]


@register("HardSwish", limits="slope x/3 + 1/2 up to and including x = 3 (as torch)")
def _hard_swish(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    x = node.input[0]
    mid = e.op("Add", [e.op("Div", [x, e.const(_f(3))]), e.const(_f(0.5))])  # x/3 + 1/2
    upper = e.op("Where", [e.op("LessOrEqual", [x, e.const(_f(3))]), mid, e.const(_f(1))])
    slope = e.op("Where", [e.op("Less", [x, e.const(_f(-3))]), e.const(_f(0)), upper],
                 "hswish_slope")
    return [e.op("Mul", [_one(gout), slope], "hswish_grad")]


@register("Erf")
def _erf(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    x = node.input[0]
    bell = e.op("Exp", [e.op("Neg", [e.op("Mul", [x, x])])])  # exp(-x^2)
    slope = e.op("Mul", [bell, e.const(_f(2 / math.sqrt(math.pi)))], "erf_slope")
    return [e.op("Mul", [_one(gout), slope], "erf_grad")]


def _sum_keep(e: Emitter, g: str, axis: int) -> str:
    return e.op("ReduceSum", [g, e.const(np.array([axis], np.int64))], "sum", keepdims=1)


@register("Softmax", limits="opset >= 13 form (single axis)")
def _softmax(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g, y = _one(gout), node.output[0]
    axis = int(attrs(node).get("axis", -1))
    inner = e.op("Sub", [g, _sum_keep(e, e.op("Mul", [g, y]), axis)])  # g - sum(g y)
    return [e.op("Mul", [y, inner], "softmax_grad")]


@register("LogSoftmax", limits="opset >= 13 form (single axis)")
def _log_softmax(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g, y = _one(gout), node.output[0]
    axis = int(attrs(node).get("axis", -1))
    spread = e.op("Mul", [e.op("Exp", [y]), _sum_keep(e, g, axis)])  # softmax * sum(g)
    return [e.op("Sub", [g, spread], "logsoftmax_grad")]


@register("Where", limits="the condition carries no gradient")
def _where(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = _one(gout)
    cond, a, b = node.input
    out, zero = e.shape(node.output[0]), e.const(_f(0))
    ga = e.op("Where", [cond, g, zero], "where_a") if need[1] else None
    gb = e.op("Where", [cond, zero, g], "where_b") if need[2] else None
    return [None,
            unbroadcast(e, ga, e.shape(a), out) if ga else None,
            unbroadcast(e, gb, e.shape(b), out) if gb else None]


@register("ReduceSum", limits="constant axes")
def _reduce_sum(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g, x = _one(gout), node.input[0]
    axes = reduce_axes(e, node)
    if axes is not None:
        g = e.op("Expand", [keep_dims(e, node, g, axes), e.op("Shape", [x])], "sum_grad")
    return [g] + [None] * (len(node.input) - 1)


@register("ReduceMax", limits="constant axes; ties share the gradient evenly (torch.amax)")
def _reduce_max(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g, x = _one(gout), node.input[0]
    axes = reduce_axes(e, node)
    if axes is None:
        return [g] + [None] * (len(node.input) - 1)
    y = keep_dims(e, node, node.output[0], axes)
    hit = _mask(e, e.op("Equal", [x, y]), "max_hit")  # 1 at every maximum, ties included
    count = e.op("ReduceSum", [hit, e.const(np.array(axes, np.int64))], "max_count", keepdims=1)
    share = e.op("Div", [hit, count], "max_share")
    return [e.op("Mul", [keep_dims(e, node, g, axes), share], "max_grad")] + \
        [None] * (len(node.input) - 1)


@register("ConvTranspose",
          limits="constant weight and bias; explicit pads or VALID, no output_shape")
def _conv_transpose(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    """The adjoint of a transposed convolution is the convolution with the same weights."""
    if any(need[1:]):
        raise refuse(node, "a weight or bias that depends on the input", "keep weights constant")
    a = attrs(node)
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if "output_shape" in a or mode not in ("NOTSET", "VALID"):
        raise refuse(node, f"output_shape or auto_pad={mode}",
                     "supported: explicit pads (auto_pad NOTSET or VALID) and output_padding")
    x, w = node.input[0], node.input[1]
    win = window_attrs(node, e, list(a.get("kernel_shape", e.shape(w)[2:])))
    size = [int(d) for d in e.shape(x)[2:] if d is not None]
    out = [int(d) for d in e.shape(node.output[0])[2:] if d is not None]
    if _conv_sizes(out, win) != size:
        raise refuse(node, "output_padding of at least the stride", "use output_padding < stride")
    return [e.op("Conv", [_one(gout), w], "convT_grad", group=int(a.get("group", 1)), **win)] + \
        [None] * (len(node.input) - 1)


def _conv_sizes(size: list[int], win: dict[str, list[int]]) -> list[int]:
    """Spatial output size of a Conv with these windows on an input of `size`."""
    n, k, s, d, p = len(size), win["kernel_shape"], win["strides"], win["dilations"], win["pads"]
    return [(size[i] + p[i] + p[i + n] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(n)]
