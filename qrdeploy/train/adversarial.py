"""PGD adversarial training (Madry et al. 2018): train on PGD examples of each batch, crafted by
the project's one L-inf loop (qrdeploy.attacks) on the current weights in eval mode, and select
the epoch with the best PGD accuracy on the validation split.

Madry trains on 100% adversarial examples with the final PGD iterate (no early stop); so do we.
Ours: fewer, larger steps than Madry's 40 x 0.01 on MNIST (CPU budget), and an optional linear
eps ramp over the first `eps_warmup` epochs (the step size scales with eps). One step of
1.25 eps from the random start is FGSM with a random start (Wong et al. 2020, "Fast is better than
free"); its model selection then needs a multi-step validation attack (`val_attack_steps`), which
is early stopping against catastrophic overfitting."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from qrdeploy.attacks import PGD
from qrdeploy.data.datasets import Dataset
from qrdeploy.model.torchmodel import TorchModel
from qrdeploy.train.config import TrainConfig
from qrdeploy.train.loop import Perturb, Score

VAL_SEED = 7  # the validation attack's random starts are the same every epoch


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0] >> 1)


def attack_for(config: TrainConfig, epoch: int | None) -> PGD:
    """The training attack at an epoch (eps ramped), or at full eps when epoch is None."""
    ramp = 1.0
    if epoch is not None and config.eps_warmup:
        ramp = min(1.0, (epoch + 1) / config.eps_warmup)
    return PGD(eps=config.eps * ramp, step=config.attack_step_size * ramp,
               steps=config.attack_steps, early_stop=False)


def validation_attack(config: TrainConfig) -> PGD:
    """The attack whose validation accuracy selects the epoch: the training attack at full eps,
    or PGD with `val_attack_steps` steps of 2.5 eps / steps (ours) when that is set."""
    if not config.val_attack_steps:
        return attack_for(config, None)
    steps = config.val_attack_steps
    return PGD(eps=config.eps, step=2.5 * config.eps / steps, steps=steps)


def hooks(config: TrainConfig) -> tuple[Perturb, Score]:
    def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int,
                idx: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        victim = TorchModel(model, num_classes=_classes(model))
        res = attack_for(config, epoch)(victim, x, y, seed=epoch_seed(config.seed, epoch),
                                        indices=idx.numpy())
        model.train(was_training)
        return cast("torch.Tensor", res.x_adv.detach())

    def score(model: nn.Module, ds: Dataset) -> float:
        """PGD accuracy on the validation split at the full training eps."""
        model.eval()
        victim = TorchModel(model, num_classes=ds.num_classes)
        attack = validation_attack(config)
        correct = 0
        for i in range(0, len(ds), 250):
            x = torch.from_numpy(ds.x[i:i + 250])
            y = torch.from_numpy(ds.y[i:i + 250])  # type: ignore[index]
            res = attack(victim, x, y, seed=VAL_SEED,
                                           indices=np.arange(i, i + len(x)))
            correct += int((~res.fooled).sum())
        return correct / len(ds)

    return perturb, score


def _classes(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return int(last.out_features)
