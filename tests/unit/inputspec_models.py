"""Tiny ONNX classifiers for the input-spec tests: a pixel-space model and its "deployed" twins
that expect normalised, 0-255, NHWC or uint8 inputs (the twin undoes the spec, then runs the
pixel-space model), with the float64 torch function of the pixel-space model."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.graphio.inputspec import Channels, DType, InputSpec, Layout

C, H, W, K = 3, 6, 6, 5
_RNG = np.random.default_rng(4)
WEIGHTS = {"w": _RNG.normal(0, 0.5, (4, C, 3, 3)).astype(np.float32),
           "b": _RNG.normal(0, 0.1, 4).astype(np.float32),
           "fc": _RNG.normal(0, 0.5, (4 * H * W, K)).astype(np.float32)}


def base_nodes(src: str, flatten: onnx.NodeProto | None = None) -> list[onnx.NodeProto]:
    """src (N, C, H, W) pixels -> conv -> relu -> flatten -> matmul -> logits (N, K)."""
    return [helper.make_node("Conv", [src, "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["feat"]),
            flatten or helper.make_node("Flatten", ["feat"], ["flat"]),
            helper.make_node("MatMul", ["flat", "fc"], ["logits"])]


def torch_base(torch: Any, x: Any) -> Any:
    """The pixel-space model in float64 torch: x (N, C, H, W) -> (N, K)."""
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in WEIGHTS.items()}
    feat = torch.relu(torch.nn.functional.conv2d(x, p["w"], p["b"], padding=1))
    return feat.flatten(1) @ p["fc"]


def _per_channel(values: tuple[float, ...]) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(1, -1, 1, 1)  # (1, C, 1, 1)


def undo_nodes(spec: InputSpec, moves_first: bool = False
               ) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Nodes 'in' (as the spec says) -> 'img' (N, C, H, W) pixels, written by hand. With
    `moves_first`, a uint8 input is transposed (NHWC) and passed through an Identity before its
    Cast, as converters from NHWC runtimes write it."""
    nodes, consts, cur = [], {}, "in"
    steps: list[tuple[str, Any, dict[str, Any]]] = []
    cast = [("Cast", None, {"to": TensorProto.FLOAT})] if spec.dtype is DType.UINT8 else []
    if not moves_first:
        steps += cast
    if spec.layout is Layout.NHWC:
        steps.append(("Transpose", None, {"perm": [0, 3, 1, 2]}))
    if moves_first:
        steps += [("Identity", None, {}), *cast]
    if spec.std is not None:
        steps.append(("Mul", _per_channel(spec.std), {}))
    if spec.mean is not None:
        steps.append(("Add", _per_channel(spec.mean), {}))
    if spec.channels is Channels.BGR:
        steps.append(("Gather", np.asarray([2, 1, 0], np.int64), {"axis": 1}))
    if spec.scale != 1:
        steps.append(("Div", np.float32(spec.scale), {}))
    steps.append(("Identity", None, {}))
    for k, (op, const, attrs) in enumerate(steps):
        out = "img" if k == len(steps) - 1 else f"u{k}"
        inputs = [cur]
        if const is not None:
            consts[f"uc{k}"] = const
            inputs.append(f"uc{k}")
        nodes.append(helper.make_node(op, inputs, [out], name=f"undo{k}", **attrs))
        cur = out
    return nodes, consts


def in_dims(spec: InputSpec, batch: Any = "N") -> list[Any]:
    return [batch, C, H, W] if spec.layout is Layout.NCHW else [batch, H, W, C]


def twin(spec: InputSpec, batch: Any = "N", flatten: onnx.NodeProto | None = None,
         extra_outputs: tuple[str, ...] = (), opset: int = 17,
         moves_first: bool = False) -> onnx.ModelProto:
    """The deployed model: expects its input as `spec` says (`moves_first`: see undo_nodes)."""
    undo, consts = undo_nodes(spec, moves_first)
    elem = TensorProto.UINT8 if spec.dtype is DType.UINT8 else TensorProto.FLOAT
    x = helper.make_tensor_value_info("in", elem, in_dims(spec, batch))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
            for o in ("logits", *extra_outputs)]
    inits = [numpy_helper.from_array(v, k) for k, v in {**WEIGHTS, **consts}.items()]
    graph = helper.make_graph([*undo, *base_nodes("img", flatten)], "twin", [x], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def pixels(n: int = 3, seed: int = 0) -> np.ndarray:
    """8-bit images k/255 as float32 (N, C, H, W) in [0, 1]."""
    return (np.random.default_rng(seed).integers(0, 256, (n, C, H, W)) / 255).astype(np.float32)


def as_deployed(spec: InputSpec, p: np.ndarray) -> np.ndarray:
    """What a user feeds the twin: the spec's preprocessing in numpy."""
    v = p.astype(np.float64) * spec.scale
    if spec.mean is not None:
        v = v - np.asarray(spec.mean).reshape(1, -1, 1, 1)
    if spec.std is not None:
        v = v / np.asarray(spec.std).reshape(1, -1, 1, 1)
    if spec.layout is Layout.NHWC:
        v = v.transpose(0, 2, 3, 1)
    return np.round(v).astype(np.uint8) if spec.dtype is DType.UINT8 else v.astype(np.float32)
