"""Margins along directions, per-class robustness and the F.L. paper's distance-based criteria.

The margin of a sample x with prediction y along a unit-L2 direction d is the smallest t > 0 at
which argmax f(clip(x + t d, 0, 1)) != y (docs/method.md section 1, step 1). It is found by doubling
from t0 until the prediction changes or t reaches t_max ("not reached": the margin is inf), then
by bisection; the returned value is the bracket's upper end, a point known to be past the boundary.
Everything here needs only `Classifier.logits` on numpy arrays (DeepFool also `vjp`), so it runs on
an OrtModel as is and on a TorchModel through `NumpyModel`. No torch at module level.

Paper (F.L., docs/method.md section 1): class levels high (top 20 %), medium, low (bottom 50 %),
seeds 20 / 100 / 150 per class for MNIST's 60,000 digits, the 40 smallest margins. Ours: everything
else, notably the search (t0 0.5, t_max 10, 6 bisections), the score of a sample (the mean of its
`top` smallest margins, a not-reached direction counting as t_max), the scaling of seed counts by
training-set size and the 1 : 1 cap on generated : real examples.

>>> m = directional_margins(model, x, y, random_directions(0, "rank", idx, 64, (1, 28, 28)))
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from qrdeploy.core import rng
from qrdeploy.core.arrays import to_numpy
from qrdeploy.errors import ConfigError, DataError
from qrdeploy.model.protocol import Classifier


class VjpClassifier(Classifier, Protocol):
    """A classifier with a vector-Jacobian product on numpy arrays (OrtModel, NumpyModel)."""

    def vjp(self, x: Any, cotangent: Any) -> tuple[Any, Any]: ...


@dataclass(frozen=True)
class SearchConfig:
    """The directional search (ours): doubling from t0, capped at t_max, then bisection."""

    t0: float = 0.5
    t_max: float = 10.0
    bisect_steps: int = 6
    batch_size: int = 1024  # rows per logits call

    def __post_init__(self) -> None:
        if not 0 < self.t0 <= self.t_max:
            raise ConfigError(f"need 0 < t0 <= t_max, got t0={self.t0}, t_max={self.t_max}")
        if self.bisect_steps < 0 or self.batch_size < 1:
            raise ConfigError(f"bisect_steps must be >= 0 and batch_size >= 1, got "
                              f"{self.bisect_steps}, {self.batch_size}")


def predict(model: Classifier, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """argmax of the logits (N,) int64, in batches."""
    parts = [to_numpy(model.logits(x[i:i + batch_size])).argmax(axis=1)
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# --- directions --------------------------------------------------------------------------------

def random_directions(seed: int, name: str, indices: np.ndarray, k: int,
                      shape: tuple[int, ...]) -> np.ndarray:
    """k i.i.d. Gaussian unit-L2 directions per sample (N, k, *shape) float32, drawn from the
    counter-based stream (seed, name, sample index): independent of batching and resume."""
    out = np.empty((len(indices), k, *shape), np.float32)
    for row, i in enumerate(indices):
        d = rng.sample_generator(seed, name, int(i)).normal(size=(k, int(np.prod(shape))))
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)  # (k, D)
        out[row] = d.reshape(k, *shape)
    return out


def gradient_directions(model: VjpClassifier, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The normalised input gradients of z_j - z_y for every j != y (N, K-1, C, H, W): the
    directions in which the linearised boundary to class j is nearest (docs/method.md section 1,
    step 2)."""
    n, k = len(y), model.num_classes
    out = np.zeros((n, k - 1, *x.shape[1:]), np.float32)
    eye = np.eye(k, dtype=np.float32)
    for slot in range(k - 1):
        j = np.full(n, slot)
        j = j + (j >= y)  # (N,) the slot-th class other than y
        _, g = model.vjp(x, eye[j] - eye[y])  # (N, C, H, W)
        g = np.asarray(g, np.float64).reshape(n, -1)
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-30)
        out[:, slot] = g.reshape(n, *x.shape[1:])
    return out


# --- the search --------------------------------------------------------------------------------

def _flips(model: Classifier, x: np.ndarray, y: np.ndarray, d: np.ndarray, n: np.ndarray,
           k: np.ndarray, t: np.ndarray, batch_size: int) -> np.ndarray:
    """Whether the prediction at clip(x[n] + t d[n, k]) differs from y[n], per pair (P,)."""
    out = np.empty(len(n), bool)
    for s in range(0, len(n), batch_size):
        sl = slice(s, s + batch_size)
        tt = t[sl].astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)
        xs = np.clip(x[n[sl]] + tt * d[n[sl], k[sl]], 0.0, 1.0)  # (B, C, H, W)
        out[sl] = to_numpy(model.logits(xs)).argmax(axis=1) != y[n[sl]]
    return out


