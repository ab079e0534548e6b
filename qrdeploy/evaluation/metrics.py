"""Numbers from the per-sample flags of an Evaluation (qrdeploy.evaluation.runner): robust accuracy
with clean errors counted as failures, the paper-style accuracy on attacked inputs, the per-sample
worst case, accuracy-vs-eps curves, CW-L2 distances, noise draws, and paired tests between two
models or two attacks on the same samples (exact McNemar and Newcombe's paired interval, the one
interval of a paired difference everywhere in qrdeploy: check, F.L. acceptance, reports). Every
accuracy is a Proportion with a 95 % Wilson interval (qrdeploy.core.stats). No scipy; see
docs/evaluation.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qrdeploy.core.stats import PairedCounts, Proportion, mcnemar_exact, newcombe_paired_interval
from qrdeploy.errors import DataError
from qrdeploy.evaluation.runner import Evaluation, robust_under
from qrdeploy.evaluation.suites import Mode, Suite

ALPHA = 0.05  # a paired difference is "significant" when McNemar's exact p < ALPHA
#: the noise column's bootstrap interval of a mean over draws (a mean of per-sample fractions is
#: not a binomial count, so neither Wilson nor Newcombe applies to it)
BOOTSTRAP_RESAMPLES = 2_000
BOOTSTRAP_SEED = 20201229  # fixed: an interval is part of the report, not of a run's seed


def robust_flags(ev: Evaluation, key: str) -> np.ndarray:
    """Correct on the clean input and not fooled by the attack (N,): clean errors are failures."""
    return np.asarray(ev.clean_correct & ~ev.records[key].fooled)


def attacked_flags(ev: Evaluation, key: str) -> np.ndarray:
    """The paper-style verdict: the attacked input is classified correctly (N,)."""
    return ~ev.records[key].fooled


def worst_case(ev: Evaluation) -> tuple[list[str], np.ndarray]:
    """Every L-inf column that ran (the paper's white-box and black-box columns at their own eps,
    and the adaptive columns) and the per-sample worst case over them (N,): robust only when
    correct on the clean input and robust to every one of them. CW-L2 (unbounded), noise and the
    eps sweep are left out: they are not attacks at a column's budget."""
    keys = [c.key for c in ev.suite.columns if c.bounded or c.mode is Mode.ADAPTIVE]
    return keys, robust_under(ev.records, keys)


def paper_worst_case(ev: Evaluation) -> tuple[list[str], np.ndarray]:
    """The per-sample worst case over the paper's L-inf columns only (white-box and black-box at
    their own eps, no adaptive column): the paper's robustness number, the 'before' and 'after'
    of the report's summary."""
    keys = [c.key for c in ev.suite.columns if c.bounded]
    return keys, robust_under(ev.records, keys)


def adaptive_worst_case(ev: Evaluation) -> tuple[list[str], np.ndarray]:
    """The per-sample worst case at the adaptive eps (N,): correct on the clean input, robust to
    every paper L-inf column and sweep point of at most that eps, and to every adaptive column.
    Exact although the gradient entries ran only on the survivors of those cheaper columns (a
    sample they skipped is recorded as fooled). ([], clean flags) without adaptive columns."""
    keys = [*ev.survivor_keys, *(c.key for c in ev.suite.by_mode(Mode.ADAPTIVE))]
    return keys, robust_under(ev.records, keys)


@dataclass(frozen=True)
class CurvePoint:
    eps: float
    robust: Proportion  # at this eps
    worst: Proportion  # robust at every eps <= this one (non-increasing in eps)


def sweep_curves(ev: Evaluation) -> dict[str, list[CurvePoint]]:
    """Accuracy-vs-eps per white-box kind, with the per-sample worst case over eps' <= eps."""
    curves: dict[str, list[CurvePoint]] = {}
    for kind in dict.fromkeys(p.kind for p in ev.suite.sweep):
        points = sorted((p for p in ev.suite.sweep if p.kind == kind), key=lambda p: p.eps)
        alive = ev.clean_correct.copy()
        out = []
        for p in points:
            ok = robust_flags(ev, p.key)
            alive &= ok
            out.append(CurvePoint(p.eps, _prop(ok), _prop(alive)))
        curves[kind] = out
    return curves


def _prop(flags: np.ndarray) -> Proportion:
    return Proportion(int(flags.sum()), int(flags.size))


