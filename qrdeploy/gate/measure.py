"""The measurements behind `qrdeploy check` (qrdeploy.check): per-sample clean verdicts, robust
accuracy under the policy's attacks, the gradient-masking verdict, latency and file size.

`attack_arms` is the one place that knows the attack APIs (qrdeploy.evaluation.suites for the
paper's L-inf attacks, qrdeploy.attacks.adaptive for the adaptive suite); the rest of the check only
sees per-sample robust flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.attacks.adaptive import adaptive_suite
from qrdeploy.core.arrays import to_numpy
from qrdeploy.core.losses import Loss
from qrdeploy.evaluation.masking import (
    Arm,
    Check,
    Verdict,
    check_black_box,
    check_logit_gap,
    check_one_step,
    check_square,
    check_zero_gradient,
)
from qrdeploy.evaluation.suites import build_suite
from qrdeploy.gate.policy import LatencyPolicy, RobustKind, RobustThreshold
from qrdeploy.graphio.prevalidate import external_files
from qrdeploy.model.ortmodel import OrtModel

# ---------------------------------------------------------------------------------- attacks


class Role(StrEnum):
    """What kind of attack an arm is, for the masking comparisons."""

    ONE_STEP = "one-step"
    ITERATIVE = "iterative"
    QUERY = "query"
    TRANSFER = "transfer"


@dataclass(frozen=True)
class Attempt:
    """One attack's per-sample outcome on the robust samples."""

    name: str
    role: Role
    eps: float
    robust: np.ndarray  # (N,) bool: correct on the clean input and under the attack


def _paper_attack(t: RobustThreshold, family: str) -> Any:
    """The paper-suite attack config of a threshold (suite [DEFAULT]s unless `steps` is set)."""
    column = "fgsm-s" if t.attack is RobustKind.FGSM else t.attack.value
    suite = build_suite("white", family, attacks=f"{column}={t.eps!r}", eps=())
    attack: Any = suite.columns[0].attack
    if t.steps is not None and t.attack is not RobustKind.FGSM:
        # fewer steps need a longer step to reach the ball's edge: Madry's 2.5 eps / steps
        step = 2.5 * t.eps / t.steps if t.eps > 0 else 1.0
        attack = dataclasses.replace(attack, steps=t.steps, step=step)
    return attack


def _adaptive_entries(t: RobustThreshold) -> list[Any]:
    entries = adaptive_suite(t.eps, steps=t.steps or 100, queries=t.queries or 5000)
    return [e for e in entries if t.members is None or e.name in t.members]


def attack_arms(t: RobustThreshold, model: Any, source: Any, x: np.ndarray, y: np.ndarray,
                clean_ok: np.ndarray, family: str, seed: int) -> list[Attempt]:
    """Run the threshold's attack(s) on `model` (OrtModel) over x (N, C, H, W) with labels y (N,);
    `source` (the reference, an OrtModel) crafts the adaptive suite's transfer examples."""
    idx = np.arange(len(y), dtype=np.int64)
    if t.attack is not RobustKind.ADAPTIVE:
        res = _paper_attack(t, family)(model, x, y, seed=seed, indices=idx)
        role = Role.ONE_STEP if t.attack is RobustKind.FGSM else Role.ITERATIVE
        return [Attempt(t.attack.value, role, t.eps, clean_ok & ~to_numpy(res.fooled))]
    out = []
    for e in _adaptive_entries(t):
        res = e(model, x, y, seed=seed, indices=idx, source=source)
        role = {"white": Role.ITERATIVE, "query": Role.QUERY}.get(e.role.value, Role.TRANSFER)
        out.append(Attempt(e.name, role, t.eps, clean_ok & ~np.asarray(res.fooled, bool)))
    return out


def worst_case(attempts: list[Attempt], clean_ok: np.ndarray) -> np.ndarray:
    """Per-sample worst case (N,): robust only when robust under every attempt."""
    flags = clean_ok.copy()
    for a in attempts:
        flags &= a.robust
    return flags


# ---------------------------------------------------------------------------------- masking


def masking_verdict(model: Any, x: np.ndarray, y: np.ndarray, attempts: list[Attempt],
                    adaptive_worst: float | None) -> Verdict:
    """The masking checks that the measured inputs allow (qrdeploy.evaluation.masking,
    docs/masking.md): zero CE gradients and saturated logit gaps at the clean inputs always;
    one-step vs iterative, Square vs gradient and transfer vs white-box when those attacks were
    run."""
    z, _, grads = model.loss_and_grad(x, y, Loss.CE)  # (N, K), (N,), (N, C, H, W)
    arms = {r: [Arm(a.name, a.robust, a.eps) for a in attempts if a.role is r] for r in Role}
    gradient = arms[Role.ONE_STEP] + arms[Role.ITERATIVE]
    checks: list[Check] = [check_zero_gradient(np.asarray(grads)), check_logit_gap(np.asarray(z)),
                           check_one_step(arms[Role.ONE_STEP], arms[Role.ITERATIVE]),
                           check_square(next(iter(arms[Role.QUERY]), None), gradient),
                           check_black_box(gradient, arms[Role.TRANSFER])]
    return Verdict(tuple(checks), adaptive_worst)


def verdict_json(v: Verdict) -> dict[str, Any]:
    def one(c: Check) -> dict[str, Any]:
        finite = c.ran and np.isfinite(c.statistic) and np.isfinite(c.threshold)
        return {"name": c.name.value, "ran": c.ran, "fired": c.fired,
                "statistic": float(c.statistic) if finite else None,
                "threshold": float(c.threshold) if finite else None, "detail": c.detail}

    return {"suspected": v.suspected, "text": v.text, "checks": [one(c) for c in v.checks]}


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


def measure_latency(model: OrtModel, reference: OrtModel, x: np.ndarray,
                    lp: LatencyPolicy) -> tuple[LatencyRow, ...]:
    """Mean and p95 latency of one session run at each batch size, model and reference in the
    same loop (alternating which runs first, so drift in machine load hits both alike), after
    `warmup` untimed runs each. Batch sizes a fixed-batch model cannot take are skipped."""
    rows = []
    for b in lp.batch_sizes:
        if not (_batchable(model, b) and _batchable(reference, b)):
            continue
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


def file_bytes(path: str | Path) -> int:
    """Size of an ONNX file plus the external-data files its initializers name (each checked by
    qrdeploy.graphio.prevalidate: inside the model's folder, a regular file)."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in external_files(p))
