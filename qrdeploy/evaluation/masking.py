"""Gradient-masking checks (docs/method.md section 10; explained in docs/masking.md).

Each check is a defined statistic with a threshold; a check comparing two accuracies on the same
samples uses the paired rule of `paired`: A is significantly below B when
    acc(A) < acc(B) - max(2 points, 2 standard errors of the paired difference).
All inputs are plain per-sample numpy arrays (robust flags, logits, gradients), so the runner can
call them after it has run the attacks. `Verdict` words the outcome honestly.

Thresholds are qrdeploy's [DEFAULT]s; docs/masking.md says why each was chosen.

>>> checks = [check_zero_gradient(ce_grads), check_square(Arm("square", sq, 0.1), white)]
>>> print(Verdict(tuple(checks), worst_case=0.62).text)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from qrdeploy.errors import DataError

#: The smallest gap between two compared accuracies that can count (2 points).
MIN_GAP = 0.02
#: Standard errors of the paired difference a gap must exceed.
SE_FACTOR = 2.0
#: From this top-1 - top-2 gap on (24 ln 2 = 16.64), float32 softmax gives p_y == 1 exactly
#: (1 + exp(-gap) rounds to 1): the -e_y term of the CE gradient vanishes.
SATURATION_GAP = 24 * math.log(2)
#: Default histogram edges of the top-1 - top-2 logit gap; 104 is where float32 exp underflows
#: without flush-to-zero, so the whole CE gradient is 0 (docs/method.md section 10).
GAP_EDGES = (0.0, 1.0, 2.0, 5.0, 10.0, SATURATION_GAP, 50.0, 104.0, math.inf)
DOC = "docs/masking.md"


class CheckName(StrEnum):
    ZERO_GRADIENT = "zero-gradient"
    LOGIT_GAP = "logit-gap"
    BLACK_BOX = "black-box-stronger"
    ONE_STEP = "one-step-stronger"
    EPS_NO_EFFECT = "eps-no-effect"
    UNBOUNDED = "unbounded-below-100"
    SQUARE = "square-stronger"
    PROBABILITIES = "probability-outputs"
    BPDA_WEAKER = "bpda-weaker"
    TWIN_STRONGER = "twin-stronger"


@dataclass(frozen=True)
class Check:
    """One check's outcome: statistic vs threshold; `ran` False when its inputs were missing."""

    name: CheckName
    fired: bool
    statistic: float
    threshold: float
    detail: str
    ran: bool = True
    #: False for a check of integer graphs on a graph with float activations: not run because
    #: it does not apply, so the verdict does not list it as "not checked"
    applies: bool = True

    @property
    def doc(self) -> str:
        """The docs section that explains the check (the report links to it)."""
        return f"{DOC}#{self.name.value}"


@dataclass(frozen=True)
class Arm:
    """One attack's per-sample outcome: robust (N,) bool = still correctly classified under it;
    eps its L-inf budget (None: unbounded, or not comparable by eps, e.g. noise)."""

    name: str
    robust: np.ndarray
    eps: float | None = None

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.robust))


@dataclass(frozen=True)
class Paired:
    """acc(worse) vs acc(better) on the same samples: gap = acc(better) - acc(worse)."""

    gap: float
    margin: float
    significant: bool


def paired(worse: np.ndarray, better: np.ndarray) -> Paired:
    """Is acc(worse) < acc(better) - max(MIN_GAP, SE_FACTOR * se)? se is the standard error of
    the mean of the per-sample differences better_i - worse_i (in {-1, 0, 1})."""
    a, b = _flags(worse), _flags(better)
    if a.shape != b.shape:
        raise DataError(f"paired accuracies need the same samples, got {a.shape} and {b.shape}")
    d = b.astype(np.float64) - a.astype(np.float64)  # (N,)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    margin = max(MIN_GAP, SE_FACTOR * se)
    gap = float(d.mean())
    return Paired(gap, margin, gap > margin)


