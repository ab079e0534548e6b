"""What each training method trains on and how it selects its model on the validation split."""

from __future__ import annotations

import torch
from torch import nn

from qrdeploy.data import Dataset
from qrdeploy.train.config import Method, TrainConfig
from qrdeploy.train.loop import Perturb, Score, accuracy


def clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int,
          idx: torch.Tensor) -> torch.Tensor:
    return x


def clean_accuracy(model: nn.Module, ds: Dataset) -> float:
    return accuracy(model, ds)


def hooks(config: TrainConfig) -> tuple[Perturb, Score]:
    if config.method is Method.STANDARD:
        return clean, clean_accuracy
    from qrdeploy.train import adversarial

    return adversarial.hooks(config)
