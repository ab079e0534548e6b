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

import contextlib
import dataclasses
import hashlib
import io
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

from qrdeploy.data.datasets import load_dataset, parse_data_label
from qrdeploy.errors import PassError
from qrdeploy.graphio.fold import Fold, fold_batchnorm
from qrdeploy.graphio.graph import unique_name
from qrdeploy.graphio.inputspec import InputSpec, model_input
from qrdeploy.hardening.quant import Quantized, dequantize

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 50
#: entropy calibration histogram: 2,048 bins, thresholds searched over 128 quantized bins (the
#: values of TensorRT's entropy calibration, Migacz 2017, "8-bit Inference with TensorRT"; a
#: qrdeploy default). quantize_static passes no bin counts to its calibrator, whose defaults are
#: 128 and 128: a search with one candidate, the min-max range itself.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


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
    #: sha256 of the calibration images used (`images_digest`), recorded by harden: `data`
    #: names a file or a split, this says which pixels; a recipe that carries it is checked
    #: against the images it calibrates on
    images_sha256: str = ""

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
        if self.input_spec:
            out["input_spec"] = self.input_spec
        if self.images_sha256:
            out["images_sha256"] = self.images_sha256
        return out


def images_digest(calibration: np.ndarray, act: IntegerActivations) -> str:
    """sha256 of the calibration images `act` uses (the first `samples`, as float32, shape
    included), as the provenance records it."""
    x = np.ascontiguousarray(np.asarray(calibration, np.float32)[:act.samples])
    h = hashlib.sha256(repr(x.shape).encode())
    h.update(x.tobytes())
    return h.hexdigest()


def same_images(act: IntegerActivations, recorded: IntegerActivations | None
                ) -> IntegerActivations:
    """`act` with the digest `recorded` holds when both name the same images (data and count):
    the images are then checked against it."""
    if recorded is None or (recorded.data, recorded.samples) != (act.data, act.samples):
        return act
    return dataclasses.replace(act, images_sha256=recorded.images_sha256)


def record_images(calibration: np.ndarray, act: IntegerActivations) -> IntegerActivations:
    """`act` with the digest of its calibration images; a recipe that recorded other images
    (its data file changed, or other data) is said, since its activation scales will differ."""
    digest = images_digest(calibration, act)
    if act.images_sha256 and act.images_sha256 != digest:
        log.warning("the calibration images differ from the ones the recipe recorded (sha256 "
                    "%s..., now %s...; %s): the activation scales, and the model, will differ",
                    act.images_sha256[:12], digest[:12], act.data)
    return dataclasses.replace(act, images_sha256=digest)


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


def calibration_images(acts: IntegerActivations, data_root: str | None = None) -> np.ndarray:
    """The calibration images `acts` names: the first `samples` of its DATA:SPLIT (an npz file:
    all of it)."""
    name, split = parse_data_label(acts.data)
    x = load_dataset(name, split, data_root=data_root).x
    check_calibration(x, acts)
    return x[:acts.samples]


def check_calibration(x: np.ndarray, act: IntegerActivations) -> None:
    """Enough calibration images for --calibrate."""
    if x.ndim < 2 or len(x) < act.samples:
        raise PassError(f"--calibrate {act.samples} needs that many calibration images, the data "
                        f"has {len(x)}; lower --calibrate or pass more --calibration-data")


def _refuse_constant(used: np.ndarray, act: IntegerActivations) -> None:
    """Images at all: a set of one constant value (an all-zero array) calibrates every
    activation range to a point and ships a model at a fraction of its accuracy (48.9 % for
    mnist-standard in a review's run)."""
    if used.size and float(np.min(used)) == float(np.max(used)):
        raise PassError(f"the {act.samples} calibration images are all one value "
                        f"({float(np.min(used)):g}), which calibrates no activation range; pass "
                        "real images with --calibration-data")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an (N, C, H, W) array, in batches of
    `batch` (the model's fixed batch size when it has one)."""

    def __init__(self, name: str, x: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.name, self.x, self.batch = name, x, batch
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.x), self.batch):
            yield {self.name: np.ascontiguousarray(self.x[i:i + self.batch])}

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
    check_weights(quantized)
    x = np.asarray(calibration, np.float32)
    check_calibration(x, act)
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
    all_dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in graph_input.type.tensor_type.shape.dim]
    dims = all_dims[1:]
    fixed = all_dims[0] if all_dims else None
    if fixed is not None and len(x) % fixed:
        fit = len(x) // fixed * fixed or fixed
        raise PassError(f"the model takes batches of exactly {fixed}; --calibrate {len(x)} is "
                        f"not a multiple of it (e.g. --calibrate {fit})")
    if len(dims) != x.ndim - 1 or any(d is not None and d != n for d, n in zip(dims, x.shape[1:],
                                                                              strict=False)):
        want = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        raise PassError(f"the calibration images ({act.data}) have shape {tuple(x.shape[1:])}, "
                        f"the model takes {want}; pass --calibration-data with images of the "
                        "model's input (e.g. cifar10-10k for a CIFAR-10 model), or its "
                        "--input-spec when it takes another layout (e.g. layout=nhwc)")
    _refuse_constant(x, act)
    reader = _Reader(name, x, fixed or CALIBRATION_BATCH)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # quantize_static's advice to pre-process goes to the root
    try:
        return _run_quantizer(model, quantized, reader, act.method, per_channel)
    finally:
        logging.disable(previous)


