"""Input gradients of an ONNX classifier as a second ONNX model that plain onnxruntime runs.

`build_vjp(model)` makes (x, cotangent) -> (logits, cotangent^T . dlogits/dx); `build_loss_grad(
model, loss)` makes (x, y[, temperature]) -> (logits, per-sample loss, d(sum loss)/dx) for the
losses of qrdeploy.core.losses (same definitions and signs). The forward graph is kept as is and the
backward nodes are appended by reverse-mode differentiation: one rule per op type
(qrdeploy.gradients.rules.RULES), weights treated as constants (qrdeploy.gradients.prepare folds
them). No torch here: the deploy side attacks the graph that ships."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from qrdeploy.core.losses import DLR_EPS, Loss
from qrdeploy.errors import GraphError, QrdeployError, UnsupportedOpError
from qrdeploy.gradients import rules_act as grad_rules_act
from qrdeploy.gradients import rules_quant as grad_rules_quant
from qrdeploy.gradients import rules_shape as grad_rules_shape
from qrdeploy.gradients.prepare import BATCH, Prepared, prepare
from qrdeploy.gradients.rules import NON_DIFFERENTIABLE, RULES, Emitter, GradOptions, Shape

_REGISTERED = (grad_rules_act, grad_rules_quant, grad_rules_shape)  # imported for their rules
_FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
#: integer outputs that carry a gradient (in units of their codes): quantized activations, and
#: what ops that only move or select codes make of them
_CODE_MAKERS = {"QuantizeLinear": {0}, "DynamicQuantizeLinear": {0}}
_CODE_MOVERS = {"Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice",
                "Concat", "Split", "Pad", "MaxPool"}
#: float outputs held constant (BPDA): a run-time quantization scale and zero point
_HELD = {"DynamicQuantizeLinear": {1, 2}}

X_COTANGENT, Y, TEMPERATURE = "qrd_cotangent", "qrd_y", "qrd_temperature"
LOSS, GRAD = "qrd_loss", "qrd_grad"
_BIG = np.float32(3.0e38)  # stands in for -inf when masking the true class (no inf * 0 = nan)


@dataclass(frozen=True)
class GradientModel:
    """A built gradient graph and the names to feed and fetch."""

    model: onnx.ModelProto
    kind: str  # "vjp" or a Loss value
    input_name: str
    logits_name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    info: dict[str, object] = field(default_factory=dict)


def supported_ops() -> list[str]:
    """ONNX op types that have a gradient rule, sorted."""
    return sorted(RULES)


def _shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Static shape per tensor; symbolic or unknown dims (the batch axis) are None."""
    shapes: dict[str, Shape] = {}
    values = list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)
    for v in values:
        if v.type.tensor_type.HasField("shape"):
            shapes[v.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None
                                   for d in v.type.tensor_type.shape.dim)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    values = list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)
    return {v.name: int(v.type.tensor_type.elem_type) for v in values}


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    return {name for name, t in _dtypes(model).items() if t in _FLOATS}


def _check_logits(prep: Prepared) -> None:
    """The output must be float logits (N, K); name what produces it when it is not."""
    out = prep.model.graph.output[0]
    rank = len(out.type.tensor_type.shape.dim)
    dtype = out.type.tensor_type.elem_type
    if dtype == TensorProto.FLOAT and rank == 2:
        return
    node = next((n for n in prep.model.graph.node if out.name in n.output), None)
    op, name = (node.op_type, node.name or out.name) if node else ("(input)", out.name)
    got = f"{TensorProto.DataType.Name(dtype)} of rank {rank}"
    raise UnsupportedOpError(
        f"op {op} (node {name!r}) gives the output {out.name!r} as {got}; expected logits of "
        "shape (N, K) float32; supported: a classifier's logits, optionally then Softmax")


def _carries(node: onnx.NodeProto, k: int, out: str, floats: set[str], codes: set[str]) -> bool:
    """Whether output k of a node with an x-dependent input carries a gradient."""
    if k in _HELD.get(node.op_type, set()):
        return False
    if out in floats:
        return True
    if k in _CODE_MAKERS.get(node.op_type, set()):
        return True
    return node.op_type in _CODE_MOVERS and bool(node.input) and node.input[0] in codes


