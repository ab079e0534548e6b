"""CW-L2 (one fused loss_and_grad call per iteration): analytic minimum distance on linear models,
confidence, binary search."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from qrdeploy.attacks import CWL2
from qrdeploy.attacks.cw import _search
from tests.unit.attack_models import NumpyLinear, one_torch_thread, torch_linear


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


def _problem(seed: int, n: int = 8, k: int = 3) -> tuple[NumpyLinear, np.ndarray, np.ndarray]:
    """A linear model with inputs near 0.5 whose nearest boundary points lie inside [0, 1]."""
    r = np.random.default_rng(seed)
    model = NumpyLinear(r.normal(size=(k, 48)), np.zeros(k))
    x = (0.5 + 0.1 * r.normal(size=(n, 1, 4, 12))).astype(np.float32)
    return model, x, model.logits(x).argmax(1)


def _min_distance(model: NumpyLinear, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min_j (z_y - z_j) / ||w_j - w_y||: the L2 distance to the nearest misclassified point,
    checked to lie inside [0, 1] (else the box, not the model, would set the minimum)."""
    n, rows = len(y), np.arange(len(y))
    z = x.reshape(n, -1).astype(np.float64) @ model.w.T + model.b  # (N, K)
    diff = model.w[None] - model.w[y][:, None]  # (N, K, D) w_j - w_y
    norm = np.linalg.norm(diff, axis=2)
    norm[rows, y] = 1.0
    dist = (z[rows, y][:, None] - z) / norm  # (N, K)
    dist[rows, y] = np.inf  # j = y is no boundary
    j = dist.argmin(1)
    nearest = x.reshape(n, -1) + dist[rows, j][:, None] * diff[rows, j] / norm[rows, j][:, None]
    assert nearest.min() > 0 and nearest.max() < 1
    return dist[rows, j]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_linear_model_within_5_percent_of_the_analytic_minimum(seed: int) -> None:
    model, x, y = _problem(seed)
    res = CWL2()(model, x, y)
    found = np.linalg.norm((res.x_adv - x).reshape(len(x), -1).astype(np.float64), axis=1)
    best = _min_distance(model, x, y)
    assert res.fooled.all()
    assert (found <= 1.05 * best).all(), found / best
    assert (found >= best * (1 - 1e-4)).all()  # nobody beats the analytic minimum


def test_torch_model_gives_the_same_distances() -> None:
    torch = pytest.importorskip("torch")
    model, x, y = _problem(0, n=4)
    res = CWL2(max_iterations=200)(torch_linear(model.w, model.b), torch.tensor(x),
                                   torch.tensor(y))  # fmt: skip
    ref = CWL2(max_iterations=200)(model, x, y)
    np.testing.assert_allclose(res.x_adv.numpy(), ref.x_adv, atol=1e-4)


def test_confidence_gives_the_required_margin() -> None:
    model, x, y = _problem(0)
    res = CWL2(confidence=2.0)(model, x, y)
    z = model.logits(res.x_adv).astype(np.float64)
    rows = np.arange(len(y))
    other = np.where(np.eye(3)[y] > 0, -np.inf, z).max(1)
    assert (other - z[rows, y] > 2.0 - 1e-4).all()


def test_too_weak_a_search_keeps_the_clean_input() -> None:
    model, x, y = _problem(0)
    res = CWL2(binary_search_steps=1, max_iterations=5, initial_const=1e-4)(model, x, y)
    np.testing.assert_array_equal(res.x_adv, x)
    assert not res.fooled.any()


@pytest.mark.parametrize(
    ("success", "const", "lower", "upper"),
    [
        (False, 1.0, 0.1, 1e10),  # never succeeded: c x 10, lower bound raised to c
        (True, 0.05, 0.0, 0.1),  # first success: upper = c, bisect
    ],
    ids=["fail", "success"],
)
def test_binary_search_update(success: bool, const: float, lower: float, upper: float) -> None:
    c, lo, up = np.array([0.1]), np.array([0.0]), np.array([1e10])
    _search(c, lo, up, np.array([success]))
    np.testing.assert_allclose([c[0], lo[0], up[0]], [const, lower, upper])
    _search(c, lo, up, np.array([True]))  # then a success from there always bisects
    assert lo[0] < c[0] < up[0] and up[0] == const
