"""The measurements behind `qrdeploy check`: the suites its robust thresholds and its masking
verdict run through the attack runner (qrdeploy.evaluation.runner, the one `qrdeploy attack` uses,
so both report the same per-sample worst case and verdict), latency and file size."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from qrdeploy.attacks.adaptive import adaptive_suite
from qrdeploy.evaluation.metrics import adaptive_worst_case, robust_flags
from qrdeploy.evaluation.runner import Evaluation
from qrdeploy.evaluation.suites import (
    Column,
    Family,
    Mode,
    Origin,
    Suite,
    build_suite,
    with_integer_columns,
)
from qrdeploy.gate.policy import LatencyPolicy, MaskingPolicy, RobustKind, RobustThreshold
from qrdeploy.model.ortmodel import OrtModel

# ---------------------------------------------------------------------------------- attacks


def _paper_attack(t: RobustThreshold, family: Family) -> Any:
    """The paper-suite attack config of a threshold (suite [DEFAULT]s unless `steps` is set)."""
    column = "fgsm-s" if t.attack is RobustKind.FGSM else t.attack.value
    suite = build_suite("white", family, attacks=f"{column}={t.eps!r}", eps=())
    attack: Any = suite.columns[0].attack
    if t.steps is not None and t.attack is not RobustKind.FGSM:
        # fewer steps need a longer step to reach the ball's edge: Madry's 2.5 eps / steps
        step = 2.5 * t.eps / t.steps if t.eps > 0 else 1.0
        attack = dataclasses.replace(attack, steps=t.steps, step=step)
    return attack


def threshold_suite(t: RobustThreshold, family: Family, integer: bool = False) -> Suite:
    """The suite that measures one robust threshold through the attack runner: one white-box
    column for a paper attack; the adaptive columns at the threshold's eps (its steps, queries
    and members) for `adaptive`, with square-twin when `integer` (a graph that quantizes
    activations and has a float-activation twin)."""
    if t.attack is RobustKind.ADAPTIVE:
        entries = adaptive_suite(t.eps, steps=t.steps or 100, queries=t.queries or 5000,
                                 integer=integer)
        columns = tuple(Column(e.name, Mode.ADAPTIVE, e, t.eps, Origin.USER) for e in entries
                        if t.members is None or e.name in t.members)
    else:
        columns = (Column(f"{t.attack.value}@{t.eps:g}", Mode.WHITE, _paper_attack(t, family),
                          t.eps, Origin.USER),)
    return Suite(t.metric, family, columns, (), ())


def threshold_flags(t: RobustThreshold, ev: Evaluation) -> tuple[np.ndarray, list[str]]:
    """Per-sample robust flags (N,) of a threshold's run and the columns they cover: the
    column's robust flags, or the adaptive per-sample worst case (the runner's own)."""
    if t.attack is RobustKind.ADAPTIVE:
        keys, flags = adaptive_worst_case(ev)
        return flags, keys
    key = ev.suite.columns[0].key
    return robust_flags(ev, key), [key]


def masking_suite(mp: MaskingPolicy, family: Family, integer: bool = False,
                  twin: bool = True) -> Suite:
    """The suite of the masking verdict: what `qrdeploy attack --suite SUITE` runs (on an
    integer graph, with the columns `attack` adds there; `twin` False: no square-twin)."""
    suite = build_suite(mp.suite, family, eps=(), cw_budget=mp.cw_budget)
    return with_integer_columns(suite, twin)[0] if integer else suite


# ---------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Timing:
    mean_ms: float
    median_ms: float
    p95_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ms = 1000.0 * np.asarray(seconds, np.float64)  # (R,)
        return cls(float(ms.mean()), float(np.median(ms)), float(np.percentile(ms, 95)))


@dataclass(frozen=True)
class LatencyRow:
    """Latency of one batch size. `ratio` is the median over repeats of t(model) / t(reference),
    each pair timed back to back [DEFAULT]: on a shared machine single runs spike 10x when another
    process takes the cores, and load drifts over a run; a ratio within adjacent pairs cancels the
    drift, and the median ignores the spikes that move the mean."""

    batch_size: int
    model: Timing
    reference: Timing
    ratio: float

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "model": dataclasses.asdict(self.model),
                "reference": dataclasses.asdict(self.reference), "ratio": self.ratio}


def _batchable(p: OrtModel, b: int) -> bool:
    return p.fixed_batch is None or p.fixed_batch == b


def timeable_batches(model: OrtModel, reference: OrtModel, sizes: tuple[int, ...]
                     ) -> tuple[int, ...]:
    """The batch sizes of `sizes` both models take (a fixed-batch model takes only its own)."""
    return tuple(b for b in sizes if _batchable(model, b) and _batchable(reference, b))


def measure_latency(model: OrtModel, reference: OrtModel, x: np.ndarray,
                    lp: LatencyPolicy) -> tuple[LatencyRow, ...]:
    """Mean and p95 latency of one session run at each batch size, model and reference in the
    same loop (alternating which runs first, so drift in machine load hits both alike), after
    `warmup` untimed runs each. Batch sizes a fixed-batch model cannot take are skipped."""
    rows = []
    for b in timeable_batches(model, reference, lp.batch_sizes):
        xb = np.ascontiguousarray(x[np.arange(b) % len(x)], np.float32)  # (b, C, H, W)
        for _ in range(lp.warmup):
            model.time_run(xb), reference.time_run(xb)
        tm: list[float] = []
        tr: list[float] = []
        for i in range(lp.repeats):
            if i % 2:
                tr.append(reference.time_run(xb))
                tm.append(model.time_run(xb))
            else:
                tm.append(model.time_run(xb))
                tr.append(reference.time_run(xb))
        ratio = float(np.median(np.asarray(tm) / np.asarray(tr)))  # paired, (R,) -> scalar
        rows.append(LatencyRow(b, Timing.of(tm), Timing.of(tr), ratio))
    return tuple(rows)


# ----------------------------------------------------------------------------- clean, size


def predictions(p: OrtModel, x: np.ndarray) -> np.ndarray:
    """Top-1 predictions (N,) int64 of the deployed graph."""
    return p.predict(x)
