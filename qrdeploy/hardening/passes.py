"""Graph passes on ONNX initializers: μ-law mapping (MuLawMap) and low-bit weight quantization
(WeightQuant), layer selection, the harden driver with its provenance, TOML recipes, and the
paper's bits sweep.

A pass never mutates its input and a selection that matches nothing is a PassError (design
decision 3). What is the paper's and what is qrdeploy's [DEFAULT] is listed in docs/passes.md.

Example:
    hard, records = harden(model, [MuLawMap(255, layers="last:1"), WeightQuant(3)], "qdq")
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qrdeploy.data.datasets import EMBEDDED_SHAPES
from qrdeploy.errors import ConfigError, PassError
from qrdeploy.graphio import graph
from qrdeploy.graphio.graph import WeightLayer
from qrdeploy.graphio.prevalidate import file_bytes
from qrdeploy.graphio.twin import INTEGER_OPS
from qrdeploy.hardening import quant
from qrdeploy.hardening.encodings import Encoded, Encoding, encode_float, encode_quantized
from qrdeploy.hardening.integer import (
    IntegerActivations,
    fold_batchnorm_codes,
    quantize_activations,
    record_images,
)
from qrdeploy.hardening.nbits import eligible, to_matmulnbits
from qrdeploy.hardening.quant import Granularity, Quantized, Quantizer, ScaleRule

META_STEPS = "qrdeploy.harden"  # JSON list of replayable recipes, one per harden call
META_RECORDS = "qrdeploy.records"  # JSON list of the records of the last harden call
META_BITS = "qrdeploy.bits"  # JSON {stored tensor: true bits}; int8 / INT4 containers hide it
META_FOLDED = "qrdeploy.folded_batchnorm"  # JSON [{conv, batchnorm}] folded by int8 (if any)
#: keys `qrdeploy export` writes that hardening changes: the trained model's validation accuracy
#: becomes the source's (the hardened graph has its own, which `eval` measures), and the
#: BatchNorm state is updated when the int8 pass folds some
META_VAL_ACCURACY = "qrdeploy.val_accuracy"
META_SOURCE_VAL_ACCURACY = "qrdeploy.source_val_accuracy"
META_BN = "qrdeploy.bn"
FORMAT_VERSION = 1


# ---------------------------------------------------------------- configs


def _enum(cls: Any, value: Any, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = "|".join(m.value for m in cls)
        raise PassError(f"{what} must be one of {choices}, got {value!r}") from None


@dataclass(frozen=True)
class MuLawMap:
    """Post-training μ-law mapping W' = s·F(W/s) (rescale) or F(W/s) with s = max|W| per tensor.
    The map F is the paper's; normalising by max|W|, both rescale options and the default layer
    selection (the last weight layer, MNIST main tables) are [DEFAULT]s of qrdeploy."""

    mu: float = 255.0
    rescale: bool = True
    layers: str = "last:1"
    biases: bool = False
    kind: str = field(default="mulaw", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mu", quant.check_mu(float(self.mu)))
        parse_selection(self.layers)


@dataclass(frozen=True)
class WeightQuant:
    """Symmetric low-bit weight-only quantization. The paper states only '3-bit post-training
    weight quantization'; per-tensor, max-abs scale, narrow range and all layers are [DEFAULT]s."""

    bits: int = 3
    granularity: Granularity = Granularity.TENSOR
    scale: ScaleRule = ScaleRule.MAX
    quantizer: Quantizer = Quantizer.UNIFORM
    layers: str = "all"
    narrow: bool = True
    companding_mu: float = 255.0
    biases: bool = False
    kind: str = field(default="quant", init=False)

    def __post_init__(self) -> None:
        quant.check_bits(self.bits)
        for name, cls in (("granularity", Granularity), ("scale", ScaleRule),
                          ("quantizer", Quantizer)):
            object.__setattr__(self, name, _enum(cls, getattr(self, name), name))
        object.__setattr__(self, "companding_mu", quant.check_mu(float(self.companding_mu)))
        parse_selection(self.layers)


GraphPass = MuLawMap | WeightQuant


@dataclass(frozen=True)
class PassRecord:
    """One rewritten tensor: what changed and by how much."""

    pass_kind: str  # mulaw | quant
    tensor: str
    role: str  # weight | bias
    node: str
    op_type: str
    shape: tuple[int, ...]
    bits: int | None
    levels: int  # distinct values in the whole tensor
    levels_per_channel: int | None  # the most distinct values in any channel (per-channel only)
    axis: int | None
    scale: tuple[float, ...]
    max_abs_delta: float
    folded_bn: bool
    mu: float | None = None
    encoding: str = "float"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["scale"] = _scale_summary(self.scale)
        return out


