"""Bring an ONNX classifier into the one form the gradient builder differentiates.

Steps: integer kernels rewritten to their dequantized float twin (qrdeploy.graphio.twin: the
gradient of a quantized graph is that of its twin, BPDA); one opset in [16, 21]
(onnx.version_converter); a concrete C x H x W input with a symbolic
batch axis; every sub-graph that does not depend on the input (DequantizeLinear on initializers
incl. INT4, codebook Cast + Gather + Mul, weight Transpose/Cast, Constant nodes, Shape of
constants) evaluated once by onnxruntime and stored as initializers; a trailing Softmax or
LogSoftmax cut so its input is the logits; shape inference, and where static inference leaves a
tensor's shape unknown (a Reshape fed by computed shapes, a com.microsoft op), the shape observed
in runs on sample inputs of two batch sizes (axes that change with the batch stay symbolic). The
floor of 16 (not 13) is qrdeploy's
choice: ScatterElements(reduction="add"), the generic MaxPool backward, first appears there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qrdeploy.core.runtime import make_session, run_session
from qrdeploy.errors import GraphError, first_line
from qrdeploy.graphio.graph import real_inputs
from qrdeploy.graphio.inputspec import fitting_spec
from qrdeploy.graphio.twin import TwinInfo, dequantized_output, float_twin, gradient_form

MIN_OPSET, MAX_OPSET = 16, 21
BATCH = "batch"
# ops whose value changes from run to run must never be folded
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
           "Bernoulli"}


@dataclass(frozen=True)
class Prepared:
    """A classifier ready to differentiate, with what preparing it did."""

    model: onnx.ModelProto
    input_name: str
    logits_name: str
    input_shape: tuple[int, ...]  # (C, H, W)
    opset: int
    source_opset: int
    softmax_cut: str | None  # "Softmax" / "LogSoftmax" when one was cut off the output
    folded_nodes: int
    twin: TwinInfo | None = None  # set when the source graph is quantized (integer kernels)
    observed_shapes: tuple[str, ...] = ()  # tensors whose shape came from sample runs

    @property
    def bpda(self) -> bool:
        """True when activations are quantized at run time: the deployed graph must be scored
        and the gradient is the twin's (BPDA)."""
        return self.twin is not None and self.twin.activation_quant

    @property
    def score_deployed(self) -> bool:
        """True when the source graph has integer kernels or quantized activations: its own
        logits (not the twin's) must be scored."""
        return self.twin is not None

    @property
    def gradient_form(self) -> str:
        return gradient_form(self.twin)


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise GraphError("the model imports no default-domain opset; export it with a standard opset")


def normalise_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at min(max(opset, 16), 21), converted only when needed."""
    source = _opset(model)
    target = min(max(source, MIN_OPSET), MAX_OPSET)
    if target == source:
        return model
    try:
        return onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises its own C++ error types
        first = first_line(exc, None)
        raise GraphError(f"cannot convert the model from opset {source} to {target}: {first}; "
                         f"re-export it at an opset in {MIN_OPSET}..{MAX_OPSET}") from exc


def check_io(model: onnx.ModelProto, chw: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The classifier contract every qrdeploy model meets: one float32 image input and one
    output; returns the input's (C, H, W) (`chw` when the file leaves it symbolic)."""
    graph = model.graph
    inputs = real_inputs(graph)
    if len(inputs) != 1 or len(graph.output) != 1:
        names = ", ".join(o.name for o in graph.output)
        raise GraphError(f"expected a classifier with 1 input and 1 output, got {len(inputs)} "
                         f"and {len(graph.output)} ({names}); choose them with --input-name / "
                         "--output-name (docs/input-spec.md)")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        got = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise GraphError(f"expected a float32 input, got {got}; declare the model's input with "
                         "the --input-spec of eval, attack, check or replay (e.g. "
                         f"{fitting_spec(inputs[0]).cli() or 'range=0-1'}), see "
                         "docs/input-spec.md")
    dims = tensor.shape.dim
    known = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims[1:])
    shape = tuple(chw) if chw is not None else known
    if any(d <= 0 for d in shape) or (len(known) and len(shape) != len(known)):
        raise GraphError(f"the input's C x H x W is {known}; pass input_shape=(C, H, W) "
                         "with the size the model was trained on")
    return shape


