"""Small statistics without scipy: Wilson intervals for accuracies, McNemar's exact test for
paired differences (two models, or two attacks, on the same samples), and the one paired
non-inferiority decision (Newcombe's hybrid score interval) that F.L. acceptance, `reproduce`'s
claims and `check` use."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist

import numpy as np

from qrdeploy.errors import ConfigError, DataError

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Proportion:
    """k successes of n with a 95% Wilson score interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def to_json(self) -> dict[str, int | float | list[float]]:
        """{"k", "n", "value", "ci95": [lo, hi]}: how results, cards and reports store it."""
        return {"k": self.k, "n": self.n, "value": self.value, "ci95": list(self.interval)}

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{100 * self.value:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if k <= 0 else max(0.0, centre - half)  # exact ends: rounding must not
    hi = 1.0 if k >= n else min(1.0, centre + half)  # put a bound past the estimate
    return (lo, hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial test at 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


# ------------------------------------------------------------------ paired non-inferiority


def normal_quantile(p: float) -> float:
    """The standard normal quantile of p in (0, 1)."""
    return NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class PairedCounts:
    """Two classifiers (or one before and after a change) scored on the same n samples: `both`
    right, only `new` right (gains), only `old` right (losses), `neither` right."""

    both: int
    gains: int
    losses: int
    neither: int

    @classmethod
    def from_flags(cls, new_ok: np.ndarray, old_ok: np.ndarray) -> PairedCounts:
        a, b = np.asarray(new_ok, bool), np.asarray(old_ok, bool)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise DataError(f"a paired comparison needs two flag vectors over the same samples, "
                            f"got shapes {a.shape} and {b.shape}; score both on the same data")
        return cls(int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()),
                   int((~a & ~b).sum()))

    @property
    def n(self) -> int:
        return self.both + self.gains + self.losses + self.neither

    @property
    def difference(self) -> float:
        """accuracy(new) - accuracy(old), a fraction."""
        return (self.gains - self.losses) / self.n if self.n else float("nan")


def newcombe_paired_interval(c: PairedCounts, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, Statistics in Medicine 17:2635, method 10) for the
    paired difference accuracy(new) - accuracy(old): the two Wilson intervals combined with the
    correlation of the pairs, phi = (both*neither - gains*losses) / sqrt of the four margins."""
    n = c.n
    if n == 0:
        return (float("nan"), float("nan"))
    p1, p2 = (c.both + c.gains) / n, (c.both + c.losses) / n
    l1, u1 = wilson_interval(c.both + c.gains, n, z)
    l2, u2 = wilson_interval(c.both + c.losses, n, z)
    margins = ((c.both + c.gains) * (c.losses + c.neither) * (c.both + c.losses)
               * (c.gains + c.neither))
    phi = (c.both * c.neither - c.gains * c.losses) / math.sqrt(margins) if margins else 0.0
    d = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (max(-1.0, d - below), min(1.0, d + above))


class Method(StrEnum):
    """How a paired difference's bound is computed."""

    NEWCOMBE = "newcombe-hybrid-score"  # 0/1 scores (accuracies)
    NORMAL = "paired-normal"  # scores in [0, 1] (e.g. a mean over columns or noise draws)


@dataclass(frozen=True)
class NonInferiority:
    """Is `new` worse than `old` by less than `margin`, on the same samples? The one-sided
    `confidence` bounds of mean(new) - mean(old): non-inferior when the lower bound lies above
    -margin, inferior when the upper bound lies below it, undecided otherwise. Fractions."""

    estimate: float
    lower: float
    upper: float
    margin: float
    confidence: float
    n: int
    method: Method
    counts: PairedCounts | None = None  # for 0/1 scores

    @property
    def non_inferior(self) -> bool:
        return self.lower > -self.margin

    @property
    def inferior(self) -> bool:
        return self.upper < -self.margin

    @property
    def decision(self) -> str:
        return ("non-inferior" if self.non_inferior else
                "inferior" if self.inferior else "undecided")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "test": "non-inferiority", "method": self.method.value, "n": self.n,
            "estimate": self.estimate, "lower": self.lower, "upper": self.upper,
            "margin": self.margin, "confidence": self.confidence, "decision": self.decision}
        if self.counts is not None:
            out["gains"], out["losses"] = self.counts.gains, self.counts.losses
        return out

    def __str__(self) -> str:
        level = f"{100 * self.confidence:g}%"
        pairs = "" if self.counts is None else \
            f", {self.counts.gains} gained / {self.counts.losses} lost"
        return (f"{100 * self.estimate:+.2f} points, one-sided {level} lower bound "
                f"{100 * self.lower:+.2f} vs margin -{100 * self.margin:g} ({self.method.value}"
                f"{pairs}, n={self.n}): {self.decision}")


def non_inferiority(new: np.ndarray, old: np.ndarray, margin: float,
                    confidence: float = 0.95) -> NonInferiority:
    """The paired non-inferiority decision of `new` against `old`: per-sample scores (N,) in
    [0, 1] on the same samples (bools for accuracies). 0/1 scores use Newcombe's hybrid score
    interval (exact McNemar tests equality and cannot carry a margin); other scores the paired
    normal interval of the mean difference. The one-sided bound at `confidence` is the two-sided
    interval at 2 * confidence - 1."""
    if not 0 <= margin < 1:
        raise ConfigError(f"a non-inferiority margin is a fraction in [0, 1), got {margin}")
    if not 0.5 < confidence < 1:
        raise ConfigError(f"confidence must be in (0.5, 1), got {confidence}")
    a, b = np.asarray(new, np.float64), np.asarray(old, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise DataError(f"a paired comparison needs two score vectors over the same samples, "
                        f"got shapes {a.shape} and {b.shape}; score both on the same data")
    z = normal_quantile(confidence)
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    if binary:
        counts = PairedCounts.from_flags(a > 0.5, b > 0.5)
        lo, hi = newcombe_paired_interval(counts, z)
        return NonInferiority(counts.difference, lo, hi, margin, confidence, counts.n,
                              Method.NEWCOMBE, counts)
    d = a - b  # (N,)
    half = z * float(d.std(ddof=1)) / math.sqrt(d.size) if d.size > 1 else math.inf
    m = float(d.mean())
    return NonInferiority(m, m - half, m + half, margin, confidence, int(d.size), Method.NORMAL)