def _scale_summary(scale: tuple[float, ...]) -> Any:
    if len(scale) <= 4:
        return list(scale)
    return {"n": len(scale), "min": min(scale), "max": max(scale)}


# ---------------------------------------------------------------- selection


_OPS = {op.lower(): op for op in graph.WEIGHT_OPS}


def parse_selection(spec: str) -> list[tuple[bool, str, str]]:
    """Terms of a layer selection: comma-separated 'all', 'first:N', 'last:N', an op type
    (Conv, ConvTranspose, Gemm, MatMul) or a glob on node / weight names; '!' excludes."""
    if not isinstance(spec, str) or not spec.strip():
        raise PassError(f"a layer selection must be a non-empty string, got {spec!r}; e.g. 'all'")
    terms = []
    for raw in spec.split(","):
        term = raw.strip()
        exclude = term.startswith("!")
        term = term.lstrip("!").strip()
        if not term:
            raise PassError(f"empty term in layer selection {spec!r}; e.g. 'all,!last:1'")
        terms.append((exclude, *_classify(term, spec)))
    return terms


def _classify(term: str, spec: str) -> tuple[str, str]:
    if term in ("all", "*"):
        return "all", ""
    head, _, tail = term.partition(":")
    if head in ("first", "last") and tail:
        if not tail.isdigit() or int(tail) < 1:
            raise PassError(f"{head}:N needs N >= 1 in layer selection {spec!r}, got {tail!r}")
        return head, tail
    if term.lower() in _OPS:
        return "op", _OPS[term.lower()]
    return "glob", term


def _term_matches(kind: str, arg: str, layers: Sequence[WeightLayer]) -> set[int]:
    if kind == "all":
        return {lyr.index for lyr in layers}
    if kind == "first":
        return {lyr.index for lyr in layers[: int(arg)]}
    if kind == "last":
        return {lyr.index for lyr in layers[-int(arg):]}
    if kind == "op":
        return {lyr.index for lyr in layers if lyr.op_type == arg}
    return {lyr.index for lyr in layers
            if fnmatch.fnmatchcase(lyr.node_name, arg) or fnmatch.fnmatchcase(lyr.weight_name, arg)}


def select_layers(layers: Sequence[WeightLayer], spec: str) -> list[WeightLayer]:
    """The layers a selection names, in topological order; matching nothing is a PassError."""
    terms = parse_selection(spec)
    includes = [t for t in terms if not t[0]]
    chosen = set().union(*(_term_matches(k, a, layers) for _, k, a in includes)) if includes \
        else {lyr.index for lyr in layers}
    for _, kind, arg in (t for t in terms if t[0]):
        chosen -= _term_matches(kind, arg, layers)
    picked = [lyr for lyr in layers if lyr.index in chosen]
    if not picked:
        names = ", ".join(lyr.node_name for lyr in layers[:8]) or "none"
        raise PassError(f"layer selection {spec!r} matches none of the {len(layers)} weight layers "
                        f"({names}); see `qrdeploy inspect MODEL` for names")
    return picked


_GLOB_SPECIAL = str.maketrans({"[": "[[]", "*": "[*]", "?": "[?]"})


def exact_selection(layers: Sequence[WeightLayer], chosen: Sequence[WeightLayer]) -> str:
    """A layer selection that names exactly `chosen` among `layers` (their weight names, glob
    characters escaped); a PassError when a name cannot be written as a selection term."""
    if not chosen:
        raise PassError("an exact layer selection needs at least one layer")
    spec = ",".join(lyr.weight_name.translate(_GLOB_SPECIAL) for lyr in chosen)
    try:
        picked = [lyr.index for lyr in select_layers(layers, spec)]
    except PassError:
        picked = []
    if picked != sorted(lyr.index for lyr in chosen):
        raise PassError(f"the weight names {[lyr.weight_name for lyr in chosen][:4]} cannot be "
                        "named in a layer selection (a comma, a leading '!' or an op name); "
                        "rename the initializers")
    return spec


# ---------------------------------------------------------------- tensor state


@dataclass
class _Tensor:
    """A tensor being rewritten: its current float values and, if quantized, how."""

    name: str
    dtype: np.dtype
    values: np.ndarray
    quantized: Quantized | None = None
    bits: int | None = None


@dataclass(frozen=True)
class _Step:
    """One pass applied to one tensor; `order` keeps records in pass-then-layer order."""

    order: tuple[int, int, int]
    gpass: GraphPass
    layer: WeightLayer
    role: str
    axis: int | None


def _check_rewritable(layer: WeightLayer, dtype: np.dtype) -> None:
    if layer.encoding != "float":
        raise PassError(f"layer {layer.node_name!r} is already {layer.encoding}-encoded; "
                        "harden the float model instead")
    if layer.shared:
        raise PassError(f"weight {layer.weight_name!r} of {layer.node_name!r} also feeds another "
                        "node; untie it or exclude the layer, e.g. --layers 'all,!NAME'")
    if dtype.kind != "f":
        raise PassError(f"weight {layer.weight_name!r} is stored as {dtype}, not a float; "
                        "qrdeploy rewrites float weights only")


