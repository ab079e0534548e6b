"""Largest singular values of matrices and convolution operators (qrdeploy.spectral.norms)."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qrdeploy.core.runtime import make_session
from qrdeploy.spectral import norms as spectral
from qrdeploy.spectral.norms import ConvGeometry, NormMethod

MATRIX_METHODS = [NormMethod.GRAM, NormMethod.SVD, NormMethod.LANCZOS, NormMethod.POWER]


def _orthogonal(n: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q


@pytest.mark.parametrize("method", MATRIX_METHODS, ids=str)
@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        (np.diag([0.5, -3.0, 2.0, 1.0]), 3.0),
        (np.diag([1e-3, 7.25]), 7.25),
        (_orthogonal(12, 0), 1.0),
        (2.5 * _orthogonal(30, 1), 2.5),
        (np.zeros((5, 3)), 0.0),
        (np.hstack([np.eye(3), np.zeros((3, 7))]), 1.0),
        (np.hstack([2 * _orthogonal(4, 2), np.zeros((4, 9))]).T, 2.0),
    ],
    ids=["diag4", "diag2", "orthogonal12", "scaled-orthogonal30", "zero", "partial-identity",
         "repeated-top-with-null-space"],
)
def test_known_matrices(matrix: np.ndarray, expected: float, method: NormMethod) -> None:
    got = spectral.largest_singular_value(matrix, method, tol=1e-10, max_iter=2000)
    assert got.value == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert got.method is method


@pytest.mark.parametrize("method", [NormMethod.AUTO, *MATRIX_METHODS], ids=str)
@pytest.mark.parametrize("shape", [(40, 7), (7, 40), (300, 120)], ids=str)
def test_random_matrix_matches_numpy(shape: tuple[int, int], method: NormMethod) -> None:
    a = np.random.default_rng(3).standard_normal(shape)
    got = spectral.largest_singular_value(a, method, tol=1e-9, max_iter=5000)
    assert got.value == pytest.approx(np.linalg.norm(a, 2), rel=1e-4)


def test_lanczos_reports_iterations_and_is_a_lower_bound() -> None:
    a = np.random.default_rng(4).standard_normal((600, 500))
    got = spectral.largest_singular_value(a, "lanczos", tol=1e-8)
    exact = np.linalg.norm(a, 2)
    assert 1 < got.iterations < 500 and got.converged
    assert got.value <= exact * (1 + 1e-12)
    assert got.value == pytest.approx(exact, rel=1e-6)


def test_reshaped_kernel_norm_is_the_unfolded_matrix_norm() -> None:
    w = np.random.default_rng(5).standard_normal((6, 3, 3, 3))
    got = spectral.reshaped_kernel_norm(w).value
    assert got == pytest.approx(np.linalg.norm(w.reshape(6, 27), 2), rel=1e-10)


# ------------------------------------------------------------------ convolutions


def _naive_conv(x: np.ndarray, w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Direct loops over every output, input channel and tap: an independent reference."""
    d = g.ndim
    c_out, c_in_g = w.shape[:2]
    out = g.out_spatial(w.shape[2:])
    y = np.zeros((c_out, *out))
    per_group = c_out // g.group
    for co, o in itertools.product(range(c_out), itertools.product(*map(range, out))):
        grp = co // per_group
        for ci, k in itertools.product(range(c_in_g), itertools.product(*map(range, w.shape[2:]))):
            pos = [o[i] * g.strides[i] + k[i] * g.dilations[i] - g.pads[i] for i in range(d)]
            if all(0 <= p < n for p, n in zip(pos, g.in_spatial, strict=True)):
                y[(co, *o)] += w[(co, ci, *k)] * x[(grp * c_in_g + ci, *pos)]
    return y