def directional_margins(model: Classifier, x: np.ndarray, y: np.ndarray, d: np.ndarray,
                        config: SearchConfig = SearchConfig()) -> np.ndarray:
    """Margins (N, K) float64 of samples x (N, C, H, W) with labels y (N,) along unit directions
    d (N, K, C, H, W); inf where the prediction does not change up to t_max."""
    if d.ndim != x.ndim + 1 or d.shape[0] != len(x) or d.shape[2:] != x.shape[1:] \
            or len(y) != len(x):
        raise DataError(f"expected directions (N={len(x)}, K, {x.shape[1:]}) and {len(x)} "
                        f"labels, got {d.shape} and {len(y)}; draw one set per sample")
    shape = (len(x), d.shape[1])
    lo, hi = np.zeros(shape), np.full(shape, np.inf)
    t = np.full(shape, float(config.t0))
    active = np.ones(shape, bool)
    while active.any():  # doubling: at most log2(t_max / t0) + 2 passes
        n, k = np.nonzero(active)
        hit = _flips(model, x, y, d, n, k, t[n, k], config.batch_size)
        hi[n[hit], k[hit]] = t[n[hit], k[hit]]
        lo[n[~hit], k[~hit]] = t[n[~hit], k[~hit]]
        done = hit | (t[n, k] >= config.t_max)
        active[n[done], k[done]] = False
        t[n, k] = np.minimum(2 * t[n, k], config.t_max)
    n, k = np.nonzero(np.isfinite(hi))
    for _ in range(config.bisect_steps):
        mid = (lo[n, k] + hi[n, k]) / 2
        hit = _flips(model, x, y, d, n, k, mid, config.batch_size)
        hi[n[hit], k[hit]], lo[n[~hit], k[~hit]] = mid[hit], mid[~hit]
    return hi


def top_mean(margins: np.ndarray, top: int, cap: float) -> np.ndarray:
    """Each row's mean of its `top` smallest margins (N,), a not-reached (inf) one counting as
    `cap` (ours: the score is then a lower bound)."""
    m = np.sort(np.minimum(margins, cap), axis=1)[:, :top]  # (N, top)
    return np.asarray(m.mean(axis=1))


@dataclass(frozen=True)
class BoundaryExamples:
    """Generated examples that fool their generator (G, C, H, W) with true labels (G,), and how
    many were proposed and discarded (still correctly classified, or past the clip)."""

    x: np.ndarray
    y: np.ndarray
    proposed: int
    discarded: int


def boundary_examples(model: Classifier, x: np.ndarray, y: np.ndarray, d: np.ndarray,
                      margins: np.ndarray, alpha: np.ndarray) -> BoundaryExamples:
    """F.L. generation (docs/method.md section 1, step 5): for each seed x (S, C, H, W) and each
    of its T smallest finite margins (T = alpha.shape[1]) along d (S, K, C, H, W), clip(x + alpha m
    d) labelled with y; an example the model does not misclassify is discarded and counted."""
    top = alpha.shape[1]
    order = np.argsort(margins, axis=1, kind="stable")[:, :top]  # (S, T)
    m = np.take_along_axis(margins, order, axis=1)  # (S, T)
    s, j = np.nonzero(np.isfinite(m))  # a not-reached direction gives nothing
    step = (alpha[s, j] * m[s, j]).astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
    xg = np.clip(x[s] + step * d[s, order[s, j]], 0.0, 1.0)  # (P, C, H, W)
    keep = predict(model, xg) != y[s]
    return BoundaryExamples(xg[keep], y[s][keep], len(s), int((~keep).sum()))


# --- ranking and seeds -------------------------------------------------------------------------

class Level(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


def class_means(values: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class mean of values (C,); nan for a class without samples."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        if (y == c).any():
            out[c] = float(values[y == c].mean())
    return out


def rank_classes(scores: np.ndarray, high: float = 0.2, low: float = 0.5) -> list[Level]:
    """Levels per class (paper): the top `high` fraction of classes by score are HIGH, the bottom
    `low` fraction LOW, the rest MEDIUM. Ties go to the lower class index first; nan ranks last."""
    c = len(scores)
    order = sorted(range(c), key=lambda i: (-np.nan_to_num(scores[i], nan=-np.inf), i))
    n_high, n_low = int(round(high * c)), int(round(low * c))
    levels = [Level.MEDIUM] * c
    for rank, cls in enumerate(order):
        if rank < n_high:
            levels[cls] = Level.HIGH
        elif rank >= c - n_low:
            levels[cls] = Level.LOW
    return levels


def seed_counts(levels: list[Level], n_train: int, per_level: tuple[int, int, int] = (20, 100, 150),
                reference: int = 60000, per_seed: int = 40, max_ratio: float = 1.0) -> np.ndarray:
    """Seeds per class (C,) int64: the paper's counts (high, medium, low) scaled by
    n_train / reference (ours, rounded, at least 1 where the paper's count is > 0), then scaled
    down so that at most max_ratio * n_train examples are generated at per_seed each (ours)."""
    base = dict(zip(Level, per_level, strict=True))
    raw = np.array([base[lv] * n_train / reference for lv in levels])  # (C,)
    counts = np.where(raw > 0, np.maximum(np.round(raw), 1), 0)
    budget = max_ratio * n_train / per_seed
    if counts.sum() > budget:
        counts = np.where(raw > 0, np.maximum(np.floor(counts * budget / counts.sum()), 1), 0)
    return counts.astype(np.int64)


def pick_seeds(scores: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions (S,) of the counts[c] samples of each class c with the smallest scores
    (docs/method.md section 1, step 4), class by class; ties by position."""
    picked = [np.flatnonzero(y == c)[np.argsort(scores[y == c], kind="stable")[:counts[c]]]
              for c in range(len(counts))]
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)


def histogram(margins: np.ndarray, cap: float, bins: int = 20) -> dict[str, Any]:
    """Counts of finite margins in `bins` equal bins over [0, cap] plus the not-reached count."""
    finite = margins[np.isfinite(margins)]
    counts, edges = np.histogram(finite, bins=bins, range=(0.0, cap))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist(),
            "not_reached": int((~np.isfinite(margins)).sum())}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two (N,) arrays (inf allowed; ties broken by position)."""
    if len(a) < 2:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a, kind="stable")), np.argsort(np.argsort(b, kind="stable"))
    return float(np.corrcoef(ra, rb)[0, 1])
