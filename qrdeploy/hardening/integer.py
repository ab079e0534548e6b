"""Full-integer deployment: int8 activations calibrated on sample images around qrdeploy's
low-bit weights, in the QDQ form that onnxruntime fuses into integer kernels (QLinearConv,
QGemm / MatMulInteger...).

The calibrators and the QDQ machinery are onnxruntime.quantization's (`quantize_static`, QDQ
format, uint8 activations, int8 weights); qrdeploy's part is the weights: each tensor that a
quantization pass rewrote enters with its own codes and scales through onnxruntime's
TensorQuantOverrides (per tensor, or per channel with the pass's axis), so the int8 weight
initializers hold exactly the pass's B-bit codes (checked after quantization) and the int32 bias
scales follow from them. Weights no pass selected get onnxruntime's own int8 quantization.
Activations are uint8 with the calibration method asked for (minmax, percentile, entropy).

Determinism: the weight codes and scales are qrdeploy's and identical across runs and machines;
the activation scales come from onnxruntime's float computations on the calibration images, so
the whole file is identical across runs with the same onnxruntime build and data, and may differ
in activation scales across builds or CPUs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qrdeploy.errors import PassError
from qrdeploy.graphio.fold import Fold, fold_batchnorm
from qrdeploy.graphio.graph import unique_name
from qrdeploy.graphio.inputspec import InputSpec, model_input
from qrdeploy.hardening.quant import Quantized, dequantize

CALIBRATION_BATCH = 50


class Calibration(StrEnum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"


@dataclass(frozen=True)
class IntegerActivations:
    """int8 activations: `samples` calibration images with `method`; `data` names where they
    came from (recorded in the provenance)."""

    samples: int = 500
    method: Calibration = Calibration.MINMAX
    data: str = "mnist-5k:train"
    #: the model's input contract (an --input-spec text; "" = float32 NCHW in [0, 1]): the
    #: calibration pixels are converted to it before they reach the model
    input_spec: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or \
                self.samples < 1:
            raise PassError(f"--calibrate needs a number of samples >= 1, got {self.samples!r}")
        try:
            object.__setattr__(self, "method", Calibration(self.method))
        except ValueError:
            choices = "|".join(m.value for m in Calibration)
            raise PassError(f"calibration method must be one of {choices}, "
                            f"got {self.method!r}") from None
        object.__setattr__(self, "input_spec", InputSpec.parse(self.input_spec).cli())

    def to_json(self) -> dict[str, Any]:
        out = {"kind": "int8", "samples": self.samples, "method": self.method.value,
               "data": self.data}
        return {**out, "input_spec": self.input_spec} if self.input_spec else out


def check_weights(quantized: Mapping[str, Quantized]) -> None:
    """Refuse what integer kernels cannot run: the companding (codebook) quantizer."""
    book = sorted(name for name, q in quantized.items() if q.codebook is not None)
    if book:
        raise PassError(f"--activations int8 runs integer kernels, which need uniform codes; "
                        f"the companding quantizer gives a codebook ({book[0]}): use "
                        "--quantizer uniform, or float activations")


def fold_batchnorm_codes(model: onnx.ModelProto, quantized: Mapping[str, Quantized]
                         ) -> tuple[onnx.ModelProto, dict[str, Quantized], list[Fold]]:
    """Fold each BatchNormalization into the Conv before it (qrdeploy.graphio.fold) in a model
    whose rewritten weights are stored as float, keeping the weights' codes: a folded weight
    W_q * a is stored as the same codes (negated where a < 0) with per-output-channel scales
    scale * |a|, so its int8 initializer still holds the pass's B-bit codes. Returns the model,
    the updated Quantized per rewritten tensor and the folds."""
    def accept(weight: str, factor: np.ndarray) -> bool:
        q = quantized.get(weight)
        return q is None or (q.codebook is None and q.axis in (None, 0) and
                             (q.qmin == -q.qmax or bool(np.all(factor > 0))))

    out, folds = fold_batchnorm(model, accept)
    held = dict(quantized)
    inits = {t.name: t for t in out.graph.initializer}
    for f in folds:
        q = held.get(f.weight)
        if q is None:
            continue
        channels = q.codes.shape[0]
        scale = np.broadcast_to(np.asarray(q.scale, np.float64), (channels,))
        new_scale = (scale * np.abs(f.factor.astype(np.float64))).astype(np.float32)
        sign = np.where(f.factor < 0, -1, 1).astype(np.int8)
        codes = (q.codes.astype(np.int8) * sign.reshape((-1,) + (1,) * (q.codes.ndim - 1))
                 ).astype(np.int8)
        values = dequantize(codes, new_scale, 0)
        held[f.weight] = Quantized(codes, new_scale, 0, q.bits, q.qmin, q.qmax, values)
        inits[f.weight].CopyFrom(numpy_helper.from_array(values, f.weight))
    return out, held, folds


def _overrides(quantized: Mapping[str, Quantized]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name, q in quantized.items():
        scales = np.atleast_1d(np.asarray(q.scale, np.float32))
        if q.axis is None:
            out[name] = [{"scale": scales[0], "zero_point": np.int8(0)}]
        else:
            out[name] = [{"axis": q.axis, "scale": s, "zero_point": np.int8(0)} if i == 0
                         else {"scale": s, "zero_point": np.int8(0)}
                         for i, s in enumerate(scales)]
    return out


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an (N, C, H, W) array."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self.name, self.x = name, x
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.x), CALIBRATION_BATCH):
            yield {self.name: np.ascontiguousarray(self.x[i:i + CALIBRATION_BATCH])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def quantize_activations(model: onnx.ModelProto, quantized: Mapping[str, Quantized],
                         calibration: np.ndarray, act: IntegerActivations,
                         per_channel: bool) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The QDQ model with uint8 activations and int8 weights, from a model whose rewritten
    weights are stored as float (their dequantized values). Returns it and, per rewritten
    tensor, the name of the int8 initializer that now holds its codes."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    check_weights(quantized)
    x = np.asarray(calibration, np.float32)
    if x.ndim < 2 or len(x) < act.samples:
        raise PassError(f"--calibrate {act.samples} needs that many calibration images, the data "
                        f"has {len(x)}; lower --calibrate or pass more --calibration-data")
    x = model_input(InputSpec.parse(act.input_spec), x[:act.samples])
    inits = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in inits)
    name = graph_input.name
    elem = graph_input.type.tensor_type.elem_type
    fed = onnx.helper.np_dtype_to_tensor_dtype(x.dtype)
    if elem != fed:
        fix = ("pass --input-spec dtype=uint8,range=0-255" if elem == onnx.TensorProto.UINT8
               else "pass the model's --input-spec")
        raise PassError(f"the model's input {name!r} is "
                        f"{onnx.TensorProto.DataType.Name(elem)}, the calibration images are "
                        f"{onnx.TensorProto.DataType.Name(fed)}; {fix} so that they reach it "
                        "as it expects")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in graph_input.type.tensor_type.shape.dim][1:]
    if len(dims) != x.ndim - 1 or any(d is not None and d != n for d, n in zip(dims, x.shape[1:],
                                                                              strict=False)):
        want = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        raise PassError(f"the calibration images ({act.data}) have shape {tuple(x.shape[1:])}, "
                        f"the model takes {want}; pass --calibration-data with images of the "
                        "model's input (e.g. cifar10-10k for a CIFAR-10 model), or its "
                        "--input-spec when it takes another layout (e.g. layout=nhwc)")
    reader = _Reader(name, x)
    CalibrationDataReader.register(_Reader)
    method = {Calibration.MINMAX: CalibrationMethod.MinMax,
              Calibration.PERCENTILE: CalibrationMethod.Percentile,
              Calibration.ENTROPY: CalibrationMethod.Entropy}[act.method]
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # quantize_static's advice to pre-process goes to the root
    try:
        return _run_quantizer(model, quantized, reader, method, per_channel, quantize_static,
                              QuantFormat, QuantType)
    finally:
        logging.disable(previous)


def _run_quantizer(model: onnx.ModelProto, quantized: Mapping[str, Quantized], reader: Any,
                   method: Any, per_channel: bool, quantize_static: Any, fmt: Any, qtype: Any
                   ) -> tuple[onnx.ModelProto, dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="qrdeploy-int8-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, src)
        quantize_static(
            str(src), str(dst), reader, quant_format=fmt.QDQ, per_channel=per_channel,
            activation_type=qtype.QUInt8, weight_type=qtype.QInt8,
            calibrate_method=method,
            extra_options={"TensorQuantOverrides": _overrides(quantized),
                           "QDQDisableWeightAdjustForInt32Bias": True},
            calibration_providers=["CPUExecutionProvider"])
        out = onnx.load_model(dst)
    held = _check_codes(out, quantized)
    compact_names(out, model, keep=set(held.values()))
    return out, held


def compact_names(model: onnx.ModelProto, source: onnx.ModelProto, keep: set[str]) -> None:
    """Short names for what onnxruntime's quantizer added, in place.

    quantize_static names each activation's tensors after it (`X_QuantizeLinear_Output`,
    `X_DequantizeLinear_Output`, `X_scale`, `X_zero_point`, and nodes likewise): on a network of
    many small layers these strings, with the shapes the quantizer inferred for them, weigh a
    fifth as much as the int8 weights (a CIFAR-10 wrn-32-1: 651 KB with them, 553 KB without).
    Every tensor and node name that `source` (the model before quantization) does not have
    becomes `q<i>` / `n<i>` in graph order, except `keep` (the weight codes' initializers, which
    the provenance names); the shape annotations the quantizer inferred are dropped (onnxruntime
    infers them again). The names `source` had (graph inputs and outputs, every layer's output,
    the weights) stay, so layers still match the float model by name. Deterministic: the same
    graph gets the same names."""
    g, src = model.graph, source.graph
    old = {t.name for t in src.initializer} | {v.name for v in (*src.input, *src.output)}
    old |= {x for n in src.node for x in (*n.input, *n.output)}
    old_nodes = {n.name for n in src.node}
    taken = old | keep | {n.name for n in g.node} | {t.name for t in g.initializer}
    taken |= {x for n in g.node for x in (*n.input, *n.output)}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in old or name in keep:
            return name
        if name not in renamed:
            renamed[name] = unique_name(f"q{len(renamed)}", taken)
        return renamed[name]

    k = 0
    for node in g.node:
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
        if node.name not in old_nodes:
            node.name = unique_name(f"n{k}", taken)
            k += 1
    for t in g.initializer:
        t.name = short(t.name)
    for v in g.output:
        v.name = short(v.name)
    annotated = {v.name for v in src.value_info}
    kept = [v for v in g.value_info if v.name in annotated]
    del g.value_info[:]
    g.value_info.extend(kept)


def _check_codes(model: onnx.ModelProto, quantized: Mapping[str, Quantized]) -> dict[str, str]:
    """Each rewritten weight's int8 initializer must hold exactly the pass's codes."""
    inits = {t.name: t for t in model.graph.initializer}
    held: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        codes = inits[node.input[0]]
        for name, q in quantized.items():
            if codes.name == f"{name}_quantized":
                got = numpy_helper.to_array(codes)
                if got.dtype != np.int8 or not np.array_equal(got, q.codes.astype(np.int8)):
                    raise PassError(f"onnxruntime did not keep the codes of {name!r} in its int8 "
                                    "weights; use float activations for this model")
                held[name] = codes.name
    missing = sorted(set(quantized) - set(held))
    if missing:
        raise PassError(f"onnxruntime did not quantize weight {missing[0]!r} to int8; exclude "
                        "that layer (--layers 'all,!NAME') or use float activations")
    return held