def _paths(prep: Prepared) -> tuple[set[str], set[str]]:
    """Tensors that depend on x (float, or integer codes of a quantized activation), and those
    of them the logits depend on."""
    _check_logits(prep)
    graph = prep.model.graph
    floats = _float_tensors(prep.model)
    depends = {prep.input_name}
    codes: set[str] = set()
    for node in graph.node:
        skip = NON_DIFFERENTIABLE.get(node.op_type, set())
        if any(i in depends for k, i in enumerate(node.input) if k not in skip):
            for k, o in enumerate(node.output):
                if o and _carries(node, k, o, floats, codes):
                    depends.add(o)
                    if o not in floats:
                        codes.add(o)
    if prep.logits_name not in depends:
        raise GraphError("the logits do not depend on the input; check the model's graph")
    needed = {prep.logits_name}
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            skip = NON_DIFFERENTIABLE.get(node.op_type, set())
            needed.update(i for k, i in enumerate(node.input) if i in depends and k not in skip)
    return depends, needed


def _no_rule(node: onnx.NodeProto) -> str:
    return (f"op {node.op_type} (node {node.name or node.output[0]!r}) has no gradient rule;"
            f" supported: {', '.join(supported_ops())}")


def _check_rules(prep: Prepared, needed: set[str]) -> None:
    for node in prep.model.graph.node:
        if any(o in needed for o in node.output) and node.op_type not in RULES:
            raise UnsupportedOpError(_no_rule(node))


def _backward(prep: Prepared, forward: onnx.ModelProto, e: Emitter, seed: str,
              needed: set[str]) -> str:
    """Append the backward pass for a cotangent `seed` on the logits; return the x gradient."""
    grads: dict[str, list[str]] = {prep.logits_name: [seed]}
    for node in reversed(forward.graph.node):
        if not any(o in needed and o in grads for o in node.output):
            continue
        need = [i in needed for i in node.input]
        gout = [e.add(grads[o]) if o in grads else None for o in node.output]
        gin = RULES[node.op_type].backward(e, node, gout, need)
        for name, g, wanted in zip(node.input, gin, need, strict=True):
            if wanted and g is not None:
                grads.setdefault(name, []).append(g)
    return e.add(grads[prep.input_name])


def _emitter(prep: Prepared, options: GradOptions | None) -> Emitter:
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in prep.model.graph.initializer}
    e = Emitter(_shapes(prep.model), consts, options, prep.opset)
    e.dtypes = _dtypes(prep.model)
    e.index(prep.model.graph)
    return e


def _patched(prep: Prepared, needed: set[str]) -> onnx.ModelProto:
    """A copy of the forward graph with rule patches applied (e.g. MaxPool Indices)."""
    model = onnx.ModelProto()
    model.CopyFrom(prep.model)
    for node in model.graph.node:
        rule = RULES.get(node.op_type)
        if rule and rule.patch and any(o in needed for o in node.output):
            rule.patch(node)
    return model


def _assemble(prep: Prepared, model: onnx.ModelProto, e: Emitter, kind: str,
              extra_in: list[onnx.ValueInfoProto], outputs: list[tuple[str, list[str | int]]]
              ) -> GradientModel:
    graph = model.graph
    graph.node.extend(e.nodes)
    graph.initializer.extend(e.inits)
    graph.input.extend(extra_in)
    del graph.output[:]
    del graph.value_info[:]
    graph.output.append(helper.make_tensor_value_info(prep.logits_name, TensorProto.FLOAT,
                                                      [BATCH, None]))
    for name, dims in outputs:
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    graph.name = f"{graph.name}_grad_{kind}"
    onnx.checker.check_model(model)
    info: dict[str, object] = {"opset": prep.opset, "source_opset": prep.source_opset,
                               "softmax_cut": prep.softmax_cut, "folded_nodes": prep.folded_nodes,
                               "backward_nodes": len(e.nodes)}
    return GradientModel(model, kind, prep.input_name, prep.logits_name,
                         (prep.input_name, *(v.name for v in extra_in)),
                         (prep.logits_name, *(n for n, _ in outputs)), info)


def _prepared(model: onnx.ModelProto | Prepared, input_shape: tuple[int, ...] | None
              ) -> Prepared:
    return model if isinstance(model, Prepared) else prepare(model, input_shape)


def _x_dims(prep: Prepared) -> list[str | int]:
    return [BATCH, *prep.input_shape]


