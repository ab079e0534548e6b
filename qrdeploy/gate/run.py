"""`qrdeploy check`: the gate for model-conversion pipelines. A policy of thresholds
(qrdeploy.gate.policy) is measured on a model against its reference, and every threshold passes or
fails; exit code 0 when all pass, 3 when one fails (docs/check.md).

>>> result = check("hard.onnx", "model.onnx", load_dataset("mnist-5k"), "qrdeploy.toml")
>>> result.exit_code, [t.line() for t in result.failures]

Each threshold compares either the conservative end of its 95% interval (`use_bound = "lower"`:
the lower Wilson bound of an accuracy, the upper bound of a paired drop) or the point estimate.
File size, latency ratios and the masking verdict are not sample proportions and are compared as
measured."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qrdeploy.core.fileio import atomic_write_text, sha256_file
from qrdeploy.core.markdown import eps_text
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.schema import errors, load_schema
from qrdeploy.core.stats import (
    Z95,
    PairedCounts,
    Proportion,
    mcnemar_exact,
    newcombe_paired_interval,
)
from qrdeploy.core.version import __version__
from qrdeploy.data.datasets import Dataset, load_dataset, validate_dataset
from qrdeploy.errors import ConfigError, DataError
from qrdeploy.evaluation.build import masking_result
from qrdeploy.evaluation.guard import Verdict as GuardVerdict
from qrdeploy.evaluation.guard import check_same_input, reference_contract_hint
from qrdeploy.evaluation.guard import input_guard as guard_input
from qrdeploy.evaluation.results import MaskingResult
from qrdeploy.evaluation.runner import RunConfig, Subject
from qrdeploy.evaluation.shard import Parallel, run_evaluation
from qrdeploy.evaluation.subjects import contract_variant, open_subject
from qrdeploy.evaluation.suites import Mode, family_of
from qrdeploy.evaluation.verdict import masking
from qrdeploy.gate.measure import (
    LatencyRow,
    masking_suite,
    measure_latency,
    predictions,
    threshold_flags,
    threshold_suite,
    timeable_batches,
)
from qrdeploy.gate.policy import Bound, Policy, load_policy
from qrdeploy.graphio.graph import load_model
from qrdeploy.graphio.inputspec import contracted
from qrdeploy.graphio.prevalidate import file_bytes
from qrdeploy.model.ortmodel import OrtModel

__all__ = ["CheckResult", "Policy", "ThresholdResult", "check", "load_policy"]

SUMMARY_SCHEMA = "qrdeploy/check-summary"
SUMMARY_VERSION = 2
EXIT_PASSED, EXIT_FAILED = 0, 3


class Direction(StrEnum):
    MIN = ">="
    MAX = "<="


class Unit(StrEnum):
    FRACTION = "fraction"  # shown in %
    POINTS = "points"  # a difference of fractions, shown in percentage points
    MB = "MB"
    RATIO = "ratio"
    COUNT = "count"


def _fmt(v: float, unit: Unit) -> str:
    if unit is Unit.FRACTION:
        return f"{100 * v:.2f}%"
    if unit is Unit.POINTS:
        return f"{100 * v:+.2f} points"
    if unit is Unit.MB:
        return f"{v:.3f} MB"
    return f"{v:.3f}x" if unit is Unit.RATIO else f"{v:g}"


@dataclass(frozen=True)
class ThresholdResult:
    """One threshold: the measured value (with its 95% interval when it has one), the number
    actually compared (`compared`, per `basis`), the threshold and the outcome."""

    metric: str
    value: float
    interval: tuple[float, float] | None
    threshold: float
    direction: Direction
    unit: Unit
    basis: str  # "lower bound", "upper bound" or "point"
    compared: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        if self.direction is Direction.MIN:
            return self.compared >= self.threshold
        return self.compared <= self.threshold

    def line(self) -> str:
        """One line: metric, value with interval, compared number and threshold."""
        ci = "" if self.interval is None else \
            f" (95% CI {_fmt(self.interval[0], self.unit)} .. {_fmt(self.interval[1], self.unit)})"
        word = "min" if self.direction is Direction.MIN else "max"
        basis = "" if self.basis == "point" else f", {self.basis} {_fmt(self.compared, self.unit)}"
        tail = f"; {self.detail}" if self.detail else ""
        head = "PASS" if self.passed else "FAIL"
        return (f"{head} {self.metric} = {_fmt(self.value, self.unit)}{ci}{basis}; "
                f"threshold {word} {_fmt(self.threshold, self.unit)}{tail}")

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value,
                "interval": None if self.interval is None else list(self.interval),
                "threshold": self.threshold, "direction": self.direction.value,
                "unit": self.unit.value, "basis": self.basis, "compared": self.compared,
                "passed": self.passed, "detail": self.detail}


def judge(metric: str, value: float, interval: tuple[float, float] | None, threshold: float,
          direction: Direction, unit: Unit, bound: Bound, detail: str = "") -> ThresholdResult:
    """A threshold result; with Bound.LOWER and an interval the pessimistic end is compared."""
    if bound is Bound.LOWER and interval is not None:
        lower = direction is Direction.MIN
        basis, compared = ("lower bound", interval[0]) if lower else ("upper bound", interval[1])
    else:
        basis, compared = "point", value
    return ThresholdResult(metric, float(value), interval, float(threshold), direction, unit,
                           basis, float(compared), detail)


def _proportion(metric: str, p: Proportion, threshold: float, bound: Bound) -> ThresholdResult:
    detail = f"{p.k}/{p.n}"
    if bound is Bound.LOWER and (need := samples_needed(threshold)) > p.n:
        detail += (f"; unreachable at n = {p.n}: even {p.n}/{p.n} has a lower bound of "
                   f"{_fmt(Proportion(p.n, p.n).interval[0], Unit.FRACTION)}, the threshold needs "
                   f"n >= {need}")
    return judge(metric, p.value, p.interval, threshold, Direction.MIN, Unit.FRACTION, bound,
                 detail)


def samples_needed(threshold: float) -> int:
    """The smallest n at which n/n has a 95% lower bound of at least `threshold` (an interval
    threshold below it can never pass, whatever the model does); 0 for a threshold of 0."""
    if threshold <= 0:
        return 0
    if threshold >= 1:
        return 2**63 - 1  # no finite sample reaches a lower bound of 1
    n = max(1, int(threshold * Z95**2 / (1 - threshold)) - 2)  # n/(n + z²) >= t, rounded down
    while Proportion(n, n).interval[0] < threshold:
        n += 1
    return n


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class ModelFile:
    """A model file in the check: where it is, its sha256, its size and its (contract-applied)
    graph."""

    path: Path
    sha256: str
    size_bytes: int
    proto: onnx.ModelProto
    batch_size: int  # the check's batch size, or 1 for a model that runs one sample at a time
    contract: Any = None  # the input contract applied to `proto` (a worker applies it again)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.path.name, "sha256": self.sha256, "size_bytes": self.size_bytes}


def open_model_file(path: str | Path, contract: Any = None, batch_size: int = 256,
                    proto: onnx.ModelProto | None = None) -> ModelFile:
    """The file at `path` with `contract` applied (`proto`: the file already loaded)."""
    p = Path(path)
    if proto is None:  # validates; raises a one-line GraphError for a missing or bad file
        proto = load_model(p)
    proto, batch = contracted(proto, contract, batch_size)
    return ModelFile(p, sha256_file(p), file_bytes(p), proto, batch, contract)


# ----------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class CheckResult:
    """Every threshold's outcome, plus latency and the masking verdict for the summary."""

    thresholds: tuple[ThresholdResult, ...]
    latency: tuple[LatencyRow, ...]
    masking: MaskingResult | None
    model: ModelFile
    reference: ModelFile
    data: dict[str, Any]
    policy: Policy
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    masking_eps: float | None = None  # the eps of the masking suite's adaptive entries

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.thresholds)

    @property
    def exit_code(self) -> int:
        return EXIT_PASSED if self.passed else EXIT_FAILED

    @property
    def failures(self) -> tuple[ThresholdResult, ...]:
        return tuple(t for t in self.thresholds if not t.passed)

    def lines(self) -> list[str]:
        """One line per threshold, then the latency table and the outcome."""
        out = [t.line() for t in self.thresholds]
        for r in self.latency:
            m, f = r.model, r.reference
            out.append(f"latency batch {r.batch_size} (ms, mean/median/p95): model "
                       f"{m.mean_ms:.2f}/{m.median_ms:.2f}/{m.p95_ms:.2f}, reference "
                       f"{f.mean_ms:.2f}/{f.median_ms:.2f}/{f.p95_ms:.2f}, paired median ratio "
                       f"{r.ratio:.3f}")
        if self.masking is not None:
            at = "" if self.masking_eps is None else f" at eps {eps_text(self.masking_eps)}"
            robust_n = self.data.get("robust_n")
            on = "" if robust_n is None else f" on {robust_n} samples"
            out.append(f"masking{at}{on}: {self.masking.verdict}")
        wanted, got = self.policy.robust.n, self.data.get("robust_n")
        if wanted and got is not None and got < wanted:
            out.append(f"note: the robust thresholds ran on {got} samples, fewer than the "
                       f"policy's [robust] n = {wanted}: the data holds {got} (-n or the data set)")
        out.append(self.outcome())
        return out

    def outcome(self) -> str:
        n, bad = len(self.thresholds), len(self.failures)
        if bad:
            return f"check FAILED: {bad} of {n} thresholds not met"
        return f"check passed: {n} of {n} thresholds met"

    def to_json(self) -> dict[str, Any]:
        """The summary (qrdeploy/schemas/summary.schema.json, version SUMMARY_VERSION)."""
        return {
            "schema": SUMMARY_SCHEMA, "schema_version": SUMMARY_VERSION,
            "qrdeploy_version": __version__, "passed": self.passed, "exit_code": self.exit_code,
            "model": self.model.to_json(), "reference": self.reference.to_json(),
            "data": self.data, "seed": self.seed, "policy": self.policy.to_json(),
            "thresholds": [t.to_json() for t in self.thresholds],
            "latency": [r.to_json() for r in self.latency],
            "masking": None if self.masking is None else self.masking.to_json(),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


# ------------------------------------------------------------------------------------ check


@dataclass
class _Run:
    """The state of one check while it runs."""

    policy: Policy
    model: ModelFile
    reference: ModelFile
    data: Dataset
    session: SessionConfig
    seed: int
    parallel: Parallel | None = None
    results: list[ThresholdResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    masking_eps: float | None = None

    def timed(self, name: str, t0: float) -> None:
        self.timings[name] = time.perf_counter() - t0


def _clean(run: _Run, pm: OrtModel, pr: OrtModel) -> np.ndarray:
    """Clean thresholds; returns the labels for the attacks (the data's, else the reference's
    predictions)."""
    t0, cp, bound = time.perf_counter(), run.policy.clean, run.policy.use_bound
    x, y = run.data.x, run.data.y
    ym, yr = predictions(pm, x), predictions(pr, x)  # (N,), (N,)
    if y is None and (cp.min_accuracy is not None or cp.max_drop is not None):
        raise DataError(f"{run.data.name} has no labels, and the policy sets [clean] "
                        "min_accuracy or max_drop; use labelled data or only min_agreement")
    if cp.min_accuracy is not None and y is not None:
        run.results.append(_proportion("clean.accuracy", _prop(ym == y), cp.min_accuracy, bound))
    if cp.max_drop is not None and y is not None:
        run.results.append(_drop(ym == y, yr == y, cp.max_drop, bound))
    if cp.min_agreement is not None:
        run.results.append(_proportion("clean.agreement", _prop(ym == yr), cp.min_agreement,
                                       bound))
    run.timed("clean", t0)
    return y if y is not None else yr


def _prop(flags: np.ndarray) -> Proportion:
    return Proportion(int(flags.sum()), int(flags.size))


def _drop(model_ok: np.ndarray, ref_ok: np.ndarray, max_drop: float,
          bound: Bound) -> ThresholdResult:
    """Reference accuracy - model accuracy on the same samples, with its 95 % Newcombe hybrid
    score interval (the interval of qrdeploy.core.stats.non_inferiority at the two-sided 95 % level:
    its pessimistic end is a one-sided 97.5 % non-inferiority bound) and McNemar's exact p."""
    c = PairedCounts.from_flags(ref_ok, model_ok)
    detail = (f"reference {100 * float(np.mean(ref_ok)):.2f}%, model "
              f"{100 * float(np.mean(model_ok)):.2f}%, right with the reference only {c.gains}, "
              f"with the model only {c.losses}, "
              f"McNemar p = {mcnemar_exact(c.gains, c.losses):.3g}")
    k, n = int(np.sum(ref_ok)), int(np.size(ref_ok))
    best = newcombe_paired_interval(PairedCounts(k, 0, 0, n - k))[1]  # the reference's own answers
    if bound is Bound.LOWER and best > max_drop:
        detail += (f"; unreachable at n = {n}: even the reference's own predictions give an "
                   f"upper bound of {_fmt(best, Unit.POINTS)}; use more samples or use_bound = "
                   "\"point\"")
    return judge("clean.drop", c.difference, newcombe_paired_interval(c), max_drop,
                 Direction.MAX, Unit.POINTS, bound, detail)


def _robust(run: _Run, labels: np.ndarray) -> MaskingResult | None:
    """Robust-accuracy thresholds and the masking verdict, on the first `robust.n` samples, each
    through the attack runner (the reference crafts the transfer examples)."""
    rp, mp = run.policy.robust, run.policy.masking
    if not rp.thresholds and not mp.fail_if_suspected:
        return None
    t0 = time.perf_counter()
    n = min(rp.n or len(labels), len(labels))
    x, y = run.data.x[:n], labels[:n]
    victim, ref = _subject(run, run.model), _subject(run, run.reference)
    family = family_of(run.data.name, int(x.shape[1]))
    config = RunConfig(seed=run.seed, batch_size=run.model.batch_size)
    for t in rp.thresholds:
        ev = run_evaluation(run.parallel, victim, x, y, threshold_suite(t, family, victim.twin),
                            config=config, adaptive_source=ref)
        flags, keys = threshold_flags(t, ev)
        res = _proportion(t.metric, _prop(flags), t.min_accuracy, run.policy.use_bound)
        run.results.append(_with_detail(res, f"{res.detail} on {', '.join(keys)}"))
    run.timed("robust", t0)
    if not mp.fail_if_suspected:
        return None
    t0 = time.perf_counter()
    suite = masking_suite(mp, family, victim.bpda, victim.twin)
    run.masking_eps = suite.adaptive_eps
    ev = run_evaluation(run.parallel, victim, x, y, suite,
                        source=ref if suite.by_mode(Mode.BLACK) else None, config=config,
                        adaptive_source=ref)
    found = masking_result(masking(ev))
    assert found is not None  # the masking suite has adaptive columns (policy validation)
    fired = ", ".join(c.name for c in found.fired) or "none fired"
    run.results.append(judge("masking.suspected", len(found.fired), None, 0,
                             Direction.MAX, Unit.COUNT, Bound.POINT, f"checks fired: {fired}"))
    run.timed("masking", t0)
    return found


def _subject(run: _Run, f: ModelFile) -> Subject:
    """A model of the check as the attack runner's Subject; opened from its file (which a worker
    reopens) when the run is sharded."""
    if run.parallel is not None and run.parallel.active:
        return open_subject(f.path, run.session, f.batch_size, f.contract)
    return Subject(f.path.name, f.sha256, OrtModel(f.proto, run.session, batch_size=f.batch_size,
                                                   name=str(f.path)),
                   variant=contract_variant(f.contract))


def _with_detail(r: ThresholdResult, detail: str) -> ThresholdResult:
    return replace(r, detail=detail)


def _size_and_latency(run: _Run, pm: OrtModel, pr: OrtModel) -> tuple[LatencyRow, ...]:
    size = run.model.size_bytes / 1e6
    if run.policy.size.max_mb is not None:
        run.results.append(judge("size.file_mb", size, None, run.policy.size.max_mb,
                                 Direction.MAX, Unit.MB, Bound.POINT,
                                 f"reference {run.reference.size_bytes / 1e6:.3f} MB"))
    t0 = time.perf_counter()
    rows = measure_latency(pm, pr, run.data.x, run.policy.latency)
    run.timed("latency", t0)
    limit = run.policy.latency.max_ratio
    for r in rows:
        if limit is None:
            break
        run.results.append(judge(
            f"latency.ratio@b{r.batch_size}", r.ratio, None, limit, Direction.MAX, Unit.RATIO,
            Bound.POINT,
            f"the median of paired per-round ratios; medians {r.model.median_ms:.2f} ms vs "
            f"{r.reference.median_ms:.2f} ms"))
    return rows


def check(model: str | Path, reference: str | Path, data: Dataset | str,
          policy: Policy | str | Path, *, session: SessionConfig | None = None, seed: int = 0,
          batch_size: int = 256, contract: Any = None, input_guard: bool = True,
          parallel: Parallel | None = None, reference_contract: Any = None) -> CheckResult:
    """Measure every threshold of `policy` on `model` against `reference` over `data` (a Dataset,
    or a data set name whose test split is loaded). `contract`
    (qrdeploy.graphio.inputspec.InputContract) adapts models whose input is not float32 NCHW in [0,
    1]. `input_guard` first checks that the contract fits the reference
    (qrdeploy.evaluation.guard); unless it found the contract fitting, its finding is the first
    threshold, `input.contract_mismatch` (max 0): a mismatch fails the gate like any threshold,
    a suspicion (near-chance accuracy, nothing fits better) passes with the warning as detail.
    `parallel` (qrdeploy.evaluation.shard.Parallel) shards the attack runs over local workers or
    a Ray cluster, with the same results. `reference_contract`: the reference's own contract
    when its input differs from the model's (a float original beside its uint8 NHWC
    conversion); then the guard checks each model under its own. Never raises for a failed
    threshold: read `.passed` / `.exit_code`."""
    t_all = time.perf_counter()
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    ds = validate_dataset(load_dataset(data) if isinstance(data, str) else data)
    ref_contract = reference_contract or contract
    ref_name = f"--reference {reference}"
    model_proto, ref_proto = load_model(model), load_model(reference)
    model_file = open_model_file(model, contract, batch_size, model_proto)
    if reference_contract is None:
        check_same_input(model_proto, ref_proto, ref_name, contract)
    with reference_contract_hint(ref_name, reference_contract):
        ref_file = open_model_file(reference, ref_contract, batch_size, ref_proto)
    run = _Run(pol, model_file, ref_file, ds, session or SessionConfig(), seed, parallel)
    if input_guard:
        # the reference (the model before hardening) carries the contract: a hardened model
        # near chance is a finding of the gate, not a wrong contract; a model with a contract
        # of its own is guarded under it too
        own = "--input-spec" if reference_contract is None else "--reference-input-spec"
        guarded = [(ref_proto, ref_contract, ref_name, own)]
        if reference_contract is not None:
            guarded.insert(0, (model_proto, contract, str(model), "--input-spec"))
        findings = [guard_input(proto, ds, c, run.session, batch_size, name=name, option=opt)
                    for proto, c, name, opt in guarded]
        found = next((f for f in findings if f.verdict is GuardVerdict.MISMATCH),
                     next((f for f in findings if f.verdict is not GuardVerdict.OK),
                          findings[-1]))
        mismatch = found.verdict is GuardVerdict.MISMATCH
        if found.verdict is not GuardVerdict.OK:  # a mismatch fails; a suspicion only notes
            shared = mismatch and reference_contract is None and found.subject == ref_name
            detail = found.message() + ("; when the reference takes another input than the "
                                        "model, give it its own with --reference-input-spec"
                                        if shared else "") + (
                "; the other thresholds were not measured: with the wrong contract they would "
                "measure nothing" if mismatch else "")
            run.results.append(judge("input.contract_mismatch", int(mismatch), None, 0,
                                     Direction.MAX, Unit.COUNT, Bound.POINT, detail))
        if mismatch:
            run.timed("total", t_all)
            return CheckResult(tuple(run.results), (), None, run.model, run.reference,
                               _data_info(ds, pol), pol, seed, run.timings)
    if pol.empty:
        raise ConfigError("the policy sets no threshold, so the check would pass without "
                          "measuring anything; add a section (examples/qrdeploy.toml has each)")
    pm = OrtModel(run.model.proto, run.session, batch_size=run.model.batch_size, gradients=False,
                  name=str(run.model.path))
    pr = OrtModel(run.reference.proto, run.session, batch_size=run.reference.batch_size,
                  gradients=False, name=f"--reference {run.reference.path}")
    lp = pol.latency
    if (lp.given or lp.max_ratio is not None) and not timeable_batches(pm, pr, lp.batch_sizes):
        fixed = sorted({f for f in (pm.fixed_batch, pr.fixed_batch) if f is not None})
        raise ConfigError(f"[latency] batch_sizes {list(lp.batch_sizes)}: the models take only a "
                          f"batch of {' or '.join(map(str, fixed))}, so no latency could be "
                          f"measured; set batch_sizes = [{fixed[0]}]")
    labels = _clean(run, pm, pr)
    verdict = _robust(run, labels)
    rows = _size_and_latency(run, pm, pr)
    run.timed("total", t_all)
    return CheckResult(tuple(run.results), rows, verdict, run.model, run.reference,
                       _data_info(ds, pol), pol, seed, run.timings, run.masking_eps)


def _data_info(ds: Dataset, pol: Policy) -> dict[str, Any]:
    return {"name": ds.name, "split": ds.split, "n": len(ds),
            "labels": "true" if ds.y is not None else "reference",
            "robust_n": min(pol.robust.n or len(ds), len(ds))}


def write_summary(path: str | Path, result: CheckResult) -> dict[str, Any]:
    """Validate the summary against its schema and write it atomically; returns it."""
    doc = result.to_json()
    problems = errors(doc, load_schema("summary.schema.json"), load_schema("summary.schema.json"))
    if problems:  # a bug in qrdeploy, not in the user's input
        raise AssertionError(f"check summary does not match its schema: {problems[0]}")
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return doc