def _dtype(t: onnx.TensorProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))


def _plan(passes: Sequence[GraphPass], layers: Sequence[WeightLayer],
          inits: Mapping[str, onnx.TensorProto]) -> dict[str, list[_Step]]:
    """Steps grouped by tensor (first-touched first), validated before any weight is read."""
    plan: dict[str, list[_Step]] = {}
    for i, p in enumerate(passes):
        for layer in select_layers(layers, p.layers):
            _check_rewritable(layer, _dtype(inits[layer.weight_name]))
            plan.setdefault(layer.weight_name, []).append(
                _Step((i, layer.index, 0), p, layer, "weight", _axis(p, layer)))
            if p.biases and layer.bias_name:
                plan.setdefault(layer.bias_name, []).append(
                    _Step((i, layer.index, 1), p, layer, "bias", None))
    return plan


def _apply_mulaw(p: MuLawMap, t: _Tensor) -> tuple[int | None, tuple[float, ...]]:
    w = t.values
    s = float(np.max(np.abs(w))) if w.size else 0.0
    if p.mu == 0 or s == 0:
        return None, (s,)  # identity: recorded as a no-op (max |ΔW| = 0)
    y = quant.mu_law(w / np.float32(s), p.mu)
    t.values = (np.float32(s) * y if p.rescale else y).astype(np.float32)
    t.quantized, t.bits = None, None
    return None, (s,)


def _apply_quant(p: WeightQuant, t: _Tensor, axis: int | None
                 ) -> tuple[int | None, tuple[float, ...]]:
    if p.quantizer is Quantizer.COMPANDING:
        q = quant.quantize_companding(t.values, p.bits, axis, p.companding_mu, p.narrow)
    else:
        q = quant.quantize(t.values, p.bits, axis, p.scale, p.narrow)
    t.values, t.quantized, t.bits = q.values, q, p.bits
    return p.bits, tuple(float(v) for v in np.atleast_1d(q.scale))


def _levels(t: _Tensor, axis: int | None) -> tuple[int, int | None]:
    """Distinct levels in the tensor and the most in any channel; integer codes when quantized
    (counted in O(n) with bincount), distinct float values otherwise."""
    if t.quantized is None:
        return quant.distinct_levels(t.values), None
    q = t.quantized
    return quant.code_levels(q.codes, q.qmin, q.qmax, axis)


def _apply(step: _Step, t: _Tensor) -> PassRecord:
    before = t.values
    p = step.gpass
    bits, scale = (_apply_mulaw(p, t) if isinstance(p, MuLawMap)
                   else _apply_quant(p, t, step.axis))
    levels, per_channel = _levels(t, step.axis)
    return PassRecord(
        pass_kind=p.kind, tensor=t.name, role=step.role, node=step.layer.node_name,
        op_type=step.layer.op_type, shape=tuple(t.values.shape), bits=bits, levels=levels,
        levels_per_channel=per_channel, axis=step.axis, scale=scale,
        max_abs_delta=_max_abs_diff(t.values, before),
        folded_bn=step.layer.folded_bn, mu=p.mu if isinstance(p, MuLawMap) else None)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| in slices of about 1 M elements, so the temporary stays small."""
    if not a.size:
        return 0.0
    fa, fb = a.reshape(-1), b.reshape(-1)
    step = 1 << 20
    return max(float(np.max(np.abs(fa[i:i + step] - fb[i:i + step])))
               for i in range(0, fa.size, step))


def rewritten_weight(layer: WeightLayer, weight: np.ndarray,
                     gpasses: Sequence[GraphPass]) -> np.ndarray:
    """The float values a layer's stored weight takes after the passes, computed as `harden`
    computes them (every pass applies to this layer; selections are not consulted)."""
    t = _Tensor(layer.weight_name, weight.dtype, weight.astype(np.float32, copy=False))
    for i, p in enumerate(gpasses):
        _apply(_Step((i, layer.index, 0), p, layer, "weight", _axis(p, layer)), t)
    return t.values


def _axis(p: GraphPass, layer: WeightLayer) -> int | None:
    if isinstance(p, WeightQuant) and p.granularity is Granularity.CHANNEL:
        return layer.weight_axis
    return None


# ---------------------------------------------------------------- harden


@dataclass(frozen=True)
class Recipe:
    """A replayable harden call: passes in order, then the encoding."""

    passes: tuple[GraphPass, ...]
    encoding: Encoding = Encoding.FLOAT
    activations: IntegerActivations | None = None  # None: float activations

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoding": self.encoding.value,
                               "passes": [_pass_dict(p) for p in self.passes]}
        if self.activations is not None:
            out["activations"] = self.activations.to_json()
        return out


def _pass_dict(p: GraphPass) -> dict[str, Any]:
    return {f.name: (v.value if hasattr(v, "value") else v)
            for f in fields(p) if (v := getattr(p, f.name)) is not None}


def describe_recipe(step: Mapping[str, Any]) -> str:
    """One harden call's recipe (its JSON form, as a hardened model's metadata carries it) as a
    sentence: 'μ-law (μ = 255, layers last:1, rescaled), then 3-bit weights (uniform, per tensor,
    scale max, narrow range); stored as float'."""
    def pass_text(p: Mapping[str, Any]) -> str:
        kind = p.get("kind")
        if kind == "mulaw":
            rescale = ", rescaled" if p.get("rescale") else ", not rescaled"
            return f"μ-law (μ = {p.get('mu', 0):g}, layers {p.get('layers', 'all')}{rescale})"
        if kind == "quant":
            gran = {"tensor": "per tensor", "channel": "per channel"}.get(
                str(p.get("granularity")), str(p.get("granularity")))
            extra = [str(p.get("quantizer", "uniform")), gran, f"scale {p.get('scale', 'max')}"]
            if p.get("narrow"):
                extra.append("narrow range")
            if p.get("layers", "all") != "all":
                extra.append(f"layers {p['layers']}")
            return f"{p.get('bits')}-bit weights ({', '.join(extra)})"
        rest = ", ".join(f"{k} {v}" for k, v in sorted(p.items()) if k != "kind")
        return f"{kind} ({rest})"

    text = ", then ".join(pass_text(p) for p in step.get("passes", [])) or "no pass"
    text += f"; stored as {step.get('encoding', 'float')}"
    act = step.get("activations")
    if isinstance(act, Mapping):
        text += (f"; {act.get('kind', 'int8')} activations calibrated on {act.get('samples')} "
                 f"images ({act.get('method')})")
    return text


