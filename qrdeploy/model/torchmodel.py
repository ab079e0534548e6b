"""TorchModel: the model protocol (qrdeploy.model.protocol) on a torch nn.Module, and
NumpyModel, the same seen through numpy arrays as OrtModel is. torch is imported only inside
their methods, so this module imports without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from qrdeploy.core.arrays import to_numpy
from qrdeploy.core.losses import DLR_EPS, Loss
from qrdeploy.errors import ConfigError, DataError, RuntimeMissingError

if TYPE_CHECKING:
    from types import ModuleType


def _torch() -> ModuleType:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is installed wherever tests run
        raise RuntimeMissingError(
            f"TorchModel needs torch, which is not importable ({exc}); "
            "pip install 'qrdeploy[train]'"
        ) from None
    return torch


def torch_loss(z: Any, y: Any, loss: Loss, temperature: float | Any = 1.0) -> Any:
    """Per-sample loss (N,) of torch logits z (N, K) and labels y (N,), as qrdeploy.core.losses."""
    torch = _torch()
    y = y.long()
    if loss in (Loss.CE, Loss.CE_T):
        t = temperature if loss is Loss.CE_T else 1.0
        if not isinstance(t, float | int):
            t = torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(-1, 1)  # (N, 1)
        return torch.nn.functional.cross_entropy(z / t, y, reduction="none")
    zy = z.gather(1, y[:, None])[:, 0]  # (N,)
    mask = torch.nn.functional.one_hot(y, z.shape[1]).bool()  # (N, K)
    other = z.masked_fill(mask, float("-inf")).max(dim=1).values  # (N,)
    if loss is Loss.CW:
        return other - zy
    if z.shape[1] < 3:
        raise ConfigError(f"the DLR loss needs at least 3 classes, got {z.shape[1]}; use loss 'cw'")
    srt = z.sort(dim=1, descending=True).values  # (N, K)
    return -(zy - other) / (srt[:, 0] - srt[:, 2] + DLR_EPS)


class TorchModel:
    """A torch nn.Module as a Differentiable classifier.

    The module is called in whatever mode it is in: call module.eval() before attacking it for
    evaluation (batch-norm statistics must not depend on the batch). Gradients are taken with
    respect to the input only; the parameters' .grad fields are left untouched.

    >>> model = TorchModel(net.eval(), num_classes=10)
    >>> z, loss, g = model.loss_and_grad(x, y, Loss.CE)   # (N, 10), (N,), (N, 1, 28, 28)
    """

    def __init__(self, module: Any, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.module = module
        self.num_classes = num_classes

    def _forward(self, x: Any) -> Any:
        z = self.module(x)  # (N, K)
        if tuple(z.shape) != (x.shape[0], self.num_classes):
            raise DataError(
                f"the module returned logits of shape {tuple(z.shape)} for {x.shape[0]} inputs, "
                f"expected ({x.shape[0]}, {self.num_classes}); check num_classes and the input"
            )
        return z

    def logits(self, x: Any) -> Any:
        """x (N, C, H, W) -> logits (N, K), without building an autograd graph."""
        with _torch().no_grad():
            return self._forward(x)

    def vjp(self, x: Any, cotangent: Any) -> tuple[Any, Any]:
        """-> (logits (N, K), cotangent^T . dlogits/dx (N, C, H, W))."""
        torch = _torch()
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = self._forward(xg)
            (g,) = torch.autograd.grad(z, xg, grad_outputs=cotangent.to(z.dtype))
        return z.detach(), g

    def loss_and_grad(
        self, x: Any, y: Any, loss: Loss, temperature: float | Any = 1.0
    ) -> tuple[Any, Any, Any]:
        """-> (logits (N, K), per-sample loss (N,), d(sum of loss)/dx (N, C, H, W))."""
        torch = _torch()
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = self._forward(xg)
            value = torch_loss(z, y, Loss(loss), temperature)  # (N,)
            (g,) = torch.autograd.grad(value.sum(), xg)
        return z.detach(), value.detach(), g


class NumpyModel:
    """A torch-backed Classifier (TorchModel) seen through numpy arrays, as OrtModel is."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.num_classes: int = int(model.num_classes)

    def logits(self, x: np.ndarray) -> np.ndarray:
        torch = _torch()
        return to_numpy(self.model.logits(torch.from_numpy(np.ascontiguousarray(x, np.float32))))

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = _torch()
        z, g = self.model.vjp(torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                              torch.from_numpy(np.asarray(cotangent, np.float32)))
        return to_numpy(z), to_numpy(g)
