"""quant.py: exact values of the μ-law map, level counts, error bounds and idempotence."""

from __future__ import annotations

import numpy as np
import pytest

from qrdeploy.hardening import quant
from qrdeploy.hardening.quant import ScaleRule

RNG = np.random.default_rng(0)
W = (RNG.standard_normal((16, 3, 3, 3)) * 0.2).astype(np.float32)  # (C_out, C_in, k, k)


@pytest.mark.parametrize(("x", "mu", "expected"), [
    (0.5, 255, 0.875703), (1.0, 255, 1.0), (-1.0, 255, -1.0), (0.0, 255, 0.0),
    (-0.5, 255, -0.875703), (0.5, 0, 0.5), (0.1, 10, np.log(2.0) / np.log(11.0)),
], ids=["half-255", "one", "minus-one", "zero", "odd", "mu0-identity", "mu10"])
def test_mu_law_exact_values(x: float, mu: float, expected: float) -> None:
    assert quant.mu_law(np.array([x]), mu)[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("mu", [0.0, 1.0, 10.0, 255.0, 1000.0], ids=lambda m: f"mu{m:g}")
def test_mu_law_monotone_and_inverse(mu: float) -> None:
    x = np.linspace(-1, 1, 2001)
    y = quant.mu_law(x, mu)
    assert np.all(np.diff(y) > 0)
    np.testing.assert_allclose(quant.mu_law_inverse(y, mu), x, atol=1e-12)
    np.testing.assert_allclose(quant.mu_law(-x, mu), -y, atol=0)


def test_mu_law_keeps_dtype() -> None:
    assert quant.mu_law(np.ones(3, np.float32), 255).dtype == np.float32


@pytest.mark.parametrize("bits", range(1, 9), ids=lambda b: f"b{b}")
@pytest.mark.parametrize("narrow", [True, False], ids=["narrow", "full"])
@pytest.mark.parametrize("axis", [None, 0], ids=["tensor", "channel"])
@pytest.mark.parametrize("rule", list(ScaleRule), ids=lambda r: r.value)
def test_levels_at_most_2_to_b(bits: int, narrow: bool, axis: int | None, rule: ScaleRule) -> None:
    q = quant.quantize(W, bits, axis, rule, narrow)
    limit = 2 ** bits - (1 if narrow and bits > 2 else 0)
    limit = min(limit, 3) if bits == 2 else limit  # 2 bits is ternary
    assert quant.distinct_levels(q.values, axis) <= limit
    assert q.codes.min() >= q.qmin and q.codes.max() <= q.qmax


@pytest.mark.parametrize(("bits", "narrow", "qrange"), [
    (3, True, (-3, 3)), (3, False, (-4, 3)), (8, True, (-127, 127)), (8, False, (-128, 127)),
    (2, True, (-1, 1)), (2, False, (-1, 1)), (1, True, (-1, 1)),
], ids=["3n", "3f", "8n", "8f", "2-ternary", "2f-ternary", "1-binary"])
def test_code_range(bits: int, narrow: bool, qrange: tuple[int, int]) -> None:
    assert quant.code_range(bits, narrow) == qrange


@pytest.mark.parametrize("bits", range(2, 9), ids=lambda b: f"b{b}")
@pytest.mark.parametrize("narrow", [True, False], ids=["narrow", "full"])
@pytest.mark.parametrize("axis", [None, 0, 1], ids=["tensor", "axis0", "axis1"])
def test_max_scale_error_bound_and_idempotence(bits: int, narrow: bool, axis: int | None) -> None:
    q = quant.quantize(W, bits, axis, ScaleRule.MAX, narrow)
    s = q.scale if axis is None else np.expand_dims(q.scale, [a for a in range(4) if a != axis])
    assert np.all(np.abs(W - q.values) <= s / 2 * (1 + 1e-6))
    again = quant.dequantize(quant.encode(q.values, q.scale, bits, axis, narrow), q.scale, axis)
    np.testing.assert_array_equal(again, q.values)  # Q(Q(W)) = Q(W) with the same scale
    requant = quant.quantize(q.values, bits, axis, ScaleRule.MAX, narrow).values
    np.testing.assert_allclose(requant, q.values, rtol=1e-6, atol=0)  # and with its own scale


@pytest.mark.parametrize("bits", [2, 3, 4, 8], ids=lambda b: f"b{b}")
def test_mse_scale_properties(bits: int) -> None:
    """MSE scale: error no larger than max-abs, idempotent for a fixed scale; the scale/2 bound
    does NOT hold (it clips outliers), so it is not asserted."""
    qm = quant.quantize(W, bits, 0, ScaleRule.MAX)
    qe = quant.quantize(W, bits, 0, ScaleRule.MSE)
    assert np.sum((W - qe.values) ** 2) <= np.sum((W - qm.values) ** 2)
    again = quant.dequantize(quant.encode(qe.values, qe.scale, bits, 0), qe.scale, 0)
    np.testing.assert_array_equal(again, qe.values)
    assert np.all(qe.scale <= qm.scale)


def test_pinned_3bit_example() -> None:
    w = np.array([-1.0, -0.5, 0.0, 0.2, 0.9], np.float32)
    q = quant.quantize(w, 3)
    assert q.scale == np.float32(1 / 3)
    np.testing.assert_array_equal(q.codes, [-3, -2, 0, 1, 3])  # -1.5 rounds half to even


def test_full_range_uses_minus_4_when_negative_dominates() -> None:
    w = np.array([-1.0, 0.25, 0.5], np.float32)
    q = quant.quantize(w, 3, narrow=False)
    assert q.scale == np.float32(0.25) and q.codes.min() == -4


def test_one_bit_is_sign_times_mean_abs() -> None:
    w = np.array([[-2.0, 1.0, 0.0], [4.0, -1.0, 1.0]], np.float32)
    q = quant.quantize(w, 1, axis=0)
    np.testing.assert_allclose(q.values, [[-1, 1, 1], [2, -2, 2]])


def test_zero_tensor_quantizes_to_zero() -> None:
    q = quant.quantize(np.zeros((4, 4), np.float32), 3, 0)
    assert np.all(q.values == 0) and np.all(q.scale == 1)


@pytest.mark.parametrize("bits", [2, 3, 4], ids=lambda b: f"b{b}")
def test_companding_levels_and_codebook(bits: int) -> None:
    q = quant.quantize_companding(W, bits, 0, mu=255)
    assert quant.distinct_levels(q.values, 0) <= 2 ** bits - 1
    assert q.codebook is not None and np.all(np.diff(q.codebook) > 0)
    assert q.codebook[-1] == 1 and q.codebook[-q.qmin] == 0
    assert np.all(np.abs(q.values) <= np.max(np.abs(W), axis=(1, 2, 3), keepdims=True))


def test_companding_is_finer_near_zero_than_uniform() -> None:
    w = (RNG.laplace(size=4096) * 0.01).astype(np.float32)
    w[0] = 1.0  # one outlier: uniform puts almost everything on 0
    uni = quant.quantize(w, 3)
    comp = quant.quantize_companding(w, 3, mu=255)
    assert np.sum((w - comp.values) ** 2) < np.sum((w - uni.values) ** 2)


@pytest.mark.parametrize(("values", "axis", "expected"), [
    (np.array([[1, 1, 2], [3, 4, 5]]), None, 5), (np.array([[1, 1, 2], [3, 4, 5]]), 0, 3),
    (np.array([[1, 1, 2], [3, 4, 5]]), 1, 2),
], ids=["tensor", "rows", "cols"])
def test_distinct_levels(values: np.ndarray, axis: int | None, expected: int) -> None:
    assert quant.distinct_levels(values, axis) == expected


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8], ids=lambda b: f"b{b}")
@pytest.mark.parametrize("axis", [None, 0, 1, 3], ids=["tensor", "axis0", "axis1", "axis3"])
def test_code_levels_matches_distinct_values(bits: int, axis: int | None) -> None:
    q = quant.quantize(W, bits, axis)
    total, per = quant.code_levels(q.codes, q.qmin, q.qmax, axis)
    assert total == quant.distinct_levels(q.codes)
    assert per == (None if axis is None else quant.distinct_levels(q.codes, axis))