def check_recipe(recipe: Recipe) -> None:
    """Refuse a recipe whose settings do not go together (PassError, naming the CLI options;
    the CLI turns it into a usage error when the options built the recipe)."""
    if not recipe.passes:
        raise PassError("no pass given; ask for --mulaw MU and/or --bits B (or --recipe FILE)")
    quants = [p for p in recipe.passes if isinstance(p, WeightQuant)]
    if recipe.activations is not None and not quants:
        raise PassError("--activations int8 needs a quantization pass (--bits B); the weights "
                        "go into integer kernels")
    if recipe.encoding is not Encoding.FLOAT and not quants:
        raise PassError(f"--encoding {recipe.encoding.value} needs a quantization pass "
                        "(--bits B); use --encoding float for μ-law only")
    if recipe.activations is not None and any(p.quantizer is Quantizer.COMPANDING
                                              for p in quants):
        raise PassError("--activations int8 runs integer kernels, which need uniform codes; the "
                        "companding quantizer gives a codebook: use --quantizer uniform, or "
                        "float activations")
    if recipe.activations is not None and recipe.encoding is Encoding.INT4:
        raise PassError("--activations int8 stores the weight codes in int8 for the integer "
                        "kernels; drop --encoding int4 (or use float activations)")
    if recipe.encoding is Encoding.NBITS and any(p.bits > 4 for p in quants):
        raise PassError(f"--encoding nbits holds at most 4 bits, got {max(p.bits for p in quants)}"
                        "; use --encoding qdq or --bits 4 or fewer")
    if recipe.activations is not None and recipe.encoding is Encoding.NBITS:
        raise PassError("--activations int8 stores the weight codes in int8 for the integer "
                        "kernels; drop --encoding nbits (or use float activations)")
    if recipe.encoding is Encoding.INT4 and any(p.bits > 4 for p in quants):
        raise PassError(f"--encoding int4 holds at most 4 bits, got {max(p.bits for p in quants)};"
                        " use --encoding qdq or --bits 4 or fewer")


