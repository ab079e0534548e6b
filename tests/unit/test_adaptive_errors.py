"""Error paths of APGD, Square, the temperature wrappers, the adaptive suite and the masking checks:
one-line ConfigError / DataError messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks.adaptive import ADAPTIVE, AdaptiveAttack, Role, adaptive_suite
from qrdeploy.attacks.apgd import APGD
from qrdeploy.attacks.linf import PGD
from qrdeploy.attacks.square import Square
from qrdeploy.attacks.temperature import NJSModel
from qrdeploy.core.losses import Loss
from qrdeploy.errors import ConfigError, DataError
from qrdeploy.evaluation.masking import (
    Arm,
    check_black_box,
    check_logit_gap,
    check_zero_gradient,
    paired,
)
from tests.unit.attack_models import NumpyLinear

CONFIGS: list[tuple[str, Callable[[], Any], str]] = [
    ("apgd-eps", lambda: APGD(eps=1.5), r"APGD: eps must be a number in \[0, 1\].*got 1.5"),
    ("apgd-steps", lambda: APGD(steps=0), r"APGD: steps must be an integer >= 1, got 0"),
    ("apgd-restarts", lambda: APGD(restarts=0), r"APGD: restarts must be an integer >= 1"),
    ("apgd-targets", lambda: APGD(targets=-1), r"APGD: targets must be an integer >= 0, got -1"),
    ("apgd-loss-cw", lambda: APGD(loss=Loss.CW), r"APGD: loss must be ce or dlr, got 'cw'"),
    ("apgd-loss-unknown", lambda: APGD(loss="mse"), r"APGD: loss must be one of ce, cw"),
    ("apgd-targeted-ce", lambda: APGD(targets=3), r"APGD: targets=3 needs loss 'dlr'"),
    ("apgd-alpha", lambda: APGD(alpha=1.5), r"APGD: alpha must lie in \(0, 1\], got 1.5"),
    ("apgd-rho", lambda: APGD(rho=0.0), r"APGD: rho must be a finite number > 0, got 0.0"),
    ("square-eps", lambda: Square(eps=-0.1), r"Square: eps must be a number in \[0, 1\]"),
    ("square-queries", lambda: Square(queries=0), r"Square: queries must be an integer >= 1"),
    ("square-p", lambda: Square(p_init=1.5), r"Square: p_init must lie in \(0, 1\], got 1.5"),
    ("square-p-0", lambda: Square(p_init=0.0), r"Square: p_init must be a finite number > 0"),
]


@pytest.mark.parametrize(("make", "match"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def _model(k: int) -> NumpyLinear:
    r = np.random.default_rng(0)
    return NumpyLinear(r.normal(size=(k, 4)), r.normal(size=k))


X = np.full((2, 1, 2, 2), 0.5, np.float32)
Y = np.array([0, 1])


def test_targeted_apgd_needs_four_classes() -> None:
    with pytest.raises(ConfigError, match=r"targeted DLR needs >= 4 classes and targets <= 2"):
        APGD(loss=Loss.DLR, targets=1)(_model(3), X, Y)


def test_targeted_apgd_asks_for_too_many_targets() -> None:
    with pytest.raises(ConfigError, match=r"targets <= 4 for this 5-class model, got targets=9"):
        APGD(loss=Loss.DLR, targets=9)(_model(5), X, Y)


@pytest.mark.parametrize(
    ("attack", "x", "match"),
    [
        (APGD(steps=1), X + 1.0, r"x must lie in \[0, 1\]"),
        (Square(queries=2), X[0], r"x must be a non-empty \(N, C, H, W\) batch"),
        (Square(queries=2), X.astype(np.int64), r"x must be floating point"),
    ],
    ids=["apgd-range", "square-shape", "square-dtype"],
)
def test_bad_data(attack: Any, x: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        attack(_model(5), x, Y)


def test_square_seed_must_be_an_integer() -> None:
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        Square(queries=2)(_model(5), X, Y, seed=-1)


def test_njs_model_rejects_margin_losses() -> None:
    with pytest.raises(ConfigError, match=r"NJSModel scales cross-entropy, got loss 'cw'"):
        NJSModel(_model(5)).loss_and_grad(X, Y, Loss.CW)


def test_transfer_entry_needs_a_source() -> None:
    entry = AdaptiveAttack("transfer", PGD(eps=0.1), role=Role.TRANSFER)
    with pytest.raises(ConfigError, match=r"crafts on the model before hardening; pass source="):
        entry(_model(5), X, Y)


def test_adaptive_suite_names_are_unique_and_documented() -> None:
    names = [e.name for e in adaptive_suite(0.1)]
    assert names == [
        "pgd-cw", "apgd-ce", "apgd-dlr", "apgd-t-dlr", "pgd-ce-t10", "pgd-ce-t100", "pgd-njs",
        "pgd-f64", "square", "transfer",
    ]
    assert {e.eps for e in ADAPTIVE["mnist"]} == {0.1}
    assert {e.eps for e in ADAPTIVE["cifar10"]} == {4 / 255}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: paired(np.ones(3, bool), np.ones(4, bool)), r"need the same samples"),
        (lambda: paired(np.ones(3), np.ones(3)), r"per-sample bool flags.*dtype float64"),
        (lambda: check_zero_gradient(np.zeros(3)), r"gradients of shape \(N, \.\.\.\)"),
        (lambda: check_logit_gap(np.zeros(3)), r"logits of shape \(N, K >= 2\)"),
        (
            lambda: check_black_box([Arm("w", np.ones((2, 2), bool), 0.1)],
                                    [Arm("b", np.ones(2, bool), 0.1)]),
            r"per-sample bool flags of shape \(N,\), got shape \(2, 2\)",
        ),
    ],
    ids=["length", "dtype", "grad-shape", "gap-shape", "arm-shape"],
)
def test_masking_bad_inputs(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        call()
