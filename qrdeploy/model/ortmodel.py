"""OrtModel: the Classifier / Differentiable protocols (qrdeploy.model.protocol) on onnxruntime
sessions.

The forward session runs the prepared classifier (opset normalised, constants folded, a trailing
softmax cut); the gradient sessions (one `vjp`, one per fused loss) are built by
qrdeploy.gradients.builder the first time they are asked for and reused afterwards. Calls are
split into batches of `batch_size` so that large arrays do not blow memory. No torch here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qrdeploy.core.losses import Loss
from qrdeploy.core.runtime import SessionConfig, make_session, run_session
from qrdeploy.errors import ConfigError, DataError
from qrdeploy.gradients.builder import (
    TEMPERATURE,
    X_COTANGENT,
    GradientModel,
    Y,
    build_loss_grad,
    build_vjp,
)
from qrdeploy.gradients.prepare import prepare
from qrdeploy.gradients.rules import GradOptions

if TYPE_CHECKING:
    import onnxruntime


class OrtModel:
    """A deployed ONNX classifier with white-box gradients computed by onnxruntime.

    Args:
        model: the classifier (image -> logits, or -> softmax, which is cut off).
        config: provider and intra-op threads (qrdeploy.core.runtime.SessionConfig).
        batch_size: the most samples passed to one session run.
        input_shape: (C, H, W) when the model's input does not state it.
    Example:
        >>> m = OrtModel(onnx.load("model.onnx"), SessionConfig("cpu", threads=2))
        >>> z, loss, g = m.loss_and_grad(x, y, Loss.CW)"""

    def __init__(
        self,
        model: onnx.ModelProto,
        config: SessionConfig | None = None,
        batch_size: int = 256,
        input_shape: tuple[int, ...] | None = None,
        options: GradOptions | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.config = config or SessionConfig()
        self.batch_size = batch_size
        self.options = options
        self.prepared = prepare(model, input_shape)
        self._forward = make_session(self.prepared.model.SerializeToString(), self.config)
        self._grads: dict[str, tuple[GradientModel, onnxruntime.InferenceSession]] = {}
        shape = self._forward.get_outputs()[0].shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise DataError(f"expected logits of shape (N, K), the model gives {shape}; "
                            "export a classifier whose output is the logits")
        self.num_classes: int = int(shape[1])
        opts = self._forward.get_session_options()
        self.info: dict[str, object] = {
            "providers": list(self._forward.get_providers()),
            "threads_requested": self.config.threads,
            "intra_op_threads": int(opts.intra_op_num_threads),
            "batch_size": batch_size,
            "opset": self.prepared.opset,
            "source_opset": self.prepared.source_opset,
            "softmax_cut": self.prepared.softmax_cut,
            "folded_nodes": self.prepared.folded_nodes,
        }

    # --- protocol ------------------------------------------------------------------------------

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) float32 in [0, 1] -> logits (N, K)."""
        x = self._check_x(x)
        name = self.prepared.input_name
        return self._batched(lambda s: run_session(self._forward, None, {name: x[s]}), len(x))[0]

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits (N, K), cotangent^T . dlogits/dx (N, C, H, W)) for a cotangent (N, K)."""
        x = self._check_x(x)
        cot = np.asarray(cotangent, dtype=np.float32)
        if cot.shape != (len(x), self.num_classes):
            raise DataError(f"expected a cotangent of shape {(len(x), self.num_classes)}, got "
                            f"{cot.shape}; pass one row of dL/dlogits per sample")
        gm, sess = self._session("vjp")
        z, g = self._batched(
            lambda s: run_session(sess, list(gm.outputs),
                                  {gm.input_name: x[s], X_COTANGENT: cot[s]}),
            len(x))
        return z, g

    def loss_and_grad(
        self, x: np.ndarray, y: np.ndarray, loss: Loss, temperature: float | np.ndarray = 1.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (logits (N, K), per-sample loss (N,), d(sum of loss)/dx (N, C, H, W))."""
        x = self._check_x(x)
        loss = Loss(loss)
        labels = np.asarray(y, dtype=np.int64).reshape(-1)  # (N,)
        if labels.shape != (len(x),) or labels.min(initial=0) < 0 or \
                labels.max(initial=0) >= self.num_classes:
            raise DataError(f"expected {len(x)} labels in [0, {self.num_classes}), got shape "
                            f"{labels.shape}; pass one class index per sample")
        feeds: dict[str, np.ndarray] = {Y: labels}
        if loss is Loss.CE_T:
            feeds[TEMPERATURE] = self._temperature(temperature, len(x))
        gm, sess = self._session(loss.value)
        z, value, g = self._batched(
            lambda s: run_session(sess, list(gm.outputs),
                                  {gm.input_name: x[s], **{k: v[s] for k, v in feeds.items()}}),
            len(x))
        return z, value, g

    # --- helpers -------------------------------------------------------------------------------

    def _check_x(self, x: Any) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        want = self.prepared.input_shape
        if arr.ndim != len(want) + 1 or arr.shape[1:] != want:
            raise DataError(f"expected inputs of shape (N, {', '.join(map(str, want))}), got "
                            f"{arr.shape}; resize or reshape the images to the model's input")
        return arr

    @staticmethod
    def _temperature(t: float | np.ndarray, n: int) -> np.ndarray:
        arr = np.broadcast_to(np.asarray(t, dtype=np.float32).reshape(-1), (n,)).copy()  # (N,)
        if not np.all(arr > 0):
            raise ConfigError(f"temperature must be > 0, got min {arr.min()}; pass T > 0")
        return arr

    def _session(self, kind: str) -> tuple[GradientModel, onnxruntime.InferenceSession]:
        """The gradient model and session of `kind`, built on first use."""
        if kind not in self._grads:
            gm = (build_vjp(self.prepared, options=self.options) if kind == "vjp"
                  else build_loss_grad(self.prepared, Loss(kind), options=self.options))
            self._grads[kind] = (gm, make_session(gm.model.SerializeToString(), self.config))
        return self._grads[kind]

    def _batched(self, run: Callable[[slice], list[Any]], n: int) -> list[np.ndarray]:
        """Run over slices of at most batch_size samples and concatenate each output."""
        parts = [run(slice(i, i + self.batch_size)) for i in range(0, max(n, 1), self.batch_size)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
