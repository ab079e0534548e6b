"""What an attack returns, and the runner's bookkeeping that decides it (docs/design.md,
convention 2).

The attack proposes points; the runner keeps, per sample, the worst case for the victim:
- an example that fools the victim is kept, and nothing offered later replaces it;
- for a sample never fooled, the example with the largest margin max_{j != y} z_j - z_y is kept.
Finally the runner re-scores the kept examples with the victim's own forward pass (`logits`), so
`fooled` never rests on logits returned by a gradient graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qrdeploy.core.arrays import Array, margins, put_rows, take_rows, to_numpy
from qrdeploy.model.protocol import Classifier


@dataclass(frozen=True)
class AttackResult:
    """x_adv (N, C, H, W) and the victim's logits on it (N, K), both in the caller's namespace and
    on its device; fooled (N,) host numpy bool: argmax of those logits differs from the label."""

    x_adv: Array
    logits: Array
    fooled: np.ndarray


class Tracker:
    """Per-sample worst case over everything offered for one batch (steps and restarts)."""

    def __init__(self, x: Array, y: np.ndarray) -> None:
        self.best_x = x  # (N, C, H, W) a sample never offered keeps its clean input
        self.y = y  # (N,) host labels
        self.fooled = np.zeros(len(y), dtype=bool)
        self.margin = np.full(len(y), -np.inf)

    def offer(self, pos: np.ndarray, x: Array, z: Array, fooled_only: bool) -> np.ndarray:
        """Offer candidates x (M, C, H, W) with logits z (M, K) for samples `pos` (M,).

        With fooled_only, only candidates that fool the victim are considered (mid-run points);
        otherwise a better margin also counts (final points). Returns the (M,) fooled mask."""
        zh = to_numpy(z)
        y = self.y[pos]
        fooled = zh.argmax(axis=1) != y
        margin = margins(zh, y)
        better = fooled if fooled_only else fooled | (margin > self.margin[pos])
        better &= ~self.fooled[pos]  # a fooling example is never replaced
        if better.any():
            self.best_x = put_rows(self.best_x, pos[better], take_rows(x, better))
            self.fooled[pos[better]] = fooled[better]
            self.margin[pos[better]] = margin[better]
        return np.asarray(fooled)

    def finish(self, model: Classifier) -> AttackResult:
        """Score the kept examples on the victim's forward pass."""
        z = model.logits(self.best_x)  # (N, K)
        fooled = to_numpy(z).argmax(axis=1) != self.y
        return AttackResult(x_adv=self.best_x, logits=z, fooled=fooled)
