"""Reverse-mode rules, one per ONNX op type, that emit the backward nodes of a gradient graph.

A rule gets the `Emitter` (which adds nodes and constants and knows static shapes and constant
values), the forward node, the cotangent name of each output (None when no gradient reaches it)
and which inputs need a gradient; it returns one cotangent name (or None) per input. Shapes are
static except the batch axis, which is None. Weights are constants (see grad_prepare), so rules
may precompute with numpy on them. `RULES` is the registry; `supported_ops()` in
qrdeploy.gradients.builder lists it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.errors import GraphError, UnsupportedOpError

Shape = tuple[int | None, ...]
Grads = list[str | None]


@dataclass(frozen=True)
class GradOptions:
    """Kernel choices for speed; both settings give the same gradient (up to float rounding).

    maxunpool: MaxPool backward as MaxUnpool when windows do not overlap (else always the generic
        Indices + ScatterElements(add) path).
    conv_as_conv: a stride-1 Conv's backward as a Conv with flipped, transposed weights when it
        has at least `conv_min_channels` output channels (else ConvTranspose)."""

    maxunpool: bool = True
    conv_as_conv: bool = True
    conv_min_channels: int = 16


class Emitter:
    """Collects the backward nodes and constants; answers shape and constant queries."""

    def __init__(
        self,
        shapes: dict[str, Shape],
        consts: dict[str, np.ndarray],
        options: GradOptions | None = None,
        opset: int = 17,
    ) -> None:
        self.shapes = shapes
        self.opset = opset
        self.consts = consts
        self.options = options or GradOptions()
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, int] = {}
        # Relu outputs whose cotangent a MaxPool rule already masked (at pooled resolution)
        self.premasked: set[str] = set()
        # QuantizeLinear codes whose cotangent a paired DequantizeLinear left unscaled
        self.unscaled_codes: set[str] = set()
        # element type per tensor (TensorProto enum), for casts between float types
        self.dtypes: dict[str, int] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def index(self, graph: onnx.GraphProto) -> None:
        """Record producers and consumer counts of the forward graph (for peephole rules)."""
        for node in graph.node:
            self.producer.update((o, node) for o in node.output)
            for i in node.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"qrd/{hint}/{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", **attrs: Any) -> str:
        """Add one node with a single output and return the output's name."""
        out = self.fresh(hint or op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value: np.ndarray | np.generic | float | list[int], hint: str = "c") -> str:
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def shape(self, name: str) -> Shape:
        if name not in self.shapes:
            raise UnsupportedOpError(f"tensor {name!r} has no inferred shape; give the model "
                                     "a static C x H x W input so shapes can be inferred")
        return self.shapes[name]

    def value(self, name: str) -> np.ndarray | None:
        """The constant value of a tensor, or None when it is computed at run time."""
        return self.consts.get(name)

    def add(self, grads: Sequence[str]) -> str:
        out = grads[0]
        for g in grads[1:]:
            out = self.op("Add", [out, g], "acc")
        return out


@dataclass(frozen=True)
class Rule:
    """A backward rule; `patch` may rewrite the forward node first (e.g. add MaxPool Indices)."""

    backward: Callable[[Emitter, onnx.NodeProto, Grads, list[bool]], Grads]
    patch: Callable[[onnx.NodeProto], None] | None = None
    limits: str = ""  # what the rule refuses, for docs/ops.md


def rule_limits() -> dict[str, str]:
    """Per op type, what its rule refuses ("" when nothing beyond the general limits)."""
    return {op: rule.limits for op, rule in sorted(RULES.items())}


RULES: dict[str, Rule] = {}
# inputs that never carry a gradient (they give only a dtype or a shape)
# (integer and bool tensors never carry one: only float tensors are followed)
NON_DIFFERENTIABLE: dict[str, set[int]] = {"CastLike": {1}, "Expand": {1}, "Reshape": {1}}


