"""Gradient rules for ops that move, select or join activations: Concat, Split, Slice, Transpose,
Squeeze, Unsqueeze and Gather with constant indices.

They register into qrdeploy.gradients.rules.RULES on import (qrdeploy.gradients.builder imports this
module). Shapes are static except the batch axis, so every index map is built once with numpy;
cutting, joining or gathering along the batch axis is refused (a classifier's samples are
independent)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qrdeploy.gradients.rules import Emitter, Grads, attrs, like, refuse, register

_ALL = 2**31 - 1  # an end at least this large keeps a whole axis of unknown size


def _one(gout: Grads) -> str:
    g = gout[0]
    assert g is not None
    return g


def _axis(e: Emitter, node: onnx.NodeProto, name: str, default: int = 0) -> int:
    rank = len(e.shape(name))
    axis = int(attrs(node).get("axis", default)) % rank
    if e.shape(name)[axis] is None:
        raise refuse(node, "an axis of unknown size (the batch axis)",
                     "supported: ops along the C, H or W axes of a static-shape input")
    return axis


def _const(e: Emitter, node: onnx.NodeProto, k: int, what: str) -> np.ndarray | None:
    if len(node.input) <= k or not node.input[k]:
        return None
    value = e.value(node.input[k])
    if value is None:
        raise refuse(node, f"{what} computed at run time", f"make the {what} a constant")
    return np.asarray(value)


def _zeros_like(e: Emitter, name: str) -> str:
    return e.op("ConstantOfShape", [e.op("Shape", [name])], "zeros",
                value=numpy_helper.from_array(np.zeros(1, np.float32)))


@register("Concat", limits="not along the batch axis")
def _concat(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    axis = _axis(e, node, node.output[0])
    sizes = [e.shape(i)[axis] if len(e.shape(i)) > axis else None for i in node.input]
    if any(s is None for s in sizes):
        raise refuse(node, f"inputs of unknown size along axis {axis}",
                     "give the model a static C x H x W input")
    outs = [e.fresh("concat_grad") for _ in node.input]
    e.nodes.append(helper.make_node("Split", [_one(gout), e.const(np.array(sizes, np.int64))],
                                    outs, name=outs[0], axis=axis))
    return [o if wanted else None for o, wanted in zip(outs, need, strict=True)]


@register("Split", limits="not along the batch axis")
def _split(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    axis = _axis(e, node, node.input[0])
    parts = [g if g is not None else _zeros_like(e, o)
             for g, o in zip(gout, node.output, strict=True)]
    return [e.op("Concat", parts, "split_grad", axis=axis)] + [None] * (len(node.input) - 1)


def _inverse_index(picked: np.ndarray, dim: int) -> np.ndarray:
    """For each input position, where it went in the output, or len(picked) (a zero slot)."""
    inv = np.full(dim, len(picked), np.int64)
    inv[picked] = np.arange(len(picked))
    return inv


@register("Slice", limits="constant starts/ends/axes/steps; the batch axis only whole")
def _slice(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    g, x = _one(gout), node.input[0]
    shape = e.shape(x)
    starts, ends = _const(e, node, 1, "starts"), _const(e, node, 2, "ends")
    if starts is None or ends is None:
        raise refuse(node, "missing starts or ends", "export Slice with opset >= 10 inputs")
    axes = _const(e, node, 3, "axes")
    steps = _const(e, node, 4, "steps")
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise refuse(node, "starts, ends, axes and steps of different lengths",
                     "fix the exported Slice")
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = int(axis) % len(shape)
        dim = shape[axis]
        if dim is None and int(start) == 0 and int(step) == 1 and int(end) >= _ALL:
            continue  # the whole batch axis, as exporters write x[:, ...]
        if dim is None:
            raise refuse(node, "slicing the batch axis", "slice the C, H or W axes only")
        picked = np.arange(dim)[slice(int(start), int(end), int(step))]
        if np.array_equal(picked, np.arange(dim)):
            continue
        # one zero slot appended along the axis, then every input position gathers its source
        pads = np.zeros(2 * len(shape), np.int64)
        pads[len(shape) + axis] = 1
        padded = e.op("Pad", [g, e.const(pads, "slot")], "slice_pad", mode="constant")
        g = e.op("Gather", [padded, e.const(_inverse_index(picked, dim), "inv")], "slice_grad",
                 axis=axis)
    return [g] + [None] * (len(node.input) - 1)


@register("Transpose")
def _transpose(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    rank = len(e.shape(node.input[0]))
    perm = list(attrs(node).get("perm", reversed(range(rank))))
    return [e.op("Transpose", [_one(gout)], "transpose_grad", perm=np.argsort(perm).tolist())]


@register("Squeeze", "Unsqueeze")
def _squeeze(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    return [like(e, _one(gout), node.input[0])] + [None] * (len(node.input) - 1)


@register("Gather", limits="constant indices, not along the batch axis")
def _gather(e: Emitter, node: onnx.NodeProto, gout: Grads, need: list[bool]) -> Grads:
    """Scatter-add back through a one-hot matrix (repeated indices sum, as torch's index_select)."""
    x = node.input[0]
    shape = e.shape(x)
    axis = _axis(e, node, x)
    if axis == 0:
        raise refuse(node, "gathering along the batch axis", "gather along C, H or W only")
    idx = _const(e, node, 1, "indices")
    dim = int(shape[axis] or 0)
    if idx is None or dim == 0:
        raise refuse(node, "missing indices or an empty axis", "gather from a non-empty axis")
    flat = idx.reshape(-1).astype(np.int64) % dim  # (n,)
    onehot = np.zeros((len(flat), dim), np.float32)  # (n, dim)
    np.add.at(onehot, (np.arange(len(flat)), flat), 1.0)
    rank = len(shape)
    g = e.op("Reshape", [_one(gout), e.const(np.array(
        [-1, *shape[1:axis], len(flat), *shape[axis + 1:]], np.int64))], "gather_flat")
    perm = [i for i in range(rank) if i != axis] + [axis]  # the gathered axis last
    if axis != rank - 1:
        g = e.op("Transpose", [g], perm=perm)
    g = e.op("MatMul", [g, e.const(onehot, "gather_onehot")], "gather_grad")
    if axis != rank - 1:
        g = e.op("Transpose", [g], perm=np.argsort(perm).tolist())
    return [g, None]
