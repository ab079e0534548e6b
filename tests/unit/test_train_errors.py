"""Bad recipes and bad checkpoints give one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from qrdeploy.errors import CheckpointError, ConfigError
from qrdeploy.train import TrainConfig

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    "kwargs,match",
    [({"epochs": 0}, "epochs must be >= 1"), ({"lr": 0.0}, "learning rate must be > 0"),
     ({"eps": 1.5}, r"eps must be in \[0, 1\]"), ({"batch_size": 0}, "batch size"),
     ({"method": "magic"}, "method must be one of standard, adversarial, feedback, got 'magic'"),
     ({"optimizer": "rmsprop"}, "optimizer must be one of adam, sgd"),
     ({"attack_steps": 0}, "attack steps")],
    ids=["epochs", "lr", "eps", "batch", "method", "optimizer", "steps"],
)
def test_bad_recipe(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_recipe_key() -> None:
    with pytest.raises(ConfigError, match="unknown training settings: colour"):
        TrainConfig.from_json({"colour": "blue"})


def test_unknown_net() -> None:
    from qrdeploy.train.nets import build_net

    with pytest.raises(ConfigError, match="unknown net 'resnet'"):
        build_net("resnet")


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x10\x00\x00\x00\x00\x00\x00\x00{}"],
                         ids=["empty", "garbage", "no-format"])
def test_bad_checkpoint(tmp_path: Path, content: bytes) -> None:
    from qrdeploy.train import load_trained

    p = tmp_path / "c.safetensors"
    p.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_trained(p)


def test_missing_checkpoint(tmp_path: Path) -> None:
    from qrdeploy.train import load_trained

    with pytest.raises(CheckpointError, match="does not exist"):
        load_trained(tmp_path / "none.safetensors")
