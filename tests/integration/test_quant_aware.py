"""Hardening-aware training: --quant-aware B trains through the harden pass's quantizer, so the
checkpoint's weights are already on the B-bit grid, harden --bits B leaves them unchanged and the
hardened ONNX graph computes what the trained network computes; --lipschitz-reg pulls the layers
towards orthogonality; --from fine-tunes a trained model; train's epoch lines name their figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mlxtend")

from qrdeploy.cli import main  # noqa: E402
from qrdeploy.data.datasets import load_dataset  # noqa: E402
from qrdeploy.hardening.quant import code_range  # noqa: E402
from qrdeploy.model.ortmodel import OrtModel  # noqa: E402
from qrdeploy.train import TrainConfig, load_trained, train  # noqa: E402
from qrdeploy.train.quantaware import orthogonality, quantized_layers  # noqa: E402

TINY = {"n_train": 128, "batch_size": 32, "threads": 1, "seed": 2}


@pytest.fixture(scope="module")
def qat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qat") / "qat3.safetensors"
    train(TrainConfig(epochs=2, quant_aware=3, **TINY), out, log=lambda s: None)
    return out


def test_weights_are_on_the_3_bit_grid(qat: Path) -> None:
    model, ck = load_trained(qat)
    assert ck.meta["config"]["quant_aware"] == 3
    qmin, qmax = code_range(3)
    for m in quantized_layers(model):
        w = m.weight.detach().double().numpy()
        scale = max(w.max() / qmax, w.min() / qmin)
        codes = w / scale
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
        assert len(np.unique(np.round(codes))) <= qmax - qmin + 1


def test_harden_leaves_the_trained_network_unchanged(qat: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path, hard = tmp_path / "qat.onnx", tmp_path / "qat-q3.onnx"
    assert main(["export", str(qat), "-o", str(onnx_path), "-q"]) == 0
    assert main(["harden", str(onnx_path), "-o", str(hard), "--bits", "3"]) == 0
    table = [ln for ln in capsys.readouterr().out.splitlines() if "max|dW|=" in ln]
    assert table and all(float(ln.split("max|dW|=")[1].split()[0]) < 1e-6 for ln in table)
    x = load_dataset("mnist-5k", "test", n=64).x
    model, _ = load_trained(qat)
    with torch.no_grad():
        z_torch = model(torch.from_numpy(x)).numpy()
    z_onnx = OrtModel(hard, gradients=False).logits(x)
    np.testing.assert_allclose(z_onnx, z_torch, atol=1e-3, rtol=1e-3)
    assert (z_onnx.argmax(1) == z_torch.argmax(1)).mean() >= 0.98


def test_lipschitz_reg_pulls_layers_to_orthogonality(tmp_path: Path) -> None:
    plain, reg = tmp_path / "p.safetensors", tmp_path / "r.safetensors"
    # PyTorch's init: Madry's (std 0.1 over fan-ins in the thousands) starts far from orthogonal
    common = {**TINY, "epochs": 2, "init": "torch"}
    train(TrainConfig(**common), plain, log=lambda s: None)
    train(TrainConfig(lipschitz_reg=1e-3, **common), reg, log=lambda s: None)
    penalty = {k: float(orthogonality(load_trained(p)[0]).detach())
               for k, p in (("plain", plain), ("reg", reg))}
    assert penalty["reg"] < 0.8 * penalty["plain"], penalty
    assert load_trained(reg)[1].meta["config"]["lipschitz_reg"] == 1e-3


def test_fine_tune_from_a_checkpoint_and_the_epoch_lines(qat: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "ft.safetensors"
    argv = ["train", "--method", "adversarial", "--from", str(qat), "--quant-aware", "3",
            "--epochs", "1", "--attack-steps", "2", "--n-train", "64", "--batch-size", "32",
            "--threads", "1", "-o", str(out)]
    assert main(argv) == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert "selected by val PGD accuracy" in final and "val clean accuracy" in final
    cfg = json.loads(json.dumps(load_trained(out)[1].meta["config"]))
    assert cfg["from_checkpoint"] == qat.name and cfg["quant_aware"] == 3
