"""The input contract of a deployed classifier, and the wrapper that makes it take pixels.

qrdeploy attacks and evaluates float32 NCHW images in [0, 1] (docs/design.md, decision 2), so
eps and clipping are in pixel units. Models ship expecting other things: 0-255 values, per-channel
mean/std normalisation, NHWC, uint8. `InputSpec` states what the model expects and
`wrap_model(model, spec)` prepends the Mul / Sub / Div / Transpose nodes that turn pixels into
it, keeps one chosen input and output, makes a static batch of 1 dynamic when that is safe, and
refuses clearly what the gradient builder cannot differentiate.

Conventions (qrdeploy's own [DEFAULT]s, the paper has no such models):
- model input = (pixels * R - mean) / std with R = 1 for range 0-1 and 255 for 0-255: mean and
  std are in the units of the declared range (torchvision: range=0-1,mean=0.485/...,
  std=0.229/...; Caffe-style: range=0-255,mean=123.68/116.78/103.94).
- dtype=uint8: the model's uint8 input must be read only by Casts to float (the usual first op)
  or as codes by DequantizeLinear or an integer kernel (a fully quantized model), directly or
  through ops that only move elements (an NHWC -> NCHW Transpose, Reshape, ...: UINT8_MOVES).
  Those Casts (and moves) are fed pixels * 255 as float instead, so the gradient is taken
  w.r.t. the float [0, 1] input; for 8-bit images (pixels k/255) the values equal what a uint8
  input gives. A DequantizeLinear (or QLinearConv, ...) is fed them rounded to uint8 (a
  QuantizeLinear of scale 1), so the integer graph runs on the 8-bit image a device would get,
  and the gradient passes the rounding as a straight-through estimator (BPDA, as every
  quantized graph's).
  A uint8 model normalises inside itself, so mean/std are refused with dtype=uint8.
- float16 models are refused unless `upcast_fp16=True`, which stores the fp16 weights as float32
  (exact) and runs every op in float32: the attack then sees the fp32 twin, not fp16 rounding.
- quantized graphs (QDQ activations, QOperator ops, MatMulNBits) are wrapped like float ones:
  their gradient comes from the dequantized twin (qrdeploy.graphio.twin, BPDA), so the
  conversion nodes stay in front of the integer graph the device runs.

>>> spec = InputSpec.parse("range=0-255,layout=nhwc,dtype=uint8")
>>> wrapped = wrap_model(onnx.load("model.onnx"), spec, output_name="logits")
>>> one_by_one(wrapped)   # True: a hard-coded batch of 1 stayed, run samples one at a time
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.errors import ConfigError, GraphError, UnsupportedOpError
from qrdeploy.graphio.graph import fixed_batch, real_inputs, unique_name
from qrdeploy.graphio.twin import INTEGER_OPS

PIXELS = "pixels"
BATCH = "batch"
META_SPEC, META_ONE_BY_ONE = "qrdeploy.input_spec", "qrdeploy.one_by_one"
_BATCH_AXIS_OPS = {"Concat", "Split", "Slice", "Gather"}


class Range(StrEnum):
    UNIT = "0-1"
    BYTE = "0-255"


class Layout(StrEnum):
    NCHW = "nchw"
    NHWC = "nhwc"


class Channels(StrEnum):
    RGB = "rgb"
    BGR = "bgr"


class DType(StrEnum):
    FLOAT32 = "float32"
    UINT8 = "uint8"


def _enum(cls: type[StrEnum], key: str, value: object) -> StrEnum:
    try:
        return cls(str(value).lower())
    except ValueError:
        choices = "|".join(m.value for m in cls)
        raise ConfigError(f"input spec {key} must be one of {choices}, got {value!r}") from None


def _floats(key: str, value: object) -> tuple[float, ...] | None:
    if value is None or isinstance(value, tuple | list):
        return None if value is None else tuple(float(v) for v in value)
    try:
        return tuple(float(v) for v in str(value).split("/"))
    except ValueError:
        raise ConfigError(f"input spec {key} must be numbers separated by '/', got {value!r}; "
                          f"e.g. {key}=0.485/0.456/0.406") from None


@dataclass(frozen=True)
class InputSpec:
    """What the model's input expects, given pixels in [0, 1] (see the module docstring)."""

    range: Range = Range.UNIT
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: Layout = Layout.NCHW
    dtype: DType = DType.FLOAT32
    channels: Channels = Channels.RGB

    def __post_init__(self) -> None:
        for key, cls in (("range", Range), ("layout", Layout), ("dtype", DType),
                         ("channels", Channels)):
            object.__setattr__(self, key, _enum(cls, key, getattr(self, key)))
        for key in ("mean", "std"):
            object.__setattr__(self, key, _floats(key, getattr(self, key)))
        self._check()

    def _check(self) -> None:
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ConfigError(f"input spec std must be > 0, got {self.std}")
        if self.mean and self.std and len(self.mean) != len(self.std) and \
                1 not in (len(self.mean), len(self.std)):
            raise ConfigError(f"input spec mean has {len(self.mean)} values and std "
                              f"{len(self.std)}; give one per channel (or one for all)")
        if self.dtype is DType.UINT8 and self.range is not Range.BYTE:
            raise ConfigError("input spec dtype=uint8 holds 0-255 values; add range=0-255")
        if self.dtype is DType.UINT8 and (self.mean or self.std):
            raise ConfigError("input spec dtype=uint8 cannot carry mean/std: a uint8 input holds "
                              "raw pixels and the model normalises inside; drop mean= and std=")

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """From 'range=0-255,mean=0.485/0.456/0.406,std=...,layout=nhwc,dtype=uint8,
        channels=bgr'."""
        known = {f.name for f in fields(cls)}
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in known:
                raise ConfigError(f"input spec term {part!r} is not KEY=VALUE with KEY in "
                                  f"{'|'.join(sorted(known))}; e.g. range=0-255,layout=nhwc")
            values[key.strip()] = value.strip()
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        terms = [f"range={self.range.value}", f"layout={self.layout.value}",
                 f"dtype={self.dtype.value}"]
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None:
                terms.append(f"{key}={'/'.join(f'{v:g}' for v in value)}")
        if self.channels is Channels.BGR:
            terms.append("channels=bgr")
        return ",".join(terms)

    def cli(self) -> str:
        """The --input-spec value that states this spec, defaults left out ('' for the
        default float32 NCHW RGB in [0, 1])."""
        default = InputSpec()
        terms = [t for t in str(self).split(",") if t not in str(default).split(",")]
        return ",".join(terms)

    @property
    def scale(self) -> float:
        return 255.0 if self.range is Range.BYTE else 1.0


