"""`qrdeploy reproduce` on the CIFAR-10 half: the quick-cifar profile's settings (cifar10-10k,
μ-law on the last three weight layers, the cifar10 recipes) at the smoke profile's budgets, with
--retrain, so that tiny wrn-32-1 models are trained, exported and run through every step. Its
numbers mean nothing; the test checks that every CIFAR artefact is produced."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from qrdeploy.paper.cache import MANIFEST, Status
from qrdeploy.paper.pipeline import reproduce
from qrdeploy.paper.profiles import get_profile

pytest.importorskip("torch")


def smoke_cifar() -> object:
    """quick-cifar's data, model prefix, μ-law layers and rows (no hardening rows: those are
    MNIST models) with the smoke profile's budgets."""
    quick = get_profile("quick-cifar")
    return dataclasses.replace(
        get_profile("smoke"), name="smoke-cifar", family=quick.family, data=quick.data,
        model_prefix=quick.model_prefix, mu_layers=quick.mu_layers,
        hardening_regimes=quick.hardening_regimes, n_test=6, bits_n=12,
        ablation_n=6, sufficiency_n=4, lipschitz_n=4,
        retrain={**get_profile("smoke").retrain, "n_train": 64, "val_attack_steps": 0})


@pytest.mark.slow
def test_cifar_retrain_fills_tables_3_and_4(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = reproduce(smoke_cifar(), out, models_dir=tmp_path / "no-models",  # type: ignore[arg-type]
                    retrain=True, plots=False)
    assert {e.status for e in res.events} == {Status.RAN}
    train = next(f for f in (out / "steps").iterdir() if f.name.startswith("train.adv-"))
    recipe = json.loads((train / MANIFEST).read_text())["settings"]["recipe"]
    assert (recipe["net"], recipe["data"], recipe["attack_steps"]) == ("wrn-32-1", "cifar10-10k", 2)
    doc = json.loads((out / "results.json").read_text())
    assert doc["missing"] == {} and doc["data_note"] is None and doc["n"] == 6
    rows = {c["row"] for c in doc["cells"]}
    assert rows >= {f"{r}:{f}" for r in ("orig", "adv", "fl") for f in ("plain", "q", "mu", "mu-q")}
    papers = [c["paper"] for c in doc["cells"] if c["row"] == "fl:mu-q" and c["column"] == "clean"]
    assert papers == [92.2]  # the paper's CIFAR-10 Table 3 beside ours
    text = (out / "report.md").read_text()
    assert "### Table 3: CIFAR-10 white-box" in text and "### Table 4: CIFAR-10" in text
    assert "not run (MNIST: profile smoke-cifar is cifar10" in text
    assert "paper 27.84" in text  # the CIFAR-10 headline beside ours
    # μ-law on the last three weight layers in the main forms, the last one in the ablation
    harden = next(f for f in (out / "steps").iterdir() if f.name.startswith("harden.fl.mu-q-"))
    assert "last:3" in json.dumps(json.loads((harden / MANIFEST).read_text())["settings"])
    ablation = next(f for f in (out / "steps").iterdir() if f.name.startswith("ablation.fl-"))
    assert json.loads((ablation / "ablation.json").read_text())["layers"] == "last:1"
