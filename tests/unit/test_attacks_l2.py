"""L2 PGD: the L2 hooks of the one loop, on numpy and torch inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks import L2PGD
from qrdeploy.core import rng
from qrdeploy.core.losses import Loss
from tests.unit.attack_models import (
    SHAPE,
    N,
    NumpyLinear,
    Scripted,
    linear_problem,
    one_torch_thread,
    run,
    to_np,
)

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


BACKENDS = ["numpy", "torch"]
ATTACKS = [
    L2PGD(eps=0.5, step=0.1, steps=8),
    L2PGD(eps=1.0, step=0.3, steps=5, restarts=2, loss=Loss.CW),
    L2PGD(eps=0.8, step=0.2, steps=5, random_start=False, early_stop=False),
]


def _l2(a: np.ndarray) -> np.ndarray:
    return np.sqrt((a.astype(np.float64) ** 2).reshape(len(a), -1).sum(1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_perturbation_in_l2_ball_and_box(attack: Any, backend: str) -> None:
    x, res = run(attack, backend)
    adv = to_np(res.x_adv)
    assert _l2(adv - x).max() <= attack.eps * (1 + 1e-6)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert _l2(adv - x).max() > 0.5 * attack.eps  # it moved


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_eps_zero_returns_input(attack: Any, backend: str) -> None:
    x, res = run(dataclasses.replace(attack, eps=0.0), backend)
    np.testing.assert_array_equal(to_np(res.x_adv), x)


@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_numpy_and_torch_give_the_same_examples(attack: Any) -> None:
    _, a = run(attack, "numpy", seed=4)
    _, t = run(attack, "torch", seed=4)
    np.testing.assert_allclose(to_np(t.x_adv), a.x_adv, atol=1e-6)


def test_one_step_on_a_linear_model_follows_the_normalised_gradient() -> None:
    w, b, _, y = linear_problem()
    x = np.full((N, *SHAPE), 0.5, np.float32)  # mid-box: no clipping
    z = x.reshape(N, -1).astype(np.float64) @ w.T + b
    j = np.where(np.eye(len(b))[y] > 0, -np.inf, z).argmax(1)
    a = w[j] - w[y]  # (N, D) gradient of the CW margin
    expected = x + 0.05 * (a / np.linalg.norm(a, axis=1, keepdims=True)).reshape(x.shape)
    attack = L2PGD(eps=1.0, step=0.05, steps=1, random_start=False, loss=Loss.CW, early_stop=False)
    res = attack(NumpyLinear(w, b), x, y)
    np.testing.assert_allclose(res.x_adv, expected, atol=1e-6)


def test_zero_gradient_gives_zero_step() -> None:
    x = np.full((3, 1, 2, 4), 0.5, np.float32)
    attack = L2PGD(eps=1.0, step=0.1, steps=3, random_start=False)
    res = attack(Scripted([np.zeros((1, 1, 2, 4), np.float32)]), x, np.zeros(3, np.int64))
    np.testing.assert_array_equal(res.x_adv, x)


def test_random_start_is_uniform_in_the_l2_ball() -> None:
    pts = rng.l2_ball(0, "l2pgd", np.arange(4000), 0, (2,), 1.5)  # (4000, 2)
    r = np.linalg.norm(pts.astype(np.float64), axis=1)
    assert r.max() <= 1.5 * (1 + 1e-6)
    # uniform in a 2-D disc: P(r <= 1.5 / sqrt 2) = 1/2; 4000 draws give a standard error of 0.008
    assert abs((r <= 1.5 / np.sqrt(2)).mean() - 0.5) < 0.03
    assert abs(np.arctan2(pts[:, 1], pts[:, 0]).mean()) < 0.1  # no preferred direction


def test_same_seed_same_result_across_batch_sizes() -> None:
    attack = L2PGD(eps=0.5, step=0.1, steps=4, restarts=2)
    _, whole = run(attack, "numpy", seed=9)
    w, b, x, y = linear_problem()
    parts = [attack(NumpyLinear(w, b), x[i:i + 5], y[i:i + 5], seed=9,
                    indices=np.arange(i, min(i + 5, N))) for i in range(0, N, 5)]  # fmt: skip
    np.testing.assert_array_equal(np.concatenate([p.x_adv for p in parts]), whole.x_adv)
