"""BatchNormalization folded into the convolution before it, as deployment tools do before integer
quantization (onnxruntime's `quant_pre_process` does the same through its graph optimizer).

A pair folds when a Conv's only reader is an inference-mode BatchNormalization whose parameters
are initializers, the Conv's weight (and bias, if any) are float32 initializers read by that Conv
alone, and every channel factor a = scale / sqrt(var + epsilon) is finite and non-zero. The Conv
then computes BN(Conv(x)) itself: W' = W * a (per output channel), b' = (b - mean) * a + B, and it
writes the BatchNormalization's output tensor (its readers are unchanged); the BatchNormalization
node is removed. The factors are computed in float64 and rounded once to float32, so the folded
file is identical on every machine.

Used by `harden --activations int8` (an int8 graph that quantizes the convolution's output
before a float BatchNormalization runs an extra float pass and an extra requantization per layer)
and by the Lipschitz analysis, which folds the reference model the same way when the model it is
compared with has its BatchNormalizations folded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qrdeploy.graphio.graph import unique_name

DEFAULT_EPSILON = 1e-5


@dataclass(frozen=True)
class Fold:
    """One folded pair: the Conv node and its weight, the removed BatchNormalization, and the
    per-output-channel factor a (float32) the weight was multiplied by."""

    conv: str
    weight: str
    batchnorm: str
    factor: np.ndarray


def inline_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose Constant nodes (a `value` tensor) and Identity nodes of a
    constant are initializers. Legacy exports without constant folding feed BatchNormalization
    parameters through such nodes (one Identity can share another layer's bias), which keeps
    the pair from folding."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    values = {t.name: t for t in g.initializer}
    kept, added = [], []
    for node in g.node:
        tensor = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = next((a for a in node.attribute if a.name == "value"), None)
            tensor = None if attr is None else attr.t
        elif node.op_type == "Identity" and node.domain in ("", "ai.onnx") and \
                node.input[0] in values:
            tensor = values[node.input[0]]
        if tensor is None or len(node.output) != 1:
            kept.append(node)
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = node.output[0]
        values[copy.name] = copy
        added.append(copy)
    if added:
        del g.node[:]
        g.node.extend(kept)
        g.initializer.extend(added)
    return out


def batchnorm_count(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def fold_batchnorm(model: onnx.ModelProto,
                   accept: Callable[[str, np.ndarray], bool] | None = None
                   ) -> tuple[onnx.ModelProto, list[Fold]]:
    """A copy of `model` with every foldable Conv -> BatchNormalization pair folded, and the
    folds in graph order (empty, and an unchanged copy, when nothing folds). `accept(weight,
    factor)` may refuse a pair (the caller cannot carry that factor)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    uses = Counter(i for n in g.node for i in n.input)
    uses.update(o.name for o in g.output)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    taken = set(inits) | {x for n in g.node for x in (*n.input, *n.output)}
    folds: list[Fold] = []
    removed: set[int] = set()
    params: set[str] = set()
    for conv in g.node:
        bn = _foldable(conv, readers, uses, inits)
        if bn is None:
            continue
        found = _affine(bn, inits)
        if found is None or (accept is not None and
                             not accept(conv.input[1], found[0].astype(np.float32))):
            continue
        factor, shift = found
        _replace(inits[conv.input[1]], scale_channels(numpy_helper.to_array(
            inits[conv.input[1]]), factor))
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias \
            else np.zeros(len(factor))
        folded_bias = ((bias * factor) + shift).astype(np.float32)
        if has_bias:
            _replace(inits[conv.input[2]], folded_bias)
        else:
            name = unique_name(f"{conv.input[1]}_folded_bias", taken)
            g.initializer.append(numpy_helper.from_array(folded_bias, name))
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = name
        conv.output[0] = bn.output[0]
        removed.add(id(bn))
        folds.append(Fold(conv.name, conv.input[1], bn.name, factor.astype(np.float32)))
        params.update(bn.input[1:5])
    if removed:
        kept = [n for n in g.node if id(n) not in removed]
        del g.node[:]
        g.node.extend(kept)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dropped = {p for p in params if p not in used}
        keep = [t for t in g.initializer if t.name not in dropped]
        del g.initializer[:]
        g.initializer.extend(keep)
        inputs = [v for v in g.input if v.name not in dropped]
        del g.input[:]
        g.input.extend(inputs)
        names = {x for n in g.node for x in n.output}
        infos = [v for v in g.value_info if v.name in names]
        del g.value_info[:]
        g.value_info.extend(infos)
    return out, folds


def scale_channels(w: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """w (output channels first) times one factor per output channel, in float64, as float32."""
    shape = (-1,) + (1,) * (w.ndim - 1)
    return (w.astype(np.float64) * np.asarray(factor, np.float64).reshape(shape)
            ).astype(np.float32)


def _foldable(conv: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]],
              uses: Counter[str], inits: dict[str, onnx.TensorProto]) -> onnx.NodeProto | None:
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
        return None
    weight = conv.input[1]
    if weight not in inits or uses[weight] != 1 or \
            inits[weight].data_type != onnx.TensorProto.FLOAT:
        return None
    if len(conv.input) > 2 and conv.input[2]:
        bias = conv.input[2]
        if bias not in inits or uses[bias] != 1 or \
                inits[bias].data_type != onnx.TensorProto.FLOAT:
            return None
    out = conv.output[0]
    nxt = readers.get(out, [])
    if uses[out] != 1 or len(nxt) != 1:
        return None
    bn = nxt[0]
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or \
            bn.input[0] != out or len([o for o in bn.output if o]) != 1:
        return None
    training = next((a.i for a in bn.attribute if a.name == "training_mode"), 0)
    if training or any(i not in inits for i in bn.input[1:5]):
        return None
    return bn


def _affine(bn: onnx.NodeProto, inits: dict[str, onnx.TensorProto]
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, B - mean * a) of the BatchNormalization, a rounded to float32 first (the factor the
    Fold records is the one applied), the arithmetic in float64; None when a channel's factor is
    zero or not finite (folding would lose the channel)."""
    scale, shift, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64)
                               for i in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), DEFAULT_EPSILON)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        factor = (scale / np.sqrt(var + np.float64(np.float32(eps)))).astype(np.float32)
    if factor.ndim != 1 or not np.all(np.isfinite(factor)) or np.any(factor == 0):
        return None
    a = factor.astype(np.float64)
    return a, shift - mean * a


def _replace(t: onnx.TensorProto, values: np.ndarray) -> None:
    t.CopyFrom(numpy_helper.from_array(values, t.name))
