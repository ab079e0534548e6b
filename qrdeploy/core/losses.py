"""The attack losses, shared by every Differentiable model (torch or onnxruntime).

Each loss is per sample and is MAXIMISED by an untargeted attack:
- CE:   cross-entropy of the true label, -log softmax(z)_y
- CW:   the Carlini-Wagner margin, max_{j != y} z_j - z_y (> 0 means misclassified)
- DLR:  Croce & Hein (2020) difference of logits ratio,
        -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), pi sorting z in decreasing order
- CE_T: cross-entropy of z / T for a temperature T > 0 (scalar or one per sample)

The numpy functions here are the reference: float64 values and the cotangent dL/dz, which a `vjp`
turns into an input gradient for any loss computed outside the graph."""

from __future__ import annotations

from enum import StrEnum

import numpy as np

DLR_EPS = 1e-12


class Loss(StrEnum):
    CE = "ce"
    CW = "cw"
    DLR = "dlr"
    CE_T = "ce-t"


def _other_max(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max_{j != y} z_j and its index j, per row."""
    masked = z.copy()
    masked[np.arange(len(y)), y] = -np.inf
    j = masked.argmax(axis=1)
    return masked[np.arange(len(y)), j], j


def loss_value_and_cotangent(
    logits: np.ndarray, y: np.ndarray, loss: Loss, temperature: float | np.ndarray = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss (N,) and dL/dlogits (N, K), both float64."""
    z = np.asarray(logits, dtype=np.float64)  # (N, K)
    y = np.asarray(y, dtype=np.int64)
    rows = np.arange(len(y))
    onehot = np.zeros_like(z)
    onehot[rows, y] = 1.0
    if loss in (Loss.CE, Loss.CE_T):
        t = np.asarray(temperature if loss is Loss.CE_T else 1.0, dtype=np.float64).reshape(-1, 1)
        zt = z / t
        zt = zt - zt.max(axis=1, keepdims=True)
        logp = zt - np.log(np.exp(zt).sum(axis=1, keepdims=True))
        value = -logp[rows, y]
        return value, (np.exp(logp) - onehot) / t
    other, j = _other_max(z, y)
    if loss is Loss.CW:
        cot = -onehot
        cot[rows, j] += 1.0
        return other - z[rows, y], cot
    srt = np.sort(z, axis=1)[:, ::-1]
    den = srt[:, 0] - srt[:, 2] + DLR_EPS
    num = z[rows, y] - other
    value = -num / den
    order = np.argsort(-z, axis=1, kind="stable")
    cot = np.zeros_like(z)
    cot[rows, y] -= 1.0 / den
    cot[rows, j] += 1.0 / den
    cot[rows, order[:, 0]] += num / den**2
    cot[rows, order[:, 2]] -= num / den**2
    return value, cot
