"""Pure numpy maths of weight hardening: the μ-law map F and its inverse, scale rules, symmetric
uniform quantization (per tensor or per channel), ternary / binary special cases, and a μ-law
companding (nonuniform) quantizer. No onnx here: graph plumbing lives in graph.py / passes.py.

Sources: F(x) = sgn(x)·ln(1 + μ|x|)/ln(1 + μ) is the paper's (docs/method.md section 2). Everything
about scales, ranges, 2-bit / 1-bit and companding is qrdeploy's own choice ([DEFAULT],
docs/passes.md).

Dequantized values are computed exactly as onnxruntime's DequantizeLinear does (float32 codes
times a float32 scale), so a `float` encoding and a `qdq` encoding hold bit-identical weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from qrdeploy.errors import PassError

MIN_BITS, MAX_BITS = 1, 8
_MSE_GRID = np.linspace(0.3, 1.0, 71)  # fractions of the max-abs scale tried by the MSE rule


class Granularity(StrEnum):
    TENSOR = "tensor"
    CHANNEL = "channel"


class ScaleRule(StrEnum):
    MAX = "max"  # [DEFAULT] for the paper's experiment: clipping-free max-abs scale
    MSE = "mse"  # grid search for the scale minimising the squared error


class Quantizer(StrEnum):
    UNIFORM = "uniform"
    COMPANDING = "companding"  # qrdeploy's extra option: uniform grid in the μ-law domain


def check_mu(mu: float) -> float:
    """Validate μ: finite and >= 0 (0 is the identity)."""
    if not np.isfinite(mu) or mu < 0:
        raise PassError(f"mu must be a finite number >= 0 (0 = identity), got {mu}; use e.g. 255")
    return float(mu)


def mu_law(x: np.ndarray, mu: float) -> np.ndarray:
    """F(x) = sgn(x)·ln(1 + μ|x|)/ln(1 + μ) for x in [-1, 1] (paper, docs/method.md section 2);
    μ = 0 -> x."""
    mu = check_mu(mu)
    x64 = np.asarray(x, dtype=np.float64)
    if mu == 0:
        return x64.astype(np.asarray(x).dtype, copy=True)
    y = np.sign(x64) * np.log1p(mu * np.abs(x64)) / np.log1p(mu)
    return np.asarray(y.astype(np.asarray(x).dtype))


def mu_law_inverse(y: np.ndarray, mu: float) -> np.ndarray:
    """F⁻¹(y) = sgn(y)·((1 + μ)^|y| − 1)/μ; μ = 0 -> y."""
    mu = check_mu(mu)
    y64 = np.asarray(y, dtype=np.float64)
    if mu == 0:
        return y64.astype(np.asarray(y).dtype, copy=True)
    x = np.sign(y64) * np.expm1(np.abs(y64) * np.log1p(mu)) / mu
    return np.asarray(x.astype(np.asarray(y).dtype))


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise PassError(f"bits must be an integer in 1..8, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise PassError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}; e.g. --bits 3")
    return int(bits)


def code_range(bits: int, narrow: bool = True) -> tuple[int, int]:
    """(qmin, qmax) of the integer codes. Narrow: ±(2^(b-1) − 1); full: −2^(b-1)..2^(b-1) − 1.
    2 bits is always ternary (−1, 0, 1) and 1 bit is binary (−1, +1) [DEFAULT, ours]."""
    bits = check_bits(bits)
    if bits <= 2:
        return -1, 1
    half = 1 << (bits - 1)
    return (-(half - 1) if narrow else -half), half - 1


def _reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    return tuple(range(ndim)) if axis is None else tuple(a for a in range(ndim) if a != axis)


def _per_channel(stat: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape a reduced statistic so it broadcasts against the tensor."""
    if axis is None:
        return stat.reshape((1,) * ndim)
    shape = [1] * ndim
    shape[axis] = -1
    return stat.reshape(shape)


def _check_weights(w: np.ndarray, axis: int | None) -> None:
    if not np.all(np.isfinite(w)):
        raise PassError("weights contain NaN or Inf; fix the model (retrain or export again)")
    if axis is not None and not -w.ndim <= axis < w.ndim:
        raise PassError(f"channel axis {axis} is out of range for a tensor of shape {w.shape}")


