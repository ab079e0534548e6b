"""Float64 unit-max cotangents, the Float64Cotangent wrapper, and the NJS temperature."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from qrdeploy.attacks.temperature import unit_cotangent
from qrdeploy.core.losses import Loss, loss_value_and_cotangent
from tests.unit.attack_models import one_torch_thread, to_np

R = np.random.default_rng(0)
Z = R.normal(size=(8, 5)) * 4  # moderate logits: nothing underflows in float64
Y = R.integers(0, 5, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


@pytest.mark.parametrize(
    ("loss", "t"),
    [(Loss.CE, 1.0), (Loss.CE_T, 7.0), (Loss.CE_T, np.arange(1.0, 9.0)), (Loss.CW, 1.0),
     (Loss.DLR, 1.0)],
    ids=["ce", "ce-t", "ce-t-per-sample", "cw", "dlr"],
)
def test_unit_cotangent_is_the_reference_rescaled(loss: Loss, t: float | np.ndarray) -> None:
    value, cot = unit_cotangent(Z, Y, loss, t)
    ref_value, ref = loss_value_and_cotangent(Z, Y, loss, t)
    np.testing.assert_allclose(value, ref_value)
    np.testing.assert_allclose(cot, ref / np.abs(ref).max(1, keepdims=True), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.abs(cot).max(1), 1.0)


def test_ce_direction_survives_where_float64_underflows() -> None:
    z = np.array([[1e5, 0.0, -1.0], [3.0, 2e4, 0.0]])  # gaps 1e5 and 2e4: float64 p_y == 1
    y = np.array([0, 2])
    _, ref = loss_value_and_cotangent(z, y, Loss.CE)
    assert ref[0, 0] == 0.0  # the reference has lost the -e_y term
    _, cot = unit_cotangent(z, y, Loss.CE)
    e = np.exp(-1.0)
    np.testing.assert_allclose(cot[0], [-1.0, 1 / (1 + e), e / (1 + e)])
    np.testing.assert_allclose(cot[1], [0.0, 1.0, -1.0], atol=1e-300)


torch = pytest.importorskip("torch")
pytest.importorskip("mlxtend")

from qrdeploy.attacks import PGD  # noqa: E402
from qrdeploy.attacks.temperature import Float64Cotangent, NJSModel, njs_temperature  # noqa: E402
from tests.unit.adaptive_models import SCALE, mnist_linear, victims  # noqa: E402


def _unit(g: np.ndarray) -> np.ndarray:
    flat = g.reshape(len(g), -1).astype(np.float64)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def test_wrapper_direction_equals_true_ce_gradient_without_underflow() -> None:
    net, _, _ = mnist_linear()
    plain, _, x, y = victims()
    z, _, g32 = plain.loss_and_grad(x, y, Loss.CE)
    _, _, g = Float64Cotangent(plain).loss_and_grad(x, y, Loss.CE)
    w = net[1].weight.detach().numpy().astype(np.float64)  # (K, D): the model is z = W x + b
    _, cot64 = loss_value_and_cotangent(to_np(z), to_np(y), Loss.CE)
    cos64 = (_unit(to_np(g)) * _unit(cot64 @ w)).sum(1)  # against the float64 truth
    assert cos64.min() > 1 - 1e-6
    p_y = torch.softmax(z, 1)[torch.arange(len(y)), y].numpy()
    live = p_y < 0.999  # float32 neither underflows nor cancels in 1 - p_y
    assert live.mean() > 0.5
    cos32 = (_unit(to_np(g)[live]) * _unit(to_np(g32)[live])).sum(1)
    assert cos32.min() > 1 - 1e-5


def test_wrapper_removes_the_zero_gradients_of_scaled_logits() -> None:
    plain, big, x, y = victims()
    _, _, g_big = big.loss_and_grad(x, y, Loss.CE)
    zero = (to_np(g_big).reshape(len(y), -1) == 0).all(1)
    assert zero.mean() > 0.8  # float32 softmax saturated
    _, _, g = Float64Cotangent(big).loss_and_grad(x, y, Loss.CE)
    assert (to_np(g).reshape(len(y), -1) != 0).any(1).all()
    # the same direction as CE of the plain model's z / T with T = 1 / SCALE (the same numbers)
    _, _, g_ref = Float64Cotangent(plain).loss_and_grad(x, y, Loss.CE_T, 1 / SCALE)
    cos = (_unit(to_np(g)) * _unit(to_np(g_ref))).sum(1)
    assert cos.min() > 1 - 1e-5


def test_pgd_on_the_wrapper_matches_pgd_without_saturation() -> None:
    plain, big, x, y = victims()
    attack = PGD(eps=0.05, step=0.0125, steps=10)
    masked = attack(big, x, y, seed=0)
    fixed = attack(Float64Cotangent(big), x, y, seed=0)
    ref = attack(plain, x, y, seed=0)
    assert masked.fooled.mean() < ref.fooled.mean() - 0.5
    assert abs(fixed.fooled.mean() - ref.fooled.mean()) <= 0.03


def test_njs_temperature_of_a_linear_model_is_its_mean_singular_value() -> None:
    net, xn, _ = mnist_linear()
    plain, big, x, _ = victims()
    w = net[1].weight.detach().numpy().astype(np.float64)  # J = W for every input
    t = njs_temperature(plain, x[:5])
    np.testing.assert_allclose(t, np.linalg.svd(w, compute_uv=False).mean(), rtol=1e-5)
    np.testing.assert_allclose(njs_temperature(big, x[:5]), SCALE * t, rtol=1e-5)


def test_njs_model_is_ce_at_the_njs_temperature() -> None:
    plain, _, x, y = victims()
    t = torch.tensor(njs_temperature(plain, x[:6]), dtype=torch.float32)
    z, value, g = NJSModel(plain).loss_and_grad(x[:6], y[:6], Loss.CE)
    z2, value2, g2 = plain.loss_and_grad(x[:6], y[:6], Loss.CE_T, t)
    torch.testing.assert_close(value, value2)
    torch.testing.assert_close(g, g2)
