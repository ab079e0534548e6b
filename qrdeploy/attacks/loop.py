"""The one gradient loop behind FGSM, BIM, PGD, MIM (L-inf) and L2 PGD (docs/attacks.md).

It is written once against the array API, so it runs on numpy arrays (OrtModel) and on torch
tensors (TorchModel, also on a GPU). The norm only changes three small hooks (`Hooks`):
- random start: uniform noise in the eps ball from the counter-based generator (rng.py);
- steepest direction: sign(g) for L-inf, g / ||g||_2 for L2 (a zero gradient gives a zero step:
  that is the gradient masking qrdeploy measures, not a bug);
- projection: into the eps ball around x, then into [0, 1].
A fourth hook, momentum (MIM), is norm-independent: as cleverhans v3,
g_t = decay * g_{t-1} + grad / max(mean|grad|, 1e-12), and the step follows g_t."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

import numpy as np

from qrdeploy.attacks.checks import Config, check_batch, check_count, check_loss, check_positive
from qrdeploy.attacks.result import AttackResult, Tracker
from qrdeploy.core import progress, rng
from qrdeploy.core.arrays import Array, from_numpy, namespace, take_rows, to_numpy
from qrdeploy.core.losses import Loss
from qrdeploy.model.protocol import Differentiable

#: cleverhans v3 MomentumIterativeMethod divides the gradient by max(mean |grad|, this).
MIM_FLOOR = 1e-12
#: A gradient (or perturbation) with L2 norm below this is treated as zero.
L2_FLOOR = 1e-12
_AXES = (1, 2, 3)  # (C, H, W)


class Norm(StrEnum):
    LINF = "linf"
    L2 = "l2"


@dataclass(frozen=True)
class LoopSpec:
    """Every setting of the loop; the presets (linf.py, l2.py) fill it in.

    decay None means no momentum. early_stop: a sample leaves the loop at the first iterate that
    fools the victim, and that iterate is kept (see run_loop). targeted: restart r descends the
    loss of the class ranked r + 2 at the clean input (the runner-up first, skipping the label)
    instead of ascending the loss of the label; any misclassification still counts as fooled,
    as robust accuracy asks."""

    norm: Norm
    eps: float
    step: float
    steps: int
    restarts: int
    loss: Loss
    temperature: float
    random_start: bool
    decay: float | None
    early_stop: bool
    targeted: bool = False


def _l2(a: Array) -> Array:
    """Per-sample L2 norm (M, 1, 1, 1) of a (M, C, H, W)."""
    xp = namespace(a)
    return xp.sqrt(xp.sum(a * a, axis=_AXES, keepdims=True))


def _project_linf(x: Array, x0: Array, eps: float) -> Array:
    xp = namespace(x)
    x = xp.minimum(xp.maximum(x, x0 - eps), x0 + eps)
    return xp.clip(x, min=0.0, max=1.0)


def _project_l2(x: Array, x0: Array, eps: float) -> Array:
    xp = namespace(x)
    delta = x - x0  # (M, C, H, W)
    shrink = xp.clip(eps / xp.clip(_l2(delta), min=L2_FLOOR), max=1.0)  # (M, 1, 1, 1)
    return xp.clip(x0 + delta * shrink, min=0.0, max=1.0)  # clipping only shortens delta


def _steepest_l2(g: Array) -> Array:
    return g / namespace(g).clip(_l2(g), min=L2_FLOOR)


@dataclass(frozen=True)
class Hooks:
    """What the norm changes in the loop."""

    noise: Callable[[int, str, np.ndarray, int, tuple[int, ...], float], np.ndarray]
    steepest: Callable[[Array], Array]
    project: Callable[[Array, Array, float], Array]


HOOKS = {
    Norm.LINF: Hooks(rng.uniform, lambda g: namespace(g).sign(g), _project_linf),
    Norm.L2: Hooks(rng.l2_ball, _steepest_l2, _project_l2),
}


@dataclass
class _State:
    """The samples still being attacked in one restart."""

    pos: np.ndarray  # (M,) positions in the caller's batch
    x: Array  # (M, C, H, W) current iterate
    x0: Array  # (M, C, H, W) clean inputs
    y: Array  # (M,) int64 labels, caller's namespace
    momentum: Array | None = None  # (M, C, H, W) MIM's accumulated direction
    goal: Array | None = None  # (M,) int64 target classes of a targeted run

    def keep(self, rows: np.ndarray) -> None:
        """Drop the samples whose entry in the (M,) bool mask `rows` is False."""
        self.pos = self.pos[rows]
        self.x, self.x0, self.y = (take_rows(a, rows) for a in (self.x, self.x0, self.y))
        if self.momentum is not None:
            self.momentum = take_rows(self.momentum, rows)
        if self.goal is not None:
            self.goal = take_rows(self.goal, rows)


def _start(
    spec: LoopSpec,
    name: str,
    seed: int,
    x: Array,
    y: np.ndarray,
    idx: np.ndarray,
    active: np.ndarray,
    restart: int,
    ranks: np.ndarray | None = None,
) -> _State:
    """Random-start hook: the state of one restart for the `active` positions; `ranks` (N, K-1)
    are the classes other than y by clean logit, highest first, for a targeted run."""
    xp, hooks = namespace(x), HOOKS[spec.norm]
    x0 = take_rows(x, active)  # (M, C, H, W)
    xs = x0
    if spec.random_start:
        noise = hooks.noise(seed, name, idx[active], restart, tuple(x.shape[1:]), spec.eps)
        xs = hooks.project(x0 + xp.astype(from_numpy(noise, x0), x0.dtype), x0, spec.eps)
    state = _State(active, xs, x0, from_numpy(y[active], x))
    if ranks is not None:
        state.goal = from_numpy(ranks[active, restart % ranks.shape[1]], x)
    return state


def _direction(spec: LoopSpec, state: _State, grad: Array) -> Array:
    """Step hook, with the momentum hook when spec.decay is set."""
    steepest = HOOKS[spec.norm].steepest
    if spec.decay is None:
        return steepest(grad)
    xp = namespace(grad)
    normed = grad / xp.clip(xp.mean(xp.abs(grad), axis=_AXES, keepdims=True), min=MIM_FLOOR)
    state.momentum = normed if state.momentum is None else spec.decay * state.momentum + normed
    return steepest(state.momentum)


def _descend(model: Differentiable, spec: LoopSpec, state: _State, tracker: Tracker,
             restart: int = 0) -> None:
    """One restart: `steps` gradient steps, then the final iterate is offered to the tracker."""
    project = HOOKS[spec.norm].project
    for i in range(spec.steps):
        if state.goal is None:
            z, _, grad = model.loss_and_grad(state.x, state.y, spec.loss, spec.temperature)
        else:  # descend the target's loss
            z, _, grad = model.loss_and_grad(state.x, state.goal, spec.loss, spec.temperature)
            grad = -grad
        if spec.early_stop:
            live = ~tracker.offer(state.pos, state.x, z, fooled_only=True)
            if not live.any():
                return
            if not live.all():
                state.keep(live)
                grad = take_rows(grad, live)
        progress.report((restart + (i + 1) / spec.steps) / spec.restarts)
        moved = state.x + spec.step * _direction(spec, state, grad)
        state.x = project(moved, state.x0, spec.eps)
    tracker.offer(state.pos, state.x, model.logits(state.x), fooled_only=False)


def _ranks(model: Differentiable, x: Array, y: np.ndarray) -> np.ndarray:
    """(N, K-1) the classes other than y, by clean logit, highest first (ties: lower class)."""
    z = np.asarray(to_numpy(model.logits(x)), dtype=np.float64)  # (N, K)
    z[np.arange(len(y)), y] = -np.inf
    order = np.argsort(-z, axis=1, kind="stable")  # (N, K), y last
    return order[:, :-1]


def run_loop(
    name: str,
    spec: LoopSpec,
    model: Differentiable,
    x: Array,
    y: Array,
    *,
    seed: int = 0,
    indices: Sequence[int] | np.ndarray | None = None,
) -> AttackResult:
    """Run the loop on a batch x (N, C, H, W) in [0, 1] with labels y (N,).

    `indices` are the samples' global positions (default 0..N-1): they key the random start, so
    pass them to get results independent of batch size. Restarts run on the samples not yet
    fooled. With early_stop, a sample is dropped at its first fooling iterate; as long as the
    model treats samples independently (no batch statistics) this never weakens the attack:
    a sample counts as fooled whenever any scored iterate fooled it."""
    yh = check_batch(x, y, model.num_classes)
    idx = rng.check_indices(indices, len(yh))
    seed = rng.check_seed(seed)
    tracker = Tracker(x, yh)
    ranks = _ranks(model, x, yh) if spec.targeted else None
    for restart in range(spec.restarts):
        active = np.flatnonzero(~tracker.fooled)
        if active.size == 0:
            break
        state = _start(spec, name, seed, x, yh, idx, active, restart, ranks)
        _descend(model, spec, state, tracker, restart)
    return tracker.finish(model)


class Preset(Config):
    """The call and checks shared by the presets of the loop (each a frozen dataclass)."""

    name: ClassVar[str]

    def spec(self) -> LoopSpec:
        raise NotImplementedError

    def cost(self) -> float:
        spec = self.spec()
        return float(spec.steps * spec.restarts)

    def __call__(
        self,
        model: Differentiable,
        x: Array,
        y: Array,
        *,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> AttackResult:
        """Attack the batch x (N, C, H, W) in [0, 1] with labels y (N,); see run_loop."""
        return run_loop(self.name, self.spec(), model, x, y, seed=seed, indices=indices)

    def _check_loss(self, loss: Loss | str, temperature: float) -> None:
        object.__setattr__(self, "loss", check_loss(type(self).__name__, loss, temperature))

    def _check_steps(self, step: float, steps: int) -> None:
        check_positive(type(self).__name__, "step", step)
        check_count(type(self).__name__, "steps", steps)
