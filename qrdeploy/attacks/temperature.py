"""Attacks that undo softmax saturation: temperature-scaled cross-entropy and float64 cotangents.

A model whose logits are large (μ-law on the last layers, docs/method.md section 10) saturates the
float32 softmax: the CE gradient p - e_y becomes exactly 0 and sign steps go nowhere. Three
remedies, each usable with the one L-inf loop (loop.py) unchanged:

1. Fixed temperature: `PGD(loss=Loss.CE_T, temperature=T)` maximises CE(z / T). No wrapper needed.
2. Per-sample network-Jacobian scaling (NJS; Gupta & Ajanthan 2020, arXiv 2003.13511):
   `NJSModel(model)` maximises CE(z / T(x)) with, per sample,
       T(x) = mean_i sigma_i(J(x)),  J(x) = dz/dx (K x D),  sigma_i its K singular values,
   i.e. beta = 1 / T makes the mean singular value of the Jacobian of beta z equal to 1 (our
   reading of their NJS; their code searches beta over a range, which we do not). J is built from
   K one-hot `vjp` rows, and T is re-evaluated at every iterate (qrdeploy [DEFAULT]: the wrapper
   stays stateless, so early stop and restarts work unchanged) at the cost of K + 1 gradient
   rows per step. T is scale-equivariant: logits x c give T x c and the same attack.
   A zero Jacobian gives T = 1 (there is nothing to scale).
3. Float64 cotangent: `Float64Cotangent(model)` computes dL/dz on the host in float64, rescales
   it to unit max |.| per sample and passes it through the model's float32 `vjp`. Sign steps
   (and L2 or MIM normalised steps) are invariant to a positive per-sample scale, so the step
   direction is the true one while nothing underflows. For CE / CE_T the rescaled cotangent has
   a closed form that never underflows, even where float64 itself would (gap > ~37 for p_y,
   > ~745 for the others): since max_j |p_j - [j = y]| = 1 - p_y = sum_{j != y} p_j,
       c_y = -1,  c_j = softmax_{k != y}(z_k / T)_j  for j != y.
   Other losses use qrdeploy.core.losses.loss_value_and_cotangent, rescaled. The wrapper's
   `loss_and_grad` therefore returns a per-sample positively rescaled gradient, not
   d(sum of loss)/dx: use it only with scale-invariant steps (every L-inf/L2 preset and APGD;
   not CW-L2, which has its own loss). Cost: one `logits` and one `vjp` run per step.

>>> res = PGD(eps=0.1, step=0.01, steps=40)(Float64Cotangent(model), x, y)
>>> res = PGD(eps=0.1, step=0.01, steps=40, loss=Loss.CE_T)(NJSModel(model), x, y)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qrdeploy.core.arrays import Array, from_numpy, namespace, to_numpy
from qrdeploy.core.losses import Loss, loss_value_and_cotangent
from qrdeploy.errors import ConfigError
from qrdeploy.model.protocol import Differentiable


def unit_cotangent(
    logits: np.ndarray, y: np.ndarray, loss: Loss, temperature: float | np.ndarray = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss (N,) and dL/dz rescaled to max |.| = 1 per row (N, K), float64.

    Rows whose cotangent is exactly zero (e.g. DLR at a tie) stay zero."""
    z = np.asarray(logits, dtype=np.float64)  # (N, K)
    yh = np.asarray(y, dtype=np.int64)
    loss = Loss(loss)
    t = np.asarray(temperature if loss is Loss.CE_T else 1.0, dtype=np.float64)
    value, cot = loss_value_and_cotangent(z, yh, loss, t)
    if loss in (Loss.CE, Loss.CE_T):
        return value, _ce_direction(z / t.reshape(-1, 1), yh)
    top = np.abs(cot).max(axis=1, keepdims=True)  # (N, 1)
    return value, np.divide(cot, top, out=np.zeros_like(cot), where=top > 0)


