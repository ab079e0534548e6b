"""`qrdeploy train` defaults to the reference recipes' working settings: an adversarial run from
the command line is the adversarial reference model's recipe (PyTorch init, eps warm-up, 7 PGD
steps of 0.05), not the settings docs/training.md says collapse to chance; every one can be set."""

from __future__ import annotations

import dataclasses

import pytest

from qrdeploy.cli import build_parser
from qrdeploy.commands.train import config_from_args
from qrdeploy.train.config import Method, TrainConfig
from qrdeploy.train.recipes import RECIPES


def parse(*argv: str) -> TrainConfig:
    args = build_parser().parse_args(["train", "-o", "x.safetensors", *argv])
    return config_from_args(args)


@pytest.mark.parametrize("method", ["standard", "adversarial"])
def test_defaults_are_the_reference_recipe(method: str) -> None:
    cfg = parse("--method", method)
    ref = RECIPES[method]
    keep = ("seed", "threads")  # the user's run: seed 0 and torch's threads unless asked
    assert dataclasses.replace(cfg, **{k: getattr(ref, k) for k in keep}) == ref


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


def test_other_nets_keep_the_library_defaults() -> None:
    cfg = parse("--net", "wrn-32-1", "--data", "cifar10", "--method", "adversarial")
    assert cfg.init == TrainConfig().init and cfg.epochs == TrainConfig().epochs
