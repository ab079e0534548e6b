"""CIFAR smoke test: wrn-32-1 trains one step on a tiny synthetic CIFAR folder, exports with BN
kept, and evaluates on onnxruntime."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

pytest.importorskip("torch")

from qrdeploy.cli import main  # noqa: E402
from tests.unit.data_builders import write_cifar_folder  # noqa: E402


def test_wrn_one_step_export_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_cifar_folder(tmp_path / "data", n_per_batch=10)  # 45 train, 5 val, 10 test
    ckpt, model = tmp_path / "w.safetensors", tmp_path / "w.onnx"
    common = ["--data-root", str(root), "-q"]
    assert main(["train", "--net", "wrn-32-1", "--data", "cifar10", "--epochs", "1",
                 "--batch-size", "45", "--flip", "-o", str(ckpt), *common]) == 0
    assert main(["export", str(ckpt), "-o", str(model), "--data-root", str(root), "-q"]) == 0
    ops = [n.op_type for n in onnx.load(model).graph.node]
    assert ops.count("BatchNormalization") == 31
    assert main(["eval", str(model), "--data", "cifar10", *common]) == 0
    assert "samples: 10" in capsys.readouterr().out
