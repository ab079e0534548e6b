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


# ------------------------------------------------------------------ int8 activations


def test_activation_fake_quant_computes_the_integer_graph(tmp_path: Path) -> None:
    """The torch network with --quant-activations int8's quantizers, calibrated on the images
    `harden --activations int8 --calibrate 500` uses, computes the deployed integer graph: the
    same scales and zero points (onnxruntime's calibrator against torch's observer), the same
    predictions, logits within one output quantization step."""
    import onnx
    from onnx import numpy_helper

    from qrdeploy.api import harden
    from qrdeploy.train.quantaware import CALIBRATION_IMAGES, attach, attach_activations, calibrate

    src = Path(__file__).resolve().parents[2] / "models/mnist-adversarial-strong-qat3.onnx"
    hard = tmp_path / "int8.onnx"
    harden(src, hard, bits=3, activations="int8", calibrate=CALIBRATION_IMAGES)
    model, _ = load_trained(src)
    attach(model, 3)
    attach_activations(model)
    calibrate(model, torch.from_numpy(load_dataset("mnist-5k", "train", n=CALIBRATION_IMAGES).x))
    graph = onnx.load(str(hard)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    scales = sorted({float(inits[n.input[1]]) for n in graph.node
                     if n.op_type == "QuantizeLinear" and n.input[1] in inits})
    ours = sorted({float(v) for k, v in model.state_dict().items() if k.endswith("quant.scale")})
    np.testing.assert_allclose(ours, scales, rtol=1e-5)  # pooling keeps its input's scale
    x = load_dataset("mnist-5k", "test", n=300).x
    with torch.no_grad():
        z_torch = model(torch.from_numpy(x)).numpy()
    z_int8 = OrtModel(hard, gradients=False).logits(x)
    step = max(ours)  # the logits' quantization step: the largest range of all
    assert np.abs(z_int8 - z_torch).max() <= 1.01 * step
    assert (z_int8.argmax(1) == z_torch.argmax(1)).mean() >= 0.99


def test_quant_activations_trains_and_writes_a_plain_float_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "qat-a8.safetensors"
    ck = train(TrainConfig(epochs=1, quant_aware=3, quant_activations="int8", **TINY), out,
               log=lambda s: None)
    assert ck.meta["config"]["quant_activations"] == "int8"
    model, loaded = load_trained(out)  # no quantizer state left in the checkpoint
    assert not any("quant" in k for k in loaded.tensors["model"])
    onnx_path, hard = tmp_path / "a8.onnx", tmp_path / "a8-int8.onnx"
    assert main(["export", str(out), "-o", str(onnx_path), "-q"]) == 0
    assert main(["harden", str(onnx_path), "-o", str(hard), "--bits", "3", "--activations",
                 "int8", "--calibrate", str(TINY["n_train"]), "-q"]) == 0
    val = load_dataset("mnist-5k", "val")
    acc = float((OrtModel(hard, gradients=False).logits(val.x).argmax(1) == val.y).mean())
    # the recorded val accuracy is the network as trained, int8 activations included: the
    # deployed graph agrees up to the samples one quantization step can flip
    assert abs(acc - ck.meta["val_accuracy"]) <= 0.02, (acc, ck.meta["val_accuracy"])
    # the activation quantizers were in the training's forward and backward passes
    plain = tmp_path / "qat.safetensors"
    train(TrainConfig(epochs=1, quant_aware=3, **TINY), plain, log=lambda s: None)
    other, _ = load_trained(plain)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     other.state_dict().values(), strict=True))


def test_plain_recipes_do_not_record_quant_activations() -> None:
    assert "quant_activations" not in TrainConfig().to_json()
    with pytest.raises(Exception, match="--quant-activations takes float or int8"):
        TrainConfig(quant_activations="int4")
