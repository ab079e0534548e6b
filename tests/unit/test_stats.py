"""The paired non-inferiority decision: Newcombe's hybrid score interval, checked by its exact
coverage (enumerating every 2x2 table), by hand-computed cases and by the decision rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qrdeploy.core.stats import (
    Method,
    PairedCounts,
    newcombe_paired_interval,
    non_inferiority,
    normal_quantile,
    wilson_interval,
)
from qrdeploy.errors import ConfigError, DataError


def _exact_coverage(n: int, probs: tuple[float, float, float, float], z: float) -> float:
    """P(interval covers the true difference) over every table of n pairs (multinomial)."""
    theta = probs[1] - probs[2]
    log_p = [math.log(p) if p > 0 else -math.inf for p in probs]
    total = 0.0
    for g in range(n + 1):
        for lo in range(n + 1 - g):
            for b in range(n + 1 - g - lo):
                ne = n - g - lo - b
                counts = (b, g, lo, ne)
                lp = math.lgamma(n + 1) + sum(k * lp_ - math.lgamma(k + 1) if k else 0.0
                                              for k, lp_ in zip(counts, log_p, strict=True))
                if lp < -30:
                    continue
                low, high = newcombe_paired_interval(PairedCounts(*counts), z)
                total += math.exp(lp) * (low <= theta <= high)
    return total


def test_coverage_is_near_nominal_for_correlated_pairs() -> None:
    """Newcombe reports mean coverage close to 95 % for method 10. Pairs of one classifier
    before and after a small change are strongly correlated (few discordant pairs); ignoring the
    correlation (phi = 0) gives about 99.5 % on these points, a sign error less still."""
    points = [(0.3, 0.2, 0.1, 0.4), (0.8, 0.05, 0.05, 0.1), (0.9, 0.03, 0.01, 0.06),
              (0.5, 0.25, 0.05, 0.2)]
    cov = [_exact_coverage(30, p, normal_quantile(0.975)) for p in points]
    assert 0.93 <= float(np.mean(cov)) <= 0.975, cov
    assert min(cov) >= 0.90, cov


def test_hand_computed_interval() -> None:
    """both 470, gains 7, losses 8, neither 15 (n = 500) at the one-sided 95 % level, with the
    formula written out step by step."""
    c = PairedCounts(470, 7, 8, 15)
    z = normal_quantile(0.95)
    p1, p2 = 477 / 500, 478 / 500
    l1, u1 = wilson_interval(477, 500, z)
    l2, u2 = wilson_interval(478, 500, z)
    phi = (470 * 15 - 7 * 8) / math.sqrt(477 * 23 * 478 * 22)
    low = (p1 - p2) - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = (p1 - p2) + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    assert newcombe_paired_interval(c, z) == pytest.approx((low, high), abs=1e-15)
    assert low == pytest.approx(-0.0157, abs=5e-5) and high == pytest.approx(0.0115, abs=5e-5)


def test_identical_models_give_an_interval_around_zero() -> None:
    """No discordant pair in 500 does not prove a zero difference: the interval keeps a width
    (the naive one would be [0, 0])."""
    lo, hi = newcombe_paired_interval(PairedCounts(480, 0, 0, 20))
    assert lo < 0 < hi and lo == pytest.approx(-hi, abs=1e-12)
    assert hi == pytest.approx(0.0070144, abs=1e-6)


@pytest.mark.parametrize(("gains", "losses", "margin", "decision"), [
    (7, 8, 0.02, "non-inferior"),  # -0.2 points, bound about -1.6: inside a 2-point margin
    (7, 8, 0.01, "undecided"),  # the same round, a 1-point margin: the bound lies below -1
    (2, 40, 0.02, "inferior"),  # -7.6 points: the upper bound lies below -2
    (30, 2, 0.0, "non-inferior"),  # a clear gain passes even a zero margin
])
def test_decision(gains: int, losses: int, margin: float, decision: str) -> None:
    n, both = 500, 440
    new = np.zeros(n, bool)
    old = np.zeros(n, bool)
    new[:both], old[:both] = True, True
    new[both:both + gains] = True
    old[both + gains:both + gains + losses] = True
    ni = non_inferiority(new, old, margin)
    assert ni.decision == decision and ni.method is Method.NEWCOMBE
    assert ni.estimate == pytest.approx((gains - losses) / n)
    assert ni.lower < ni.estimate < ni.upper
    assert ni.non_inferior == (ni.lower > -margin) and ni.inferior == (ni.upper < -margin)
    doc = ni.to_json()
    assert doc["gains"] == gains and doc["losses"] == losses and doc["decision"] == decision


def test_scores_between_0_and_1_use_the_paired_normal_bound() -> None:
    rng = np.random.default_rng(0)
    old = rng.uniform(0, 1, 400)
    new = np.clip(old - 0.01 + rng.normal(0, 0.05, 400), 0, 1)
    ni = non_inferiority(new, old, 0.03)
    d = new - old
    half = normal_quantile(0.95) * d.std(ddof=1) / math.sqrt(400)
    assert ni.method is Method.NORMAL and ni.counts is None
    assert (ni.lower, ni.upper) == pytest.approx((d.mean() - half, d.mean() + half))
    assert ni.decision == "non-inferior"


@pytest.mark.parametrize(("args", "error", "match"), [
    ((np.ones(3, bool), np.ones(4, bool), 0.02), DataError, "same samples"),
    ((np.ones(0, bool), np.ones(0, bool), 0.02), DataError, "same samples"),
    ((np.ones(3, bool), np.ones(3, bool), 1.5), ConfigError, "margin"),
    ((np.ones(3, bool), np.ones(3, bool), 0.02, 0.4), ConfigError, "confidence"),
])
def test_errors(args: tuple[object, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        non_inferiority(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 24, 200, 1000])
def test_wilson_bounds_never_pass_the_estimate_at_the_ends(n: int) -> None:
    # k = 0 and k = n: the exact ends (rounding once left 1.7e-18 above 0/200)
    assert wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(n, n)[1] == 1.0
    for k in range(0, n + 1, max(1, n // 10)):
        lo, hi = wilson_interval(k, n)
        assert lo <= k / n <= hi
