"""Shared fixtures: a tiny trained mnist-cnn checkpoint and its ONNX export (made once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QRDEPLOY_QUIET", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    from qrdeploy.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    train(TrainConfig(epochs=1, n_train=256, batch_size=32, seed=1), out, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path) -> Path:
    from qrdeploy.train.export import export_onnx

    out = tiny_checkpoint.with_suffix(".onnx")
    export_onnx(tiny_checkpoint, out)
    return out