# --- selecting one input and one output --------------------------------------------------------


def _pick_input(graph: onnx.GraphProto, name: str | None) -> onnx.ValueInfoProto:
    real = real_inputs(graph)
    names = [i.name for i in real]
    if name is None and len(real) == 1:
        return real[0]
    if name is None:
        raise GraphError(f"the model has inputs {', '.join(names)}; choose the image with "
                         "--input-name NAME")
    if name not in names:
        raise GraphError(f"input {name!r} is not among the model's inputs ({', '.join(names)}); "
                         "pass one of them to --input-name")
    others = [n for n in names if n != name]
    if others:
        raise GraphError(f"inputs {', '.join(others)} have no default (initializer); qrdeploy "
                         "feeds the image only: export the model with those inputs fixed")
    return real[names.index(name)]


def _keep_output(graph: onnx.GraphProto, name: str | None) -> None:
    names = [o.name for o in graph.output]
    if name is None and len(names) == 1:
        return
    if name is None or name not in names:
        what = "has outputs" if name is None else f"has no output {name!r}; its outputs are"
        raise GraphError(f"the model {what} {', '.join(names)}; choose the logits with "
                         "--output-name NAME")
    keep = graph.output[names.index(name)]
    chosen = onnx.ValueInfoProto()
    chosen.CopyFrom(keep)
    del graph.output[:]
    graph.output.append(chosen)


def _drop_dead(graph: onnx.GraphProto) -> None:
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name in live and i.name not in
              {t.name for t in inits}]
    del graph.input[:]
    graph.input.extend(inputs)


