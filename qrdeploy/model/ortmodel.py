"""OrtModel: the one onnxruntime wrapper of qrdeploy, behind the model protocol
(qrdeploy.model.protocol): `predict` and `logits` of a deployed ONNX classifier, and white-box
gradients (`vjp`, `loss_and_grad`) from its gradient graph.

Two forms of the graph are involved. The *deployed* graph is the file as it ships; `predict`,
clean accuracy and latency run it as is (`gradients=False` keeps only this form). With
gradients (the default), the forward session runs the *prepared* graph instead
(qrdeploy.gradients.prepare: opset normalised, constants folded, a trailing softmax cut, so that
`logits` are logits), and the gradient sessions (one `vjp`, one per fused loss) are built by
qrdeploy.gradients.builder the first time they are asked for. A quantized graph (integer kernels or
activations quantized at run time: QuantizeLinear, DynamicQuantizeLinear, QLinear*, ConvInteger,
MatMulInteger, MatMulNBits) is different:
`logits`, and the logits and loss values that `vjp` and `loss_and_grad` return, always come from
the deployed integer graph, while the gradient comes from the gradient graph of its dequantized
twin (qrdeploy.graphio.twin; BPDA with the straight-through estimator by default, or the exact
gradient of the float twin with `quantized_gradient="float"`); `info["gradient_form"]` says
which. When a graph cannot be prepared
for gradients (an op the preparation cannot fold or infer), the deployed graph serves the
forward pass and the gradient calls raise one GraphError saying why. Calls are split into
batches of `batch_size`; on the CPU a large gradient batch is split again over lanes that run at
once (qrdeploy.core.runtime.lane_plan), with the same outputs. No torch here."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qrdeploy.core.losses import Loss, loss_value_and_cotangent
from qrdeploy.core.runtime import (
    LANE_MIN_SAMPLES,
    SessionConfig,
    lane_plan,
    lane_pool,
    make_session,
    run_session,
)
from qrdeploy.data.datasets import EMBEDDED_SHAPES
from qrdeploy.errors import ConfigError, DataError, GraphError, first_line
from qrdeploy.gradients.builder import (
    TEMPERATURE,
    X_COTANGENT,
    GradientModel,
    Y,
    blocking_nodes,
    blocking_text,
    build_loss_grad,
    build_vjp,
)
from qrdeploy.gradients.prepare import Prepared, check_io, prepare
from qrdeploy.gradients.rules import GradOptions
from qrdeploy.graphio.graph import fixed_batch, load_model
from qrdeploy.graphio.twin import dequantized_output, float_twin

if TYPE_CHECKING:
    import onnxruntime

ModelLike = onnx.ModelProto | bytes | str | Path


def as_proto(model: ModelLike) -> onnx.ModelProto:
    """A ModelProto; files go through the validating loader (qrdeploy.graphio.graph)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return load_model(model)


