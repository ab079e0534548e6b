"""Square attack, L-inf (Andriushchenko et al. 2020, arXiv 1912.00049): score-based, query-only.

It needs only `Classifier.logits`: no gradient, no vjp, so it sees the deployed onnxruntime
session exactly as a user's API would, and gradient masking cannot stop it. A strong Square
result next to weak gradient attacks is a masking sign (docs/masking.md).

Per sample, minimising the margin loss z_y - max_{j != y} z_j (on logits):
    delta_0: vertical stripes, each column of each channel +-eps (random sign);
    iteration i: a square window of side s_i at a random position gets, per channel, a new
    constant value +-eps (random sign); the candidate is kept if it lowers the margin.
    s_i = round(sqrt(p_i * H * W)) clipped to [1, min(H, W) - 1]; p_i = p_init halved at
    iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10,000-query schedule,
    rescaled to the query budget (as the authors' code).
A sample stops at its first success. Each query is one logits row; a sample uses at most
`queries` of them (the start counts as one); the runner's final re-scoring is one more forward
pass. Defaults: 5,000 queries and p_init 0.8 are AutoAttack's standard settings for Square
[DEFAULT for MNIST/CIFAR here; the Square paper uses p_init 0.05 on ImageNet]. qrdeploy
[DEFAULT]: a window whose new values equal the current ones is not re-drawn (the authors' code
re-draws it), which can waste a query late in the schedule.

Randomness: sample i draws from its own stream (rng.sample_generator(seed, "square", i)) in
blocks of BLOCK iterations, so results do not depend on batch size.

>>> res = Square(eps=0.3, queries=1000)(model, x, y, seed=0)   # res.queries (N,)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qrdeploy.attacks.checks import Config, check_batch, check_count, check_eps, check_positive
from qrdeploy.attacks.result import AttackResult, Tracker
from qrdeploy.core import progress, rng
from qrdeploy.core.arrays import Array, from_numpy, margins, to_numpy
from qrdeploy.errors import ConfigError
from qrdeploy.model.protocol import Classifier

#: Iterations (of a 10,000-query schedule) at which the window fraction p halves.
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: Iterations of random numbers a sample draws at once from its stream.
BLOCK = 128


@dataclass(frozen=True)
class SquareResult(AttackResult):
    """AttackResult plus queries (N,) int64: logits rows spent on each sample (<= the budget)."""

    queries: np.ndarray


def window_fraction(p_init: float, i: int, queries: int) -> float:
    """p_i: the fraction of the image a window covers at iteration i (schedule rescaled)."""
    rescaled = int(i / queries * 10000)
    return float(p_init / 2 ** sum(rescaled > h for h in HALVINGS))


def window_side(p: float, h: int, w: int) -> int:
    """Side of the square window: round(sqrt(p * H * W)) clipped to [1, min(H, W) - 1]."""
    return int(min(max(round(np.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1)))


class _Draws:
    """Per-sample uniform numbers, drawn from each sample's own stream in blocks of BLOCK rows."""

    def __init__(self, seed: int, idx: np.ndarray, width: int) -> None:
        self.gens = [rng.sample_generator(seed, Square.name, int(i)) for i in idx]
        self.width = width
        self.block = np.zeros((len(idx), BLOCK, width))  # (N, BLOCK, 2 + C)

    def stripes(self, shape: tuple[int, int]) -> np.ndarray:
        """(N, C, W) uniform numbers for the stripe start (the first draw of every stream)."""
        return np.stack([g.random(shape) for g in self.gens])

    def row(self, i: int, act: np.ndarray) -> np.ndarray:
        """(M, 2 + C) uniform numbers of iteration i >= 1 for the active samples."""
        if (i - 1) % BLOCK == 0:  # every active sample has used its previous block in full
            for k in act:
                self.block[k] = self.gens[k].random((BLOCK, self.width))
        return np.asarray(self.block[act, (i - 1) % BLOCK])


@dataclass(frozen=True, repr=False)
class Square(Config):
    """Square attack, L-inf, untargeted, query-only; see the module docstring.

    Args: eps (L-inf radius in [0, 1] pixel units), queries (budget per sample, >= 1),
    p_init (initial window fraction, in (0, 1])."""

    eps: float = 0.3
    queries: int = 5000
    p_init: float = 0.8
    name: ClassVar[str] = "square"

    def __post_init__(self) -> None:
        check_eps("Square", self.eps)
        check_count("Square", "queries", self.queries)
        check_positive("Square", "p_init", self.p_init)
        if self.p_init > 1:
            raise ConfigError(f"Square: p_init must lie in (0, 1], got {self.p_init!r}; e.g. 0.8")

    def __call__(
        self,
        model: Classifier,
        x: Array,
        y: Array,
        *,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> SquareResult:
        """Attack x (N, C, H, W) in [0, 1] with labels y (N,) using only model.logits."""
        yh = check_batch(x, y, model.num_classes)
        idx = rng.check_indices(indices, len(yh))
        x0 = to_numpy(x).astype(np.float32)  # (N, C, H, W) host copy
        n, c, h, w = x0.shape
        draws = _Draws(rng.check_seed(seed), idx, 2 + c)
        signs = np.where(draws.stripes((c, w)) < 0.5, -1.0, 1.0)[:, :, None, :]  # (N, C, 1, W)
        adv = np.clip(x0 + self.eps * signs, 0.0, 1.0).astype(np.float32)
        z = to_numpy(model.logits(from_numpy(adv, x)))  # (N, K)
        margin, used = margins(z, yh), np.ones(n, np.int64)
        for i in range(1, self.queries):
            if i % 16 == 0:
                progress.report(i / self.queries)
            act = np.flatnonzero(margin <= 0)  # (M,) not yet fooled
            if act.size == 0:
                break
            cand = self._candidates(adv[act], x0[act], draws.row(i, act), i)
            zc = to_numpy(model.logits(from_numpy(cand, x)))  # (M, K)
            mc = margins(zc, yh[act])
            used[act] += 1
            keep = act[mc > margin[act]]  # the candidates that lowered the margin
            better = mc > margin[act]
            adv[keep], z[keep], margin[keep] = cand[better], zc[better], mc[better]
        tracker = Tracker(x, yh)
        tracker.offer(np.arange(n), from_numpy(adv, x), z, fooled_only=False)
        res = tracker.finish(model)
        return SquareResult(res.x_adv, res.logits, res.fooled, used)

    def cost(self) -> float:
        return 0.5 * self.queries  # forward passes only

    def _candidates(self, adv: np.ndarray, x0: np.ndarray, u: np.ndarray, i: int) -> np.ndarray:
        """adv (M, C, H, W) with one random window set to +-eps per channel around x0."""
        _, c, h, w = adv.shape
        s = window_side(window_fraction(self.p_init, i, self.queries), h, w)
        top = np.floor(u[:, 0] * (h - s + 1)).astype(np.int64)  # (M,)
        left = np.floor(u[:, 1] * (w - s + 1)).astype(np.int64)
        rows, cols = np.arange(h), np.arange(w)
        in_h = (rows >= top[:, None]) & (rows < top[:, None] + s)  # (M, H)
        in_w = (cols >= left[:, None]) & (cols < left[:, None] + s)  # (M, W)
        inside = in_h[:, None, :, None] & in_w[:, None, None, :]  # (M, 1, H, W)
        value = np.where(u[:, 2:] < 0.5, -self.eps, self.eps)[:, :, None, None]  # (M, C, 1, 1)
        new = np.clip(x0 + value, 0.0, 1.0).astype(np.float32)
        return np.where(inside, new, adv)