@dataclass(frozen=True)
class CWSummary:
    median_l2: float | None  # over the examples found on clean-correct samples
    found: int
    at_radius: tuple[tuple[float, Proportion], ...]  # accuracy with only examples of L2 <= r


def cw_summary(ev: Evaluation, key: str) -> CWSummary:
    rec, correct = ev.records[key], ev.clean_correct
    found = correct & rec.fooled  # (N,)
    median = float(np.median(rec.l2[found])) if found.any() else None
    radii = tuple((r, _prop(correct & ~(found & (rec.l2 <= r)))) for r in ev.suite.cw_radii)
    return CWSummary(median, int(found.sum()), radii)


@dataclass(frozen=True)
class NoiseSummary:
    draws: int
    mean: float  # mean over draws of robust accuracy (clean errors count as failures)
    mean_ci95: tuple[float, float]  # bootstrap over samples
    mean_attacked: float  # the paper's column: mean accuracy on the noisy inputs
    worst: Proportion  # robust to all k draws (qrdeploy's column)


def noise_summary(ev: Evaluation, key: str) -> NoiseSummary:
    draws = ev.records[key].draws
    assert draws is not None  # noise jobs always record their draws
    ok = ev.clean_correct[None, :] & ~draws  # (D, N)
    per_sample = ok.mean(axis=0)  # (N,)
    return NoiseSummary(int(draws.shape[0]), float(per_sample.mean()),
                        bootstrap_mean_interval(per_sample), float((~draws).mean()),
                        _prop(ok.all(axis=0)))


# --------------------------------------------------------------------------------- paired tests


def bootstrap_mean_interval(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of `values` (N,), resampling samples."""
    gen = np.random.default_rng(seed)
    v = np.asarray(values, np.float64)
    means = v[gen.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)  # (R,)
    lo, hi = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedTest:
    """a vs b on the same n samples: accuracies, difference a - b with its 95 % Newcombe hybrid
    score interval, discordant counts (a right b wrong, a wrong b right) and McNemar's exact
    p-value."""

    a: str
    b: str
    n: int
    acc_a: float
    acc_b: float
    diff: float
    ci95: tuple[float, float]
    a_only: int
    b_only: int
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def paired_test(a_flags: np.ndarray, b_flags: np.ndarray, a: str = "a", b: str = "b"
                ) -> PairedTest:
    """Paired comparison of two bool flag vectors (N,) on the same samples."""
    fa, fb = np.asarray(a_flags, bool), np.asarray(b_flags, bool)
    if fa.shape != fb.shape or fa.ndim != 1 or fa.size == 0:
        raise DataError(f"a paired test needs two flag vectors over the same samples, got shapes "
                        f"{fa.shape} and {fb.shape}; compare results of the same data and -n")
    a_only, b_only = int((fa & ~fb).sum()), int((~fa & fb).sum())
    return PairedTest(a, b, fa.size, float(fa.mean()), float(fb.mean()),
                      float(fa.mean() - fb.mean()),
                      newcombe_paired_interval(PairedCounts.from_flags(fa, fb)),
                      a_only, b_only, mcnemar_exact(a_only, b_only))


def attack_pairs(suite: Suite) -> list[tuple[str, str]]:
    """Column pairs (A, B) where A should be at least as strong as B, so that a significantly
    positive A − B (A leaves more images correct) is a gradient-masking warning sign: white-box
    vs transfer (black-box) of the same attack, and iterative PGD vs one-step FGSM at PGD's eps
    or, without an FGSM column at that eps, at the largest FGSM eps below it (CIFAR-10: PGD at
    4/255 vs FGSM at 2/255); an FGSM with more budget than PGD is no pair."""
    keys = {c.key for c in suite.columns}
    pairs = [(f"white/{c.name}", c.key) for c in suite.by_mode(Mode.BLACK)
             if f"white/{c.name}" in keys]
    pgd = next((c for c in suite.by_mode(Mode.WHITE) if c.name == "pgd" and c.eps), None)
    fgsm = [c for c in suite.by_mode(Mode.WHITE) if c.name.startswith("fgsm-") and c.eps]
    if pgd is not None and pgd.eps is not None:
        within = [c for c in fgsm if c.eps is not None and c.eps <= pgd.eps + 1e-12]
        if within:
            pairs.append((pgd.key, max(within, key=lambda c: c.eps or 0.0).key))
    return pairs