def _flags(a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype != np.bool_:
        raise DataError(
            f"expected per-sample bool flags of shape (N,), got shape {arr.shape} dtype "
            f"{arr.dtype}; pass e.g. ~result.fooled"
        )
    return arr


def _skipped(name: CheckName, why: str, applies: bool = True) -> Check:
    return Check(name, False, math.nan, math.nan, f"not run: {why}", ran=False, applies=applies)


# ------------------------------------------------------------------ statistics of one model


def check_zero_gradient(grads: np.ndarray, threshold: float = 0.01) -> Check:
    """Fraction of samples whose input gradient (N, ...) is exactly zero everywhere; fires when
    above `threshold`. Pass the CE gradients at the clean inputs."""
    g = np.asarray(grads)
    if g.ndim < 2 or len(g) == 0:
        raise DataError(f"expected gradients of shape (N, ...), got {g.shape}")
    frac = float(np.mean(~np.any(g.reshape(len(g), -1) != 0, axis=1)))
    return Check(CheckName.ZERO_GRADIENT, frac > threshold, frac, threshold,
                 f"{100 * frac:.1f}% of inputs have an exactly zero CE input gradient")


def logit_gaps(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit per sample (N,) float64."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise DataError(f"expected logits of shape (N, K >= 2), got {z.shape}")
    top2 = np.sort(z, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def gap_histogram(
    logits: np.ndarray, edges: Sequence[float] = GAP_EDGES
) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of the top-1 - top-2 logit gap; the report plots it."""
    e = np.asarray(edges, dtype=np.float64)
    counts, _ = np.histogram(logit_gaps(logits), bins=e)
    return counts, e


def check_logit_gap(logits: np.ndarray, threshold: float = 0.5) -> Check:
    """Fraction of samples whose top-1 - top-2 gap exceeds SATURATION_GAP (float32 p_y == 1);
    fires when above `threshold`."""
    frac = float(np.mean(logit_gaps(logits) > SATURATION_GAP))
    return Check(CheckName.LOGIT_GAP, frac > threshold, frac, threshold,
                 f"{100 * frac:.1f}% of inputs have a logit gap > {SATURATION_GAP:.2f} "
                 "(float32 softmax saturated)")


def check_probabilities(logits: np.ndarray, threshold: float = 0.99) -> Check:
    """Fraction of rows that look like probabilities (>= 0, sum 1) or log-probabilities
    (<= 0, logsumexp 0), to 1e-3; fires when above `threshold`: attack the logits instead."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise DataError(f"expected logits of shape (N, K), got {z.shape}")
    probs = (z.min(axis=1) >= 0) & (np.abs(z.sum(axis=1) - 1) <= 1e-3)
    top = z.max(axis=1, keepdims=True)
    lse = (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]
    logp = (top[:, 0] <= 0) & (np.abs(lse) <= 1e-3)
    frac = float(np.mean(probs | logp))
    return Check(CheckName.PROBABILITIES, frac > threshold, frac, threshold,
                 f"{100 * frac:.1f}% of output rows are (log-)probabilities, not logits")


# --------------------------------------------------------------- comparisons between attacks


def _within(a: Arm, b: Arm) -> bool:
    """b's budget is at least a's (or one of them has no L-inf budget)."""
    return a.eps is None or b.eps is None or b.eps >= a.eps - 1e-12


def _reference(a: Arm, arms: Sequence[Arm]) -> list[Arm]:
    """The arms a challenger `a` is held against. When one has exactly its eps: every arm whose
    examples lie inside a's ball (eps at most a's, arms without an eps included), since a sample
    a smaller-eps arm fools is fooled within a's budget; larger-eps arms are left out, as their
    examples are not. Without an arm at its eps: the arms with more budget (none: no pair)."""
    if a.eps is not None and any(b.eps is not None and abs(b.eps - a.eps) <= 1e-12
                                 for b in arms):
        return [b for b in arms if b.eps is None or b.eps <= a.eps + 1e-12]
    return [b for b in arms if _within(a, b)]


def _worst(arms: Sequence[Arm]) -> np.ndarray:
    """Per-sample worst case: robust only if robust under every arm."""
    return np.asarray(np.logical_and.reduce([_flags(a.robust) for a in arms]))


def _compare(name: CheckName, pairs: list[tuple[Arm, str, np.ndarray]], why: str) -> Check:
    """Fires when some challenger is significantly below its reference (paired rule)."""
    if not pairs:
        return _skipped(name, why)
    results = [(a, ref, paired(a.robust, flags)) for a, ref, flags in pairs]
    fired = [(a, ref, p) for a, ref, p in results if p.significant]
    top = max(results, key=lambda r: r[2].gap - r[2].margin)
    lines = [f"{a.name} {abs(100 * p.gap):.1f} points {'below' if p.gap >= 0 else 'above'} "
             f"{ref} (margin {100 * p.margin:.1f})" for a, ref, p in (fired or [top])]
    return Check(name, bool(fired), top[2].gap, top[2].margin, "; ".join(lines))


def check_black_box(white: Sequence[Arm], others: Sequence[Arm]) -> Check:
    """Black-box (transfer) or noise arms vs the per-sample worst case of the white-box arms with
    at least their budget; fires when one is significantly stronger (paired rule)."""
    pairs = []
    for o in others:
        ref = _reference(o, white)
        if ref:
            pairs.append((o, "white-box worst case", _worst(ref)))
    return _compare(CheckName.BLACK_BOX, pairs, "no black-box/noise and white-box arms to pair")


def check_one_step(one_step: Sequence[Arm], iterative: Sequence[Arm]) -> Check:
    """Each one-step arm (FGSM) vs each iterative arm with at least its eps; fires when the
    one-step attack is significantly stronger."""
    pairs = [(o, i.name, _flags(i.robust)) for o in one_step for i in iterative if _within(o, i)]
    return _compare(CheckName.ONE_STEP, pairs, "no one-step and iterative arms of equal eps")


def check_square(square: Arm | None, gradient: Sequence[Arm]) -> Check:
    """Square vs the per-sample worst case of the gradient arms with at least its eps; fires when
    Square is significantly stronger. Pass the gradient attacks whose numbers are reported."""
    ref = [] if square is None else _reference(square, gradient)
    if square is None or not ref:
        return _skipped(CheckName.SQUARE, "no Square arm or no gradient arm of equal eps")
    return _compare(CheckName.SQUARE, [(square, "gradient worst case", _worst(ref))], "")


def check_bpda(bpda: bool, white: Sequence[Arm], free: Sequence[Arm]) -> Check:
    """On an integer graph (white-box gradients through the straight-through estimator of its
    dequantized twin, BPDA): the gradient-free and transfer arms (Square, transfer from the float
    model, black-box columns) vs the per-sample worst case of the BPDA white-box arms with at
    least their eps; fires when one is significantly stronger (paired rule): the STE gradient
    misleads on this graph, and its white-box columns overstate robustness. Skipped on graphs
    whose gradient is exact."""
    if not bpda:
        return _skipped(CheckName.BPDA_WEAKER, "the gradient is exact (no integer activations)",
                        applies=False)
    pairs = []
    for o in free:
        ref = _reference(o, white)
        if ref:
            pairs.append((o, "BPDA white-box worst case", _worst(ref)))
    return _compare(CheckName.BPDA_WEAKER, pairs,
                    "no gradient-free or transfer arm to pair with the BPDA white-box arms")


def check_twin(twin: Arm | None, graph: Sequence[Arm], integer: bool = True) -> Check:
    """On an integer graph: does Square crafted on its float-activation twin (scored on the
    graph) break samples that every attack on the graph itself left? `graph`: the arms that
    query or differentiate the graph (its white-box columns, Square on its own logits). The
    worst case of `graph` is compared with that worst case and the twin's arm together (the
    paired rule; the pair differs only where the twin adds a success). Fires when the twin adds
    significantly: the graph's quantized outputs stall the query attack on plateaus of equal
    margins and its own columns overstate robustness. Skipped without the twin's arm; on a graph
    that is not `integer` it does not apply."""
    if twin is None and not integer:
        return _skipped(CheckName.TWIN_STRONGER,
                        "no Square on a float-activation twin (not an integer graph)",
                        applies=False)
    if twin is None:
        return _skipped(CheckName.TWIN_STRONGER, "no Square on a float-activation twin")
    ref = [g for g in graph if _within(twin, g)]
    if not ref:
        return _skipped(CheckName.TWIN_STRONGER, "no attack on the graph with the twin's eps")
    own = _worst(ref)
    both = own & _flags(twin.robust)
    p = paired(both, own)
    added = int(np.sum(own & ~both))
    return Check(CheckName.TWIN_STRONGER, p.significant, p.gap, p.margin,
                 f"{twin.name} breaks {added} of {len(own)} samples that every attack on the "
                 f"graph left: {100 * p.gap:.1f} points (margin {100 * p.margin:.1f})")


def check_unbounded(arm: Arm | None, threshold: float = 0.01, why: str = "") -> Check:
    """Robust accuracy under L-inf PGD at eps = 1 (any image is reachable); fires above
    `threshold`, i.e. when the unbounded attack stays below 100% success. `why`: the reason
    there is no arm, when the run knows it."""
    if arm is None:
        return _skipped(CheckName.UNBOUNDED, why or "no attack at eps = 1 was run")
    acc = arm.accuracy
    return Check(CheckName.UNBOUNDED, acc > threshold, acc, threshold,
                 f"{arm.name} at eps {arm.eps} leaves {100 * acc:.1f}% correct")


def check_eps_sweep(curve: Sequence[Arm]) -> Check:
    """One attack kind at increasing eps. Fires when accuracy rises significantly from a smaller
    to a larger eps, or when it does not fall significantly from the smallest to the largest eps
    although a fall could be seen: a fall all the way to 0% would be significant. Accuracy already
    at or near 0% at the smallest eps (2 % of 250 samples, say) cannot fall significantly, so
    it says nothing about masking."""
    pts = sorted((a for a in curve if a.eps is not None), key=lambda a: float(a.eps or 0.0))
    if len(pts) < 2 or pts[0].eps == pts[-1].eps:
        return _skipped(CheckName.EPS_NO_EFFECT, "fewer than two eps values")
    for lo, hi in zip(pts, pts[1:], strict=False):
        rise = paired(lo.robust, hi.robust)
        if rise.significant:
            why = f"accuracy rises {100 * rise.gap:.1f} points from eps {lo.eps} to {hi.eps}"
            return Check(CheckName.EPS_NO_EFFECT, True, rise.gap, rise.margin, why)
    first, last = pts[0], pts[-1]
    fall = paired(last.robust, first.robust)
    detectable = paired(np.zeros_like(first.robust), first.robust).significant
    flat = detectable and not fall.significant
    return Check(CheckName.EPS_NO_EFFECT, flat, fall.gap, fall.margin,
                 f"accuracy falls {100 * fall.gap:.1f} points from eps {first.eps} to {last.eps} "
                 f"(needs > {100 * fall.margin:.1f})")


# ---------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Verdict:
    """The checks and the adaptive per-sample worst-case accuracy (None if not run)."""

    checks: tuple[Check, ...]
    worst_case: float | None = None
    clean_accuracy: float | None = None  # of the victim on the same samples (None: not given)

    @property
    def fired(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.fired)

    @property
    def suspected(self) -> bool:
        return bool(self.fired)

    @property
    def text(self) -> str:
        """The report's one-line verdict."""
        bound = "an attack gives an upper bound on robust accuracy, not a certificate"
        wc = "" if self.worst_case is None else f"adaptive worst case {100 * self.worst_case:.1f}%"
        skipped = [c.name.value for c in self.checks if not c.ran and c.applies]
        tail = f"; not checked: {', '.join(skipped)}" if skipped else ""
        if self.clean_accuracy == 0:
            tail += ("; the model classifies no sample correctly (a collapsed model): robust "
                     "accuracy is 0 whatever the attacks, so these checks say nothing about "
                     "robustness")
        if self.fired:
            head = f"masking suspected: {', '.join(c.name.value for c in self.fired)}"
            return f"{head}; {wc} ({bound}){tail}" if wc else f"{head}{tail}"
        head = "no masking signs detected"
        return f"{head}; {wc} ({bound}){tail}" if wc else f"{head} ({bound}){tail}"