def _run_quantizer(model: onnx.ModelProto, quantized: Mapping[str, Quantized], reader: _Reader,
                   method: Calibration, per_channel: bool
                   ) -> tuple[onnx.ModelProto, dict[str, str]]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    CalibrationDataReader.register(_Reader)
    overrides = _overrides(quantized)
    # onnxruntime's histogram calibrators print their progress to stdout: kept out of the
    # command's output (and of a library caller's), logged at debug level
    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="qrdeploy-int8-") as tmp, \
            contextlib.redirect_stdout(printed):
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, src)
        if method is Calibration.ENTROPY:
            # the ranges come from onnxruntime's entropy calibrator with real bin counts and
            # enter the quantizer as overrides; its own calibration is then min-max, overridden
            overrides.update(_entropy_ranges(src, Path(tmp) / "augmented.onnx", reader,
                                             skip=set(overrides)))
            reader.rewind()
        ort_method = (CalibrationMethod.Percentile if method is Calibration.PERCENTILE
                      else CalibrationMethod.MinMax)
        quantize_static(
            str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=ort_method,
            extra_options={"TensorQuantOverrides": overrides,
                           "QDQDisableWeightAdjustForInt32Bias": True},
            calibration_providers=["CPUExecutionProvider"])
        out = onnx.load_model(dst)
    if printed.getvalue():
        log.debug("onnxruntime calibration: %s", printed.getvalue().strip())
    held = _check_codes(out, quantized)
    compact_names(out, model, keep=set(held.values()))
    return out, held


def _flatten_zero_spike(histograms: Any) -> None:
    """The bin holding 0 gets its right neighbour's count, in place.

    A ReLU output is mostly exact zeros: that one bin outweighs the rest of the histogram, and
    the KL search then keeps the narrowest candidate range (1/16 of the largest value with these
    bin counts): on models/mnist-standard.onnx at 3 bits, 81.7 % clean accuracy on 1,000 test
    digits against 97.1 % with min-max ranges. The zeros are represented exactly by any range
    that contains 0, so they carry no information about where to clip (qrdeploy's choice).
    `histograms` is the calibrator's collector's {tensor: (hist, edges, ...)}; anything else (a
    later onnxruntime that keeps them otherwise) is left alone, and said in the debug log."""
    if not isinstance(histograms, dict):
        log.debug("entropy calibration: no histograms to adjust (onnxruntime changed them)")
        return
    for name, entry in list(histograms.items()):
        if not isinstance(entry, tuple) or len(entry) < 2:
            continue
        hist, edges = np.asarray(entry[0]), np.asarray(entry[1])
        zero = int(np.searchsorted(edges, 0.0, side="right")) - 1
        if hist.ndim == 1 and edges.size == hist.size + 1 and 0 <= zero < hist.size - 1:
            hist = hist.copy()
            hist[zero] = hist[zero + 1]
            histograms[name] = (hist, *entry[1:])


def _entropy_ranges(src: Path, augmented: Path, reader: _Reader, skip: set[str]
                    ) -> dict[str, list[dict[str, Any]]]:
    """Each activation's range from onnxruntime's EntropyCalibrater (ENTROPY_BINS histogram
    bins, ENTROPY_QUANTIZED_BINS quantized bins, the zero spike flattened): the KL-optimal
    threshold +-t of its symmetric histogram, narrowed to the values observed (a ReLU output
    keeps rmin = 0, so uint8 spends no code on negatives it never holds)."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        src, None, augmented_model_path=str(augmented), calibrate_method=CalibrationMethod.Entropy,
        providers=["CPUExecutionProvider"],
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
                       "symmetric": False})
    calibrator.collect_data(reader)
    _flatten_zero_spike(getattr(getattr(calibrator, "collector", None), "histogram_dict", None))
    ranges: dict[str, list[dict[str, Any]]] = {}
    for name, data in calibrator.compute_data().items():
        if name in skip:
            continue
        lo, hi = (float(v) for v in data.range_value)
        hist, edges = np.asarray(data.hist), np.asarray(data.bins, np.float64)
        held = np.flatnonzero(hist)
        if held.size:  # the observed extent of the values, from the histogram's occupied bins
            lo, hi = max(lo, float(edges[held[0]])), min(hi, float(edges[held[-1] + 1]))
        ranges[name] = [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
    return ranges


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