def build_vjp(model: onnx.ModelProto | Prepared, input_shape: tuple[int, ...] | None = None,
              options: GradOptions | None = None) -> GradientModel:
    """(x, qrd_cotangent (N, K)) -> (logits (N, K), qrd_grad (N, C, H, W))."""
    prep = _prepared(model, input_shape)
    _, needed = _paths(prep)
    _check_rules(prep, needed)
    e = _emitter(prep, options)
    forward = _patched(prep, needed)
    grad = _backward(prep, forward, e, X_COTANGENT, needed)
    e.nodes.append(helper.make_node("Identity", [grad], [GRAD]))
    k = e.shapes.get(prep.logits_name, (None, None))[-1]
    cot = helper.make_tensor_value_info(X_COTANGENT, TensorProto.FLOAT, [BATCH, k])
    return _assemble(prep, forward, e, "vjp", [cot], [(GRAD, _x_dims(prep))])


def build_loss_grad(model: onnx.ModelProto | Prepared, loss: Loss,
                    input_shape: tuple[int, ...] | None = None,
                    options: GradOptions | None = None) -> GradientModel:
    """(x, qrd_y (N,) int64[, qrd_temperature (N,)]) -> (logits, qrd_loss (N,), qrd_grad)."""
    prep = _prepared(model, input_shape)
    _, needed = _paths(prep)
    _check_rules(prep, needed)
    e = _emitter(prep, options)
    k = e.shapes.get(prep.logits_name, (None, None))
    if len(k) != 2 or k[1] is None:
        raise GraphError(f"expected logits of shape (N, K) with a known K, got {k}; "
                         "the fused losses need a classifier output")
    value, cot = LOSS_HEADS[loss](e, prep.logits_name, int(k[1]))
    e.nodes.append(helper.make_node("Identity", [value], [LOSS]))
    forward = _patched(prep, needed)
    grad = _backward(prep, forward, e, cot, needed)
    e.nodes.append(helper.make_node("Identity", [grad], [GRAD]))
    extra = [helper.make_tensor_value_info(Y, TensorProto.INT64, [BATCH])]
    if loss is Loss.CE_T:
        extra.append(helper.make_tensor_value_info(TEMPERATURE, TensorProto.FLOAT, [BATCH]))
    return _assemble(prep, forward, e, loss.value, extra,
                     [(LOSS, [BATCH]), (GRAD, _x_dims(prep))])


@dataclass(frozen=True)
class Report:
    """Whether qrdeploy can differentiate a model, and what blocks it: (op, node, reason)."""

    ok: bool
    blocking: list[tuple[str, str, str]]


def differentiability(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None
                      ) -> Report:
    """Every reason `build_vjp` would refuse the model, at once (each rule is tried on its node)."""
    try:
        prep = prepare(model, input_shape)
        blocking = blocking_nodes(prep)
    except QrdeployError as exc:
        return Report(False, [("(graph)", model.graph.name, str(exc))])
    return Report(not blocking, blocking)


def blocking_text(op: str, node: str, reason: str) -> str:
    """One blocking node as a line: its op and name, then the reason (a rule's own refusal
    names the node already, so it is not named twice)."""
    where = f"{op} node {node!r}"
    return reason if reason.startswith(where) else f"{where}: {reason}"


def blocking_nodes(prep: Prepared) -> list[tuple[str, str, str]]:
    """(op, node, reason) of every node on the input-to-logits path of a prepared graph whose
    gradient rule refuses it; no graph is built."""
    _, needed = _paths(prep)
    blocking = []
    scratch = _emitter(prep, None)
    for node in prep.model.graph.node:
        if not any(o in needed for o in node.output):
            continue
        reason = _try_rule(scratch, node, needed)
        if reason is not None:
            blocking.append((node.op_type, node.name or node.output[0], reason))
    return blocking


def _try_rule(e: Emitter, node_in: onnx.NodeProto, needed: set[str]) -> str | None:
    """None when the node's rule accepts it, else the refusal (nodes go to a scratch emitter)."""
    rule = RULES.get(node_in.op_type)
    if rule is None:  # short: the supported list is docs/ops.md, not every report line
        return f"no gradient rule for {node_in.op_type}; supported ops: docs/ops.md"
    node = onnx.NodeProto()
    node.CopyFrom(node_in)
    if rule.patch:
        rule.patch(node)
    gout: list[str | None] = [f"qrd_probe/{o}" if o in needed else None for o in node.output]
    try:
        rule.backward(e, node, gout, [i in needed for i in node.input])
    except QrdeployError as exc:
        return str(exc)
    return None