def harden(
    model: onnx.ModelProto, passes: Iterable[GraphPass], encoding: Encoding | str = Encoding.FLOAT,
    *, activations: IntegerActivations | None = None, calibration: np.ndarray | None = None,
) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Apply the passes in order to a copy of the model and encode the rewritten tensors.
    Returns the new model (with provenance in metadata_props) and one record per tensor and pass.
    Tensors are processed one at a time, so memory beyond the input is about the output's size.

    With `activations` (int8), the result is the full-integer QDQ model of
    qrdeploy.hardening.integer, calibrated on `calibration` (N, C, H, W) images; the weights
    are stored as int8 codes (form "int8") and the encoding is recorded as qdq."""
    if activations is not None:
        encoding = Encoding.QDQ if _enum(Encoding, encoding, "encoding") is Encoding.FLOAT \
            else encoding
    recipe = Recipe(tuple(passes), _enum(Encoding, encoding, "encoding"), activations)
    check_recipe(recipe)
    refuse_integer_kernels(model)
    if activations is not None:
        return _harden_integer(model, recipe, calibration)
    if recipe.encoding is Encoding.INT4 and graph.opset_version(model) < 21:
        model = graph.convert_opset(model, 21)  # recorded in metadata by convert_opset
    inits = graph.initializer_map(model)
    plan = _plan(recipe.passes, graph.weight_layers(model), inits)
    taken = _all_names(model)
    encoded: dict[str, Encoded] = {}
    stored_bits: dict[str, int | None] = {}
    ordered: list[tuple[tuple[int, int, int], PassRecord]] = []
    nbits_layers: dict[str, tuple[WeightLayer, Quantized]] = {}
    for name, steps in plan.items():
        arr = numpy_helper.to_array(inits[name])
        t = _Tensor(name, arr.dtype, arr.astype(np.float32, copy=False))
        ordered.extend((step.order, _apply(step, t)) for step in steps)
        layer = next((s.layer for s in steps if s.role == "weight"), None)
        if recipe.encoding is Encoding.NBITS and layer is not None and t.quantized is not None \
                and t.dtype == np.float32 and eligible(layer, t.quantized):
            encoded[name] = encode_float(t.name, t.values, t.dtype)
            nbits_layers[name] = (layer, t.quantized)
            continue
        store = Encoding.QDQ if recipe.encoding is Encoding.NBITS else recipe.encoding
        encoded[name] = _encode_one(t, store, taken)
        if t.bits is not None:
            stored_bits[encoded[name].initializers[0].name] = t.bits
    out = _assemble(model, encoded)
    if nbits_layers:
        out, held = to_matmulnbits(out, nbits_layers)
        stored_bits.update({held[n]: int(q.bits) for n, (_, q) in nbits_layers.items()})
        encoded = {n: (Encoded(e.initializers, e.nodes, e.output, "matmulnbits")
                       if n in held else e) for n, e in encoded.items()}
    records = [_with_encoding(r, encoded[r.tensor].form) for _, r in sorted(ordered,
                                                                         key=lambda o: o[0])]
    _write_provenance(out, recipe, records, stored_bits)
    return out, records


def refuse_integer_kernels(model: onnx.ModelProto) -> None:
    """A graph that already runs integer kernels (onnxruntime's QOperator or dynamic
    quantization, MatMulNBits) has no float weights left to rewrite."""
    node = next((n for n in model.graph.node
                 if n.op_type in (*INTEGER_OPS, "DynamicQuantizeLinear")), None)
    if node is not None:
        raise PassError(f"the model is already quantized ({node.op_type} "
                        f"{node.name or node.output[0]!r} runs integer kernels); harden the float "
                        "model instead")


def check_hardenable(model: onnx.ModelProto, recipe: Recipe) -> None:
    """Everything `harden` refuses about the model and the recipe, without reading a weight."""
    check_recipe(recipe)
    refuse_integer_kernels(model)
    _plan(recipe.passes, graph.weight_layers(model), graph.initializer_map(model))


def _harden_integer(model: onnx.ModelProto, recipe: Recipe, calibration: np.ndarray | None
                    ) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """The passes with float storage, then onnxruntime's QDQ quantization around them."""
    assert recipe.activations is not None
    if calibration is None:
        raise PassError("--activations int8 needs calibration images; pass --calibrate N "
                        "(and --calibration-data DATA)")
    inits = graph.initializer_map(model)
    plan = _plan(recipe.passes, graph.weight_layers(model), inits)
    encoded: dict[str, Encoded] = {}
    quantized: dict[str, Quantized] = {}
    ordered: list[tuple[tuple[int, int, int], PassRecord]] = []
    for name, steps in plan.items():
        arr = numpy_helper.to_array(inits[name])
        t = _Tensor(name, arr.dtype, arr.astype(np.float32, copy=False))
        ordered.extend((step.order, _apply(step, t)) for step in steps)
        encoded[name] = encode_float(t.name, t.values, t.dtype)
        if t.quantized is not None and t.values.ndim >= 2:
            if t.dtype != np.float32:
                raise PassError(f"--activations int8 needs float32 weights, {name!r} is "
                                f"{t.dtype}; use float activations")
            quantized[name] = t.quantized
    per_channel = any(q.axis is not None for q in quantized.values())
    floated, quantized, folds = fold_batchnorm_codes(_assemble(model, encoded), quantized)
    out, held = quantize_activations(floated, quantized, calibration, recipe.activations,
                                     per_channel)
    recipe = replace(recipe, activations=record_images(calibration, recipe.activations))
    bits = {held[name]: int(q.bits) for name, q in quantized.items()}
    records = [_with_encoding(r, "int8" if r.tensor in quantized else "float")
               for _, r in sorted(ordered, key=lambda o: o[0])]
    _write_provenance(out, recipe, records, bits)
    if folds:
        graph.set_metadata_inplace(out, {META_FOLDED: _dumps(
            [{"conv": f.conv, "batchnorm": f.batchnorm} for f in folds])})
        if graph.get_metadata(out).get(META_BN) == "kept":  # the export's word, no longer true
            left = any(n.op_type == "BatchNormalization" for n in out.graph.node)
            graph.set_metadata_inplace(out, {META_BN: f"{'partly ' if left else ''}folded by "
                                                      f"harden ({META_FOLDED})"})
    return out, records


