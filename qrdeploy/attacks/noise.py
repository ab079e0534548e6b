"""Random-noise "attacks": Gaussian and uniform noise added to the input, then clipped to [0, 1].

They need only `Classifier.logits`. Each draw d of sample i comes from the counter-based stream
(seed, attack name, i, d) (rng.py), so results do not depend on batch size. A call returns the
per-draw verdicts (`fooled_draws`, for the paper's mean accuracy over draws) and, as for every
attack, the per-sample worst case over the draws (`fooled`, qrdeploy's column).

Defaults sigma = bound = 0.3 are qrdeploy's [DEFAULT] for MNIST (docs/method.md section 5;
CIFAR 0.1); the paper states neither. draws=1 is also ours.

>>> res = GaussianNoise(sigma=0.3, draws=10)(model, x, y, seed=0)
>>> mean_acc, worst_acc = 1 - res.fooled_draws.mean(), 1 - res.fooled.mean()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qrdeploy.attacks.checks import Config, check_batch, check_count, check_eps
from qrdeploy.attacks.result import AttackResult, Tracker
from qrdeploy.core import progress, rng
from qrdeploy.core.arrays import Array, from_numpy, namespace
from qrdeploy.model.protocol import Classifier


@dataclass(frozen=True)
class NoiseResult(AttackResult):
    """AttackResult plus fooled_draws (draws, N) host bool: the victim's verdict on every draw."""

    fooled_draws: np.ndarray


class _Noise(Config):
    name: ClassVar[str]
    draws: int

    def _draw(self, seed: int, idx: np.ndarray, draw: int, shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def cost(self) -> float:
        return 0.5 * float(getattr(self, "draws", 1))  # forward passes only

    def __call__(
        self,
        model: Classifier,
        x: Array,
        y: Array,
        *,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> NoiseResult:
        """Score `draws` noisy copies of x (N, C, H, W) in [0, 1] with labels y (N,)."""
        yh = check_batch(x, y, model.num_classes)
        idx = rng.check_indices(indices, len(yh))
        seed = rng.check_seed(seed)
        xp, everyone = namespace(x), np.arange(len(yh))
        tracker, verdicts = Tracker(x, yh), []
        for d in range(self.draws):
            progress.report(d / self.draws)
            noise = xp.astype(from_numpy(self._draw(seed, idx, d, tuple(x.shape[1:])), x), x.dtype)
            xn = xp.clip(x + noise, min=0.0, max=1.0)  # (N, C, H, W)
            verdicts.append(tracker.offer(everyone, xn, model.logits(xn), fooled_only=False))
        res = tracker.finish(model)
        return NoiseResult(res.x_adv, res.logits, res.fooled, np.stack(verdicts))


@dataclass(frozen=True, repr=False)
class GaussianNoise(_Noise):
    """x + N(0, sigma^2) per pixel, clipped to [0, 1]; sigma in [0, 1] pixel units."""

    sigma: float = 0.3
    draws: int = 1
    name: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        check_eps("GaussianNoise", self.sigma, field="sigma")
        check_count("GaussianNoise", "draws", self.draws)

    def _draw(self, seed: int, idx: np.ndarray, draw: int, shape: tuple[int, ...]) -> np.ndarray:
        return rng.normal(seed, self.name, idx, draw, shape, self.sigma)


@dataclass(frozen=True, repr=False)
class UniformNoise(_Noise):
    """x + U[-bound, bound] per pixel, clipped to [0, 1]; bound in [0, 1] pixel units."""

    bound: float = 0.3
    draws: int = 1
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        check_eps("UniformNoise", self.bound, field="bound")
        check_count("UniformNoise", "draws", self.draws)

    def _draw(self, seed: int, idx: np.ndarray, draw: int, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(seed, self.name, idx, draw, shape, self.bound)