# --- loss heads: (emitter, logits, K) -> (per-sample loss (N,), dL/dlogits (N, K)) ------------


def _onehot(e: Emitter, index: str, k: int) -> str:
    return e.op("Gather", [e.const(np.eye(k, dtype=np.float32), "eye"), index], "onehot", axis=0)


def _col(e: Emitter, name: str) -> str:
    return e.op("Unsqueeze", [name, e.const(np.array([1], np.int64))])


def _row(e: Emitter, name: str) -> str:
    return e.op("Squeeze", [name, e.const(np.array([1], np.int64))])


def _pick(e: Emitter, z: str, onehot: str) -> str:
    """z_y per row (N,) as sum(z * onehot)."""
    return e.op("ReduceSum", [e.op("Mul", [z, onehot]), e.const(np.array([1], np.int64))],
                "pick", keepdims=0)


def _ce_head(e: Emitter, z: str, k: int, temperature: str | None = None) -> tuple[str, str]:
    onehot = _onehot(e, Y, k)  # (N, K)
    if temperature is not None:
        z = e.op("Div", [z, _col(e, temperature)], "z_over_t")
    value = e.op("Neg", [_pick(e, e.op("LogSoftmax", [z], axis=1), onehot)], "ce")
    cot = e.op("Sub", [e.op("Softmax", [z], axis=1), onehot], "ce_cot")
    if temperature is not None:
        cot = e.op("Div", [cot, _col(e, temperature)], "ce_t_cot")
    return value, cot


def _ce_t_head(e: Emitter, z: str, k: int) -> tuple[str, str]:
    return _ce_head(e, z, k, TEMPERATURE)


def _other_max(e: Emitter, z: str, onehot_y: str) -> tuple[str, str]:
    """max_{j != y} z_j (N,) and its first index j (N,)."""
    is_y = e.op("Cast", [onehot_y], to=TensorProto.BOOL)
    masked = e.op("Where", [is_y, e.const(-_BIG), z], "masked")
    j = e.op("ArgMax", [masked], "other_j", axis=1, keepdims=0)
    # ReduceMax takes its axes as an input from opset 18, as an attribute before
    if e.opset >= 18:
        other = e.op("ReduceMax", [masked, e.const(np.array([1], np.int64))], "other", keepdims=0)
    else:
        other = e.op("ReduceMax", [masked], "other", axes=[1], keepdims=0)
    return other, j


def _cw_head(e: Emitter, z: str, k: int) -> tuple[str, str]:
    onehot_y = _onehot(e, Y, k)
    other, j = _other_max(e, z, onehot_y)
    value = e.op("Sub", [other, _pick(e, z, onehot_y)], "cw")
    return value, e.op("Sub", [_onehot(e, j, k), onehot_y], "cw_cot")


def _dlr_head(e: Emitter, z: str, k: int) -> tuple[str, str]:
    onehot_y = _onehot(e, Y, k)
    other, j = _other_max(e, z, onehot_y)
    top = e.fresh("top3")
    idx = e.fresh("top3_idx")
    e.nodes.append(helper.make_node("TopK", [z, e.const(np.array([3], np.int64))], [top, idx],
                                    axis=1, largest=1, sorted=1))
    firsts = [e.op("Gather", [top, e.const(np.int64(i))], axis=1) for i in (0, 2)]
    den = e.op("Add", [e.op("Sub", firsts), e.const(np.float32(DLR_EPS))], "dlr_den")  # (N,)
    num = e.op("Sub", [_pick(e, z, onehot_y), other], "dlr_num")
    value = e.op("Neg", [e.op("Div", [num, den])], "dlr")
    inv = _col(e, e.op("Reciprocal", [den]))  # (N, 1)
    ratio = _col(e, e.op("Div", [num, e.op("Mul", [den, den])]))  # (N, 1)
    order = [e.op("Gather", [idx, e.const(np.int64(i))], axis=1) for i in (0, 2)]
    lead = e.op("Sub", [_onehot(e, order[0], k), _onehot(e, order[1], k)])
    margin = e.op("Sub", [_onehot(e, j, k), onehot_y])
    cot = e.op("Add", [e.op("Mul", [margin, inv]), e.op("Mul", [lead, ratio])], "dlr_cot")
    return value, cot


LOSS_HEADS = {Loss.CE: _ce_head, Loss.CE_T: _ce_t_head, Loss.CW: _cw_head, Loss.DLR: _dlr_head}
