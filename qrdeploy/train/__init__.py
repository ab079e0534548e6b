"""Training: standard and PGD adversarial training of the paper's networks (torch needed).

`train(config, out)` runs the recipe and writes a safetensors checkpoint of the weights selected on
the validation split; `load_trained(path)` rebuilds the network from such a checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qrdeploy.errors import CheckpointError, RuntimeMissingError
from qrdeploy.train.config import Method, Optim, TrainConfig

if TYPE_CHECKING:
    from torch import nn

    from qrdeploy.train.checkpoint import Checkpoint

__all__ = ["Method", "Optim", "TrainConfig", "train", "load_trained", "require_torch",
           "check_checkpoint_path"]


def check_checkpoint_path(path: str | Path) -> None:
    """CheckpointError naming a checkpoint file that is not there (checked before torch is)."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .safetensors file "
                              "written by `qrdeploy train`")


def require_torch(what: str = "training") -> None:
    """RuntimeMissingError naming the extra when torch is not installed; `what` needs it."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise RuntimeMissingError(f"{what} needs torch: pip install 'qrdeploy[train]'") from exc


def train(config: TrainConfig, out: str | Path, fresh: bool = False,
          log: Callable[[str], None] = print) -> Checkpoint:
    """Train a network by recipe and write the selected weights to `out` (safetensors)."""
    require_torch()
    if config.method is Method.FEEDBACK:
        from qrdeploy.train.feedback import train_feedback

        return train_feedback(config, out, fresh=fresh, log=log)
    from qrdeploy.train import methods
    from qrdeploy.train.loop import fit

    perturb, score = methods.hooks(config)
    return fit(config, out, perturb, score, fresh=fresh, log=log)


def load_trained(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """The network of a finished checkpoint, in eval mode, and the checkpoint itself
    (qrdeploy.train.load)."""
    check_checkpoint_path(path)
    require_torch(f"reading the checkpoint {Path(path).name}")
    from qrdeploy.train.load import load_trained as load

    return load(path)