def _upcast_fp16(model: onnx.ModelProto) -> None:
    """Every float16 initializer, Constant, Cast target and declared type becomes float32."""
    graph = model.graph
    for i, t in enumerate(graph.initializer):
        if t.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.float32), t.name))
    for node in graph.node:
        for a in node.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = TensorProto.FLOAT


def _check_dtype(model: onnx.ModelProto, x: onnx.ValueInfoProto, spec: InputSpec,
                 upcast_fp16: bool) -> None:
    elem = x.type.tensor_type.elem_type
    if elem == TensorProto.FLOAT16 and not upcast_fp16:
        raise UnsupportedOpError(
            f"input {x.name!r} is float16 and the gradient rules are float32; pass "
            "upcast_fp16=True (--upcast-fp16) to attack the model's float32 twin, or export "
            "a float32 model")
    if elem == TensorProto.FLOAT16:
        _upcast_fp16(model)
        return
    want = TensorProto.UINT8 if spec.dtype is DType.UINT8 else TensorProto.FLOAT
    if elem != want:
        got = TensorProto.DataType.Name(elem)
        if elem == TensorProto.UINT8:
            fix = f"pass --input-spec {fitting_spec(x, spec).cli()} (a uint8 input holds raw " \
                  "pixels)"
        elif elem == TensorProto.FLOAT:
            fix = (f"pass --input-spec {fitting_spec(x, spec).cli() or 'range=0-1'} (the input "
                   "is float: not dtype=uint8, nor the 0-255 range that went with it)")
        else:
            fix = "qrdeploy feeds float32 or uint8 images; re-export the model with one of them"
        raise ConfigError(f"input {x.name!r} is {got} but the input spec says dtype="
                          f"{spec.dtype.value}; {fix}")


#: channel counts an image input plausibly has (grey, RGB, RGBA)
_CHANNELS = (1, 3, 4)


def fitting_spec(x: onnx.ValueInfoProto, spec: InputSpec | None = None) -> InputSpec:
    """`spec` (default: float32 NCHW in [0, 1]) made to fit the input `x` as far as its type
    and static shape tell: its element type (`dtype_fit`) and, when only the other layout puts
    a plausible channel count (1, 3 or 4) on the channel axis, that layout (a (N, 28, 28, 1)
    input is NHWC). The advice of a one-line error, so that one run follows it."""
    spec = dtype_fit(spec or InputSpec(), x.type.tensor_type.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in x.type.tensor_type.shape.dim]
    if len(dims) == 4 and None not in dims[1:]:
        first, last = dims[1], dims[3]
        declared, other = (first, last) if spec.layout is Layout.NCHW else (last, first)
        if declared not in _CHANNELS and other in _CHANNELS:
            flipped = Layout.NHWC if spec.layout is Layout.NCHW else Layout.NCHW
            spec = dataclasses.replace(spec, layout=flipped)
    return spec


def describe(spec: InputSpec) -> str:
    """'uint8 NHWC pixels in 0-255', 'float32 NCHW pixels in [0, 1]': what a spec feeds."""
    values = "[0, 1]" if spec.range is Range.UNIT else "0-255"
    return f"{spec.dtype.value} {spec.layout.value.upper()} pixels in {values}"


def dtype_fit(spec: InputSpec, elem: int) -> InputSpec:
    """`spec` made to fit an input of element type `elem`, the rest of it (layout, channels)
    kept: a uint8 input holds raw pixels (dtype uint8, range 0-255, no normalisation); a float
    one takes dtype float32 and the range [0, 1] (a uint8 spec's 0-255 range came with its
    dtype; a float model that wants 0-255 is the guard's finding). Unchanged for other types
    and for a spec that already fits."""
    if elem == TensorProto.UINT8 and spec.dtype is not DType.UINT8:
        return dataclasses.replace(spec, dtype=DType.UINT8, range=Range.BYTE, mean=None,
                                   std=None)
    if elem in (TensorProto.FLOAT, TensorProto.FLOAT16) and spec.dtype is DType.UINT8:
        return dataclasses.replace(spec, dtype=DType.FLOAT32, range=Range.UNIT)
    return spec


