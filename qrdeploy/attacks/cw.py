"""Carlini-Wagner L2 (Carlini & Wagner 2017, arXiv 1608.04644), untargeted, through `vjp`.

As cleverhans v3's CarliniWagnerL2: the example is x' = (tanh(w + arctanh((2x - 1) * 0.999999))
+ 1) / 2, so it always lies in [0, 1]; w starts at 0 and Adam (TF1 defaults) minimises, per sample,
    c * max(z_y - max_{j != y} z_j + confidence, 0) + ||x' - x||_2^2
for `max_iterations` steps, then a binary search over c (start `initial_const`; x10 until the
first success, then bisection) repeats this `binary_search_steps` times. Success means
argmax(z with z_y + confidence) != y; the smallest-L2 successful example over all steps is kept,
and a sample never fooled keeps its clean input. The margin is computed outside the model from
its logits, and its gradient comes from model.vjp with the cotangent c * (e_y - e_j*) (one
`logits` and one `vjp` call per iteration).

Differences from cleverhans v3, all qrdeploy [DEFAULT]s: abort_early is decided per sample (a
sample whose objective did not fall by 0.01 % since the last check, made every max_iterations // 10
steps, stops for this binary step) rather than on the batch's summed loss, so results do not
depend on batch size; the L2 term is measured to x itself, not to its tanh round trip (which
differs by about 1e-6). CW-L2 is deterministic: `seed` and `indices` are accepted (and checked)
only so that every attack has the same call.

>>> res = CWL2()(model, x, y)                # cleverhans v3 defaults (docs/method.md section 5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qrdeploy.attacks.checks import Config, check_batch, check_count, check_eps, check_positive
from qrdeploy.attacks.result import AttackResult
from qrdeploy.core import progress, rng
from qrdeploy.core.arrays import (
    Array,
    from_numpy,
    margins,
    namespace,
    put_rows,
    take_rows,
    to_numpy,
)
from qrdeploy.core.losses import Loss
from qrdeploy.model.protocol import Differentiable

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # tf.train.AdamOptimizer defaults
TANH_SHRINK = 0.999999  # cleverhans v3: keeps arctanh finite at x = 0 and x = 1
NO_UPPER = 1e10  # cleverhans v3's "no upper bound on c yet"
ABORT_TOLERANCE = 0.9999  # stop when the objective is above 99.99 % of its last checked value
_AXES = (1, 2, 3)


@dataclass
class _Adam:
    """Per-sample optimisation state of one binary-search step, in the caller's namespace."""

    pos: np.ndarray  # (M,) positions in the batch
    y: np.ndarray  # (M,) host labels
    c: np.ndarray  # (M,) host constants
    prev: np.ndarray  # (M,) host objective at the last abort check
    w: Array  # (M, C, H, W) tanh-space variable
    t0: Array  # (M, C, H, W) arctanh of the clean input
    x0: Array  # (M, C, H, W) clean input
    m: Array  # (M, C, H, W) Adam first moment
    v: Array  # (M, C, H, W) Adam second moment

    def keep(self, rows: np.ndarray) -> None:
        self.pos, self.y, self.c, self.prev = (
            a[rows] for a in (self.pos, self.y, self.c, self.prev)
        )
        self.w, self.t0, self.x0, self.m, self.v = (
            take_rows(a, rows) for a in (self.w, self.t0, self.x0, self.m, self.v)
        )

    def progressing(self, objective: np.ndarray) -> np.ndarray:
        """Abort-early test (M,): the objective fell below 99.99 % of its last checked value."""
        live = objective <= self.prev * ABORT_TOLERANCE
        self.prev = objective
        return live

    def step(self, grad: Array, t: int, lr: float) -> None:
        """One TF1 Adam update of w with gradient (M, C, H, W), t counting from 1."""
        xp = namespace(grad)
        self.m = ADAM_B1 * self.m + (1 - ADAM_B1) * grad
        self.v = ADAM_B2 * self.v + (1 - ADAM_B2) * grad * grad
        lr_t = lr * (1 - ADAM_B2**t) ** 0.5 / (1 - ADAM_B1**t)
        self.w = self.w - lr_t * self.m / (xp.sqrt(self.v) + ADAM_EPS)


class _Closest:
    """The smallest-L2 successful example per sample, over all iterations and binary steps."""

    def __init__(self, x: Array) -> None:
        self.x = x  # (N, C, H, W) a sample never fooled keeps its clean input
        self.l2 = np.full(x.shape[0], np.inf)  # squared L2

    def offer(self, pos: np.ndarray, xa: Array, l2: np.ndarray, ok: np.ndarray) -> None:
        better = ok & (l2 < self.l2[pos])
        if better.any():
            self.x = put_rows(self.x, pos[better], take_rows(xa, better))
            self.l2[pos[better]] = l2[better]


def _search(const: np.ndarray, lower: np.ndarray, upper: np.ndarray, success: np.ndarray) -> None:
    """cleverhans v3's binary search over c, in place: bisect once bounded, else c *= 10."""
    upper[:] = np.where(success, np.minimum(upper, const), upper)
    lower[:] = np.where(success, lower, np.maximum(lower, const))
    const[:] = np.where(upper < 1e9, (lower + upper) / 2, const * 10)


