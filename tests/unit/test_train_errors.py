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


ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "models" / "mnist-standard.onnx"


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--net", "wrn-32-1", "--from", str(MNIST), "--epochs", "1"],
     "holds a mnist-cnn model, the recipe asks for wrn-32-1; pass --net mnist-cnn"),
    (["train", "--net", "wrn-32-1", "--method", "adversarial", "--from", str(MNIST),
      "--epochs", "1"], "holds a mnist-cnn model, the recipe asks for wrn-32-1"),
    (["train", "--net", "mnist-cnn", "--data", "cifar10-10k", "--epochs", "1", "--n-train",
      "64"], "--net mnist-cnn takes 1x28x28 images, --data cifar10-10k holds 3x32x32; use "
             "--data mnist-5k"),
    (["export", str(MNIST)], "is already an ONNX model; export takes the .safetensors"),
], ids=["from-other-net", "from-other-net-adversarial", "net-vs-data", "export-onnx"])
def test_mismatches_are_one_line_errors_before_any_training(
        argv: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from qrdeploy.cli import main

    out = tmp_path / ("t.onnx" if argv[0] == "export" else "t.safetensors")
    assert main([*argv, "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qrdeploy: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_a_warm_up_longer_than_the_run_is_warned(tmp_path: Path) -> None:
    """--epochs 1 with the adversarial recipe's 6 warm-up epochs never trains at eps 0.3."""
    from qrdeploy.train import train
    from qrdeploy.train.config import Method

    said: list[str] = []
    cfg = TrainConfig(method=Method.ADVERSARIAL, epochs=1, eps_warmup=6, n_train=32,
                      batch_size=32, attack_steps=1, val_attack_steps=1)
    train(cfg, tmp_path / "a.safetensors", log=said.append)
    assert any("--eps-warmup 6 is longer than --epochs 1: training never reaches eps 0.3"
               in line for line in said)


def test_an_interrupted_run_says_which_epochs_are_saved(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or SIGTERM) in epoch 2 says that epoch 1 is saved and how to resume; the rerun
    starts after it."""
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    from qrdeploy.train import TrainConfig, loop, train

    real = loop.run_epoch
    calls = {"n": 0}

    def epoch(*args: object, **kwargs: object) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "run_epoch", epoch)
    lines: list[str] = []
    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(epochs=3, n_train=64, batch_size=32, seed=1), out, log=lines.append)
    assert lines[-1] == (f"interrupted in epoch 2 of 3; 1 finished epoch is saved in "
                         f"{out}.resume: rerun the same command to resume")
    monkeypatch.setattr(loop, "run_epoch", real)
    lines.clear()
    train(TrainConfig(epochs=3, n_train=64, batch_size=32, seed=1), out, log=lines.append)
    assert lines[0] == f"resuming from {out}.resume after epoch 1"