# --- the preprocessing nodes -------------------------------------------------------------------


def _chw(x: onnx.ValueInfoProto, spec: InputSpec) -> tuple[int | None, list[int]]:
    """(batch dim or None, [C, H, W]) of the model input, read through the layout."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in x.type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise GraphError(f"input {x.name!r} has shape {dims}; expected 4 dims with static "
                         f"{spec.layout.value.upper()[1:]} (re-export with a fixed image size)")
    body = [int(d or 0) for d in dims[1:]]
    chw = body if spec.layout is Layout.NCHW else [body[2], body[0], body[1]]
    for key in ("mean", "std"):
        value = getattr(spec, key)
        if value is not None and len(value) not in (1, chw[0]):
            raise ConfigError(f"input spec {key} has {len(value)} values for {chw[0]} channels "
                              f"of input {x.name!r}; give one per channel")
    if spec.channels is Channels.BGR and chw[0] != 3:
        raise ConfigError(f"input spec channels=bgr needs 3 channels; input {x.name!r} has "
                          f"{chw[0]}")
    return dims[0], chw


def _per_channel(values: tuple[float, ...], scale: float = 1.0) -> np.ndarray:
    return (np.asarray(values, np.float32) * scale).reshape(1, -1, 1, 1)  # (1, C, 1, 1)


def _steps(spec: InputSpec) -> list[tuple[str, np.ndarray | None, dict[str, Any]]]:
    """The conversion pixels (N, C, H, W) in [0, 1] -> the model's input, as (op, constant,
    attributes): the one statement of it, run as nodes by `wrap_model` and on arrays by
    `model_input`."""
    steps: list[tuple[str, np.ndarray | None, dict[str, Any]]] = []
    if spec.scale != 1.0:
        steps.append(("Mul", np.asarray(spec.scale, np.float32), {}))
    if spec.channels is Channels.BGR:  # mean and std are in the model's (BGR) order
        steps.append(("Gather", np.asarray([2, 1, 0], np.int64), {"axis": 1}))
    if spec.mean is not None:
        steps.append(("Sub", _per_channel(spec.mean), {}))
    if spec.std is not None:
        steps.append(("Div", _per_channel(spec.std), {}))
    if spec.layout is Layout.NHWC:
        steps.append(("Transpose", None, {"perm": [0, 2, 3, 1]}))
    return steps


def model_input(spec: InputSpec, pixels: np.ndarray) -> np.ndarray:
    """Pixels (N, C, H, W) in [0, 1] as the model's own input takes them (the values the wrapper
    of `wrap_model` computes; uint8 for dtype=uint8, rounded): for feeding the unwrapped model,
    e.g. calibration images of `harden --activations int8`."""
    x: np.ndarray = np.asarray(pixels, np.float32)
    for op, const, attrs in _steps(spec):
        c: np.ndarray = np.zeros((), np.float32) if const is None else const
        if op == "Mul":
            x = x * c
        elif op == "Gather":
            x = np.take(x, c.astype(np.int64), axis=int(attrs["axis"]))
        elif op == "Sub":
            x = x - c
        elif op == "Div":
            x = x / c
        else:
            x = np.transpose(x, attrs["perm"])
    if spec.dtype is DType.UINT8:
        return np.asarray(np.clip(np.rint(x), 0, 255), np.uint8)
    return np.ascontiguousarray(x, np.float32)


def _prelude(spec: InputSpec, target: str, names: set[str]) -> tuple[list[onnx.NodeProto],
                                                                       list[onnx.TensorProto]]:
    """Nodes pixels (N, C, H, W) in [0, 1] -> `target` as the model expects it (float)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    steps = _steps(spec) or [("Identity", None, {})]
    current = PIXELS
    for k, (op, const, attrs) in enumerate(steps):
        out = target if k == len(steps) - 1 else unique_name(f"{PIXELS}_{op.lower()}", names)
        inputs = [current]
        if const is not None:
            inputs.append(unique_name(f"{PIXELS}_{op.lower()}_c", names))
            inits.append(numpy_helper.from_array(const, inputs[1]))
        nodes.append(helper.make_node(op, inputs, [out], name=unique_name(f"{PIXELS}/{op}", names),
                                      **attrs))
        current = out
    return nodes, inits


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


