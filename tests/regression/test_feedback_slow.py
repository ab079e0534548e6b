"""Feedback learning on mnist-5k (slow: one default round, 320 s on the idle 2-core sandbox, plus
90 s to train the source when its checkpoint is not there).

From the standard reference model's training checkpoint (runs/make_models/mnist-standard
.safetensors, written by tools/make_models.py; trained here from the same recipe when absent),
one F.L. round with the default settings must raise the mean top-40 random-direction margin on
test digits, measured with directions from a stream independent of training, without lowering the
validation accuracy by more than 0.5 points (issue 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("mlxtend")

from qrdeploy import margins as mg  # noqa: E402
from qrdeploy.data import load_dataset  # noqa: E402
from qrdeploy.margin_criteria import EVAL_STREAM  # noqa: E402
from qrdeploy.recipes import RECIPES, for_profile  # noqa: E402
from qrdeploy.train import load_trained, train  # noqa: E402
from qrdeploy.train.config import Method  # noqa: E402
from qrdeploy.train.feedback import train_feedback  # noqa: E402

SOURCE = Path(__file__).resolve().parents[2] / "runs/make_models/mnist-standard.safetensors"
N_TEST, EVAL_SEED = 300, 12345


@pytest.mark.slow
def test_mean_margin_rises_without_costing_accuracy(tmp_path: Path) -> None:
    source = SOURCE
    if not source.exists():
        source = tmp_path / "mnist-standard.safetensors"
        train(RECIPES["standard"], source, log=lambda s: None)
    config = for_profile("feedback", {}, {}, str(source))  # the reference recipe, threads=1
    assert config.feedback.rounds == 1 and config.method is Method.FEEDBACK
    ck = train_feedback(config, tmp_path / "fl.safetensors", log=lambda s: None)
    assert ck.meta["rounds"][0]["generated"] > 0 and ck.meta["rounds"][0]["accepted"]
    before, after = (_mean_margin(p) for p in (source, tmp_path / "fl.safetensors"))
    assert after > before, f"mean test margin {before:.3f} -> {after:.3f}"
    assert ck.meta["val_accuracy"] >= ck.meta["source"]["val_accuracy"] - 0.005


def _mean_margin(path: Path) -> float:
    """On the exported graph through onnxruntime, as F.L. itself searches (torch at one thread,
    as the recipe leaves it, took about a minute per model here)."""
    from qrdeploy.export import export_module
    from qrdeploy.ortmodel import OrtModel
    from qrdeploy.runtime import SessionConfig

    module, _ = load_trained(path)
    model = OrtModel(export_module(module.eval(), (1, 28, 28)), SessionConfig("cpu", threads=2),
                     batch_size=1024)
    test = load_dataset("mnist-5k", "test", n=N_TEST)
    assert test.y is not None
    ok = np.flatnonzero(mg.predict(model, test.x) == test.y)
    d = mg.random_directions(EVAL_SEED, EVAL_STREAM, ok, 64, (1, 28, 28))
    m = mg.directional_margins(model, test.x[ok], test.y[ok], d)
    return float(mg.top_mean(m, 40, mg.SearchConfig().t_max).mean())
