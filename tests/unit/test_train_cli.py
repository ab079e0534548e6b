"""`qrdeploy train` defaults to the reference recipes' working settings, by net family: an
adversarial MNIST run from the command line is the adversarial reference model's recipe (PyTorch
init, eps warm-up, 7 PGD steps of 0.05), not the settings docs/training.md says collapse to
chance; a wrn-32-K run gets the CIFAR-10 recipe (SGD, flips, cifar10-10k); every one can be set."""

from __future__ import annotations

import dataclasses

import pytest

from qrdeploy.cli import build_parser
from qrdeploy.commands.train import config_from_args
from qrdeploy.train.config import Method, TrainConfig
from qrdeploy.train.recipes import CIFAR10_RECIPES, FROM_STANDARD, RECIPES


def parse(*argv: str) -> TrainConfig:
    args = build_parser().parse_args(["train", "-o", "x.safetensors", *argv])
    return config_from_args(args)


@pytest.mark.parametrize("net", ["mnist-cnn", "wrn-32-1"])
@pytest.mark.parametrize("method", ["standard", "adversarial", "feedback"])
def test_defaults_are_the_reference_recipe(method: str, net: str) -> None:
    ref = (RECIPES if net == "mnist-cnn" else CIFAR10_RECIPES)[method]
    cfg = parse("--net", net, "--method", method,
                *(["--from", FROM_STANDARD] if method == "feedback" else []))
    keep = ("seed", "threads")  # the user's run: seed 0 and torch's threads unless asked
    assert dataclasses.replace(cfg, **{k: getattr(ref, k) for k in keep}) == ref


def test_feedback_options_override_the_recipe_one_by_one() -> None:
    cfg = parse("--net", "wrn-32-1", "--method", "feedback", "--from", "s.safetensors",
                "--fl-epochs", "2", "--fl-seeds", "1", "2", "3", "--fl-acceptance", "drop",
                "--fl-no-augment")
    fb = cfg.feedback
    assert (fb.epochs, fb.seeds, fb.acceptance.value, fb.augment_real) == (2, (1, 2, 3), "drop",
                                                                          False)
    assert (fb.rank_per_class, fb.max_ratio) == (50, 0.1)  # the rest: the CIFAR-10 recipe's


def test_adversarial_defaults_are_the_ones_that_learn() -> None:
    cfg = parse("--method", "adversarial")
    assert (cfg.init, cfg.eps_warmup, cfg.attack_steps, cfg.attack_step_size, cfg.epochs) == \
        ("torch", 6, 7, 0.05, 12)


def test_every_default_can_be_set() -> None:
    cfg = parse("--method", "adversarial", "--init", "madry", "--eps-warmup", "0",
                "--attack-steps", "3", "--attack-step-size", "0.1", "--epochs", "2")
    assert (cfg.init, cfg.eps_warmup, cfg.attack_steps, cfg.attack_step_size, cfg.epochs) == \
        ("madry", 0, 3, 0.1, 2)
    assert cfg.method is Method.ADVERSARIAL


def test_a_wider_wrn_gets_the_cifar_recipe_and_data_can_be_set() -> None:
    cfg = parse("--net", "wrn-32-10", "--data", "cifar10", "--method", "adversarial")
    ref = CIFAR10_RECIPES["adversarial"]
    assert (cfg.net, cfg.data, cfg.optimizer, cfg.flip, cfg.epochs, cfg.val_attack_steps) == \
        ("wrn-32-10", "cifar10", ref.optimizer, True, ref.epochs, ref.val_attack_steps)
    assert parse("--net", "wrn-32-1", "--no-flip", "--lr", "0.05").flip is False
    assert parse("--net", "wrn-32-1", "--lr", "0.05").lr == 0.05
    assert parse().data == TrainConfig().data == "mnist-5k"
