"""`qrdeploy harden --search`: per-layer bit widths (and, if asked, a μ-law map per layer) under a
size budget and a clean-accuracy budget, confirmed by the adaptive worst case on held-out samples.

Everything here is qrdeploy's own (the paper applies one bit width to every layer); the method,
in order (docs/search.md):

1. Sensitivity. Per searched layer l and option o (bits b, with or without μ-law): the relative
   weight error e_l(o) = ‖Ŵ_l(o) − W_l‖₂ / ‖W_l‖₂ (spectral norms of the weight unfolded along its
   output channels; Ŵ is what `harden` would store). One measured number per layer, its gain
   g_l: quantize layer l alone at the lowest candidate width, run the graph on validation images
   and divide the mean relative logit error ‖ẑ − z‖ / ‖z‖ by e_l at that width. The estimated
   sensitivity of an option is g_l · e_l(o).
2. Path. Start with every layer at the widest candidate; repeatedly narrow the one layer whose
   next narrower width costs the least estimated sensitivity per weight bit saved, until every
   layer is at the narrowest. Each point of the path is an ordinary recipe.
3. Clean budget. Every point's graph is run on the validation images and compared with the float
   model by the paired non-inferiority test of qrdeploy.core.stats (margin --max-drop). The
   points are tested in path order and the walk stops at the first that is not non-inferior
   (a fixed-sequence procedure: the chance of accepting any too-costly point stays at 5 %).
4. Choice. With a size budget (--avg-bits, --max-bytes): the first point that meets it, provided
   every point up to it passed; without one: the last point that passed.
5. Confirmation. On held-out test images, the float model, the chosen recipe's graph (with its
   int8 activations when asked) and a few other path points run through the adaptive suite (the
   runner of `qrdeploy attack`); the chosen point's paired difference to the float model is
   reported with Newcombe's interval and McNemar's test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qrdeploy.attacks.adaptive import ADAPTIVE, adaptive_suite
from qrdeploy.core.progress import progress
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import (
    NonInferiority,
    PairedCounts,
    Proportion,
    mcnemar_exact,
    newcombe_paired_interval,
    non_inferiority,
)
from qrdeploy.data.datasets import Dataset, load_dataset
from qrdeploy.errors import ConfigError, DataError, PassError
from qrdeploy.evaluation.clean import predict_logits
from qrdeploy.evaluation.metrics import adaptive_worst_case
from qrdeploy.evaluation.runner import RunConfig, Subject, evaluate, fingerprint
from qrdeploy.evaluation.runstate import StateFile
from qrdeploy.evaluation.suites import Column, Family, Mode, Origin, Suite, family_of
from qrdeploy.graphio import graph
from qrdeploy.graphio.graph import WeightLayer
from qrdeploy.hardening.encodings import Encoding
from qrdeploy.hardening.integer import IntegerActivations
from qrdeploy.hardening.passes import (
    GraphPass,
    MuLawMap,
    Recipe,
    WeightQuant,
    exact_selection,
    harden,
    rewritten_weight,
    select_layers,
)
from qrdeploy.hardening.quant import Granularity, Quantizer, ScaleRule
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.spectral.norms import largest_singular_value

SCHEMA_VERSION = 1
#: [DEFAULT] candidate widths: 1 bit is left out (a narrow-range 1-bit code is all zeros).
DEFAULT_BITS = (2, 3, 4, 5, 6, 7, 8)
#: [DEFAULT] the clean budget: the same 2-point margin as the F.L. acceptance rule.
DEFAULT_MAX_DROP = 0.02
SENSITIVITY_SAMPLES = 256  # validation images used for the measured gains
PATH_CACHE = "path.cache.npz"  # in the search folder: the measured path, reused by reruns
FLOAT_BITS = 32.0  # the float model's width in the confirmation table and the plot


@dataclass(frozen=True)
class SearchConfig:
    """What the search may choose and what it must keep. Fractions for accuracies."""

    bits: tuple[int, ...] = DEFAULT_BITS
    avg_bits: float | None = None  # size budget: mean bits per weight of the searched layers
    max_bytes: int | None = None  # size budget: the serialized model in the chosen encoding
    max_drop: float = DEFAULT_MAX_DROP
    mulaw: float | None = None  # also consider μ-law (this μ) before quantizing each layer
    layers: str = "all"
    granularity: Granularity = Granularity.TENSOR
    scale: ScaleRule = ScaleRule.MAX
    quantizer: Quantizer = Quantizer.UNIFORM
    narrow: bool = True
    encoding: Encoding = Encoding.QDQ
    activations: IntegerActivations | None = None
    confirm: int = 200  # held-out test images for the adaptive confirmation (0: none)
    eps: float | None = None  # adaptive L-inf budget; None: the family's adaptive default
    steps: int = 100
    queries: int = 5000
    frontier: int = 2  # path points confirmed besides the chosen one
    seed: int = 0
    batch_size: int = 100

    def __post_init__(self) -> None:
        bits = tuple(sorted(set(int(b) for b in self.bits), reverse=True))
        if not bits or any(not 1 <= b <= 8 for b in bits):
            raise ConfigError(f"--search-bits must list widths in 1..8, got {self.bits!r}; "
                              "e.g. --search-bits 2-8")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "encoding", Encoding(self.encoding))
        if self.encoding in (Encoding.INT4, Encoding.NBITS) and bits[0] > 4:
            raise ConfigError(f"--encoding {self.encoding.value} holds at most 4 bits; pass "
                              "--search-bits 2-4 or use --encoding qdq")
        if self.avg_bits is not None and not 0 < self.avg_bits <= 32:
            raise ConfigError(f"--avg-bits must be in (0, 32], got {self.avg_bits}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError(f"--max-bytes must be >= 1, got {self.max_bytes}")
        if not 0 <= self.max_drop < 1:
            raise ConfigError(f"--max-drop is a fraction in [0, 1), got {self.max_drop}; "
                              "e.g. 0.02 for 2 points")
        for name in ("confirm", "frontier"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.steps < 1 or self.queries < 1 or self.batch_size < 1:
            raise ConfigError("--confirm-steps, --confirm-queries and the batch size must be "
                              ">= 1")
        if self.avg_bits is not None and self.avg_bits < bits[-1]:
            raise ConfigError(f"no recipe meets --avg-bits {self.avg_bits:g}: the narrowest "
                              f"candidate is {bits[-1]} bits; raise --avg-bits or add narrower "
                              "--search-bits")
        if self.eps is not None and not 0 < self.eps <= 1:
            raise ConfigError(f"--confirm-eps must be in (0, 1], got {self.eps}")

    def quant(self, bits: int, layers: str) -> WeightQuant:
        return WeightQuant(bits, self.granularity, self.scale, self.quantizer, layers,
                           narrow=self.narrow)

    def to_json(self) -> dict[str, Any]:
        return {"bits": list(self.bits), "avg_bits": self.avg_bits, "max_bytes": self.max_bytes,
                "max_drop": self.max_drop, "mulaw": self.mulaw, "layers": self.layers,
                "granularity": self.granularity.value, "scale": self.scale.value,
                "quantizer": self.quantizer.value, "narrow": self.narrow,
                "encoding": self.encoding.value,
                "activations": None if self.activations is None else self.activations.to_json(),
                "confirm": self.confirm, "eps": self.eps, "steps": self.steps,
                "queries": self.queries, "frontier": self.frontier, "seed": self.seed}


# ---------------------------------------------------------------- sensitivity


@dataclass(frozen=True)
class Option:
    bits: int
    mulaw: bool

    def label(self) -> str:
        return f"{self.bits}" + ("+mu" if self.mulaw else "")


@dataclass(frozen=True)
class LayerSensitivity:
    """One searched layer: its size, ‖W‖₂, the measured gain and e_l(o) for every option."""

    index: int
    node: str
    weight: str
    op_type: str
    params: int
    norm: float  # ‖W‖₂ of the unfolded weight
    gain: float  # measured relative logit error per unit of relative weight error
    probe_logit_error: float  # the measurement behind the gain
    errors: dict[Option, float]  # e_l(o) = ‖Ŵ − W‖₂ / ‖W‖₂

    def best(self, bits: int) -> Option:
        """The option of this width with the smaller weight error (μ-law only if it helps)."""
        opts = [o for o in self.errors if o.bits == bits]
        return min(opts, key=lambda o: (self.errors[o], o.mulaw))

    def estimate(self, option: Option) -> float:
        return self.gain * self.errors[option]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "node": self.node, "weight": self.weight,
                "op_type": self.op_type, "params": self.params, "norm": self.norm,
                "gain": self.gain, "probe_logit_error": self.probe_logit_error,
                "relative_error": {o.label(): e for o, e in self.errors.items()}}


def _unfolded(w: np.ndarray, layer: WeightLayer) -> np.ndarray:
    axis = layer.weight_axis if w.ndim > 1 else 0
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def _norm(w: np.ndarray, layer: WeightLayer) -> float:
    return float(largest_singular_value(_unfolded(w, layer)).value) if w.size else 0.0


def _relative_logit_error(z_hat: np.ndarray, z: np.ndarray) -> float:
    num = np.linalg.norm(z_hat - z, axis=1)  # (N,)
    den = np.linalg.norm(z, axis=1)  # (N,)
    return float(np.mean(np.divide(num, den, out=np.zeros_like(num), where=den > 0)))


def _options(cfg: SearchConfig) -> list[Option]:
    return [Option(b, m) for b in cfg.bits for m in ((False, True) if cfg.mulaw else (False,))]


def _passes(cfg: SearchConfig, layer_list: Sequence[WeightLayer],
            assignment: dict[int, Option]) -> tuple[GraphPass, ...]:
    """The recipe passes of a per-layer assignment: one μ-law pass over the μ layers, then one
    quantization pass per width (widest first), each naming its layers exactly."""
    by_index = {lyr.index: lyr for lyr in layer_list}
    out: list[GraphPass] = []
    mu_layers = [by_index[i] for i, o in sorted(assignment.items()) if o.mulaw]
    if mu_layers:
        assert cfg.mulaw is not None
        out.append(MuLawMap(cfg.mulaw, True, exact_selection(layer_list, mu_layers)))
    for b in sorted({o.bits for o in assignment.values()}, reverse=True):
        chosen = [by_index[i] for i, o in sorted(assignment.items()) if o.bits == b]
        out.append(cfg.quant(b, exact_selection(layer_list, chosen)))
    return tuple(out)


def sensitivities(model: onnx.ModelProto, x: np.ndarray, cfg: SearchConfig,
                  session: SessionConfig | None = None,
                  cache: PathCache | None = None) -> list[LayerSensitivity]:
    """Step 1 of the method for every layer the selection names (measured logit errors already
    in `cache` are reused, new ones recorded there)."""
    all_layers = graph.weight_layers(model)
    chosen = select_layers(all_layers, cfg.layers)
    z: np.ndarray | None = None
    low = Option(cfg.bits[-1], False)
    out = []
    inits = graph.initializer_map(model)
    for pos, layer in enumerate(progress(chosen, "search: layer sensitivity", len(chosen))):
        stored = numpy_helper.to_array(inits[layer.weight_name]).astype(np.float32)
        norm = _norm(stored, layer)
        errors: dict[Option, float] = {}
        for o in _options(cfg):
            gp: list[GraphPass] = [MuLawMap(cfg.mulaw, True, "all")] if o.mulaw and cfg.mulaw \
                else []
            w_hat = rewritten_weight(layer, stored, [*gp, cfg.quant(o.bits, "all")])
            errors[o] = _norm(w_hat - stored, layer) / norm if norm > 0 else 0.0
        measured = None if cache is None else cache.probe(pos)
        if measured is None:
            if z is None:
                z = predict_logits(model, x, session, cfg.batch_size)
            probe, _ = harden(model, _passes(cfg, all_layers, {layer.index: low}),
                              Encoding.FLOAT)
            measured = _relative_logit_error(predict_logits(probe, x, session, cfg.batch_size),
                                             z)
            if cache is not None:
                cache.set_probe(pos, measured)
        gain = measured / errors[low] if errors[low] > 0 else 0.0
        out.append(LayerSensitivity(layer.index, layer.node_name, layer.weight_name,
                                    layer.op_type, int(np.prod(layer.weight_shape)), norm, gain,
                                    measured, errors))
    return out


class PathCache:
    """The measurements of steps 1 and 3 (each layer's probe logit error; each path point's
    per-image clean flags and written bytes) in `path`, keyed by the model, the validation
    images and every setting that shapes the path, not by the budgets: a rerun with other
    budgets, or after an interruption, measures only what is missing. Saved after each
    measurement (a few KB); None as path keeps everything in memory."""

    def __init__(self, path: Path | None, model_sha: str, data_fp: str, cfg: SearchConfig,
                 n_layers: int, n_images: int) -> None:
        points = 1 + n_layers * (len(cfg.bits) - 1)
        settings = {"format": 1, "model": model_sha, "data": data_fp,
                    "sensitivity_images": SENSITIVITY_SAMPLES, "batch": cfg.batch_size,
                    "path": {k: v for k, v in cfg.to_json().items() if k in _PATH_KEYS}}
        self.file = StateFile(path, settings)
        layout: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {
            "probe": ((n_layers,), np.dtype(np.float64)),
            "ok": ((points, n_images), np.dtype(np.bool_)),
            "bytes": ((points,), np.dtype(np.int64)), "done": ((points,), np.dtype(np.bool_))}
        fresh = {name: np.full(shape, np.nan) if name == "probe" else np.zeros(shape, dtype)
                 for name, (shape, dtype) in layout.items()}
        self.arrays = self.file.load(layout) or fresh

    def probe(self, pos: int) -> float | None:
        v = float(self.arrays["probe"][pos])
        return None if np.isnan(v) else v

    def set_probe(self, pos: int, value: float) -> None:
        self.arrays["probe"][pos] = value
        self.file.save(self.arrays)

    def point(self, step: int) -> tuple[np.ndarray, int] | None:
        if not self.arrays["done"][step]:
            return None
        return self.arrays["ok"][step].copy(), int(self.arrays["bytes"][step])

    def set_point(self, step: int, ok: np.ndarray, nbytes: int) -> None:
        self.arrays["ok"][step], self.arrays["bytes"][step] = ok, nbytes
        self.arrays["done"][step] = True
        self.file.save(self.arrays)


#: The settings that shape the path (the budgets, the margin and the confirmation do not).
_PATH_KEYS = ("bits", "mulaw", "layers", "granularity", "scale", "quantizer", "narrow",
              "encoding")


# ---------------------------------------------------------------- the path


@dataclass(frozen=True)
class PathPoint:
    """One recipe on the path and what it measured on the validation images."""

    step: int
    assignment: dict[int, Option]  # layer index -> option
    avg_bits: float
    estimate: float  # Σ g_l e_l(o_l)
    passes: tuple[GraphPass, ...] = ()
    bytes: int | None = None
    clean: Proportion | None = None
    test: NonInferiority | None = None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "avg_bits": self.avg_bits, "estimate": self.estimate,
                "bits": {str(i): o.label() for i, o in sorted(self.assignment.items())},
                "bytes": self.bytes, "clean": None if self.clean is None
                else self.clean.to_json(), "test": None if self.test is None
                else self.test.to_json()}


def greedy_path(layers: Sequence[LayerSensitivity], bits: Sequence[int]) -> list[PathPoint]:
    """Step 2: from every layer at the widest width to every layer at the narrowest, one
    width step of one layer at a time, cheapest estimated sensitivity per bit saved first
    (ties: the larger layer, then the earlier one)."""
    widths = sorted(set(bits), reverse=True)
    total = sum(s.params for s in layers)
    if total == 0:
        raise PassError("the searched layers hold no weights")
    level = {s.index: 0 for s in layers}
    by_index = {s.index: s for s in layers}

    def point(step: int) -> PathPoint:
        assignment = {i: by_index[i].best(widths[k]) for i, k in level.items()}
        avg = sum(by_index[i].params * o.bits for i, o in assignment.items()) / total
        est = sum(by_index[i].estimate(o) for i, o in assignment.items())
        return PathPoint(step, assignment, avg, est)

    path = [point(0)]
    while True:
        moves = []
        for s in layers:
            k = level[s.index]
            if k + 1 < len(widths):
                now, nxt = s.best(widths[k]), s.best(widths[k + 1])
                saved = s.params * (now.bits - nxt.bits)
                cost = s.estimate(nxt) - s.estimate(now)
                moves.append((cost / saved, -s.params, s.index))
        if not moves:
            return path
        level[min(moves)[2]] += 1
        path.append(point(len(path)))


# ---------------------------------------------------------------- the choice


@dataclass(frozen=True)
class Choice:
    index: int
    reason: str


def meets_size(p: PathPoint, cfg: SearchConfig) -> bool:
    return ((cfg.avg_bits is None or p.avg_bits <= cfg.avg_bits + 1e-9)
            and (cfg.max_bytes is None or (p.bytes is not None and p.bytes <= cfg.max_bytes)))


def choose(path: Sequence[PathPoint], cfg: SearchConfig) -> Choice:
    """Steps 3 and 4 on a measured path (every point carries its test): the fixed-sequence walk
    and the size budget. A PassError names the budget to loosen when none fits both."""
    sized = cfg.avg_bits is not None or cfg.max_bytes is not None
    target = next((i for i, p in enumerate(path) if meets_size(p, cfg)), None) if sized else None
    if sized and target is None:
        last = path[-1]
        raise PassError(f"no recipe meets the size budget: the smallest on the path has "
                        f"{last.avg_bits:.2f} average bits and {last.bytes:,} bytes; raise "
                        "--avg-bits / --max-bytes or add narrower --search-bits")
    stop = len(path) - 1 if target is None else target
    passed = -1
    for i in range(stop + 1):
        test = path[i].test
        assert test is not None, "choose() needs the measured path"
        if not test.non_inferior:
            break
        passed = i
    if passed < 0:
        t0 = path[0].test
        raise PassError(f"even the widest recipe ({path[0].avg_bits:.2f} average bits) fails the "
                        f"clean budget ({t0}); raise --max-drop or --calibrate")
    if target is not None:
        if passed < target:
            p = path[passed + 1]
            raise PassError(
                f"no recipe meets both budgets: at {p.avg_bits:.2f} average bits the clean test "
                f"fails ({p.test}); the smallest that passes has {path[passed].avg_bits:.2f} "
                "average bits: raise --avg-bits / --max-bytes to it or raise --max-drop")
        return Choice(target, "the first point on the path within the size budget; every "
                      "point before it passed the clean test")
    why = ("every point on the path passed the clean test" if passed == len(path) - 1 else
           f"the next point ({path[passed + 1].avg_bits:.2f} average bits) failed the clean test")
    return Choice(passed, f"the last point of the fixed-sequence walk: {why}")


# ---------------------------------------------------------------- confirmation


@dataclass(frozen=True)
class Confirmed:
    """A model confirmed on held-out images: clean and adaptive worst case; against the float
    model, the paired difference of the worst case (Newcombe 95 %, exact McNemar)."""

    label: str
    step: int | None  # path step; None for the float model
    avg_bits: float
    bytes: int
    clean: Proportion
    adaptive: Proportion
    delta: float | None = None
    delta_ci95: tuple[float, float] | None = None
    mcnemar_p: float | None = None
    final_graph: bool = False  # the chosen recipe with its activations, as written

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "step": self.step, "avg_bits": self.avg_bits,
                "bytes": self.bytes, "clean": self.clean.to_json(),
                "adaptive_worst_case": self.adaptive.to_json(), "delta": self.delta,
                "delta_ci95": None if self.delta_ci95 is None else list(self.delta_ci95),
                "mcnemar_p": self.mcnemar_p, "final_graph": self.final_graph}


def confirm_suite(family: Family, cfg: SearchConfig) -> Suite:
    eps = cfg.eps if cfg.eps is not None else ADAPTIVE[family.value][0].eps
    entries = adaptive_suite(eps, steps=cfg.steps, queries=cfg.queries)
    columns = tuple(Column(e.name, Mode.ADAPTIVE, e, eps, Origin.USER) for e in entries)
    return Suite("search-confirm", family, columns, (), ())


def _subject(label: str, proto: onnx.ModelProto, cfg: SearchConfig,
             session: SessionConfig | None) -> Subject:
    digest = hashlib.sha256(graph.model_to_bytes(proto)).hexdigest()
    return Subject(label, digest, OrtModel(proto, session or SessionConfig(),
                                           batch_size=cfg.batch_size))


def _flags(subject: Subject, source: Subject, data: Dataset, suite: Suite,
           cfg: SearchConfig, state: Path | None) -> tuple[np.ndarray, np.ndarray]:
    ev = evaluate(subject, data.x, data.y, suite,
                  config=RunConfig(cfg.seed, cfg.batch_size, state_path=state),
                  adaptive_source=source)
    return ev.clean_correct, adaptive_worst_case(ev)[1]


# ---------------------------------------------------------------- the whole search


@dataclass(frozen=True)
class SearchResult:
    """The search: settings, layers, the measured path, the choice and its confirmation. JSON
    through to_json (no timings, so two runs write identical files)."""

    config: SearchConfig
    model_name: str
    model_bytes: int
    validation: str  # the data set of the clean tests
    held_out: str
    family: Family
    layers: tuple[LayerSensitivity, ...]
    path: tuple[PathPoint, ...]
    choice: Choice
    recipe: Recipe
    hardened: onnx.ModelProto = field(repr=False)
    float_clean: Proportion
    confirmed: tuple[Confirmed, ...]
    eps: float
    written_bytes: int  # the file as written (with int8 activations: not the path's graph)
    final_test: NonInferiority | None = None  # the written graph, when its activations are int8

    @property
    def chosen(self) -> PathPoint:
        return self.path[self.choice.index]

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "model": self.model_name,
                "model_bytes": self.model_bytes, "config": self.config.to_json(),
                "validation": self.validation, "held_out": self.held_out,
                "family": self.family.value, "eps": self.eps,
                "written_bytes": self.written_bytes,
                "float_clean": self.float_clean.to_json(),
                "layers": [s.to_json() for s in self.layers],
                "path": [p.to_json() for p in self.path],
                "choice": {"step": self.choice.index, "reason": self.choice.reason},
                "recipe": self.recipe.to_json(),
                "final_test": None if self.final_test is None else self.final_test.to_json(),
                "confirmed": [c.to_json() for c in self.confirmed]}


def _measure(model: onnx.ModelProto, point: PathPoint, passes: tuple[GraphPass, ...],
             cfg: SearchConfig, x: np.ndarray, ok_float: np.ndarray, y: np.ndarray,
             session: SessionConfig | None, cache: PathCache) -> PathPoint:
    known = cache.point(point.step)
    if known is None:
        proto, _ = harden(model, passes, cfg.encoding)
        ok = predict_logits(proto, x, session, cfg.batch_size).argmax(axis=1) == y  # (N,)
        known = ok, len(graph.model_to_bytes(proto))
        cache.set_point(point.step, *known)
    ok, nbytes = known
    return replace(point, passes=passes, bytes=nbytes,
                   clean=Proportion(int(ok.sum()), int(ok.size)),
                   test=non_inferiority(ok, ok_float, cfg.max_drop))


def _frontier(path: Sequence[PathPoint], chosen: int, k: int) -> list[int]:
    """Up to k path steps confirmed besides the chosen one, in this order: the next narrower
    point (what one more step would cost), the narrowest point, the widest point."""
    order = [chosen + 1, len(path) - 1, 0]
    picks = [i for i in dict.fromkeys(order) if 0 <= i < len(path) and i != chosen]
    return picks[:max(k, 0)]


def search(model: onnx.ModelProto, validation: Dataset, held_out: Dataset | None,
           cfg: SearchConfig, *, session: SessionConfig | None = None,
           calibration_images: np.ndarray | None = None, model_name: str = "model",
           log: Callable[[str], None] | None = None,
           state_dir: Path | None = None) -> SearchResult:
    """The whole search on an in-memory model: `validation` (labelled) drives steps 1-4,
    `held_out` (labelled, or None with cfg.confirm = 0) the confirmation. With int8
    activations, `calibration_images` calibrate the final graph. `state_dir` keeps the
    measured path (reused by reruns with other budgets) and the confirmation's progress (for a
    rerun after an interruption)."""
    say = log or (lambda _msg: None)
    if validation.y is None or (cfg.confirm and (held_out is None or held_out.y is None)):
        raise DataError("the search needs labelled validation and held-out images; pass a "
                        "labelled --calibration-data")
    if cfg.activations is not None and calibration_images is None:
        raise PassError("--activations int8 needs calibration images; pass --calibrate N")
    x, y = np.ascontiguousarray(validation.x, np.float32), np.asarray(validation.y)
    layers_all = graph.weight_layers(model)
    model_bytes = graph.model_to_bytes(model)
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    cache = PathCache(None if state_dir is None else state_dir / PATH_CACHE,
                      hashlib.sha256(model_bytes).hexdigest(), fingerprint(x, y), cfg,
                      len(select_layers(layers_all, cfg.layers)), len(y))
    reused = int(cache.arrays["done"].sum())
    if reused:
        say(f"search: {reused} recipes already measured in {cache.file.path}; measuring the rest")
    sens = sensitivities(model, x[:SENSITIVITY_SAMPLES], cfg, session, cache)
    ok_float = predict_logits(model, x, session, cfg.batch_size).argmax(axis=1) == y  # (N,)
    float_clean = Proportion(int(ok_float.sum()), int(ok_float.size))
    raw = greedy_path(sens, cfg.bits)
    say(f"search: {len(sens)} layers, {len(raw)} recipes on the path "
        f"({raw[0].avg_bits:.2f} -> {raw[-1].avg_bits:.2f} average bits)")
    path: list[PathPoint] = []
    for p in progress(raw, "search: clean test of each recipe", len(raw)):
        path.append(_measure(model, p, _passes(cfg, layers_all, p.assignment), cfg, x, ok_float,
                             y, session, cache))
    choice = choose(path, cfg)
    chosen = path[choice.index]
    recipe = Recipe(chosen.passes, cfg.encoding, cfg.activations)
    hardened, _ = harden(model, recipe.passes, recipe.encoding, activations=recipe.activations,
                         calibration=calibration_images)
    say(f"search: chose step {chosen.step} ({chosen.avg_bits:.2f} average bits); {choice.reason}")
    final_test = None
    written = len(graph.model_to_bytes(hardened))
    if cfg.activations is not None:  # the written graph differs from the path's: test it too
        ok = predict_logits(hardened, x, session, cfg.batch_size).argmax(axis=1) == y  # (N,)
        final_test = non_inferiority(ok, ok_float, cfg.max_drop)
        if cfg.max_bytes is not None and written > cfg.max_bytes:
            raise PassError(f"the written int8 graph has {written:,} bytes, over --max-bytes "
                            f"{cfg.max_bytes:,} (the path measures float-activation graphs); "
                            f"raise --max-bytes to {written:,} or lower --avg-bits")
    family = family_of(validation.name, int(x.shape[1]))
    suite = confirm_suite(family, cfg)
    eps = float(suite.adaptive_eps or 0.0)
    confirmed: list[Confirmed] = []
    if cfg.confirm:
        assert held_out is not None
        confirmed = _confirm(model, hardened, path, choice, cfg, held_out, suite, session,
                             state_dir)
    return SearchResult(cfg, model_name, len(model_bytes), validation.name,
                        "" if held_out is None else held_out.name, family, tuple(sens),
                        tuple(path), choice, recipe, hardened, float_clean, tuple(confirmed),
                        eps, written, final_test)


def _confirm(model: onnx.ModelProto, hardened: onnx.ModelProto, path: Sequence[PathPoint],
             choice: Choice, cfg: SearchConfig, data: Dataset, suite: Suite,
             session: SessionConfig | None, state_dir: Path | None) -> list[Confirmed]:
    """Step 5. With a state_dir, every attack run saves its progress there per batch (keyed by
    model, images, seed and attacks), so an interrupted search resumes its confirmation; the
    files are removed once every run is complete."""
    states: list[Path] = []

    def state(label: str) -> Path | None:
        if state_dir is None:
            return None
        states.append(state_dir / f"{label.replace(' ', '-')}.state.npz")
        return states[-1]

    source = _subject("float", model, cfg, session)
    clean0, adv0 = _flags(source, source, data, suite, cfg, state("float"))

    def entry(label: str, step: int | None, proto: onnx.ModelProto, avg: float,
              final: bool = False) -> Confirmed:
        subject = source if step is None else _subject(label, proto, cfg, session)
        clean, adv = (clean0, adv0) if step is None else _flags(subject, source, data, suite,
                                                                cfg, state(label))
        c = Confirmed(label, step, avg, len(graph.model_to_bytes(proto)),
                      Proportion(int(clean.sum()), int(clean.size)),
                      Proportion(int(adv.sum()), int(adv.size)), final_graph=final)
        if step is None:
            return c
        counts = PairedCounts.from_flags(adv, adv0)
        return replace(c, delta=counts.difference, delta_ci95=newcombe_paired_interval(counts),
                       mcnemar_p=mcnemar_exact(counts.gains, counts.losses))

    out = [entry("float", None, model, FLOAT_BITS)]
    chosen = path[choice.index]
    out.append(entry("chosen", chosen.step, hardened, chosen.avg_bits, final=True))
    for i in _frontier(path, choice.index, cfg.frontier):
        p = path[i]
        proto, _ = harden(model, p.passes, cfg.encoding)
        out.append(entry(f"step {p.step}", p.step, proto, p.avg_bits))
    for f in states:
        f.unlink(missing_ok=True)
    return out


def search_file(src: str | Path, dst: str | Path, cfg: SearchConfig, *,
                calibration_data: str = "mnist-5k", calibrate: int = 500,
                data_root: str | None = None, session: SessionConfig | None = None,
                log: Callable[[str], None] | None = None,
                state_dir: Path | None = None) -> SearchResult:
    """The search on a model file. Its clean tests and gains run on the first `calibrate`
    images of the data's validation split (images the model was not trained on), int8
    activations are calibrated on the first cfg.activations.samples of its train split (as
    `harden --activations int8` does), and the confirmation runs on the first cfg.confirm of
    its test split; the chosen graph is written atomically to dst (never over src)."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise ConfigError(f"output {dst} is the input model; choose another -o")
    if calibrate < 1:
        raise ConfigError(f"--calibrate must be >= 1, got {calibrate}")
    model = graph.load_model(src)
    val = load_dataset(calibration_data, "val", n=calibrate, data_root=data_root)
    held = load_dataset(calibration_data, "test", n=cfg.confirm, data_root=data_root) \
        if cfg.confirm else None
    images = None if cfg.activations is None else \
        load_dataset(calibration_data, "train", n=cfg.activations.samples, data_root=data_root).x
    result = search(model, val, held, cfg, session=session, calibration_images=images,
                    model_name=src.name, log=log, state_dir=state_dir)
    graph.save_model(result.hardened, dst)
    return result


def search_folder(out: str | Path) -> Path:
    """Where a search writing the model `out` keeps its files by default: OUT without .onnx,
    plus '.search'."""
    out = Path(out)
    return out.with_name(out.stem + ".search")
