"""Training: recipe validation, checkpoint round trip, and bit-identical resume after SIGKILL."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mlxtend")

from qrdeploy.core.fileio import sha256_file  # noqa: E402
from qrdeploy.train import TrainConfig, load_trained, train  # noqa: E402
from qrdeploy.train.loop import resume_path  # noqa: E402

TINY = ["--n-train", "96", "--batch-size", "32", "--seed", "3", "-q"]


def _train_cmd(out: Path, epochs: int, method: str = "standard") -> list[str]:
    return [sys.executable, "-m", "qrdeploy", "train", "-o", str(out), "--method", method,
            "--attack-steps", "2", "--epochs", str(epochs), "--threads", "1", *TINY]


def test_train_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    ck = train(TrainConfig(epochs=1, n_train=64, batch_size=32, threads=1), out, log=lambda s: None)
    model, loaded = load_trained(out)
    assert loaded.meta["config"] == ck.meta["config"]
    assert loaded.meta["kind"] == "model" and 0.0 <= loaded.meta["val_accuracy"] <= 1.0
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert not resume_path(out).exists()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, n_train=64, batch_size=32, threads=1, seed=5)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    train(cfg, a, log=lambda s: None)
    train(cfg, b, log=lambda s: None)
    assert sha256_file(a) == sha256_file(b)


@pytest.mark.parametrize("method", ["standard", "adversarial"])
def test_sigkill_then_resume_gives_identical_weights(tmp_path: Path, method: str) -> None:
    ref, out = tmp_path / "ref.safetensors", tmp_path / "out.safetensors"
    subprocess.run(_train_cmd(ref, 3, method), check=True)
    proc = subprocess.Popen(_train_cmd(out, 3, method))
    deadline = time.time() + 120
    while not resume_path(out).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the final file must not appear before training ends"
    assert resume_path(out).exists(), "the run should have been killed after an epoch"
    subprocess.run(_train_cmd(out, 3, method), check=True)
    assert sha256_file(out) == sha256_file(ref)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_adversarial_training_trains_on_pgd_examples(tmp_path: Path) -> None:
    from qrdeploy.train import adversarial

    cfg = TrainConfig(method="adversarial", eps=0.2, attack_steps=3, attack_step_size=0.1,
                      eps_warmup=4)
    assert adversarial.attack_for(cfg, 0).eps == pytest.approx(0.05)
    assert adversarial.attack_for(cfg, 9).eps == pytest.approx(0.2)
    perturb, _ = adversarial.hooks(cfg)
    torch.manual_seed(0)
    from qrdeploy.train.nets import build_net

    net = build_net("mnist-cnn")
    x = torch.rand(6, 1, 28, 28)
    y = torch.arange(6)
    net.train()
    x_adv = perturb(net, x, y, 9, torch.arange(6))
    delta = (x_adv - x).abs().max().item()
    assert 0 < delta <= 0.2 + 1e-6
    assert net.training  # the hook restores the training mode
    # it is the project's PGD on the model in eval mode, not noise: the same examples as the
    # attack itself with the epoch's seed, and a higher loss than the clean inputs
    from qrdeploy.model.torchmodel import TorchModel

    net.eval()
    ref = adversarial.attack_for(cfg, 9)(TorchModel(net, 10), x, y,
                                         seed=adversarial.epoch_seed(cfg.seed, 9),
                                         indices=np.arange(6))
    assert torch.equal(x_adv, ref.x_adv.detach())
    with torch.no_grad():
        ce = [torch.nn.functional.cross_entropy(net(v), y).item() for v in (x, x_adv)]
    assert ce[1] > ce[0]


def test_validation_attack_is_multi_step_pgd_when_asked() -> None:
    """A one-step training attack (FGSM with a random start) selects its epoch with PGD of
    `val_attack_steps` steps of 2.5 eps / steps; without it, with the training attack."""
    from qrdeploy.train.adversarial import attack_for, validation_attack

    fgsm_rs = TrainConfig(method="adversarial", eps=8 / 255, attack_steps=1,
                          attack_step_size=10 / 255)
    assert validation_attack(fgsm_rs) == attack_for(fgsm_rs, None)
    pgd = validation_attack(dataclasses.replace(fgsm_rs, val_attack_steps=5))
    assert (pgd.eps, pgd.steps, pgd.step) == (8 / 255, 5, pytest.approx(2.5 * 8 / 255 / 5))
    assert "val_attack_steps" not in fgsm_rs.to_json()
    assert dataclasses.replace(fgsm_rs, val_attack_steps=5).to_json()["val_attack_steps"] == 5