def _encode_one(t: _Tensor, encoding: Encoding, taken: set[str]) -> Encoded:
    if encoding is Encoding.FLOAT or t.quantized is None or t.values.ndim < 2:
        return encode_float(t.name, t.values, t.dtype)  # μ-law-only tensors, biases
    if t.dtype != np.float32:
        raise PassError(f"--encoding {encoding.value} needs float32 weights, {t.name!r} is "
                        f"{t.dtype}; use --encoding float")
    return encode_quantized(t.name, t.quantized, encoding, taken)


def _with_encoding(r: PassRecord, form: str) -> PassRecord:
    return PassRecord(**{**{f.name: getattr(r, f.name) for f in fields(r)}, "encoding": form})


def _all_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer} | {n.name for n in g.node}
    names |= {x for n in g.node for x in (*n.input, *n.output)}
    return names | {v.name for v in (*g.input, *g.output, *g.value_info)}


def _assemble(model: onnx.ModelProto, encoded: Mapping[str, Encoded]) -> onnx.ModelProto:
    out = graph.copy_without_initializers(model)
    for t in model.graph.initializer:
        if t.name in encoded:
            out.graph.initializer.extend(encoded[t.name].initializers)
        else:
            out.graph.initializer.add().CopyFrom(t)
    renamed = {name: e.output for name, e in encoded.items() if e.output != name}
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    new_nodes = [n for e in encoded.values() for n in e.nodes]
    old = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend([*new_nodes, *old])  # new nodes read initializers only
    if any(e.form in ("int4", "codebook-uint4") for e in encoded.values()):
        out.ir_version = max(out.ir_version, 10)  # INT4 / UINT4 need IR 10
    return out


def _write_provenance(out: onnx.ModelProto, recipe: Recipe, records: Sequence[PassRecord],
                      stored_bits: Mapping[str, int | None]) -> None:
    """Recipe steps, records, and the true bit width keyed by the initializer that now holds
    each tensor (the codes initializer for qdq / int4 / codebook)."""
    meta = graph.get_metadata(out)
    if META_VAL_ACCURACY in meta:  # the trained model's accuracy: not this graph's
        graph.set_metadata_inplace(out, {META_SOURCE_VAL_ACCURACY: meta[META_VAL_ACCURACY]})
        graph.delete_metadata_inplace(out, (META_VAL_ACCURACY,))
    steps = json.loads(meta.get(META_STEPS, "[]"))
    steps.append({"format": FORMAT_VERSION, **recipe.to_json()})
    bits = json.loads(meta.get(META_BITS, "{}"))
    bits.update(stored_bits)
    graph.set_metadata_inplace(out, {
        META_STEPS: _dumps(steps),
        META_RECORDS: _dumps([r.to_json() for r in records]),
        META_BITS: _dumps(bits),
    })


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------- recipes


_PASS_TYPES: dict[str, type[MuLawMap] | type[WeightQuant]] = {
    "mulaw": MuLawMap, "quant": WeightQuant}


def recipe_from_dict(data: Mapping[str, Any]) -> Recipe:
    """A Recipe from its dict form ({'encoding': ..., 'passes': [{'kind': ..., ...}, ...]})."""
    unknown = set(data) - {"encoding", "passes", "format", "activations"}
    if unknown:
        raise ConfigError(f"unknown recipe keys {sorted(unknown)}; expected encoding, passes "
                          "and activations")
    passes = tuple(_pass_from_dict(d) for d in data.get("passes", []))
    return Recipe(passes, _enum(Encoding, data.get("encoding", "float"), "encoding"),
                  _activations_from_dict(data.get("activations")))