def max_abs_scale(w: np.ndarray, bits: int, axis: int | None, narrow: bool = True) -> np.ndarray:
    """Clipping-free max-abs scale, shape (C,) or (): the largest positive value maps to at most
    qmax and the most negative to at least qmin, so |W − Q(W)| ≤ scale/2 everywhere [DEFAULT]."""
    qmin, qmax = code_range(bits, narrow)
    red = _reduce_axes(w.ndim, axis)
    hi = np.max(w, axis=red).astype(np.float64)  # (C,)
    lo = np.min(w, axis=red).astype(np.float64)  # (C,)
    scale = np.maximum(hi / qmax, lo / qmin) if bits > 1 else np.maximum(hi, -lo)
    return _safe_scale(scale)


def _safe_scale(scale: np.ndarray) -> np.ndarray:
    # an all-zero channel keeps scale 1 so that codes are 0 and dequantize gives 0 exactly
    scale = np.asarray(scale, dtype=np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def mean_abs_scale(w: np.ndarray, axis: int | None) -> np.ndarray:
    """1-bit scale: mean |W| per tensor or channel (binary sign·mean|W|, [DEFAULT, ours])."""
    return _safe_scale(np.asarray(np.mean(np.abs(w), axis=_reduce_axes(w.ndim, axis),
                                          dtype=np.float64)))


def mse_scale(w: np.ndarray, bits: int, axis: int | None, narrow: bool = True) -> np.ndarray:
    """Scale minimising Σ(W − Q(W))² over a grid of fractions (0.3..1.0) of the max-abs scale."""
    base = max_abs_scale(w, bits, axis, narrow)
    red = _reduce_axes(w.ndim, axis)
    best = base.copy()
    best_err = np.full(base.shape, np.inf)
    for frac in _MSE_GRID:
        s = _safe_scale(base * frac)
        err = np.sum((dequantize(encode(w, s, bits, axis, narrow), s, axis) - w) ** 2, axis=red)
        better = err < best_err
        best = np.where(better, s, best)
        best_err = np.where(better, err, best_err)
    return best.astype(np.float32)


def choose_scale(
    w: np.ndarray, bits: int, axis: int | None = None, rule: ScaleRule = ScaleRule.MAX,
    narrow: bool = True,
) -> np.ndarray:
    """The quantization scale of w, shape () per tensor or (C,) along `axis`, as float32."""
    _check_weights(w, axis)
    if check_bits(bits) == 1:
        return mean_abs_scale(w, axis)
    if ScaleRule(rule) is ScaleRule.MSE:
        return mse_scale(w, bits, axis, narrow)
    return max_abs_scale(w, bits, axis, narrow)


def encode(
    w: np.ndarray, scale: np.ndarray, bits: int, axis: int | None = None, narrow: bool = True
) -> np.ndarray:
    """Integer codes (int8, same shape as w) for a given scale: round half to even, then clip."""
    qmin, qmax = code_range(bits, narrow)
    s = _per_channel(np.asarray(scale, np.float32), w.ndim, axis)
    if bits == 1:
        return np.where(w >= 0, 1, -1).astype(np.int8)  # sign, with sign(0) := +1
    t = w / s  # one float32 temporary, rounded and clipped in place
    np.rint(t, out=t)
    np.clip(t, qmin, qmax, out=t)
    return np.asarray(t.astype(np.int8))


def dequantize(codes: np.ndarray, scale: np.ndarray, axis: int | None = None) -> np.ndarray:
    """float32 codes × float32 scale, exactly what DequantizeLinear computes."""
    s = _per_channel(np.asarray(scale, np.float32), codes.ndim, axis)
    out = codes.astype(np.float32)
    out *= s
    return out


@dataclass(frozen=True)
class Quantized:
    """Result of quantizing one tensor. `values` is what the consumer sees (float32).
    For the companding quantizer, codes index `codebook` (values = codebook[codes − qmin]·scale)."""

    codes: np.ndarray  # int8, same shape as the weight
    scale: np.ndarray  # float32, () or (C,)
    axis: int | None
    bits: int
    qmin: int
    qmax: int
    values: np.ndarray  # float32, same shape as the weight
    codebook: np.ndarray | None = None  # float32 (qmax − qmin + 1,), companding only


def quantize(
    w: np.ndarray, bits: int, axis: int | None = None, rule: ScaleRule = ScaleRule.MAX,
    narrow: bool = True,
) -> Quantized:
    """Symmetric uniform quantization of w per tensor (axis None) or per channel along axis."""
    w = np.asarray(w, dtype=np.float32)
    scale = choose_scale(w, bits, axis, rule, narrow)
    codes = encode(w, scale, bits, axis, narrow)
    qmin, qmax = code_range(bits, narrow)
    return Quantized(codes, scale, axis, bits, qmin, qmax, dequantize(codes, scale, axis))


def companding_codebook(bits: int, mu: float, narrow: bool = True) -> np.ndarray:
    """Levels of the companding quantizer on [-1, 1]: F⁻¹(k/qmax) for k = qmin..qmax, float32."""
    qmin, qmax = code_range(bits, narrow)
    k = np.arange(qmin, qmax + 1, dtype=np.float64) / qmax
    return np.asarray(np.clip(mu_law_inverse(k, mu), -1.0, 1.0).astype(np.float32))


def quantize_companding(
    w: np.ndarray, bits: int, axis: int | None = None, mu: float = 255.0, narrow: bool = True
) -> Quantized:
    """μ-law companding quantizer [ours, an extra option]: s = max|W| (per tensor or channel),
    codes = round(qmax·F(W/s)), values = s·F⁻¹(code/qmax). Dense levels near 0, sparse near ±s."""
    w = np.asarray(w, dtype=np.float32)
    _check_weights(w, axis)
    check_bits(bits)
    qmin, qmax = code_range(bits, narrow)
    red = _reduce_axes(w.ndim, axis)
    scale = _safe_scale(np.max(np.abs(w), axis=red))
    s = _per_channel(scale, w.ndim, axis)
    y = mu_law(np.clip(w / s, -1.0, 1.0), mu)
    codes = np.clip(np.rint(y * qmax), qmin, qmax).astype(np.int8)
    book = companding_codebook(bits, mu, narrow)
    values = book[codes.astype(np.int64) - qmin] * s  # float32 gather then float32 multiply
    return Quantized(codes, scale, axis, bits, qmin, qmax, values.astype(np.float32), book)


def code_levels(codes: np.ndarray, qmin: int, qmax: int, axis: int | None = None
                ) -> tuple[int, int | None]:
    """(distinct codes in the tensor, the most distinct codes in any channel along axis or None).
    O(n) per level with small temporaries: one boolean pass per possible code when there are
    at most 16 of them, else a bincount."""
    red = _reduce_axes(codes.ndim, axis)
    if qmax - qmin < 16:
        present = np.stack([np.any(codes == v, axis=red) for v in range(qmin, qmax + 1)])
    else:
        n_ch = 1 if axis is None else codes.shape[axis]
        key = codes.view(np.uint8).astype(np.int32)  # same layout as codes: bytes 0..255
        key += _per_channel(np.arange(n_ch, dtype=np.int32) * 256, codes.ndim, axis)
        present = np.bincount(key.ravel(), minlength=n_ch * 256).reshape(n_ch, 256).T > 0
    present = present.reshape(present.shape[0], -1)  # (levels, channels)
    total = int(np.count_nonzero(np.any(present, axis=1)))
    return total, None if axis is None else int(np.max(np.count_nonzero(present, axis=0)))


def distinct_levels(values: np.ndarray, axis: int | None = None) -> int:
    """Distinct values in the tensor (axis None) or the maximum over channels along axis."""
    if axis is None:
        return int(np.unique(values).size)
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    srt = np.sort(moved, axis=1)
    return int(np.max(1 + np.count_nonzero(np.diff(srt, axis=1), axis=1))) if srt.size else 0