def register(*op_types: str, patch: Callable[[onnx.NodeProto], None] | None = None,
             limits: str = "") -> Callable[
    [Callable[[Emitter, onnx.NodeProto, Grads, list[bool]], Grads]],
    Callable[[Emitter, onnx.NodeProto, Grads, list[bool]], Grads],
]:
    def deco(
        fn: Callable[[Emitter, onnx.NodeProto, Grads, list[bool]], Grads],
    ) -> Callable[[Emitter, onnx.NodeProto, Grads, list[bool]], Grads]:
        for op_type in op_types:
            RULES[op_type] = Rule(fn, patch, limits)
        return fn

    return deco


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def refuse(node: onnx.NodeProto, what: str, fix: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"{node.op_type} node {node.name or node.output[0]!r}: {what} has no gradient rule; {fix}"
    )


def _spatial(node: onnx.NodeProto, e: Emitter, x: str) -> list[int]:
    dims = e.shape(x)[2:]
    if any(d is None for d in dims):
        raise refuse(node, f"input with unknown spatial shape {e.shape(x)}",
                     "give the model a static C x H x W input")
    return [int(d) for d in dims if d is not None]


def resolve_pads(
    a: dict[str, Any], size: list[int], k: list[int], s: list[int], d: list[int]
) -> list[int]:
    """Explicit [begins..., ends...] pads for auto_pad NOTSET/VALID/SAME_UPPER/SAME_LOWER."""
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n = len(size)
    if mode in ("NOTSET", ""):
        return list(a.get("pads", [0] * 2 * n))
    if mode == "VALID":
        return [0] * 2 * n
    begins, ends = [], []
    for i in range(n):
        out = -(-size[i] // s[i])
        total = max((out - 1) * s[i] + d[i] * (k[i] - 1) + 1 - size[i], 0)
        small, big = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return begins + ends


def window_attrs(node: onnx.NodeProto, e: Emitter, k: list[int]) -> dict[str, list[int]]:
    """kernel, strides, dilations and explicit pads of a Conv/pool node."""
    a = attrs(node)
    n = len(k)
    s = list(a.get("strides", [1] * n))
    d = list(a.get("dilations", [1] * n))
    given = list(a.get("pads", [0] * 2 * n))
    if len(s) != n or len(d) != n or len(given) != 2 * n:
        raise refuse(node, f"strides {s}, dilations {d} or pads {given} that do not match a "
                     f"{n}-D kernel", "re-export the model")
    pads = resolve_pads(a, _spatial(node, e, node.input[0]), k, s, d)
    return {"kernel_shape": k, "strides": s, "dilations": d, "pads": pads}


def output_padding(size: list[int], out: list[int], w: dict[str, list[int]]) -> list[int]:
    """ConvTranspose output_padding that maps `out` back exactly onto `size`."""
    n = len(size)
    k, s, d, p = w["kernel_shape"], w["strides"], w["dilations"], w["pads"]
    return [size[i] - (s[i] * (out[i] - 1) + d[i] * (k[i] - 1) + 1 - p[i] - p[i + n])
            for i in range(n)]


def unbroadcast(e: Emitter, g: str, in_shape: Shape, out_shape: Shape) -> str:
    """Sum g over the axes where the input was broadcast, giving the input's shape."""
    lead = len(out_shape) - len(in_shape)
    if lead < 0:
        raise GraphError(f"an input of shape {tuple(in_shape)} has more axes than the broadcast "
                         f"output {tuple(out_shape)}; the model's shapes are inconsistent")
    padded = (1,) * lead + tuple(in_shape)
    axes = [i for i, (a, b) in enumerate(zip(padded, out_shape, strict=True))
            if a == 1 and b != 1]
    if axes:
        g = e.op("ReduceSum", [g, e.const(np.array(axes, np.int64))], "unbroadcast", keepdims=1)
    if lead:
        g = e.op("Squeeze", [g, e.const(np.arange(lead, dtype=np.int64))], "unbroadcast")
    return g


def like(e: Emitter, g: str, x: str) -> str:
    """Reshape g to the run-time shape of x."""
    return e.op("Reshape", [g, e.op("Shape", [x])], "reshape")


# --- elementwise -----------------------------------------------------------------------------


@register("Dropout", limits="inference mode only (training_mode a constant False)")
@register("Identity")
def _identity(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        mode = e.value(node.input[2])
        if mode is None or bool(mode):
            raise refuse(node, "training_mode that is not a constant False",
                         "export the model in eval mode")
    return [gout[0]] + [None] * (len(node.input) - 1)


_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@register("Cast", "CastLike", limits="between float types, and from quantization codes")
def _cast(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    # reached float -> float, or from integer codes of a quantized activation (their cotangent
    # stays float); other casts end the differentiable path. CastLike's second input gives only
    # a dtype (see NON_DIFFERENTIABLE). The cotangent goes back to x's type when x is a float.
    g = gout[0]
    assert g is not None
    src, dst = e.dtypes.get(node.input[0]), e.dtypes.get(node.output[0])
    if src is not None and dst is not None and src != dst and src in _FLOAT_TYPES:
        g = e.op("Cast", [g], "cast_grad", to=src)
    return [g] + [None] * (len(node.input) - 1)


@register("Sqrt")
def _sqrt(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    return [e.op("Div", [e.op("Mul", [g, e.const(np.float32(0.5))]), node.output[0]], "sqrt_grad")]


@register("Pow", limits="constant exponent")
def _pow(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    p = e.value(node.input[1])
    if need[1] or p is None:
        raise refuse(node, "an exponent that is not a constant", "use a constant exponent")
    x = node.input[0]
    p = np.asarray(p, np.float32)
    slope = e.op("Mul", [e.const(p), e.op("Pow", [x, e.const(p - 1)])], "pow_slope")
    return [unbroadcast(e, e.op("Mul", [g, slope]), e.shape(x), e.shape(node.output[0])), None]


@register("Clip", limits="constant bounds (opset < 11 attribute bounds are converted to inputs)")
def _clip(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    if any(need[1:]):
        raise refuse(node, "bounds that depend on the input", "use constant min and max")
    x = node.input[0]
    # opset < 11 bounds are attributes; grad_prepare's opset conversion makes them inputs
    bounds = [node.input[i] if len(node.input) > i and node.input[i] else None for i in (1, 2)]
    # as torch.clamp: the gradient passes where min <= x <= max, bounds included
    inside = None
    for bound, op in zip(bounds, ("GreaterOrEqual", "LessOrEqual"), strict=True):
        if bound is not None:
            test = e.op(op, [x, bound], "clip_in")
            inside = test if inside is None else e.op("And", [inside, test])
    if inside is None:
        return [g] + [None] * (len(node.input) - 1)
    mask = e.op("Cast", [inside], "clip_mask", to=TensorProto.FLOAT)
    return [e.op("Mul", [g, mask], "clip_grad")] + [None] * (len(node.input) - 1)


@register("Expand")
def _expand(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    x = node.input[0]
    return [unbroadcast(e, g, e.shape(x), e.shape(node.output[0])), None]


@register("Relu")
def _relu(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    if node.output[0] in e.premasked:
        return [g]
    return [_positive_mask(e, g, node.output[0])]


def _positive_mask(e: Emitter, g: str, y: str) -> str:
    """g where y > 0, else 0; Mul by a Cast is faster than Where in onnxruntime."""
    mask = e.op("Cast", [e.op("Greater", [y, e.const(np.float32(0))])], "relu_mask",
                to=TensorProto.FLOAT)
    return e.op("Mul", [g, mask], "relu_grad")


@register("LeakyRelu")
def _leaky_relu(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    alpha = float(attrs(node).get("alpha", 0.01))
    pos = e.op("Greater", [node.input[0], e.const(np.float32(0))])
    if 0.0 <= alpha <= 1.0:
        # max(1{x > 0}, alpha): the same slopes as Where(x > 0, 1, alpha) in passes that
        # onnxruntime runs in about half Where's time (a WRN step has one per activation)
        slope = e.op("Max", [e.op("Cast", [pos], to=TensorProto.FLOAT),
                             e.const(np.float32(alpha))], "slope")
    else:
        slope = e.op("Where", [pos, e.const(np.float32(1)), e.const(np.float32(alpha))],
                     "slope")
    return [e.op("Mul", [g, slope], "leaky_grad")]


@register("Add", "Sub", "Mul", "Div")
def _arith(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    a, b = node.input[0], node.input[1]
    out_shape = e.shape(node.output[0])
    ga = gb = g
    if node.op_type == "Sub":
        gb = e.op("Neg", [g])
    elif node.op_type == "Mul":
        ga, gb = e.op("Mul", [g, b]), e.op("Mul", [g, a])
    elif node.op_type == "Div":
        ga = e.op("Div", [g, b])
        # d(a/b)/db = -(a/b)/b, from the forward output
        gb = e.op("Neg", [e.op("Div", [e.op("Mul", [g, node.output[0]]), b])])
    return [
        unbroadcast(e, ga, e.shape(a), out_shape) if need[0] else None,
        unbroadcast(e, gb, e.shape(b), out_shape) if need[1] else None,
    ]


# --- linear ----------------------------------------------------------------------------------


@register("Gemm")
def _gemm(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    at = attrs(node)
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    ta, tb = int(at.get("transA", 0)), int(at.get("transB", 0))
    a, b = node.input[0], node.input[1]
    grads: Grads = [None] * len(node.input)
    if need[0]:
        grads[0] = (e.op("Gemm", [g, b], "dA", alpha=alpha, transB=1 - tb) if not ta
                    else e.op("Gemm", [b, g], "dA", alpha=alpha, transA=tb, transB=1))
    if need[1]:
        grads[1] = (e.op("Gemm", [a, g], "dB", alpha=alpha, transA=1 - ta) if not tb
                    else e.op("Gemm", [g, a], "dB", alpha=alpha, transA=1, transB=ta))
    if len(need) > 2 and need[2]:
        gc = e.op("Mul", [g, e.const(np.float32(beta))]) if beta != 1.0 else g
        grads[2] = unbroadcast(e, gc, e.shape(node.input[2]), e.shape(node.output[0]))
    return grads


def _swap_last(e: Emitter, name: str) -> str:
    value = e.value(name)
    if value is not None:
        return e.const(np.ascontiguousarray(np.swapaxes(value, -1, -2)), "T")
    rank = len(e.shape(name))
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return e.op("Transpose", [name], "T", perm=perm)


@register("MatMul", limits="operands of rank >= 2 (batch dimensions broadcast)")
def _matmul(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    a, b = node.input[0], node.input[1]
    if len(e.shape(a)) < 2 or len(e.shape(b)) < 2:
        raise refuse(node, "a 1-D operand", "use a 2-D (or batched) MatMul or a Gemm")
    out = e.shape(node.output[0])
    ga = gb = None
    if need[0]:
        ga = unbroadcast(e, e.op("MatMul", [g, _swap_last(e, b)], "dA"), e.shape(a), out)
    if need[1]:
        # the product's last two axes are not broadcast axes, so reduce only the leading ones
        gb = e.op("MatMul", [_swap_last(e, a), g], "dB")
        gb = unbroadcast(e, gb, e.shape(b)[:-2] + out[-2:], out)
    return [ga, gb]


@register("Conv", limits="constant weight and bias")
def _conv(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    if need[1] or (len(need) > 2 and need[2]):
        raise refuse(node, "a weight or bias that depends on the input", "keep weights constant")
    x, w = node.input[0], node.input[1]
    w_shape = e.shape(w)
    win = window_attrs(node, e, list(attrs(node).get("kernel_shape", w_shape[2:])))
    group = int(attrs(node).get("group", 1))
    size, out = _spatial(node, e, x), _spatial(node, e, node.output[0])
    dx = _conv_as_conv(e, g, w, win, group, size)
    if dx is None:
        dx = e.op("ConvTranspose", [g, w], "dX", group=group,
                  output_padding=output_padding(size, out, win), **win)
    return [dx] + [None] * (len(node.input) - 1)


def _conv_as_conv(
    e: Emitter, g: str, w: str, win: dict[str, list[int]], group: int, size: list[int]
) -> str | None:
    """Stride-1 Conv backward as a Conv with flipped, group-transposed weights (faster in ORT)."""
    value = e.value(w)
    opt = e.options
    if value is None or not opt.conv_as_conv or any(s != 1 for s in win["strides"]):
        return None
    c_out, c_in_g = value.shape[:2]
    if c_in_g * group < opt.conv_min_channels:
        return None
    n, k, d, p = len(size), win["kernel_shape"], win["dilations"], win["pads"]
    pads = [d[i] * (k[i] - 1) - p[i] for i in range(n)]
    pads += [d[i] * (k[i] - 1) - p[i + n] for i in range(n)]
    if min(pads) < 0:
        return None
    wt = value.reshape(group, c_out // group, c_in_g, *value.shape[2:])  # (G, Co/G, Ci/G, k..)
    wt = np.swapaxes(wt, 1, 2).reshape(group * c_in_g, c_out // group, *value.shape[2:])
    wt = np.ascontiguousarray(np.flip(wt, axis=tuple(range(2, 2 + n))))  # (Ci, Co/G, k..)
    return e.op("Conv", [g, e.const(wt, "w_flip")], "dX", group=group, kernel_shape=k,
                dilations=d, pads=pads, strides=[1] * n)


@register("BatchNormalization", limits="inference mode, constant statistics")
def _batchnorm(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    a = attrs(node)
    values = [e.value(name) for name in node.input[1:5]]
    if a.get("training_mode", 0) or any(need[1:]) or any(v is None for v in values):
        raise refuse(node, "training mode or non-constant statistics",
                     "export the model in eval mode (inference BatchNormalization)")
    scale, _, _, var = (np.asarray(v, np.float64) for v in values)
    factor = scale / np.sqrt(var + float(a.get("epsilon", 1e-5)))  # (C,)
    rank = len(e.shape(node.input[0]))
    factor = factor.reshape(-1, *([1] * (rank - 2)))  # (C, 1, 1)
    return [e.op("Mul", [g, e.const(factor, "bn_scale")], "bn_grad")] + [None] * 4


# --- pooling and reductions ------------------------------------------------------------------


def _add_indices(node: onnx.NodeProto) -> None:
    if len(node.output) < 2 or not node.output[1]:
        del node.output[1:]
        node.output.append(f"qrd/{node.name or node.output[0]}/indices")


@register("MaxPool", patch=_add_indices, limits="storage_order=0")
def _maxpool(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    a = attrs(node)
    if int(a.get("storage_order", 0)) == 1:
        raise refuse(node, "storage_order=1", "export with the default row-major storage order")
    x, idx = node.input[0], node.output[1]
    k = list(a["kernel_shape"])
    win = window_attrs(node, e, k)
    source = e.producer.get(x)
    if source is not None and source.op_type == "Relu" and e.consumers.get(x) == 1:
        # relu'(x) at each window's argmax is [pooled > 0]: mask the small pooled gradient and
        # let the Relu rule pass its cotangent through (docs/gradients.md, the MaxPool rule)
        g = _positive_mask(e, g, node.output[0])
        e.premasked.add(x)
    shape_x = e.op("Shape", [x])
    overlap = any(s < d * (kk - 1) + 1 for s, d, kk in
                  zip(win["strides"], win["dilations"], k, strict=True))
    if e.options.maxunpool and not overlap and all(d == 1 for d in win["dilations"]):
        return [e.op("MaxUnpool", [g, idx, shape_x], "unpool", kernel_shape=k,
                     strides=win["strides"], pads=win["pads"])]
    # Indices are flat over N*C*H*W, so scatter into one flat buffer; add sums overlapping windows
    flat = e.const(np.array([-1], np.int64))
    zeros = e.op("ConstantOfShape", [e.op("Reshape", [e.op("Size", [x]), flat])], "zeros",
                 value=numpy_helper.from_array(np.zeros(1, np.float32)))
    summed = e.op("ScatterElements", [zeros, e.op("Reshape", [idx, flat]),
                                      e.op("Reshape", [g, flat])],
                  "scatter", axis=0, reduction="add")
    return [e.op("Reshape", [summed, shape_x], "unpool")]


def _avg_counts(size: list[int], out: list[int], win: dict[str, list[int]]) -> np.ndarray:
    """Per output position, how many real (non-pad) inputs its window covers: (*out,)."""
    n = len(size)
    per_axis = []
    for i in range(n):
        starts = np.arange(out[i]) * win["strides"][i] - win["pads"][i]  # (out_i,)
        taps = starts[:, None] + np.arange(win["kernel_shape"][i]) * win["dilations"][i]
        per_axis.append(((taps >= 0) & (taps < size[i])).sum(axis=1))
    counts = per_axis[0]
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c)
    return np.asarray(counts.astype(np.float64))


@register("AveragePool", limits="no ceil_mode window past the padded input")
def _avgpool(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    a = attrs(node)
    x = node.input[0]
    k = list(a["kernel_shape"])
    win = window_attrs(node, e, k)
    size, out = _spatial(node, e, x), _spatial(node, e, node.output[0])
    op = output_padding(size, out, win)
    if any(p < 0 for p in op):
        raise refuse(node, "ceil_mode windows past the padded input", "use ceil_mode=0")
    if int(a.get("count_include_pad", 0)):
        inv = np.full(out, 1.0 / np.prod(k))
    else:
        inv = 1.0 / _avg_counts(size, out, win)
    channels = e.shape(x)[1]
    assert channels is not None
    ones = np.ones((channels, 1, *k), np.float32)  # depthwise: each channel spreads its own g
    scaled = e.op("Mul", [g, e.const(inv.reshape(1, 1, *out), "avg_inv")])
    return [e.op("ConvTranspose", [scaled, e.const(ones, "avg_w")], "avg_grad", group=channels,
                 output_padding=op, **win)]


@register("GlobalAveragePool")
def _global_avg(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    x = node.input[0]
    inv = e.const(np.float32(1.0 / np.prod(_spatial(node, e, x))))
    return [e.op("Expand", [e.op("Mul", [g, inv]), e.op("Shape", [x])], "gap_grad")]


def reduce_axes(e: Emitter, node: onnx.NodeProto) -> list[int] | None:
    """Sorted non-negative axes of a Reduce* node (attribute or input); None for a no-op."""
    a = attrs(node)
    rank = len(e.shape(node.input[0]))
    given = len(node.input) > 1 and bool(node.input[1])
    axes_value = e.value(node.input[1]) if given else None
    if given and axes_value is None:
        raise refuse(node, "axes computed at run time", "make the axes a constant")
    axes = list(a.get("axes", [])) if axes_value is None else [int(v) for v in axes_value]
    if not axes and int(a.get("noop_with_empty_axes", 0)):
        return None
    return sorted(ax % rank for ax in axes) if axes else list(range(rank))


def keep_dims(e: Emitter, node: onnx.NodeProto, g: str, axes: list[int]) -> str:
    """The reduced cotangent with the reduced axes restored as size 1 (keepdims=0 undone)."""
    if int(attrs(node).get("keepdims", 1)):
        return g
    return e.op("Unsqueeze", [g, e.const(np.array(axes, np.int64))])


@register("ReduceMean", limits="constant axes, not over the batch axis")
def _reduce_mean(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    x = node.input[0]
    axes = reduce_axes(e, node)
    if axes is None:
        return [g] + [None] * (len(node.input) - 1)
    shape = e.shape(x)
    if 0 in axes and shape[0] is None:
        raise refuse(node, "a mean over the batch axis", "reduce over C, H or W only")
    dims = [int(d) for d in (shape[ax] for ax in axes) if d is not None]
    if len(dims) == len(axes):
        inv = e.const(np.float32(1.0 / np.prod(dims)))
    else:  # a reduced axis of unknown size: the count is size(x) / size(mean), at run time
        size_x = e.op("Cast", [e.op("Size", [x])], to=TensorProto.FLOAT)
        size_y = e.op("Cast", [e.op("Size", [node.output[0]])], to=TensorProto.FLOAT)
        inv = e.op("Div", [size_y, size_x], "mean_inv")
    g = e.op("Mul", [keep_dims(e, node, g, axes), inv])
    return [e.op("Expand", [g, e.op("Shape", [x])], "mean_grad")] + [None] * (len(node.input) - 1)


# --- shape ops -------------------------------------------------------------------------------


@register("Flatten", "Reshape")
def _reshape(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    return [like(e, g, node.input[0])] + [None] * (len(node.input) - 1)


@register("Pad", limits="constant mode, constant pads")
def _pad(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g = gout[0]
    assert g is not None
    mode = attrs(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise refuse(node, f"mode {mode!r}", "use constant padding")
    pads = e.value(node.input[1])
    if pads is None:
        raise refuse(node, "pads computed at run time", "make the pads a constant")
    # Pad with the negated pads crops what was added and zero-fills what was cropped
    inputs = [g, e.const(-np.asarray(pads, np.int64), "neg_pads")]
    if len(node.input) > 3 and node.input[3]:
        inputs += ["", node.input[3]]
    return [e.op("Pad", inputs, "pad_grad", mode="constant")] + [None] * (len(node.input) - 1)