def _set_input_shape(model: onnx.ModelProto, chw: tuple[int, ...] | None) -> tuple[int, ...]:
    """Make the input (batch, C, H, W) with C, H, W concrete; drop stale inferred shapes."""
    graph = model.graph
    shape = check_io(model, chw)
    dims = real_inputs(graph)[0].type.tensor_type.shape.dim
    del dims[:]
    dims.add().dim_param = BATCH
    for d in shape:
        dims.add().dim_value = d
    del graph.value_info[:]
    graph.output[0].type.tensor_type.ClearField("shape")
    return shape


def _foldable(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes whose inputs are all constants, in order, and the names they make."""
    consts = {t.name for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM:
            continue
        if all(not i or i in consts for i in node.input):
            nodes.append(node)
            consts.update(o for o in node.output if o)
    return nodes, consts - {t.name for t in graph.initializer}


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Evaluate every input-independent sub-graph with onnxruntime; store results as weights."""
    graph = model.graph
    nodes, made = _foldable(graph)
    if not nodes:
        return model, 0
    folded = {id(n) for n in nodes}
    used = {i for n in graph.node if id(n) not in folded for i in n.input}
    used |= {o.name for o in graph.output}
    wanted = [name for n in nodes for name in n.output if name in used and name in made]
    values = _evaluate(model, nodes, wanted) if wanted else {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(n for n in graph.node if id(n) not in folded)
    out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items())
    return _drop_unused_initializers(out), len(nodes)


def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], wanted: list[str]
              ) -> dict[str, np.ndarray]:
    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in list(typed.graph.value_info) + list(typed.graph.output)}
    outputs = []
    for name in wanted:
        if name not in types:
            raise GraphError(f"cannot infer the type of constant {name!r}; re-export the model")
        outputs.append(onnx.ValueInfoProto(name=name, type=types[name]))
    needed = {i for n in nodes for i in n.input}
    graph = onnx.helper.make_graph(
        nodes, "fold", [], outputs, [t for t in model.graph.initializer if t.name in needed])
    sub = onnx.helper.make_model(graph, opset_imports=model.opset_import,
                                 ir_version=model.ir_version)
    session = make_session(sub.SerializeToString())
    values = run_session(session, wanted, {}, what="fold the model's constant subgraphs")
    return dict(zip(wanted, values, strict=True))


def _drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    # initializers listed as graph inputs (IR < 4) are dropped there: the IR is raised to >= 8
    real = real_inputs(model.graph)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    del model.graph.input[:]
    model.graph.input.extend(real)
    return model


#: ops that may follow the softmax of a quantized model's output (its probabilities on the
#: activation grid): they are cut with it
_QUANT_TAIL = ("QuantizeLinear", "DequantizeLinear")


