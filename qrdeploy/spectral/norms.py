"""Largest singular values of weight matrices and convolution operators, in pure numpy.

What each function computes (docs/lipschitz.md has the longer story):

- `largest_singular_value(a)`: ‖a‖₂ of a dense matrix. Exact (eigenvalue of the Gram matrix of
  the smaller side, or full SVD) for small matrices, Golub-Kahan-Lanczos for large ones.
- `reshaped_kernel_norm(w)`: ‖w.reshape(C_out, C_in/groups·∏k)‖₂, the "unfolded kernel"
  convention (Cisse et al. 2017) that the paper most likely used [DEFAULT: docs/method.md,
  section 7].
- `conv_operator_norm(w, geometry)`: the true operator norm of the convolution x ↦ w ⋆ x at one
  input shape, with its stride, zero padding, dilation and groups, by Lanczos bidiagonalization on
  the convolution and its transpose (both written here with strided slices and matmuls).
- `conv_fft_bound(w, geometry)`: the operator norm of the circular convolution on a torus large
  enough to contain the zero-padded one, from the per-frequency matrices of the kernel's FFT
  (Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers", ICLR 2019). It is an upper
  bound of `conv_operator_norm` for every stride: a strided convolution is a subsampling (a
  restriction, norm 1) of the stride-1 one, so the bound is that of the stride-1 convolution and
  is loose for strided layers.

Iterative results say how far they got: iterations, the last relative change of the estimate
(the stopping rule) and the relative residual (some singular value lies within residual·value
of the estimate; the Lanczos estimate itself is a lower bound of the true norm). scipy is never
needed: this module is what the deploy side runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from qrdeploy.errors import ConfigError

#: Above this smaller side, `largest_singular_value(method="auto")` switches from exact to Lanczos.
EXACT_MAX_SIDE = 4096
#: Frequencies per chunk in `conv_fft_bound`, times C_out·C_in/groups, bounds its memory.
_FFT_CHUNK_ELEMENTS = 1 << 22


def _method(method: str) -> NormMethod:
    try:
        return NormMethod(method)
    except ValueError:
        raise ConfigError(f"unknown norm method {method!r}; choose one of "
                          f"{', '.join(NormMethod)}") from None


class NormMethod(StrEnum):
    """How a largest singular value is computed."""

    AUTO = "auto"  # exact when the smaller side is <= EXACT_MAX_SIDE, else Lanczos
    GRAM = "gram"  # sqrt of the top eigenvalue of the smaller Gram matrix (exact, fast)
    SVD = "svd"  # full singular value decomposition (exact, the slow baseline)
    LANCZOS = "lanczos"  # Golub-Kahan-Lanczos bidiagonalization with full reorthogonalization
    POWER = "power"  # plain power iteration on AᵀA (the slow iterative baseline)


@dataclass(frozen=True)
class SpectralResult:
    """A largest singular value and how it was obtained.

    `iterations` counts applications of the operator and its transpose (0 for direct methods);
    `rel_change` is the last relative change of the estimate, `residual` the relative residual
    ‖Aᵀu − σv‖/σ of the singular pair (both 0 for exact methods)."""

    value: float
    method: NormMethod
    iterations: int = 0
    rel_change: float = 0.0
    residual: float = 0.0
    converged: bool = True


@dataclass(frozen=True)
class LinearOperator:
    """A matrix given by its action on flat vectors: matvec (n_in,) -> (n_out,) and back."""

    n_in: int
    n_out: int
    matvec: Callable[[np.ndarray], np.ndarray]
    rmatvec: Callable[[np.ndarray], np.ndarray]
    dtype: np.dtype = np.dtype(np.float64)


def _check_iteration(tol: float, max_iter: int) -> None:
    if not 0 < tol < 1:
        raise ConfigError(f"tol must be in (0, 1), got {tol}; use e.g. 1e-5")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")


def matrix_operator(a: np.ndarray) -> LinearOperator:
    """A dense 2-D array as a LinearOperator."""
    return LinearOperator(a.shape[1], a.shape[0], lambda v: a @ v, lambda u: a.T @ u, a.dtype)


def largest_singular_value(
    a: np.ndarray,
    method: NormMethod | str = NormMethod.AUTO,
    *,
    tol: float = 1e-6,
    max_iter: int = 300,
    seed: int = 0,
) -> SpectralResult:
    """‖a‖₂ of a 2-D array (exact for small sides, Lanczos for large ones).

    >>> largest_singular_value(np.diag([1.0, -3.0, 2.0])).value
    3.0
    """
    method = _method(method)
    if a.ndim != 2:
        raise ConfigError(f"expected a 2-D matrix, got shape {a.shape}; reshape the kernel first")
    if a.size == 0:
        return SpectralResult(0.0, NormMethod.GRAM if method is NormMethod.AUTO else method)
    if method is NormMethod.AUTO:
        small = min(a.shape) <= EXACT_MAX_SIDE
        method = NormMethod.GRAM if small else NormMethod.LANCZOS
    a64 = np.asarray(a, dtype=np.float64)
    if method is NormMethod.SVD:
        return SpectralResult(float(np.linalg.svd(a64, compute_uv=False)[0]), method)
    if method is NormMethod.GRAM:
        gram = a64 @ a64.T if a.shape[0] <= a.shape[1] else a64.T @ a64  # (k, k), k = smaller side
        return SpectralResult(math.sqrt(max(float(np.linalg.eigvalsh(gram)[-1]), 0.0)), method)
    op = matrix_operator(a64)
    if method is NormMethod.POWER:
        return power_norm(op, tol=tol, max_iter=max_iter, seed=seed)
    return lanczos_norm(op, tol=tol, max_iter=max_iter, seed=seed)


def _unit_start(n: int, seed: int, dtype: np.dtype) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(n)  # (n,)
    return (v / np.linalg.norm(v)).astype(dtype)


def _reorthogonalize(w: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """w minus its projection on the rows of basis, twice (classical Gram-Schmidt, repeated,
    because one pass loses orthogonality in float32)."""
    if basis.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - basis.T @ (basis @ w)  # basis (k, n), w (n,)
    return w


def _top_ritz(alphas: list[float], betas: list[float]) -> tuple[float, float]:
    """Largest singular value of the upper-bidiagonal B_k and the last entry of its left vector."""
    k = len(alphas)
    b = np.diag(alphas)  # (k, k)
    if k > 1:
        b += np.diag(betas[: k - 1], 1)
    p, s, _ = np.linalg.svd(b)
    return float(s[0]), float(p[-1, 0])


def lanczos_norm(
    op: LinearOperator, *, tol: float = 1e-6, max_iter: int = 300, seed: int = 0
) -> SpectralResult:
    """Largest singular value by Golub-Kahan-Lanczos bidiagonalization (full reorthogonalization).

    After k steps A·V_k = U_k·B_k with orthonormal U_k, V_k, so σ₁(B_k) is a lower bound of ‖A‖₂
    (up to rounding). Stops when σ₁(B_k) changes by ≤ tol relatively, when the relative residual
    is ≤ tol, or when the Krylov space is exhausted (then the value is exact)."""
    _check_iteration(tol, max_iter)
    k_max = min(max_iter, op.n_in, op.n_out)
    vs = np.empty((k_max + 1, op.n_in), op.dtype)  # right Lanczos vectors
    us = np.empty((k_max, op.n_out), op.dtype)  # left Lanczos vectors
    vs[0] = _unit_start(op.n_in, seed, op.dtype)
    alphas: list[float] = []
    betas: list[float] = []
    sigma, change, residual, beta = 0.0, 1.0, 1.0, 0.0
    for k in range(k_max):
        u = op.matvec(vs[k])
        if k:
            u = u - beta * us[k - 1]
        u = _reorthogonalize(u, us[:k])
        alpha = float(np.linalg.norm(u))
        if alpha <= _tiny(alphas, op.dtype):  # A·v_k lies in span(U_k): the space is invariant
            # B gets a zero diagonal entry; its last column still carries β_k, so σ₁ is exact.
            value = _top_ritz([*alphas, 0.0], betas)[0] if alphas else 0.0
            return SpectralResult(value, NormMethod.LANCZOS, k, 0.0, 0.0, True)
        us[k] = u / alpha
        w = _reorthogonalize(op.rmatvec(us[k]) - alpha * vs[k], vs[: k + 1])
        beta = float(np.linalg.norm(w))
        alphas.append(alpha)
        betas.append(beta)
        new_sigma, p_last = _top_ritz(alphas, betas)
        change = (new_sigma - sigma) / new_sigma
        sigma, residual = new_sigma, beta * abs(p_last) / new_sigma
        if beta <= _tiny(alphas, op.dtype):
            return SpectralResult(sigma, NormMethod.LANCZOS, k + 1, change, 0.0, True)
        if k and (change <= tol or residual <= tol):
            return SpectralResult(sigma, NormMethod.LANCZOS, k + 1, change, residual, True)
        vs[k + 1] = w / beta
    exhausted = k_max == min(op.n_in, op.n_out)
    return SpectralResult(sigma, NormMethod.LANCZOS, k_max, change, residual, exhausted)


def _tiny(alphas: list[float], dtype: np.dtype) -> float:
    scale = max(alphas) if alphas else 1.0
    return 100.0 * float(np.finfo(dtype).eps) * scale


def power_norm(
    op: LinearOperator, *, tol: float = 1e-6, max_iter: int = 1000, seed: int = 0
) -> SpectralResult:
    """Largest singular value by plain power iteration on AᵀA: the baseline Lanczos is measured
    against. Stops when ‖A·v‖ changes by ≤ tol relatively."""
    _check_iteration(tol, max_iter)
    v = _unit_start(op.n_in, seed, op.dtype)
    sigma, change, residual = 0.0, 1.0, 1.0
    for it in range(1, max_iter + 1):
        av = op.matvec(v)
        new_sigma = float(np.linalg.norm(av))
        if new_sigma == 0.0:
            return SpectralResult(0.0, NormMethod.POWER, it, 0.0, 0.0, True)
        w = op.rmatvec(av / new_sigma)  # Aᵀu, u = Av/σ; equals σ·v at a singular pair
        residual = float(np.linalg.norm(w - new_sigma * v)) / new_sigma
        change = abs(new_sigma - sigma) / new_sigma
        sigma = new_sigma
        if it > 1 and (change <= tol or residual <= tol):
            return SpectralResult(sigma, NormMethod.POWER, it, change, residual, True)
        v = w / float(np.linalg.norm(w))
    return SpectralResult(sigma, NormMethod.POWER, max_iter, change, residual, False)


def reshaped_kernel_norm(
    weight: np.ndarray, method: NormMethod | str = NormMethod.AUTO, **kw: float
) -> SpectralResult:
    """‖W‖₂ of a conv kernel (C_out, C_in/groups, *k) unfolded to C_out × (C_in/groups·∏k).

    This is the Parseval-networks convention and our reading of the paper's ‖ΔW‖₂ for conv
    layers [DEFAULT: docs/method.md section 7]; it is not the operator norm of the convolution."""
    return largest_singular_value(weight.reshape(weight.shape[0], -1), method, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ConvGeometry:
    """Everything but the kernel that fixes a convolution as a linear map (ONNX conventions).

    in_spatial: input size per spatial dim; pads: (begin_0, ..., begin_d, end_0, ..., end_d)."""

    in_spatial: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int = 1

    def __post_init__(self) -> None:
        d = len(self.in_spatial)
        if d == 0 or len(self.strides) != d or len(self.dilations) != d or len(self.pads) != 2 * d:
            raise ConfigError(
                f"conv geometry needs one stride/dilation and two pads per spatial dim; got "
                f"in {self.in_spatial}, strides {self.strides}, pads {self.pads}, "
                f"dilations {self.dilations}"
            )
        if min(self.in_spatial + self.strides + self.dilations) < 1 or min(self.pads) < 0:
            raise ConfigError(f"conv geometry has a non-positive size or negative pad: {self}")
        if self.group < 1:
            raise ConfigError(f"group must be >= 1, got {self.group}")

    @classmethod
    def simple(
        cls, in_spatial: tuple[int, ...], stride: int = 1, pad: int = 0, dilation: int = 1,
        group: int = 1,
    ) -> ConvGeometry:
        """The same stride, pad and dilation in every spatial dim."""
        d = len(in_spatial)
        return cls(tuple(in_spatial), (stride,) * d, (pad,) * 2 * d, (dilation,) * d, group)

    @property
    def ndim(self) -> int:
        return len(self.in_spatial)

    def out_spatial(self, kernel: tuple[int, ...]) -> tuple[int, ...]:
        """Output size per spatial dim for a kernel of spatial size `kernel`."""
        d = self.ndim
        out = tuple(
            (n + self.pads[i] + self.pads[i + d] - self.dilations[i] * (k - 1) - 1)
            // self.strides[i] + 1
            for i, (n, k) in enumerate(zip(self.in_spatial, kernel, strict=True))
        )
        if min(out) < 1:
            raise ConfigError(f"kernel {kernel} does not fit input {self.in_spatial} with {self}")
        return out


def _check_kernel(weight: np.ndarray, geom: ConvGeometry) -> None:
    if weight.ndim != geom.ndim + 2:
        raise ConfigError(
            f"kernel of shape {weight.shape} does not match a {geom.ndim}-d input; expected "
            f"(C_out, C_in/groups, {', '.join('k' for _ in range(geom.ndim))})"
        )
    if weight.shape[0] % geom.group:
        raise ConfigError(f"C_out {weight.shape[0]} is not divisible by group {geom.group}")


def _index(spatial: tuple[slice, ...]) -> tuple[Any, ...]:
    """An index selecting `spatial` in the trailing dims of an array."""
    return (Ellipsis, *spatial)


class _Conv:
    """A convolution and its transpose on batches, by one matmul per kernel offset."""

    def __init__(self, weight: np.ndarray, geom: ConvGeometry, dtype: np.dtype) -> None:
        _check_kernel(weight, geom)
        self.geom = geom
        self.kernel = tuple(weight.shape[2:])
        self.out = geom.out_spatial(self.kernel)
        self.c_out, self.c_in_g = weight.shape[0], weight.shape[1]
        g = geom.group
        taps = weight.reshape(g, self.c_out // g, self.c_in_g, -1)  # (G, Co/G, Ci/G, ∏k)
        # (∏k, G, Co/G, Ci/G): one small matrix per kernel offset and group
        self.taps = np.ascontiguousarray(np.moveaxis(taps, -1, 0), dtype=dtype)
        self.taps_t = np.ascontiguousarray(np.swapaxes(self.taps, -1, -2))  # (∏k, G, Ci/G, Co/G)
        d = geom.ndim
        self.padded = tuple(
            n + geom.pads[i] + geom.pads[i + d] for i, n in enumerate(geom.in_spatial)
        )
        self.slices = [_index(self._window(offs))
                       for offs in itertools.product(*map(range, self.kernel))]

    def _window(self, offs: tuple[int, ...]) -> tuple[slice, ...]:
        g = self.geom
        return tuple(
            slice(o * dl, o * dl + s * (n - 1) + 1, s)
            for o, dl, s, n in zip(offs, g.dilations, g.strides, self.out, strict=True)
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(N, C_in, *in) -> (N, C_out, *out), without bias."""
        g, d = self.geom, self.geom.ndim
        n = x.shape[0]
        # Batch next to space, so each tap is one GEMM per group: (Co/G, Ci/G) @ (Ci/G, N·∏out).
        x = np.moveaxis(x.astype(self.taps.dtype, copy=False), 0, 1)  # (C_in, N, *in)
        pad = [(0, 0), (0, 0)] + [(g.pads[i], g.pads[i + d]) for i in range(d)]
        xp = np.pad(x, pad).reshape(g.group, self.c_in_g, n, *self.padded)  # (G, Ci/G, N, *pad)
        y = np.zeros((g.group, self.c_out // g.group, n * math.prod(self.out)), self.taps.dtype)
        for tap, sl in zip(self.taps, self.slices, strict=True):
            y += tap @ xp[sl].reshape(g.group, self.c_in_g, -1)  # (G, Co/G, N·P)
        return np.moveaxis(y.reshape(self.c_out, n, *self.out), 1, 0)  # (N, C_out, *out)

    def transpose(self, y: np.ndarray) -> np.ndarray:
        """The adjoint: (N, C_out, *out) -> (N, C_in, *in)."""
        g = self.geom
        n = y.shape[0]
        y = np.moveaxis(y.astype(self.taps.dtype, copy=False), 0, 1)  # (C_out, N, *out)
        yg = y.reshape(g.group, self.c_out // g.group, -1)  # (G, Co/G, N·P)
        xp = np.zeros((g.group, self.c_in_g, n, *self.padded), self.taps.dtype)
        for tap_t, sl in zip(self.taps_t, self.slices, strict=True):
            xp[sl] += (tap_t @ yg).reshape(g.group, self.c_in_g, n, *self.out)
        crop = _index(tuple(slice(g.pads[i], g.pads[i] + s) for i, s in enumerate(g.in_spatial)))
        x = xp[crop].reshape(g.group * self.c_in_g, n, *g.in_spatial)  # (C_in, N, *in)
        return np.moveaxis(x, 1, 0)


def conv_forward(x: np.ndarray, weight: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """The convolution of a batch (N, C_in, *in) without bias, as ONNX Conv computes it."""
    return _Conv(weight, geom, np.result_type(x, weight)).forward(x)


def conv_transpose(y: np.ndarray, weight: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """The adjoint of `conv_forward`: (N, C_out, *out) -> (N, C_in, *in)."""
    return _Conv(weight, geom, np.result_type(y, weight)).transpose(y)


def conv_operator(
    weight: np.ndarray, geom: ConvGeometry, dtype: np.dtype | type = np.float32
) -> LinearOperator:
    """The convolution at one input shape as a LinearOperator on flat vectors."""
    conv = _Conv(weight, geom, np.dtype(dtype))
    c_in = conv.c_in_g * geom.group
    in_shape = (1, c_in, *geom.in_spatial)
    out_shape = (1, conv.c_out, *conv.out)
    return LinearOperator(
        n_in=math.prod(in_shape),
        n_out=math.prod(out_shape),
        matvec=lambda v: conv.forward(v.reshape(in_shape)).ravel(),
        rmatvec=lambda u: conv.transpose(u.reshape(out_shape)).ravel(),
        dtype=np.dtype(dtype),
    )


def conv_operator_norm(
    weight: np.ndarray,
    geom: ConvGeometry,
    method: NormMethod | str = NormMethod.LANCZOS,
    *,
    tol: float = 1e-5,
    max_iter: int = 300,
    seed: int = 0,
    dtype: np.dtype | type = np.float32,
) -> SpectralResult:
    """The operator norm of the zero-padded convolution at `geom`'s input shape.

    Lanczos (default) or power iteration on the convolution and its transpose; float32 arithmetic
    by default (the weights' own precision), so tolerances below ~1e-6 need dtype=np.float64.

    >>> w = np.ones((1, 1, 1, 1))
    >>> round(conv_operator_norm(w, ConvGeometry.simple((4, 4))).value, 6)
    1.0
    """
    method = _method(method)
    op = conv_operator(weight, geom, dtype)
    if method is NormMethod.LANCZOS:
        return lanczos_norm(op, tol=tol, max_iter=max_iter, seed=seed)
    if method is NormMethod.POWER:
        return power_norm(op, tol=tol, max_iter=max_iter, seed=seed)
    raise ConfigError(f"conv operator norms use lanczos or power, got {method.value!r}")


def conv_dense_matrix(weight: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """The explicit (n_out, n_in) matrix of the convolution, column by column (small inputs)."""
    op = conv_operator(weight, geom, np.float64)
    eye = np.eye(op.n_in)  # (n_in, n_in): one basis vector per column
    return np.stack([op.matvec(e) for e in eye], axis=1)  # (n_out, n_in)


def fft_grid(kernel: tuple[int, ...], geom: ConvGeometry) -> tuple[int, ...]:
    """Torus size per dim on which the stride-1 zero-padded convolution is a restriction of the
    circular one: padding never wraps onto real input and no output index wraps."""
    d = geom.ndim
    grid = []
    for i, (n, k) in enumerate(zip(geom.in_spatial, kernel, strict=True)):
        extent = geom.dilations[i] * (k - 1) + 1
        pb, pe = geom.pads[i], geom.pads[i + d]
        grid.append(max(n + max(pb, pe), n + pb + pe - extent + 1, extent))
    return tuple(grid)


def fft_bound_cost(weight_shape: tuple[int, ...], geom: ConvGeometry) -> float:
    """Estimated floating-point operations of `conv_fft_bound` (Gram + eigenvalues per frequency),
    to skip it where it would dominate: about 3e11 for a 640x640 3x3 conv at 8x8."""
    grid = fft_grid(tuple(weight_shape[2:]), geom)
    freqs = math.prod(grid[:-1]) * (grid[-1] // 2 + 1)
    m, big = sorted((weight_shape[0] // geom.group, weight_shape[1]))
    return float(freqs * geom.group * (8 * m * m * big + 10 * m**3))


def conv_fft_bound(weight: np.ndarray, geom: ConvGeometry) -> float:
    """Upper bound of the convolution's operator norm: the exact norm of the circular convolution
    on the `fft_grid` torus, max over frequencies of σ₁ of the C_out × C_in/groups matrix of the
    kernel's FFT (Sedghi et al. 2019), per group.

    It bounds every stride (a strided convolution is a subsampling of the stride-1 one), but for
    stride > 1 it is the stride-1 layer's norm, so expect it to be loose there."""
    _check_kernel(weight, geom)
    g = geom.group
    kernel = tuple(weight.shape[2:])
    extent = (dl * (k - 1) + 1 for k, dl in zip(kernel, geom.dilations, strict=True))
    dilated = np.zeros((*weight.shape[:2], *extent))  # (Co, Ci/G, *extent)
    dilated[_index(tuple(slice(None, None, dl) for dl in geom.dilations))] = weight
    axes = tuple(range(2, 2 + geom.ndim))
    spectrum = np.fft.rfftn(dilated, s=fft_grid(kernel, geom), axes=axes)  # (Co, Ci/G, *freq)
    co, ci_g = weight.shape[:2]
    per_freq = np.moveaxis(spectrum.reshape(g, co // g, ci_g, -1), -1, 0)  # (F, G, Co/G, Ci/G)
    # Real kernels: the dropped half of the spectrum is the complex conjugate (same σ).
    chunk = max(1, _FFT_CHUNK_ELEMENTS // max(1, co * ci_g))
    top = 0.0
    for start in range(0, per_freq.shape[0], chunk):
        block = per_freq[start : start + chunk]  # (f, G, Co/G, Ci/G)
        if block.shape[-2] > block.shape[-1]:
            block = np.swapaxes(block, -1, -2)
        # Contiguous operands: numpy's stacked matmul leaves BLAS for strided ones (~50x slower).
        block = np.ascontiguousarray(block)  # (f, G, m, M), m = smaller side
        gram = block @ np.ascontiguousarray(np.conj(np.swapaxes(block, -1, -2)))  # (f, G, m, m)
        top = max(top, float(np.linalg.eigvalsh(gram)[..., -1].max()))
    return math.sqrt(max(top, 0.0))