#: Ops that only move or relabel a tensor's elements, whatever their type: a uint8 input may pass
#: them (e.g. an NHWC -> NCHW Transpose) before the Cast to float that every uint8 model needs.
UINT8_MOVES = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten")


#: ops that read a uint8 input as quantization codes (as their first input): fed the pixels
#: rounded back to uint8
CODE_READERS = ("DequantizeLinear",
                *(op for op in INTEGER_OPS if op not in ("MatMulNBits", "QLinearConcat")))


def _bypass_uint8(graph: onnx.GraphProto, x: str, float_in: str, names: set[str]) -> None:
    """Feed the float pixel values to the Casts to float that read the uint8 input, directly or
    through ops of UINT8_MOVES, which then carry the float values (the same elements moved). A
    DequantizeLinear or integer kernel reading it as codes (a fully quantized model's input,
    CODE_READERS) gets the values rounded back to uint8 by a QuantizeLinear of scale 1, so the
    integer graph after it stays as it ships."""
    pending, seen = [(x, float_in, x)], set()
    rounded: dict[str, str] = {}  # float tensor -> its uint8 rounding
    while pending:
        name, fed, path = pending.pop()
        for node in [n for n in graph.node if name in n.input]:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            data_only = list(node.input).index(name) == 0 and name not in node.input[1:]
            if node.op_type == "Cast" and to in (TensorProto.FLOAT, TensorProto.FLOAT16) \
                    and data_only:
                node.input[0] = fed
            elif node.op_type in UINT8_MOVES and data_only:
                node.input[0] = fed
                if node.output[0] not in seen:
                    seen.add(node.output[0])
                    pending.append((node.output[0], node.output[0],
                                    f"{path} -> {node.op_type}"))
            elif node.op_type in CODE_READERS and data_only and \
                    node.domain in ("", "ai.onnx", "com.microsoft"):
                if fed not in rounded:
                    rounded[fed] = _round_to_uint8(graph, fed, names)
                node.input[0] = rounded[fed]
            else:
                via = "" if name == x else f" through {path.split(' -> ', 1)[1]}"
                raise UnsupportedOpError(
                    f"op {node.op_type} (node {node.name or node.output[0]!r}) reads the uint8 "
                    f"input {x!r}{via}; supported: uint8 inputs read only by Casts to float or "
                    f"as the codes of DequantizeLinear or an integer kernel (QLinearConv, ...), "
                    f"directly or through {'/'.join(UINT8_MOVES)}")


def _round_to_uint8(graph: onnx.GraphProto, fed: str, names: set[str]) -> str:
    """A QuantizeLinear (scale 1, zero point 0: round half to even, saturate to 0-255) of the
    float values `fed`, inserted after the node that makes them (first in the graph for the
    input itself); returns its uint8 output."""
    out = unique_name(f"{fed}_uint8", names)
    scale, zero = unique_name(f"{out}_scale", names), unique_name(f"{out}_zero", names)
    graph.initializer.extend([numpy_helper.from_array(np.asarray(1.0, np.float32), scale),
                              numpy_helper.from_array(np.asarray(0, np.uint8), zero)])
    producer = next((k for k, n in enumerate(graph.node) if fed in n.output), -1)
    graph.node.insert(producer + 1, helper.make_node(
        "QuantizeLinear", [fed, scale, zero], [out], name=unique_name(f"{out}/round", names)))
    return out


# --- batch -------------------------------------------------------------------------------------


def _hard_coded_batch(graph: onnx.GraphProto) -> str | None:
    """The first node that fixes the batch size (a Reshape to a constant (1, ...), an op along
    axis 0), or None when a symbolic batch is safe."""
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
        if node.op_type == "Reshape" and node.input[1] in consts:
            shape = consts[node.input[1]].reshape(-1)
            if len(shape) and int(shape[0]) not in (0, -1):
                return f"Reshape {node.name or node.output[0]!r} to {shape.tolist()}"
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if node.op_type in _BATCH_AXIS_OPS and axis == 0:
            return f"{node.op_type} {node.name or node.output[0]!r} along axis 0"
    return None