def cut_softmax(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Drop a trailing Softmax/LogSoftmax, and the Quantize/DequantizeLinear pairs after it in
    a quantized model, so the graph's output is the logits: margins and CE on probabilities
    that a uint8 grid rounds (steps of 1/256) would weaken every loss, a masking of qrdeploy's
    own making. Returns the cut op ("Softmax", "LogSoftmax", "Softmax, then quantized")."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(graph.output[0].name)
    quantized = False
    while node is not None and node.op_type in _QUANT_TAIL and \
            node.domain in ("", "ai.onnx", "com.microsoft"):
        quantized = True
        node = producer.get(node.input[0])
    if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
        return model, None
    graph.output[0].name = node.input[0]
    graph.output[0].type.tensor_type.ClearField("shape")
    graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    graph.node.remove(node)  # the quantization after it is dead now: prepare drops it
    return model, node.op_type + (", then quantized" if quantized else "")


def prepare(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None,
            activations: str = "ste") -> Prepared:
    """Twin, normalise, fold, cut and shape-infer a copy of `model` (the argument is not
    changed). `activations` picks the twin's activation quantization: "ste" (fake-quantized,
    straight-through gradient) or "float" (removed); see qrdeploy.graphio.twin. An integer
    output is read through its own scale first (qrdeploy.graphio.twin.dequantized_output)."""
    source = _opset(model)
    model, _ = dequantized_output(model)
    twinned, info = float_twin(model, activations)
    work = onnx.ModelProto()
    work.CopyFrom(normalise_opset(twinned))
    work.ir_version = max(work.ir_version, 8)
    chw = _set_input_shape(work, input_shape)
    work, folded = fold_constants(work)
    work, cut = cut_softmax(work)
    work = _drop_dead_nodes(work)
    try:
        work = onnx.shape_inference.infer_shapes(work, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and C++ errors
        first = first_line(exc, None)
        raise GraphError(f"shape inference failed on the prepared model: {first}") from exc
    observed = observe_shapes(work, chw)
    return Prepared(work, real_inputs(work.graph)[0].name, work.graph.output[0].name, chw,
                    _opset(work), source, cut, folded, info if info.quantized else None,
                    observed)


SAMPLE_BATCHES = (2, 3)


def _unknown(model: onnx.ModelProto) -> list[str]:
    """Node outputs whose shape static inference left unknown (missing, or a dim that is
    neither a number nor the input's batch symbol)."""
    known: dict[str, onnx.TypeProto] = {v.name: v.type for v in model.graph.value_info}
    known.update((v.name, v.type) for v in model.graph.output)
    out = []
    for node in model.graph.node:
        for name in node.output:
            if not name:
                continue
            t = known.get(name)
            shape_known = t is not None and t.tensor_type.HasField("shape") and all(
                d.HasField("dim_value") or d.dim_param == BATCH
                for d in t.tensor_type.shape.dim)
            if not shape_known:
                out.append(name)
    return out


def observe_shapes(model: onnx.ModelProto, chw: tuple[int, ...]) -> tuple[str, ...]:
    """Fill the shapes static inference could not find (in place) from runs of the graph on
    sample inputs of two batch sizes: a dim equal in both runs is static, one that changes is
    the batch symbol when it equals the batch size, else left unnamed. Returns the tensors
    filled. A graph whose shapes are all known is not run; one that cannot run on those batches
    (a batch hard-coded to 1) keeps its unknown shapes."""
    names = _unknown(model)
    if not names:
        return ()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in declared)
    x_name = real_inputs(model.graph)[0].name
    rng = np.random.default_rng(0)
    runs = []
    try:
        session = make_session(probe.SerializeToString())
        for n in SAMPLE_BATCHES:
            x = rng.random((n, *chw), dtype=np.float32)
            values = run_session(session, names, {x_name: x}, what="observe tensor shapes")
            runs.append([np.asarray(v) for v in values])
    except GraphError:  # e.g. a graph that hard-codes batch 1: the shapes stay unknown, and a
        return ()       # rule that needs one refuses with its own message
    by_name = {v.name: v for v in model.graph.value_info}
    for k, name in enumerate(names):
        a, b = runs[0][k], runs[1][k]
        vi = by_name.get(name)
        if vi is None:
            vi = model.graph.value_info.add()
            vi.name = name
        tensor = vi.type.tensor_type
        tensor.elem_type = int(onnx.helper.np_dtype_to_tensor_dtype(a.dtype))
        tensor.ClearField("shape")
        dims = tensor.shape.dim
        if a.ndim != b.ndim:
            raise GraphError(f"tensor {name!r} changes rank with the batch size ({a.shape} vs "
                             f"{b.shape}); qrdeploy needs a fixed rank per tensor")
        for da, db in zip(a.shape, b.shape, strict=True):
            d = dims.add()
            if da == db:
                d.dim_value = int(da)
            elif (da, db) == SAMPLE_BATCHES:
                d.dim_param = BATCH
    return tuple(names)


def _drop_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    live = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    return _drop_unused_initializers(model)