@dataclass(frozen=True, repr=False)
class CWL2(Config):
    """Carlini-Wagner L2, untargeted. Defaults are cleverhans v3's (docs/method.md section 5)."""

    confidence: float = 0.0
    learning_rate: float = 5e-3
    binary_search_steps: int = 5
    max_iterations: int = 1000
    abort_early: bool = True
    initial_const: float = 1e-2
    name: ClassVar[str] = "cw-l2"

    def __post_init__(self) -> None:
        check_eps("CWL2", self.confidence, None, "confidence", "a logit margin, e.g. 0")
        check_positive("CWL2", "learning_rate", self.learning_rate)
        check_positive("CWL2", "initial_const", self.initial_const)
        check_count("CWL2", "binary_search_steps", self.binary_search_steps)
        check_count("CWL2", "max_iterations", self.max_iterations)

    def __call__(
        self,
        model: Differentiable,
        x: Array,
        y: Array,
        *,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> AttackResult:
        """Attack x (N, C, H, W) in [0, 1] with labels y (N,); x_adv is the closest success."""
        yh = check_batch(x, y, model.num_classes)
        rng.check_indices(indices, len(yh))
        rng.check_seed(seed)
        const = np.full(len(yh), float(self.initial_const))
        lower, upper = np.zeros(len(yh)), np.full(len(yh), NO_UPPER)
        closest = _Closest(x)
        for b in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and b == self.binary_search_steps - 1:
                const[:] = upper  # cleverhans v3 "repeat": the last step uses the upper bound
            _search(const, lower, upper, self._optimise(model, x, yh, const, closest, b))
        z = model.logits(closest.x)  # (N, K)
        return AttackResult(closest.x, z, to_numpy(z).argmax(axis=1) != yh)

    def cost(self) -> float:
        return float(self.binary_search_steps * self.max_iterations)

    def _succeeds(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """argmax(z with z_y + confidence) != y, per row (cleverhans v3 `compare`)."""
        shifted = z.astype(np.float64)
        shifted[np.arange(len(y)), y] += self.confidence
        return np.asarray(shifted.argmax(axis=1) != y)

    def _optimise(
        self, model: Differentiable, x: Array, y: np.ndarray, const: np.ndarray, closest: _Closest,
        search_step: int = 0,
    ) -> np.ndarray:
        """One binary-search step from w = 0; returns which samples succeeded (N,)."""
        xp, n = namespace(x), len(y)
        zeros = xp.zeros_like(x)
        t0 = xp.atanh((x * 2 - 1) * TANH_SHRINK)  # (N, C, H, W)
        s = _Adam(np.arange(n), y, const.copy(), np.full(n, 1e6), zeros, t0, x, zeros, zeros)
        success = np.zeros(n, dtype=bool)
        check_every = max(self.max_iterations // 10, 1)
        for it in range(self.max_iterations):
            progress.report((search_step + it / self.max_iterations) / self.binary_search_steps)
            th = xp.tanh(s.w + s.t0)  # (M, C, H, W)
            xa = (th + 1) / 2
            # one forward-backward: the logits and d(max_{j != y} z_j - z_y)/dx (M, C, H, W)
            z, _, g_cw = model.loss_and_grad(xa, from_numpy(s.y, xa), Loss.CW)
            zh = to_numpy(z)  # (M, K)
            l2 = to_numpy(xp.sum((xa - s.x0) ** 2, axis=_AXES))  # (M,)
            ok = self._succeeds(zh, s.y)
            success[s.pos] |= ok
            closest.offer(s.pos, xa, l2, ok)
            hinge = np.maximum(self.confidence - margins(zh, s.y), 0.0)  # (M,)
            if self.abort_early and it % check_every == 0:
                live = s.progressing(s.c * hinge + l2)
                if not live.any():
                    break
                if not live.all():
                    s.keep(live)
                    th, xa, g_cw = take_rows(th, live), take_rows(xa, live), take_rows(g_cw, live)
                    zh, hinge = zh[live], hinge[live]
            grad_x = _margin_grad(g_cw, s.c, hinge) + 2 * (xa - s.x0)
            s.step(grad_x * (1 - th * th) / 2, it + 1, self.learning_rate)
        return success


def _margin_grad(g_cw: Array, const: np.ndarray, hinge: np.ndarray) -> Array:
    """d/dx of c * hinge per sample: -c * [hinge > 0] * d(max_{j != y} z_j - z_y)/dx (M, C, H, W).

    Each row of g_cw is its own sample's gradient (an inference graph has no coupling across the
    batch), so scaling rows equals back-propagating the cotangent c * [hinge > 0] * (e_y - e_j*)."""
    w = -(const * (hinge > 0))  # (M,)
    shape = (-1,) + (1,) * (len(g_cw.shape) - 1)
    return namespace(g_cw).astype(from_numpy(w.reshape(shape), g_cw), g_cw.dtype) * g_cw
