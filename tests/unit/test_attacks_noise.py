"""Gaussian and uniform noise: deterministic by seed, bounded, per-sample worst case over draws."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks import GaussianNoise, UniformNoise
from qrdeploy.core import rng
from tests.unit.attack_models import (
    N,
    NumpyLinear,
    Threshold,
    linear_problem,
    one_torch_thread,
    run,
    to_np,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


NOISES = [GaussianNoise(sigma=0.3, draws=3), UniformNoise(bound=0.3, draws=3)]


@pytest.mark.parametrize("noise", NOISES, ids=repr)
def test_deterministic_by_seed(noise: Any) -> None:
    _, a = run(noise, "numpy", seed=1)
    _, b = run(noise, "numpy", seed=1)
    _, c = run(noise, "numpy", seed=2)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    np.testing.assert_array_equal(a.fooled_draws, b.fooled_draws)
    assert np.abs(a.x_adv - c.x_adv).max() > 0.1


@pytest.mark.parametrize("noise", NOISES, ids=repr)
def test_same_noise_across_batch_sizes_and_backends(noise: Any) -> None:
    pytest.importorskip("torch")
    _, whole = run(noise, "numpy", seed=3)
    _, on_torch = run(noise, "torch", seed=3)
    w, b, x, y = linear_problem()
    parts = [noise(NumpyLinear(w, b), x[i:i + 5], y[i:i + 5], seed=3,
                   indices=np.arange(i, min(i + 5, N))) for i in range(0, N, 5)]  # fmt: skip
    np.testing.assert_array_equal(np.concatenate([p.x_adv for p in parts]), whole.x_adv)
    np.testing.assert_allclose(to_np(on_torch.x_adv), whole.x_adv, atol=1e-7)


@pytest.mark.parametrize("noise", NOISES, ids=repr)
def test_outputs_in_box_and_zero_noise_is_identity(noise: Any) -> None:
    x, res = run(noise, "numpy")
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.fooled_draws.shape == (3, N)
    field = "sigma" if isinstance(noise, GaussianNoise) else "bound"
    x0, res0 = run(dataclasses.replace(noise, **{field: 0.0}), "numpy")
    np.testing.assert_array_equal(res0.x_adv, x0)


def test_uniform_noise_is_bounded_and_gaussian_has_its_sigma() -> None:
    x, res = run(UniformNoise(bound=0.05, draws=4), "numpy")
    assert np.abs(res.x_adv - x).max() <= 0.05 + 1e-7
    g = rng.normal(0, "gaussian", np.arange(200), 0, (50,), 0.3).astype(np.float64)  # 10^4 draws
    assert abs(g.std() - 0.3) < 0.01 and abs(g.mean()) < 0.01


def test_worst_case_over_draws_keeps_the_first_fooling_draw() -> None:
    x = np.full((30, 1, 2, 2), 0.5, np.float32)
    res = UniformNoise(bound=0.3, draws=4)(Threshold(0.7), x, np.zeros(30, np.int64), seed=5)
    draws = [np.clip(x + rng.uniform(5, "uniform", np.arange(30), d, (1, 2, 2), 0.3), 0, 1)
             for d in range(4)]  # fmt: skip
    hits = np.stack([dr[:, 0, 0, 0] > 0.7 for dr in draws])  # (draws, N)
    np.testing.assert_array_equal(res.fooled_draws, hits)
    np.testing.assert_array_equal(res.fooled, hits.any(0))
    assert 0 < hits.any(0).sum() < 30
    for i in np.flatnonzero(hits.any(0)):
        np.testing.assert_array_equal(res.x_adv[i], draws[hits[:, i].argmax()][i])
