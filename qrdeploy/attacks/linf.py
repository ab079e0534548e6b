"""The L-inf presets of the one gradient loop (loop.py): FGSM, BIM, PGD and MIM.

Settings in the constructor, data in the call (docs/design.md, conventions 1-3):
`attack(model, x, y, seed=0, indices=None) -> AttackResult`. Defaults are cleverhans v3's
(docs/method.md section 5); `restarts=1` and `early_stop=True` are qrdeploy's [DEFAULT]s.

>>> result = PGD(eps=0.3, step=0.01, steps=40)(model, x, y, seed=0)
>>> robust = ~result.fooled                                  # (N,) host bool
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qrdeploy.attacks.checks import check_count, check_eps
from qrdeploy.attacks.loop import LoopSpec, Norm, Preset
from qrdeploy.core.losses import Loss
from qrdeploy.errors import ConfigError


class _LinfPreset(Preset):
    def _check_linf(self, eps: float, loss: Loss | str, temperature: float) -> None:
        check_eps(type(self).__name__, eps)
        self._check_loss(loss, temperature)


@dataclass(frozen=True, repr=False)
class FGSM(_LinfPreset):
    """Fast gradient sign method (Goodfellow et al. 2015, arXiv 1412.6572), L-inf.

    One step x + eps * sign(grad), no random start, clipped to [0, 1]. Default eps 0.3 is
    cleverhans v3's. Every sample takes the step (no early stop: there is one step)."""

    eps: float = 0.3
    loss: Loss = Loss.CE
    temperature: float = 1.0
    name: ClassVar[str] = "fgsm"

    def __post_init__(self) -> None:
        self._check_linf(self.eps, self.loss, self.temperature)

    def spec(self) -> LoopSpec:
        return LoopSpec(
            Norm.LINF, self.eps, self.eps, 1, 1, self.loss, self.temperature, False, None, False
        )


@dataclass(frozen=True, repr=False)
class BIM(_LinfPreset):
    """Basic iterative method (Kurakin et al. 2017, arXiv 1607.02533), L-inf: PGD without random
    start. Defaults eps 0.3, step 0.05, 10 steps are cleverhans v3's; early_stop is ours."""

    eps: float = 0.3
    step: float = 0.05
    steps: int = 10
    loss: Loss = Loss.CE
    temperature: float = 1.0
    early_stop: bool = True
    targeted: bool = False
    name: ClassVar[str] = "bim"

    def __post_init__(self) -> None:
        self._check_linf(self.eps, self.loss, self.temperature)
        self._check_steps(self.step, self.steps)

    def spec(self) -> LoopSpec:
        return LoopSpec(
            Norm.LINF,
            self.eps,
            self.step,
            self.steps,
            1,
            self.loss,
            self.temperature,
            False,
            None,
            self.early_stop,
            self.targeted,
        )


@dataclass(frozen=True, repr=False)
class PGD(_LinfPreset):
    """Projected gradient descent (Madry et al. 2018, arXiv 1706.06083), L-inf, uniform random
    start in the eps ball. Defaults eps 0.3, step 0.05, 10 steps are cleverhans v3's (Madry's
    MNIST training uses step 0.01, 40 steps); restarts=1 and early_stop are ours. random_start
    False makes it BIM with restarts; targeted descends the loss of the runner-up classes (the
    class ranked r + 2 on restart r, see loop.LoopSpec)."""

    eps: float = 0.3
    step: float = 0.05
    steps: int = 10
    restarts: int = 1
    loss: Loss = Loss.CE
    temperature: float = 1.0
    early_stop: bool = True
    random_start: bool = True
    targeted: bool = False
    name: ClassVar[str] = "pgd"

    def __post_init__(self) -> None:
        self._check_linf(self.eps, self.loss, self.temperature)
        self._check_steps(self.step, self.steps)
        check_count("PGD", "restarts", self.restarts)

    def spec(self) -> LoopSpec:
        return LoopSpec(
            Norm.LINF,
            self.eps,
            self.step,
            self.steps,
            self.restarts,
            self.loss,
            self.temperature,
            self.random_start,
            None,
            self.early_stop,
            self.targeted,
        )


@dataclass(frozen=True, repr=False)
class MIM(_LinfPreset):
    """Momentum iterative method (Dong et al. 2018, arXiv 1710.06081), L-inf, no random start.

    g_t = decay * g_{t-1} + grad / max(mean|grad|, 1e-12) per sample; step sign(g_t). Defaults
    eps 0.3, step 0.06, 10 steps, decay 1.0 are cleverhans v3's; early_stop is ours."""

    eps: float = 0.3
    step: float = 0.06
    steps: int = 10
    decay: float = 1.0
    loss: Loss = Loss.CE
    temperature: float = 1.0
    early_stop: bool = True
    targeted: bool = False
    name: ClassVar[str] = "mim"

    def __post_init__(self) -> None:
        self._check_linf(self.eps, self.loss, self.temperature)
        self._check_steps(self.step, self.steps)
        ok = isinstance(self.decay, int | float) and not isinstance(self.decay, bool)
        if not (ok and 0 <= self.decay < float("inf")):
            raise ConfigError(f"MIM: decay must be a finite number >= 0, got {self.decay!r}")

    def spec(self) -> LoopSpec:
        return LoopSpec(
            Norm.LINF,
            self.eps,
            self.step,
            self.steps,
            1,
            self.loss,
            self.temperature,
            False,
            float(self.decay),
            self.early_stop,
            self.targeted,
        )