def _dynamic_output(graph: onnx.GraphProto) -> None:
    """The output's leading dim symbolic too (it followed the input's static 1)."""
    dims = graph.output[0].type.tensor_type.shape.dim
    if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
        dims[0].Clear()
        dims[0].dim_param = BATCH


# --- the wrapper -------------------------------------------------------------------------------


def wrap_model(model: onnx.ModelProto, spec: InputSpec, input_name: str | None = None,
               output_name: str | None = None, upcast_fp16: bool = False) -> onnx.ModelProto:
    """A copy of `model` that takes float32 NCHW pixels in [0, 1] (input 'pixels') and returns
    only the chosen output. See the module docstring for the conventions and refusals."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _keep_output(graph, output_name)
    _drop_dead(graph)
    x = _pick_input(graph, input_name)
    _check_dtype(out, x, spec, upcast_fp16)
    batch, chw = _chw(x, spec)
    names = _all_names(graph)
    float_in = unique_name(f"{x.name}_float", names) if spec.dtype is DType.UINT8 else x.name
    if spec.dtype is DType.UINT8:
        _bypass_uint8(graph, x.name, float_in, names)
    nodes, inits = _prelude(spec, float_in, names)
    fixed = _hard_coded_batch(graph) if batch == 1 else None
    pixels = helper.make_tensor_value_info(
        PIXELS, TensorProto.FLOAT, [BATCH if fixed is None else 1, *chw])
    _finish(out, x.name, pixels, nodes, inits)
    if batch == 1 and fixed is None:
        _dynamic_output(graph)
    meta = {META_SPEC: str(spec), META_ONE_BY_ONE: "1" if fixed else "0"}
    for key, value in meta.items():
        out.metadata_props.add(key=key, value=value)
    return out


def _finish(model: onnx.ModelProto, x: str, pixels: onnx.ValueInfoProto,
            nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> None:
    graph = model.graph
    kept = [i for i in graph.input if i.name != x]
    del graph.input[:]
    graph.input.extend([pixels, *kept])
    for node in reversed(nodes):
        graph.node.insert(0, node)
    graph.initializer.extend(inits)
    del graph.value_info[:]  # stale once the input's shape or type changed


@dataclass(frozen=True)
class InputContract:
    """The CLI's --input-spec / --input-name / --output-name / --upcast-fp16, as one value."""

    spec: InputSpec = InputSpec()
    input_name: str | None = None
    output_name: str | None = None
    upcast_fp16: bool = False

    @classmethod
    def from_options(cls, spec: str | None, input_name: str | None = None,
                     output_name: str | None = None, upcast_fp16: bool = False) -> InputContract:
        return cls(InputSpec.parse(spec or ""), input_name, output_name, upcast_fp16)

    def apply(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return wrap_model(model, self.spec, self.input_name, self.output_name, self.upcast_fp16)


def _kept_batch_of_one(model: onnx.ModelProto) -> bool:
    """A model without a contract whose input has a batch of 1 that its graph hard-codes (a
    Reshape to (1, ...)): gradient graphs make the batch symbolic, so it must run one sample at
    a time, as wrap_model decides for a model with a contract."""
    return fixed_batch(model) == 1 and _hard_coded_batch(model.graph) is not None


def one_by_one(model: onnx.ModelProto) -> bool:
    """True when wrap_model kept a hard-coded batch of 1: run samples one at a time."""
    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get(META_ONE_BY_ONE) == "1"


def contracted(model: onnx.ModelProto, contract: InputContract | None, batch_size: int
               ) -> tuple[onnx.ModelProto, int]:
    """The model with the contract's input conversion prepended (unchanged without a contract)
    and the batch size to run it at: 1 when the conversion kept a hard-coded batch of 1. The one
    place `eval`, `attack` and `check` adapt a model to its input contract."""
    if contract is None:
        return model, 1 if _kept_batch_of_one(model) else batch_size
    wrapped = contract.apply(model)
    return wrapped, 1 if one_by_one(wrapped) else batch_size
