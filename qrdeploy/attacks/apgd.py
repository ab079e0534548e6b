"""APGD (Croce & Hein 2020, arXiv 2003.01690), L-inf: APGD-CE, APGD-DLR and targeted APGD-DLR.

Why a module of its own and not a preset of the one loop (loop.py): APGD is a different
algorithm, not PGD with other hooks. Its state is per sample and changes at checkpoints: a step
size eta_i that starts at 2 eps and is halved, the best point x_max_i with its loss and gradient
that the iterate jumps back to, and a count of loss increases; its update mixes the new point with
the previous one (momentum alpha = 0.75). The loop's hooks only see one gradient at a time.
Randomness (rng.py), validation (checks.py), array helpers (arrays.py) and the runner's worst-case
bookkeeping (result.Tracker) are shared with the loop.

The algorithm (paper Algorithm 1), per sample, with P the projection onto the eps ball in [0, 1]:
    x0 = P(x + U[-eps, eps]);  eta = 2 eps
    z1 = P(x_k + eta sign(g_k));  x_{k+1} = z1 for k = 0, else
    x_{k+1} = P(x_k + alpha (z1 - x_k) + (1 - alpha) (x_k - x_{k-1}))
    at checkpoints w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} -
    0.03, 0.06): halve eta and restart from x_max when (1) the loss rose in fewer than
    rho = 0.75 of the steps since the last checkpoint, or (2) eta was not halved at the last
    checkpoint and the best loss has not improved since.
qrdeploy's choices [DEFAULT]: after a jump back to x_max the momentum term restarts at zero
(x_{k-1} := x_max); a sample leaves the run at its first fooling iterate (as the loop's early
stop; the state is per sample, so this changes nothing for the others); the random start is
uniform in the ball (AutoAttack scales a uniform draw to max-norm eps).

Losses: CE and DLR come from the model's fused `loss_and_grad`. Targeted DLR (K >= 4),
-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), is computed here in numpy float64 from the logits,
and its cotangent goes through `vjp`. The targets are the top-`targets` classes other than y at
the clean input, one run each. Defaults follow AutoAttack's standard version: 100 iterations,
1 restart, 9 target classes.

>>> res = APGD(eps=0.3, loss=Loss.DLR)(model, x, y, seed=0)
>>> res = APGD(eps=0.3, loss=Loss.DLR, targets=9)(model, x, y, seed=0)    # APGD-T-DLR
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from qrdeploy.attacks.checks import (
    Config,
    check_batch,
    check_count,
    check_eps,
    check_loss,
    check_positive,
)
from qrdeploy.attacks.result import AttackResult, Tracker
from qrdeploy.core import progress, rng
from qrdeploy.core.arrays import Array, from_numpy, namespace, project, take_rows, to_numpy
from qrdeploy.core.losses import DLR_EPS, Loss
from qrdeploy.errors import ConfigError
from qrdeploy.model.protocol import Differentiable

#: Objective: (x (M, C, H, W), y (M,) caller's namespace, targets (M,) host or None)
#: -> (logits (M, K) host, loss (M,) host float64, gradient (M, C, H, W) caller's namespace)
Objective = Callable[[Array, Array, "np.ndarray | None"], tuple[np.ndarray, np.ndarray, Array]]


def checkpoints(steps: int) -> tuple[int, ...]:
    """The iterations w_j = ceil(p_j * steps) at which APGD may halve its step (paper section 3.2).

    p is kept in integer hundredths so that ceil() never sees 41.000000001."""
    p = [0, 22]
    while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return tuple(sorted({-(-q * steps // 100) for q in p[1:]}))


def targeted_dlr(
    logits: np.ndarray, y: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Targeted DLR -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12) per sample (N,), and its
    gradient w.r.t. the logits (N, K), both float64; maximised by the attack. Needs K >= 4."""
    z = np.asarray(logits, dtype=np.float64)  # (N, K)
    rows = np.arange(len(z))
    order = np.argsort(-z, axis=1, kind="stable")  # (N, K) decreasing
    srt = z[rows[:, None], order]
    den = srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + DLR_EPS  # (N,)
    num = z[rows, y] - z[rows, target]
    cot = np.zeros_like(z)
    cot[rows, y] -= 1.0 / den
    cot[rows, target] += 1.0 / den
    cot[rows, order[:, 0]] += num / den**2
    cot[rows, order[:, 2]] -= 0.5 * num / den**2
    cot[rows, order[:, 3]] -= 0.5 * num / den**2
    return -num / den, cot


def fused_objective(model: Differentiable, loss: Loss) -> Objective:
    """CE or DLR through the model's fused loss_and_grad (one gradient run per step)."""

    def run(x: Array, y: Array, target: np.ndarray | None) -> Any:
        z, value, g = model.loss_and_grad(x, y, loss)
        return to_numpy(z), to_numpy(value).astype(np.float64), g

    return run