def _ce_direction(zt: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(softmax(zt) - e_y) / (1 - p_y), exactly: -1 at y, the softmax over the other classes."""
    rows = np.arange(len(y))
    others = zt.copy()
    others[rows, y] = -np.inf
    q = np.exp(others - others.max(axis=1, keepdims=True))  # (N, K), 0 at y
    q /= q.sum(axis=1, keepdims=True)
    q[rows, y] = -1.0
    return np.asarray(q)


class Float64Cotangent:
    """A Differentiable wrapper whose gradients come from a float64, unit-max cotangent.

    logits and vjp are the wrapped model's; loss_and_grad is described in the module docstring
    (remedy 3). Works with numpy (OrtModel) and torch (TorchModel) arrays alike."""

    def __init__(self, model: Differentiable) -> None:
        self.model = model
        self.num_classes = model.num_classes

    def logits(self, x: Array) -> Array:
        return self.model.logits(x)

    def vjp(self, x: Array, cotangent: Array) -> tuple[Array, Array]:
        return self.model.vjp(x, cotangent)

    def loss_and_grad(
        self, x: Array, y: Array, loss: Loss, temperature: float | Array = 1.0
    ) -> tuple[Array, Array, Array]:
        """-> (logits (N, K), per-sample loss (N,) float64, rescaled gradient (N, C, H, W))."""
        z = self.model.logits(x)  # (N, K)
        t = temperature if isinstance(temperature, float | int) else to_numpy(temperature)
        value, cot = unit_cotangent(to_numpy(z), to_numpy(y), loss, t)
        _, g = self.model.vjp(x, from_numpy(cot.astype(np.float32), x))
        return z, from_numpy(value, x), g


def jacobian(model: Differentiable, x: Array) -> np.ndarray:
    """dz/dx (N, K, D) float64 on the host, from one `vjp` call on K one-hot cotangents per
    sample (the batch is tiled K times)."""
    xp, k, n = namespace(x), model.num_classes, x.shape[0]
    tiled = xp.reshape(xp.stack([x] * k, axis=1), (n * k, *x.shape[1:]))  # (N*K, C, H, W)
    eye = np.tile(np.eye(k, dtype=np.float32), (n, 1))  # (N*K, K)
    _, rows = model.vjp(tiled, from_numpy(eye, x))  # (N*K, C, H, W)
    return to_numpy(rows).astype(np.float64).reshape(n, k, -1)


def njs_temperature(model: Differentiable, x: Array) -> np.ndarray:
    """T(x) = mean of the K singular values of dz/dx, per sample (N,) float64; 1 where J = 0."""
    j = jacobian(model, x)  # (N, K, D)
    gram = j @ np.swapaxes(j, 1, 2)  # (N, K, K)
    sigma = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))  # (N, K)
    t = sigma.mean(axis=1)
    return np.where(t > 0, t, 1.0)


class NJSModel:
    """A Differentiable wrapper: loss_and_grad maximises CE(z / T(x)) with the per-sample NJS
    temperature T(x) of the module docstring (remedy 2), for loss CE or CE_T (the temperature
    argument is replaced by T(x)). logits and vjp are the wrapped model's."""

    def __init__(self, model: Differentiable) -> None:
        self.model = model
        self.num_classes = model.num_classes

    def logits(self, x: Array) -> Array:
        return self.model.logits(x)

    def vjp(self, x: Array, cotangent: Array) -> tuple[Array, Array]:
        return self.model.vjp(x, cotangent)

    def loss_and_grad(
        self, x: Array, y: Array, loss: Loss, temperature: Any = 1.0
    ) -> tuple[Array, Array, Array]:
        """-> (logits (N, K), per-sample CE(z / T(x)) (N,), its input gradient (N, C, H, W))."""
        if Loss(loss) not in (Loss.CE, Loss.CE_T):
            raise ConfigError(
                f"NJSModel scales cross-entropy, got loss {Loss(loss).value!r}; use loss 'ce-t'"
            )
        t = njs_temperature(self.model, x)  # (N,)
        xp = namespace(x)
        return self.model.loss_and_grad(x, y, Loss.CE_T, xp.astype(from_numpy(t, x), x.dtype))
