"""The model protocol every attack is written against. Its implementations: OrtModel
(qrdeploy.model.ortmodel, onnxruntime, numpy arrays) and TorchModel (qrdeploy.model.torchmodel,
torch tensors; NumpyModel there shows it through numpy arrays).

`Classifier` maps a batch x (N, C, H, W) float32 in [0, 1] to logits (N, K); query-only attacks
need nothing more. `Differentiable` adds a vector-Jacobian product and a fused loss gradient.
Arrays stay in the caller's namespace: numpy for OrtModel (qrdeploy/model/ortmodel.py), torch
tensors for TorchModel. The losses (all maximised by an untargeted attack) are those of
qrdeploy.core.losses, whose numpy float64 functions are the reference TorchModel is tested against.

torch is imported only inside TorchModel's methods, so this module imports without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from qrdeploy.core.losses import Loss

if TYPE_CHECKING:
    pass

Array = Any  # numpy ndarray (OrtModel) or torch.Tensor (TorchModel)


@runtime_checkable
class Classifier(Protocol):
    """Anything that returns logits for a batch of images."""

    num_classes: int

    def logits(self, x: Array) -> Array:
        """x (N, C, H, W) float32 in [0, 1] -> logits (N, K)."""
        ...


@runtime_checkable
class Differentiable(Classifier, Protocol):
    """A classifier that also gives input gradients."""

    def vjp(self, x: Array, cotangent: Array) -> tuple[Array, Array]:
        """-> (logits (N, K), cotangent^T . dlogits/dx (N, C, H, W)) for a cotangent (N, K)."""
        ...

    def loss_and_grad(
        self, x: Array, y: Array, loss: Loss, temperature: float | Array = 1.0
    ) -> tuple[Array, Array, Array]:
        """-> (logits (N, K), per-sample loss (N,), d(sum of loss)/dx (N, C, H, W))."""
        ...


@runtime_checkable
class Twinned(Classifier, Protocol):
    """A classifier that quantizes its activations at run time and can give its float-activation
    twin: the same (dequantized) weights, activations not rounded (qrdeploy.graphio.twin)."""

    def activation_twin(self) -> Classifier | None:
        """The twin, or None when no activation is quantized (the model is its own twin)."""
        ...