def targeted_objective(model: Differentiable) -> Objective:
    """Targeted DLR: logits, a float64 cotangent on the host, then `vjp` (two runs per step)."""

    def run(x: Array, y: Array, target: np.ndarray | None) -> Any:
        assert target is not None  # targeted runs always pass their targets
        z = to_numpy(model.logits(x))  # (M, K)
        value, cot = targeted_dlr(z, to_numpy(y), target)
        _, g = model.vjp(x, from_numpy(cot.astype(np.float32), x))
        return z, value, g

    return run


@dataclass
class _State:
    """One APGD run on the samples still active: caller-namespace arrays and host bookkeeping."""

    pos: np.ndarray  # (M,) positions in the batch
    target: np.ndarray | None  # (M,) target classes of a targeted run
    y: Array  # (M,)
    lo: Array  # (M, C, H, W) max(x - eps, 0)
    hi: Array  # (M, C, H, W) min(x + eps, 1)
    x: Array  # (M, C, H, W) current iterate
    x_prev: Array  # (M, C, H, W) previous iterate (momentum)
    grad: Array  # (M, C, H, W) gradient at x
    x_best: Array  # (M, C, H, W) the point of largest loss so far
    grad_best: Array  # (M, C, H, W) its gradient
    loss: np.ndarray  # (M,) loss at x
    loss_best: np.ndarray  # (M,)
    loss_check: np.ndarray  # (M,) loss_best at the last checkpoint
    eta: np.ndarray  # (M,) step sizes
    rises: np.ndarray  # (M,) loss increases since the last checkpoint
    halved: np.ndarray  # (M,) bool: eta was halved at the last checkpoint

    def keep(self, rows: np.ndarray) -> None:
        """Keep only the rows where the (M,) bool mask is True."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                setattr(self, f.name, v[rows])
            elif v is not None:
                setattr(self, f.name, take_rows(v, rows))


def _column(a: np.ndarray, like: Array) -> Array:
    """A host (M,) array as (M, 1, 1, 1) in the namespace of `like`."""
    xp = namespace(like)
    return xp.astype(from_numpy(a.reshape(-1, 1, 1, 1), like), like.dtype)


def _mask(a: np.ndarray, like: Array) -> Array:
    return from_numpy(a.reshape(-1, 1, 1, 1), like)


@dataclass(frozen=True, repr=False)
class APGD(Config):
    """Auto-PGD, L-inf (Croce & Hein 2020, arXiv 2003.01690); see the module docstring.

    Args: eps (L-inf radius, [0, 1] pixel units); steps (iterations; steps + 1 gradient
    evaluations per run); restarts (runs from new random starts, on the samples not yet fooled);
    loss CE or DLR; targets 0 for the untargeted attack, k >= 1 for targeted DLR over the top-k
    other classes (loss must be DLR; k runs of `restarts` restarts each); alpha (momentum, 0.75)
    and rho (checkpoint threshold, 0.75) are the paper's."""

    eps: float = 0.3
    steps: int = 100
    restarts: int = 1
    loss: Loss = Loss.CE
    targets: int = 0
    alpha: float = 0.75
    rho: float = 0.75

    def __post_init__(self) -> None:
        check_eps("APGD", self.eps)
        check_count("APGD", "steps", self.steps)
        check_count("APGD", "restarts", self.restarts)
        check_count("APGD", "targets", self.targets, minimum=0)
        loss = check_loss("APGD", self.loss, 1.0)
        if loss not in (Loss.CE, Loss.DLR):
            raise ConfigError(f"APGD: loss must be ce or dlr, got {loss.value!r}; use PGD for cw")
        if self.targets and loss is not Loss.DLR:
            raise ConfigError(f"APGD: targets={self.targets} needs loss 'dlr' (APGD-T-DLR)")
        object.__setattr__(self, "loss", loss)
        for field, v in (("alpha", self.alpha), ("rho", self.rho)):
            check_positive("APGD", field, v)
            if v > 1:
                raise ConfigError(f"APGD: {field} must lie in (0, 1], got {v!r}; the paper: 0.75")

    @property
    def name(self) -> str:
        """apgd-ce, apgd-dlr or apgd-t-dlr: names the rng streams and the report column."""
        return "apgd-t-dlr" if self.targets else f"apgd-{self.loss.value}"

    def __call__(
        self,
        model: Differentiable,
        x: Array,
        y: Array,
        *,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> AttackResult:
        """Attack x (N, C, H, W) in [0, 1] with labels y (N,); indices key the random starts."""
        yh = check_batch(x, y, model.num_classes)
        idx = rng.check_indices(indices, len(yh))
        seed = rng.check_seed(seed)
        tracker = Tracker(x, yh)
        goals = self._targets(model, x, yh)  # (N, k) or [None]
        objective = targeted_objective(model) if self.targets else fused_objective(model, self.loss)
        runs = _columns(len(goals), self.restarts)
        for run, col in enumerate(runs):
            progress.report(run / len(runs))
            active = np.flatnonzero(~tracker.fooled)
            if active.size == 0:
                break
            target = None if goals[col] is None else goals[col][active]
            state = self._start(objective, x, yh, idx, active, target, seed, run, tracker)
            if state is not None:
                def tick(f: float, r: int = run) -> None:
                    progress.report((r + f) / len(runs))

                self._descend(objective, model, state, tracker, tick)
        return tracker.finish(model)

    def cost(self) -> float:
        return float(self.steps * self.restarts * max(self.targets, 1))

    def _targets(self, model: Differentiable, x: Array, y: np.ndarray) -> list[Any]:
        """One (N,) array of target classes per targeted run: the classes ranked 2nd, 3rd, ...
        at the clean input, skipping y; [None] for the untargeted attack."""
        if not self.targets:
            return [None]
        k = model.num_classes
        if k < 4 or self.targets > k - 1:
            raise ConfigError(
                f"APGD: targeted DLR needs >= 4 classes and targets <= {k - 1} for this "
                f"{k}-class model, got targets={self.targets}; lower targets or use loss 'cw'"
            )
        order = np.argsort(-to_numpy(model.logits(x)).astype(np.float64), axis=1, kind="stable")
        others = order[order != y[:, None]].reshape(len(y), k - 1)  # (N, K - 1)
        return [others[:, j] for j in range(self.targets)]

    def _start(
        self,
        objective: Objective,
        x: Array,
        y: np.ndarray,
        idx: np.ndarray,
        active: np.ndarray,
        target: np.ndarray | None,
        seed: int,
        run: int,
        tracker: Tracker,
    ) -> _State | None:
        """The state of one run at its random start (None when every sample is fooled there)."""
        xp = namespace(x)
        x0 = take_rows(x, active)  # (M, C, H, W)
        lo, hi = xp.clip(x0 - self.eps, min=0.0), xp.clip(x0 + self.eps, max=1.0)
        noise = rng.uniform(seed, self.name, idx[active], run, tuple(x.shape[1:]), self.eps)
        xs = project(x0 + xp.astype(from_numpy(noise, x0), x0.dtype), lo, hi)
        yn = from_numpy(y[active], x)
        z, loss, g = objective(xs, yn, target)
        m = len(active)
        state = _State(
            active, target, yn, lo, hi, xs, xs, g, xs, g, loss, loss.copy(), loss.copy(),
            np.full(m, 2.0 * self.eps), np.zeros(m, np.int64), np.zeros(m, bool),
        )
        return state if _drop_fooled(state, z, tracker) else None

    def _descend(
        self, objective: Objective, model: Differentiable, s: _State, tracker: Tracker,
        tick: Callable[[float], None] = lambda f: None,
    ) -> None:
        """`steps` APGD iterations; the best point of each surviving sample goes to the tracker."""
        marks, last = set(checkpoints(self.steps)), 0
        for k in range(self.steps):
            tick(k / self.steps)
            xp = namespace(s.x)
            z1 = project(s.x + _column(s.eta, s.x) * xp.sign(s.grad), s.lo, s.hi)
            if k > 0:
                mixed = s.x + self.alpha * (z1 - s.x) + (1.0 - self.alpha) * (s.x - s.x_prev)
                z1 = project(mixed, s.lo, s.hi)
            s.x_prev, s.x = s.x, z1
            z, loss, s.grad = objective(s.x, s.y, s.target)
            s.rises += loss > s.loss
            s.loss = loss
            better = loss > s.loss_best
            s.loss_best = np.where(better, loss, s.loss_best)
            s.x_best = xp.where(_mask(better, s.x), s.x, s.x_best)
            s.grad_best = xp.where(_mask(better, s.x), s.grad, s.grad_best)
            if not _drop_fooled(s, z, tracker):
                return
            if k + 1 in marks:
                self._checkpoint(s, k + 1 - last)
                last = k + 1
        tracker.offer(s.pos, s.x_best, model.logits(s.x_best), fooled_only=False)

    def _checkpoint(self, s: _State, window: int) -> None:
        """Halve eta and jump back to x_max where the loss stalled (conditions 1 and 2)."""
        stalled = s.rises < self.rho * window
        stalled |= ~s.halved & (s.loss_check >= s.loss_best)
        s.halved, s.loss_check = stalled, s.loss_best.copy()
        s.rises[:] = 0
        if stalled.any():
            xp, m = namespace(s.x), _mask(stalled, s.x)
            s.eta = np.where(stalled, s.eta / 2.0, s.eta)
            s.x = xp.where(m, s.x_best, s.x)
            s.x_prev = xp.where(m, s.x_best, s.x_prev)
            s.grad = xp.where(m, s.grad_best, s.grad)


def _drop_fooled(s: _State, z: np.ndarray, tracker: Tracker) -> bool:
    """Offer the iterate's fooling rows to the tracker and drop them; False when none is left."""
    live = ~tracker.offer(s.pos, s.x, z, fooled_only=True)
    if not live.all():
        s.keep(live)
    return bool(live.any())


def _columns(columns: int, restarts: int) -> list[int]:
    """The target column of every run, in order (each column `restarts` times); the run's
    position in this list keys its rng stream."""
    return [c for c in range(columns) for _ in range(restarts)]

