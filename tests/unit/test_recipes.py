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


@pytest.mark.parametrize("prefix", list(recipes.BY_PREFIX))
@pytest.mark.parametrize("name", recipes.ORDER)
def test_committed_cards_record_the_recipes(prefix: str, name: str) -> None:
    card = MODELS / f"{prefix}-{name}.json"
    if not card.is_file():
        pytest.skip(f"{card.name} not committed")
    config = recipes.for_profile(name, {}, {}, f"runs/make_models/{prefix}-standard.safetensors",
                                 prefix=prefix)
    assert json.loads(card.read_text())["recipe"] == config.to_json()


def test_cifar_recipes_train_wrn_on_the_embedded_images() -> None:
    for name in recipes.ORDER:
        c = recipes.for_profile(name, {}, {}, "s.safetensors", prefix="cifar10")
        assert (c.net, c.data, c.threads) == ("wrn-32-1", "cifar10-10k", 1)
    adv = recipes.CIFAR10_RECIPES["adversarial"]
    # FGSM with a random start and a 1.25 eps step, selected by multi-step PGD on val
    assert (adv.attack_steps, adv.attack_step_size) == (1, 1.25 * adv.eps)
    assert adv.val_attack_steps > 1


def test_cifar_qat_recipe_trains_the_deployed_graph_from_the_committed_model() -> None:
    """cifar10-standard-qat3 fine-tunes the committed standard WRN through the quantizers of the
    graph `harden --bits 3 --granularity channel --activations int8` writes; tools/make_models.py
    starts it from models/cifar10-standard.onnx, and its card records exactly that recipe."""
    import sys

    qat = recipes.CIFAR10_RECIPES["standard-qat3"]
    assert (qat.quant_aware, qat.quant_granularity, qat.quant_activations) == (3, "channel",
                                                                                "int8")
    assert qat.from_checkpoint == recipes.FROM_CIFAR_STANDARD and qat.threads == 1
    assert "standard-qat3" in recipes.ALL["cifar10"] and "standard-qat3" not in recipes.ORDER
    sys.path.insert(0, str(MODELS.parent / "tools"))
    try:
        import make_models
    finally:
        sys.path.pop(0)
    built = make_models.RECIPES["cifar10-standard-qat3"]
    assert built.from_checkpoint == "models/cifar10-standard.onnx"
    assert (MODELS.parent / built.from_checkpoint).is_file()
    card = MODELS / "cifar10-standard-qat3.json"
    if card.is_file():
        assert json.loads(card.read_text())["recipe"] == built.to_json()


def test_paper_cifar_overrides_the_cifar_recipes() -> None:
    p = get_profile("paper-cifar")
    adv = recipes.for_profile("adversarial", p.retrain, p.retrain_feedback, prefix="cifar10")
    assert (adv.net, adv.data, adv.attack_steps, adv.val_attack_steps) == \
        ("wrn-32-10", "cifar10", 7, 0)
    fl = recipes.for_profile("feedback", p.retrain, p.retrain_feedback, "s.safetensors",
                             prefix="cifar10")
    assert (fl.feedback.lr, fl.feedback.epochs, fl.feedback.t_max) == (0.01, 10, 5.0)


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
    (lambda: recipes.for_profile("standard", {}, {}, prefix="imagenet"),
     "no recipes for model prefix 'imagenet'"),
])
def test_bad_recipes_are_one_line_config_errors(call: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()  # type: ignore[operator]