def _activations_from_dict(d: Any) -> IntegerActivations | None:
    if d is None or d == "float" or (isinstance(d, Mapping) and d.get("kind") == "float"):
        return None
    if isinstance(d, str):
        d = {"kind": d}
    if not isinstance(d, Mapping) or d.get("kind") != "int8":
        raise ConfigError(f"recipe activations must be 'float' or 'int8' (or a table with kind, "
                          f"samples, method, data, input_spec), got {d!r}")
    extra = set(d) - {"kind", "samples", "method", "data", "input_spec", "images_sha256"}
    if extra:
        raise ConfigError(f"unknown activations settings {sorted(extra)}; allowed: kind, "
                          "samples, method, data, input_spec, images_sha256")
    return IntegerActivations(**{k: v for k, v in d.items() if k != "kind"})


def _pass_from_dict(d: Mapping[str, Any]) -> GraphPass:
    kind = d.get("kind")
    cls = _PASS_TYPES.get(str(kind))
    if cls is None:
        raise ConfigError(f"recipe pass kind must be mulaw or quant, got {kind!r}")
    allowed = {f.name for f in fields(cls) if f.init}
    extra = set(d) - allowed - {"kind"}
    if extra:
        raise ConfigError(f"unknown {kind} settings {sorted(extra)}; allowed: {sorted(allowed)}")
    return cls(**{k: v for k, v in d.items() if k != "kind"})


