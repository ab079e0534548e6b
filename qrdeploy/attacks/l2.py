"""L2 PGD: the L2 preset of the one gradient loop (loop.py).

Steps follow grad / ||grad||_2 (a zero gradient gives a zero step), the random start is uniform
in the L2 ball, and each iterate is projected onto the ball ||x' - x||_2 <= eps and then clipped
to [0, 1] (clipping only shortens the perturbation, so the bound holds after it).

>>> result = L2PGD(eps=2.0, step=0.25, steps=20)(model, x, y, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qrdeploy.attacks.checks import check_count, check_eps
from qrdeploy.attacks.loop import LoopSpec, Norm, Preset
from qrdeploy.core.losses import Loss


@dataclass(frozen=True, repr=False)
class L2PGD(Preset):
    """Projected gradient descent in L2 (Madry et al. 2018, arXiv 1706.06083).

    eps is an L2 radius in [0, 1] pixel units over all C*H*W values. The defaults eps 0.5,
    step 0.1 (= 2 * eps / steps), 10 steps, random start, restarts 1, early_stop are qrdeploy's
    [DEFAULT]s: docs/method.md names no L2 PGD settings (cleverhans v3's 0.3 / 0.05 are L-inf
    values).
    """

    eps: float = 0.5
    step: float = 0.1
    steps: int = 10
    restarts: int = 1
    random_start: bool = True
    loss: Loss = Loss.CE
    temperature: float = 1.0
    early_stop: bool = True
    targeted: bool = False
    name: ClassVar[str] = "l2pgd"

    def __post_init__(self) -> None:
        check_eps("L2PGD", self.eps, upper=None, hint="an L2 radius over all pixels, e.g. eps=2.0")
        self._check_loss(self.loss, self.temperature)
        self._check_steps(self.step, self.steps)
        check_count("L2PGD", "restarts", self.restarts)

    def spec(self) -> LoopSpec:
        return LoopSpec(
            Norm.L2,
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
