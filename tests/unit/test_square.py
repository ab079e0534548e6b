"""Square attack: query-only (logits), within budget, bounds, determinism by seed, batch-size
independence, its schedule, and strength on a standard model."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest

from qrdeploy.attacks.square import Square, window_fraction, window_side
from tests.unit.adaptive_models import LogitsOnly
from tests.unit.attack_models import ATOL, N, NumpyLinear, linear_problem, one_torch_thread, to_np

ATTACK = Square(eps=0.2, queries=40)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


def _victim() -> tuple[LogitsOnly, np.ndarray, np.ndarray]:
    w, b, x, y = linear_problem()
    return LogitsOnly(NumpyLinear(w, b)), x, y


@pytest.mark.parametrize(
    ("i", "queries", "p"),
    [(0, 10000, 0.8), (10, 10000, 0.8), (11, 10000, 0.4), (51, 10000, 0.2), (8001, 10000,
     0.8 / 512), (6, 5000, 0.4)],  # the schedule is rescaled to the budget: 6/5000 = 12/10000
    ids=str,
)
def test_window_schedule(i: int, queries: int, p: float) -> None:
    assert window_fraction(0.8, i, queries) == pytest.approx(p)


@pytest.mark.parametrize(
    ("p", "h", "w", "side"), [(0.8, 28, 28, 25), (0.8 / 512, 28, 28, 1), (1.0, 28, 28, 27)],
    ids=str,
)
def test_window_side(p: float, h: int, w: int, side: int) -> None:
    assert window_side(p, h, w) == side


def test_queries_only_logits_and_stays_within_budget() -> None:
    model, x, y = _victim()
    assert not hasattr(model, "vjp") and not hasattr(model, "loss_and_grad")
    res = ATTACK(model, x, y, seed=0)
    assert (res.queries >= 1).all() and (res.queries <= ATTACK.queries).all()
    assert model.rows == res.queries.sum() + N  # + the runner's final re-scoring of all samples
    assert res.queries[res.fooled].max() < ATTACK.queries or res.fooled.all()


def test_eps_ball_box_and_victims_verdict() -> None:
    model, x, y = _victim()
    res = ATTACK(model, x, y, seed=0)
    adv = np.asarray(res.x_adv, np.float64)
    assert np.abs(adv - x).max() <= ATTACK.eps + ATOL
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    np.testing.assert_array_equal(res.fooled, model.model.logits(res.x_adv).argmax(1) != y)
    assert res.fooled.sum() > N // 2


def test_eps_zero_returns_input() -> None:
    model, x, y = _victim()
    res = dataclasses.replace(ATTACK, eps=0.0)(model, x, y, seed=0)
    np.testing.assert_array_equal(res.x_adv, x)


def test_determinism_by_seed_and_batch_size() -> None:
    model, x, y = _victim()
    a, b = ATTACK(model, x, y, seed=4), ATTACK(model, x, y, seed=4)
    c = ATTACK(model, x, y, seed=5)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert np.abs(a.x_adv - c.x_adv).max() > 0.1
    parts = [ATTACK(model, x[s], y[s], seed=4, indices=np.arange(N)[s])
             for s in (slice(0, 5), slice(5, N))]
    np.testing.assert_array_equal(np.concatenate([p.x_adv for p in parts]), a.x_adv)
    np.testing.assert_array_equal(np.concatenate([p.queries for p in parts]), a.queries)


torch = pytest.importorskip("torch")
pytest.importorskip("mlxtend")

from tests.unit.adaptive_models import victims  # noqa: E402


def test_square_alone_brings_a_standard_model_well_below_clean() -> None:
    plain, _, x, y = victims()
    clean = (to_np(plain.logits(x)).argmax(1) == to_np(y)).mean()
    model = LogitsOnly(plain)
    res = Square(eps=0.1, queries=300)(model, x, y, seed=0)
    acc = 1 - res.fooled.mean()
    assert clean > 0.85 and acc < clean - 0.5  # e.g. 90% clean -> under 40%
    assert model.rows <= 300 * len(y) + len(y)


def test_square_runs_on_the_onnxruntime_session() -> None:
    from qrdeploy.model.ortmodel import OrtModel
    from qrdeploy.train.export import export_module
    from tests.unit.adaptive_models import mnist_linear

    net, x, y = mnist_linear()
    ort = OrtModel(export_module(net, (1, 28, 28)))
    a = Square(eps=0.1, queries=30)(LogitsOnly(ort), x[:40], y[:40], seed=0)
    t = Square(eps=0.1, queries=30)(LogitsOnly(victims()[0]), torch.tensor(x[:40]),
                                    torch.tensor(y[:40]), seed=0)
    assert (a.fooled == t.fooled).mean() >= 0.95  # same draws; logits agree to ~1e-6
    assert a.fooled.sum() >= 5  # 30 queries already fool some of the 40
