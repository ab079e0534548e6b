"""A trained network back from its checkpoint (torch needed)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from qrdeploy.errors import CheckpointError, first_line
from qrdeploy.train.checkpoint import Checkpoint, load_checkpoint
from qrdeploy.train.config import TrainConfig
from qrdeploy.train.nets import build_net


def load_trained(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """The network of a finished checkpoint, in eval mode, and the checkpoint itself."""
    ck = load_checkpoint(path)
    if ck.meta.get("kind") != "model":
        raise CheckpointError(f"{path} is not a finished model checkpoint "
                              f"(kind {ck.meta.get('kind')!r}); finish its training first")
    if not isinstance(ck.meta.get("config"), dict):
        raise CheckpointError(f"{path} has no training recipe in its metadata; "
                              "it was not written by qrdeploy train")
    config = TrainConfig.from_json(ck.meta["config"])
    head = ck.tensors["model"]
    model = build_net(config.net, num_classes=int(ck.meta.get("num_classes", 10)))
    try:
        model.load_state_dict(head)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {config.net}: "
                              f"{first_line(exc, None)}") from None
    return model.eval(), ck