def _naive_dense(w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    c_in = w.shape[1] * g.group
    n_in = c_in * math.prod(g.in_spatial)
    cols = [_naive_conv(e.reshape(c_in, *g.in_spatial), w, g).ravel() for e in np.eye(n_in)]
    return np.stack(cols, axis=1)  # (n_out, n_in)


# (C_out, C_in, kernel, geometry): strides, paddings, dilations, groups, 1-D and 2-D
CONV_CASES = {
    "s1p1": (4, 3, (3, 3), ConvGeometry.simple((6, 6), 1, 1)),
    "s2p1": (4, 3, (3, 3), ConvGeometry.simple((7, 6), 2, 1)),
    "s1p0": (3, 2, (3, 3), ConvGeometry.simple((5, 5), 1, 0)),
    "s3p2-k5": (2, 2, (5, 5), ConvGeometry.simple((8, 8), 3, 2)),
    "dil2": (3, 2, (3, 3), ConvGeometry.simple((7, 7), 1, 2, 2)),
    "asym-pads-strides": (4, 4, (3, 2), ConvGeometry((7, 8), (2, 1), (0, 1, 2, 0), (2, 1), 2)),
    "groups2": (4, 4, (3, 3), ConvGeometry.simple((5, 5), 1, 1, 1, 2)),
    "depthwise": (3, 3, (3, 3), ConvGeometry.simple((6, 6), 2, 1, 1, 3)),
    "1x1": (5, 3, (1, 1), ConvGeometry.simple((4, 4))),
    "k2s2-all-singular-values-equal": (1, 3, (2, 2), ConvGeometry.simple((8, 8), 2)),
    "1d": (3, 2, (3,), ConvGeometry.simple((9,), 2, 1, 2)),
}


def _kernel(case: str, seed: int = 0) -> tuple[np.ndarray, ConvGeometry]:
    c_out, c_in, k, g = CONV_CASES[case]
    w = np.random.default_rng(seed).standard_normal((c_out, c_in // g.group, *k))
    return w, g


@functools.cache
def _exact(case: str) -> float:
    w, g = _kernel(case)
    return float(np.linalg.norm(_naive_dense(w, g), 2))


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_operator_norm_equals_dense_svd(case: str) -> None:
    w, g = _kernel(case)
    exact = _exact(case)
    got = spectral.conv_operator_norm(w, g)  # defaults: float32, Lanczos
    assert abs(got.value - exact) / exact <= 1e-4
    assert got.converged and got.iterations >= 1


@pytest.mark.parametrize("case", ["s1p1", "s2p1", "groups2"])
def test_power_iteration_agrees(case: str) -> None:
    w, g = _kernel(case)
    exact = _exact(case)
    got = spectral.conv_operator_norm(w, g, "power", tol=1e-9, max_iter=20000, dtype=np.float64)
    assert got.value == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_dense_matrix_matches_naive_convolution(case: str) -> None:
    w, g = _kernel(case)
    np.testing.assert_allclose(spectral.conv_dense_matrix(w, g), _naive_dense(w, g), atol=1e-12)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_transpose_is_the_adjoint(case: str) -> None:
    w, g = _kernel(case)
    op = spectral.conv_operator(w, g, np.float64)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(op.n_in), rng.standard_normal(op.n_out)
    assert np.dot(op.matvec(x), y) == pytest.approx(np.dot(x, op.rmatvec(y)), rel=1e-10)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_upper_bounds_hold(case: str) -> None:
    w, g = _kernel(case)
    exact = _exact(case)
    assert spectral.conv_fft_bound(w, g) >= exact * (1 - 1e-9)
    taps = math.prod(w.shape[2:])
    assert math.sqrt(taps) * spectral.reshaped_kernel_norm(w).value >= exact * (1 - 1e-9)


def test_fft_bound_is_tight_for_1x1_kernels() -> None:
    # A 1x1 kernel is multiplication per pixel: every bound and the operator norm coincide.
    w, g = _kernel("1x1")
    assert spectral.conv_fft_bound(w, g) == pytest.approx(np.linalg.norm(w[:, :, 0, 0], 2))


@pytest.mark.parametrize("seed", [0, 7])
def test_reproducible_with_a_seed(seed: int) -> None:
    w, g = _kernel("s2p1", seed=3)
    a = spectral.conv_operator_norm(w, g, seed=seed, tol=1e-3)
    b = spectral.conv_operator_norm(w, g, seed=seed, tol=1e-3)
    other = spectral.conv_operator_norm(w, g, seed=seed + 100, tol=1e-3)
    assert a == b
    assert other.value != a.value  # the seed is used (the start vector), within tol of a
    assert other.value == pytest.approx(a.value, rel=1e-2)


def _onnx_conv(w: np.ndarray, g: ConvGeometry) -> onnx.ModelProto:
    d = g.ndim
    c_in = w.shape[1] * g.group
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(g.strides),
                            pads=list(g.pads), dilations=list(g.dilations), group=g.group)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w.astype(np.float32), "w")])
    assert d in (1, 2) and c_in > 0
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_forward_matches_onnxruntime(case: str) -> None:
    w, g = _kernel(case)
    x = np.random.default_rng(2).standard_normal((2, w.shape[1] * g.group, *g.in_spatial))
    x = x.astype(np.float32)
    sess = make_session(_onnx_conv(w, g).SerializeToString())
    expected = sess.run(None, {"x": x})[0]
    got = spectral.conv_forward(x, w.astype(np.float32), g)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_geometry_output_size() -> None:
    g = ConvGeometry((32, 17), (2, 3), (1, 0, 1, 2), (1, 2))
    assert g.out_spatial((3, 3)) == (16, 5)