class OrtModel:
    """A deployed ONNX classifier run by onnxruntime, with white-box gradients.

    Args:
        model: the classifier (image -> logits, or -> softmax, which the gradient form cuts
            off): a ModelProto, serialized bytes, or a file path (validated on load).
        config: provider, intra-op threads and gradient lanes
            (qrdeploy.core.runtime.SessionConfig).
        batch_size: the most samples passed to one session run.
        input_shape: (C, H, W) when the model's input does not state it.
        gradients: False runs only the deployed graph (predict, logits, latency).
        quantized_gradient: for a quantized graph, "ste" (straight-through estimator of the
            fake-quantized twin) or "float" (exact gradient of the twin without activation
            quantization); see qrdeploy.graphio.twin.
    Example:
        >>> m = OrtModel("model.onnx", SessionConfig("cpu", threads=2))
        >>> m.predict(x)                                   # (N,) int64
        >>> z, loss, g = m.loss_and_grad(x, y, Loss.CW)"""

    def __init__(
        self,
        model: ModelLike,
        config: SessionConfig | None = None,
        batch_size: int = 256,
        input_shape: tuple[int, ...] | None = None,
        options: GradOptions | None = None,
        gradients: bool = True,
        quantized_gradient: str = "ste",
        name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.config = config or SessionConfig()
        # how errors name the model: its file, or the caller's label
        self.name = name or (str(model) if isinstance(model, (str, Path)) else "the model")
        # latency: the caller's provider and threads, without spin-waiting, for every model alike
        # (gates time two models back to back: the spinning threads of the one that ran before
        # take the cores from the next; measured 1.2-1.3x on 2 cores, docs/benchmarks.md)
        self.timing_config = dataclasses.replace(self.config, spinning=False)
        self.batch_size = batch_size
        self.options = options
        # a fully quantized model's integer output is read through its own scale (logit units)
        self.deployed, self.output_codes = dequantized_output(as_proto(model))
        # DynamicQuantizeLinear takes its scale from the whole tensor, so a sample's logits
        # depend on the other samples of its batch: score one at a time, as a device runs it
        self.per_sample = any(n.op_type == "DynamicQuantizeLinear"
                              for n in self.deployed.graph.node)
        self.input_shape = check_io(self.deployed, input_shape)  # (C, H, W)
        self.prepared: Prepared | None = None
        self.gradient_error: str | None = "not asked for (gradients=False)"
        if gradients:
            try:
                self.prepared = prepare(self.deployed, input_shape, quantized_gradient)
                self.gradient_error = None
            except GraphError as exc:
                self.gradient_error = first_line(exc, None)
        self.bpda = self.prepared is not None and self.prepared.bpda
        if self.prepared is not None and self.prepared.score_deployed:
            # two sessions per attack step (deployed forward, twin gradient): no spin-waiting
            self.config = dataclasses.replace(self.config, spinning=False)
        forward = self.prepared.model if self.prepared is not None and \
            not self.prepared.score_deployed else self.deployed
        self._forward = make_session(forward.SerializeToString(), self.config)
        # the batch the forward graph fixes (the deployed graph as it ships; None when dynamic)
        self._forward_batch = fixed_batch(forward)
        self._deployed_session: onnxruntime.InferenceSession | None = \
            self._forward if forward is self.deployed and self.config == self.timing_config \
            else None
        self._grads: dict[str, tuple[GradientModel, onnxruntime.InferenceSession]] = {}
        # gradient runs of large batches: `lanes` sessions of `lane_threads` threads at once
        self.lanes, self.lane_threads = lane_plan(self.config, self._forward.get_providers())
        self._lane_sessions: dict[str, onnxruntime.InferenceSession] = {}
        self._twin: OrtModel | None = None
        self._twin_built = False
        self.twin_error: str | None = None  # why a graph with quantized activations has no twin
        self.input_name = self._forward.get_inputs()[0].name
        shape = self._forward.get_outputs()[0].shape
        if len(shape) not in (0, 2) or (len(shape) == 2 and not isinstance(shape[1], int)):
            raise DataError(f"expected logits of shape (N, K), the model gives {shape}; "
                            "export a classifier whose output is the logits")
        self.num_classes: int = int(shape[1]) if len(shape) == 2 else self._probe_classes()
        opts = self._forward.get_session_options()
        p = self.prepared
        self.providers: list[str] = list(self._forward.get_providers())
        self.info: dict[str, object] = {
            "providers": self.providers,
            "threads_requested": self.config.threads,
            "intra_op_threads": int(opts.intra_op_num_threads),
            "batch_size": batch_size,
            "gradient_lanes": self.lanes,
            "opset": p.opset if p else None,
            "source_opset": p.source_opset if p else None,
            "softmax_cut": p.softmax_cut if p else None,
            "folded_nodes": p.folded_nodes if p else 0,
            "gradient_form": p.gradient_form if p else None,
        }
        if self.output_codes is not None:
            self.info["output"] = (f"integer codes of {self.output_codes}, read as float through "
                                   "its output scale and zero point")
        if self.per_sample:
            self.info["scoring"] = ("one sample at a time: dynamic quantization scales each "
                                    "run's tensors as a whole")
        if self.gradient_error is not None and gradients:
            self.info["gradients"] = f"unavailable: {self.gradient_error}"

    @property
    def differentiable(self) -> bool:
        """True when white-box gradients can be computed."""
        return self.prepared is not None

    def gradient_blocker(self) -> str | None:
        """Why white-box gradients cannot be built, in one line (None when they can): the
        preparation's refusal, or the first node without a gradient rule. Builds nothing."""
        if self.prepared is None:
            return f"white-box gradients are not available for {self.name}: " \
                   f"{self.gradient_error}"
        blocking = blocking_nodes(self.prepared)
        if not blocking:
            return None
        op, node, reason = blocking[0]
        more = f" (and {len(blocking) - 1} more node(s); qrdeploy inspect lists them)" \
            if len(blocking) > 1 else ""
        return f"{self.name}: {blocking_text(op, node, reason.split('; supported ops:')[0])}{more}"

    def require_gradients(self) -> None:
        """Raise now, in one line with what to do, when white-box gradients cannot be built (an
        op without a gradient rule, a graph the preparation refuses); they are otherwise built
        at the first attack step, after the cheaper work of a run. Builds nothing."""
        why = self.gradient_blocker()
        if why is None:
            return
        fix = ("white-box and adaptive gradient attacks need its gradient: run gradient-free "
               "attacks only (--suite black,noise, or --suite paper,adaptive --attacks "
               "square,transfer), or export the model without it")
        tail = "; docs/ops.md lists the supported ops and their limits" \
            if self.prepared is not None else ""
        raise GraphError(f"{why}; {fix}{tail}")

    def _probe_classes(self) -> int:
        """The class count of a model whose output shape onnxruntime does not state."""
        z = run_session(self._forward, None,
                        {self.input_name: np.zeros((self._forward_batch or 1, *self.input_shape),
                                                   np.float32)})[0]
        if np.ndim(z) != 2:
            raise DataError(f"expected logits of shape (N, K), the model gives {np.shape(z)} "
                            "for one input; export a classifier whose output is the logits")
        return int(np.shape(z)[1])

    # --- protocol ------------------------------------------------------------------------------

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) float32 in [0, 1] -> logits (N, K)."""
        x = self._check_x(x)
        name, n, size = self.input_name, len(x), 1 if self.per_sample else self._forward_batch
        if size is not None and n % size:  # a fixed batch: the last one is filled up, then cut
            x = np.concatenate([x, np.repeat(x[-1:], size - n % size, axis=0)])
        z = self._batched(lambda s: run_session(self._forward, None, {name: x[s]}), len(x),
                          size)[0][:n]
        if z.ndim != 2 or z.shape[0] != n:
            raise GraphError(f"the model's output has shape {z.shape} for {n} inputs; "
                             "expected (N, classes) logits")
        return z.astype(np.float32, copy=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) -> the top-1 classes (N,) int64."""
        return np.asarray(self.logits(x).argmax(axis=1).astype(np.int64))

    def activation_twin(self) -> OrtModel | None:
        """The float-activation twin of a graph that quantizes activations at run time (its
        dequantized weights, every activation QuantizeLinear / DequantizeLinear pair replaced by
        its un-rounded map; qrdeploy.graphio.twin), forward pass only; None when no activation is
        quantized. Query attacks on the twin see logits that move continuously, where the
        deployed graph's quantized outputs can leave them on a plateau. Built on first use;
        None also when the graph has no float twin (`twin_error` says why)."""
        if not self._twin_built:
            self._twin_built = True
            try:
                twinned, info = float_twin(self.deployed, "float")
            except GraphError as exc:  # e.g. per-channel activation quantization
                self.twin_error = first_line(exc, None)
                return None
            if info.activation_quant:
                self._twin = OrtModel(twinned, self.config, self.batch_size, self.input_shape,
                                      gradients=False)
        return self._twin

    # --- the deployed graph as it ships (latency) ------------------------------------------

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the deployed graph's input fixes, or None when it is dynamic."""
        return fixed_batch(self.deployed)

    def time_run(self, x: np.ndarray) -> float:
        """Seconds of one session run of the deployed graph on the batch x (N, C, H, W), in a
        session with the caller's provider and threads and no spin-waiting (the same for every
        model, so that latencies timed back to back compare like with like)."""
        if self._deployed_session is None:
            self._deployed_session = make_session(self.deployed.SerializeToString(),
                                                  self.timing_config)
        sess = self._deployed_session
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)}
        t0 = time.perf_counter()
        sess.run([sess.get_outputs()[0].name], feed)
        return time.perf_counter() - t0

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits (N, K), cotangent^T . dlogits/dx (N, C, H, W)) for a cotangent (N, K)."""
        x = self._check_x(x)
        cot = np.asarray(cotangent, dtype=np.float32)
        if cot.shape != (len(x), self.num_classes):
            raise DataError(f"expected a cotangent of shape {(len(x), self.num_classes)}, got "
                            f"{cot.shape}; pass one row of dL/dlogits per sample")
        z, g = self._gradient_run("vjp", {X_COTANGENT: cot}, x)
        if self.prepared is not None and self.prepared.score_deployed:
            z = self.logits(x)  # scored on the integer graph; the gradient is the twin's
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
        z, value, g = self._gradient_run(loss.value, feeds, x)
        if self.prepared is not None and self.prepared.score_deployed:
            # logits and loss of the integer graph; the gradient is the twin's
            z = self.logits(x)
            t = feeds.get(TEMPERATURE, 1.0)
            value = loss_value_and_cotangent(z, labels, loss, t)[0].astype(np.float32)
        return z, value, g

    # --- helpers -------------------------------------------------------------------------------

    def _check_x(self, x: Any) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        want = self.input_shape
        if arr.ndim != len(want) + 1 or arr.shape[1:] != want:
            embedded = next((name for name, shape in EMBEDDED_SHAPES.items()
                             if shape == tuple(want)), None)
            fix = (f"pass --data {embedded} (the embedded data set of that shape; the default is "
                   "mnist-5k), or resize" if embedded and embedded != "mnist-5k" else "resize")
            raise DataError(f"{self.name} expects images of shape {want}, the data has "
                            f"{arr.shape[1:]}; {fix} or reshape the images to the model's "
                            "input (or declare its layout with --input-spec)")
        return arr

    @staticmethod
    def _temperature(t: float | np.ndarray, n: int) -> np.ndarray:
        arr = np.broadcast_to(np.asarray(t, dtype=np.float32).reshape(-1), (n,)).copy()  # (N,)
        if not np.all(arr > 0):
            raise ConfigError(f"temperature must be > 0, got min {arr.min()}; pass T > 0")
        return arr

    def _session(self, kind: str) -> tuple[GradientModel, onnxruntime.InferenceSession]:
        """The gradient model and session of `kind`, built on first use."""
        if self.prepared is None:
            raise GraphError(f"white-box gradients are not available for this graph: "
                             f"{self.gradient_error}")
        if kind not in self._grads:
            gm = (build_vjp(self.prepared, options=self.options) if kind == "vjp"
                  else build_loss_grad(self.prepared, Loss(kind), options=self.options))
            self._grads[kind] = (gm, make_session(gm.model.SerializeToString(), self.config,
                                                  qdq_transforms=False))
        return self._grads[kind]

    def _gradient_run(self, kind: str, feeds: dict[str, np.ndarray],
                      x: np.ndarray) -> list[np.ndarray]:
        """The outputs of the gradient session `kind` on x and `feeds` (arrays of one row per
        sample), in batches of batch_size; a batch of at least LANE_MIN_SAMPLES per lane is
        split over the lanes (qrdeploy.core.runtime.lane_plan), which run at once."""
        gm, sess = self._session(kind)
        outputs = list(gm.outputs)
        feeds = {gm.input_name: x, **feeds}
        # a graph that ships with a fixed batch may hard-code it inside (a Reshape to (N, ...)),
        # so its gradient batches are never cut smaller than the caller's
        split = self.lanes > 1 and self.fixed_batch is None

        def run(s: slice) -> list[Any]:
            part = {k: v[s] for k, v in feeds.items()}
            n = len(part[gm.input_name])
            if not split or n < self.lanes * LANE_MIN_SAMPLES:
                return run_session(sess, outputs, part)
            lane = self._lane_session(kind)
            edges = [n * i // self.lanes for i in range(self.lanes + 1)]
            pieces = [{k: v[a:b] for k, v in part.items()}
                      for a, b in zip(edges[:-1], edges[1:], strict=True)]
            others = [lane_pool(self.lanes).submit(run_session, lane, outputs, p)
                      for p in pieces[1:]]
            done = [run_session(lane, outputs, pieces[0])] + [f.result() for f in others]
            return [np.concatenate([d[k] for d in done]) for k in range(len(outputs))]

        return self._batched(run, len(x))

    def _lane_session(self, kind: str) -> onnxruntime.InferenceSession:
        """The session of `kind` that the lanes share (onnxruntime runs one session from several
        threads at once), with lane_threads intra-op threads; built on first use."""
        if kind not in self._lane_sessions:
            gm = self._grads[kind][0]
            self._lane_sessions[kind] = make_session(
                gm.model.SerializeToString(),
                dataclasses.replace(self.config, threads=self.lane_threads), qdq_transforms=False)
        return self._lane_sessions[kind]

    def _batched(self, run: Callable[[slice], list[Any]], n: int,
                 size: int | None = None) -> list[np.ndarray]:
        """Run over slices of at most `size` (default batch_size) samples and concatenate each
        output."""
        b = size or self.batch_size
        parts = [run(slice(i, i + b)) for i in range(0, max(n, 1), b)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

