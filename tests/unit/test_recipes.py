"""The reference recipes (qrdeploy.train.recipes): one source for tools/make_models.py and
`reproduce --retrain`, equal to what the committed model cards record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qrdeploy.errors import ConfigError
from qrdeploy.paper.profiles import get_profile
from qrdeploy.train import recipes

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", recipes.ORDER)
def test_committed_cards_record_the_recipes(name: str) -> None:
    card = MODELS / f"mnist-{name}.json"
    if not card.is_file():
        pytest.skip(f"{card.name} not committed")
    config = recipes.for_profile(name, {}, {}, "runs/make_models/mnist-standard.safetensors")
    assert json.loads(card.read_text())["recipe"] == config.to_json()


def test_profile_overrides_apply_to_every_recipe() -> None:
    p = get_profile("smoke")
    for name in recipes.ORDER:
        c = recipes.for_profile(name, p.retrain, p.retrain_feedback, "s.safetensors")
        assert (c.n_train, c.epochs) == (96, 1)
    fl = recipes.for_profile("feedback", p.retrain, p.retrain_feedback, "s.safetensors")
    assert fl.feedback.directions == 6 and fl.feedback.rounds == 1
    assert fl.from_checkpoint == "s.safetensors"


@pytest.mark.parametrize(("call", "match"), [
    (lambda: recipes.for_profile("ensemble", {}, {}), "no recipe 'ensemble'"),
    (lambda: recipes.for_profile("standard", {"epoch": 3}, {}), "bad recipe override"),
    (lambda: recipes.for_profile("standard", {"epochs": 0}, {}), "epochs must be >= 1"),
    (lambda: recipes.for_profile("feedback", {}, {}), "needs the standard model's checkpoint"),
])
def test_bad_recipes_are_one_line_config_errors(call: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()  # type: ignore[operator]