def load_recipe(path: str | Path) -> Recipe:
    """Read a TOML recipe: top-level `encoding`, then [[passes]] tables with `kind`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    return recipe_from_dict(data)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if np.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) into a TOML recipe")


def recipe_to_toml(recipe: Recipe, comment: str = "") -> str:
    """The recipe as a TOML file that `load_recipe` (and `qrdeploy harden --recipe`) reads back
    to an equal Recipe; `comment` lines go on top."""
    data = recipe.to_json()
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines.append(f"encoding = {_toml_value(data['encoding'])}")
    if "activations" in data:
        lines += ["", "[activations]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in data["activations"].items()]
    for p in data["passes"]:
        lines += ["", "[[passes]]", f"kind = {_toml_value(p['kind'])}"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in p.items() if k != "kind"]
    return "\n".join(lines) + "\n"


def recipes_of(model: onnx.ModelProto) -> list[Recipe]:
    """The harden calls recorded in a hardened model, in order (replay them on the original)."""
    steps = json.loads(graph.get_metadata(model).get(META_STEPS, "[]"))
    return [recipe_from_dict(s) for s in steps]


def records_of(model: onnx.ModelProto) -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = json.loads(graph.get_metadata(model).get(META_RECORDS, "[]"))
    return value


# ---------------------------------------------------------------- bits sweep


def bits_sweep(
    model: onnx.ModelProto,
    bits: Iterable[int] = range(1, 9),
    *,
    evaluate: Callable[[onnx.ModelProto], float],
    granularity: Granularity | str = Granularity.TENSOR,
    scale: ScaleRule | str = ScaleRule.MAX,
    layers: str = "all",
    mulaw: MuLawMap | None = None,
    encoding: Encoding | str = Encoding.FLOAT,
) -> list[tuple[int, float]]:
    """Clean accuracy against bit width (the paper's sweep, 1–8 bits): evaluate(hardened) per b."""
    out = []
    for b in bits:
        passes: list[GraphPass] = [mulaw] if mulaw is not None else []
        passes.append(WeightQuant(b, Granularity(granularity), ScaleRule(scale), layers=layers))
        hardened, _ = harden(model, passes, encoding)
        out.append((b, float(evaluate(hardened))))
    return out


# ---------------------------------------------------------------- files and inspection


@dataclass(frozen=True)
class HardenResult:
    path: Path
    records: tuple[PassRecord, ...]
    bytes_in: int
    bytes_out: int
    #: what a user shipping the file should know (e.g. float activations are the analysis form)
    notes: tuple[str, ...] = ()


def harden_file(src: str | Path, dst: str | Path, recipe: Recipe, *, in_place: bool = False,
                calibration: np.ndarray | Callable[[], np.ndarray] | None = None
                ) -> HardenResult:
    """Load, harden and atomically save; refuses to overwrite the input unless in_place.
    `calibration` (N, C, H, W) images, or the call that loads them, are needed when the recipe
    asks for int8 activations; a call runs only once the model and the recipe have been
    checked, so that a model that cannot be hardened is refused before the slow loading."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() and not in_place:
        raise ConfigError(f"output {dst} is the input model; choose another -o or pass --in-place")
    model = graph.load_model(src)
    bytes_in = file_bytes(src)  # its external data included; before --in-place replaces it
    check_hardenable(model, recipe)
    images = calibration() if callable(calibration) else calibration
    hardened, records = harden(model, recipe.passes, recipe.encoding,
                               activations=recipe.activations, calibration=images)
    notes = deployment_notes(recipe) + _layer_notes(model, recipe)
    del model
    graph.save_model(hardened, dst)
    # a device or FIFO (-o /dev/null) was written through and has no size of its own
    size = dst.stat().st_size if dst.is_file() else len(graph.model_to_bytes(hardened))
    return HardenResult(dst, tuple(records), bytes_in, size, notes)


def _layer_notes(model: onnx.ModelProto, recipe: Recipe) -> tuple[str, ...]:
    """μ-law on the last layer only of a CIFAR-10 model (3x32x32 input, or trained on cifar10 by
    qrdeploy): the default selection is the MNIST tables'; qrdeploy's CIFAR-10 tables map the
    last three layers (docs/method.md). Said, not changed: the selection is the user's."""
    mulaw = [p for p in recipe.passes if isinstance(p, MuLawMap) and p.layers == "last:1"]
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    shape = tuple(d.dim_value for d in dims[1:])
    cifar = shape == EMBEDDED_SHAPES["cifar10-10k"] or graph.get_metadata(model).get(
        "qrdeploy.dataset", "").startswith("cifar10")
    if not (mulaw and cifar):
        return ()
    return ("μ-law mapped the last weight layer only (--mulaw-layers last:1, the MNIST tables' "
            "selection); qrdeploy's CIFAR-10 tables map the last three: --mulaw-layers last:3 "
            "(docs/method.md)",)


def deployment_notes(recipe: Recipe) -> tuple[str, ...]:
    """Says when the written graph is the analysis form rather than the one to ship."""
    if recipe.activations is not None:
        return ()
    how = "" if recipe.encoding == Encoding.FLOAT else ", its weights dequantized on every run"
    return (f"float activations: the analysis form (the paper's tables), run with float "
            f"kernels{how}; to ship, add --activations int8 (integer kernels; docs/passes.md, "
            f"full-integer deployment)",)


def describe_model(model: onnx.ModelProto,
                   stored: Mapping[str, tuple[str, str, str, str]] | None = None
                   ) -> dict[str, Any]:
    """What `qrdeploy inspect` shows: weight layers (levels per tensor and per channel, bits,
    encoding) and the provenance recorded by harden. `stored`: for a quantized graph's twin,
    (op, weight dtype, encoding, weight initializer) as the file holds them, by node name
    (graphio.twin's stored_layers); those rows show them (and the bits recorded for the file's
    initializer), with the twin's op as `twin_op`."""
    meta = graph.get_metadata(model)
    bits = json.loads(meta.get(META_BITS, "{}"))
    folded = {f["conv"] for f in json.loads(meta.get(META_FOLDED, "[]"))}
    rows = [_layer_row(model, lyr, bits.get(lyr.weight_name), lyr.node_name in folded)
            for lyr in graph.weight_layers(model)]
    for row in rows:
        if stored and row["node"] in stored:
            row["twin_op"] = row["op"]
            row["op"], row["dtype"], row["encoding"], row["weight"] = stored[row["node"]]
            row["bits"] = row["bits"] or bits.get(row["weight"])
    return {
        "opset": graph.opset_version(model),
        "inputs": _tensors(model.graph.input, {t.name for t in model.graph.initializer}),
        "outputs": _tensors(model.graph.output, set()),
        "layers": rows,
        "provenance": {
            "steps": json.loads(meta.get(META_STEPS, "[]")),
            "records": json.loads(meta.get(META_RECORDS, "[]")),
            "opset_conversion": meta.get(graph.META_OPSET),
        },
        "metadata": {k: v for k, v in meta.items() if not k.startswith("qrdeploy.")},
    }


def _tensors(values: Iterable[onnx.ValueInfoProto], skip: set[str]) -> list[dict[str, Any]]:
    """Name, element type and shape (a dim's name, or None when unknown) of graph inputs or
    outputs, initializers left out."""
    out = []
    for v in values:
        if v.name in skip:
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim] if t.HasField("shape") else None
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        except (KeyError, TypeError, ValueError):  # an element type numpy has no name for
            dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower()
        out.append({"name": v.name, "dtype": dtype, "shape": dims})
    return out


def _layer_row(model: onnx.ModelProto, layer: WeightLayer, bits: int | None,
               folded_here: bool) -> dict[str, Any]:
    """folded_here: harden folded a BatchNormalization into this layer (its metadata says so);
    else `folded_bn` is the exporter heuristic of graphio.graph."""
    w = graph.layer_weight(model, layer)
    return {
        "node": layer.node_name, "op": layer.op_type, "weight": layer.weight_name,
        "shape": list(layer.shape), "dtype": layer.weight_dtype, "encoding": layer.encoding,
        "levels": quant.distinct_levels(w),
        "levels_per_channel": quant.distinct_levels(w, layer.channel_axis),
        "bits": bits, "folded_bn": layer.folded_bn or folded_here, "shared": layer.shared,
    }
