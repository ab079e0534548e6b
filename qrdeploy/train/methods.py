"""What each training method trains on and how it selects its model on the validation split.

Feedback learning is not a hook of the one training loop: it fine-tunes a trained model in rounds
(qrdeploy.train.feedback.train_feedback), whose epochs reuse `clean` through loop.run_epoch."""

from __future__ import annotations

import torch
from torch import nn

from qrdeploy.data.datasets import Dataset
from qrdeploy.errors import ConfigError
from qrdeploy.train.adversarial import hooks as adversarial_hooks
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
    if config.method is Method.FEEDBACK:
        raise ConfigError("feedback learning runs in rounds from a trained model, not as hooks of "
                          "the training loop: call qrdeploy.train.feedback.train_feedback")
    return adversarial_hooks(config)
