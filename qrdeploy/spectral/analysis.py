"""Lipschitz analysis of the quantization error, read from ONNX graphs (docs/method.md section 7).

For a reference model and its hardened version, matched weight layer by weight layer (whatever
the encoding: float, qdq, int4, codebook), or any quantized version of it made by another tool
(read through its dequantized float twin, qrdeploy.graphio.twin; matched in graph order when the
layer outputs were renamed; the propagated error is then measured on the twin), per layer:

- ‖W‖₂ of the reference weight, ‖ΔW‖₂ and ‖ΔW‖₂/‖W‖₂, where ΔW = Q(W′) − W′ is the paper's
  quantization error with W′ the μ-law-mapped weights, recomputed by replaying the μ-law passes
  of the recipe recorded in the hardened file on the reference weights; and, when μ-law changed
  the layer, the total change Ŵ − W from the reference as a second ΔW.
- Gemm / MatMul: the matrix norm (= the operator norm of the layer). Conv: the reshaped-kernel
  norm C_out × (C_in/groups·∏k) [the paper's likely convention, DEFAULT], the true operator norm
  at the layer's input shape (Lanczos, iterations and tolerance reported) and the FFT upper bound
  of the circular convolution. The "‖ΔW‖₂ > 1 means amplification" reading applies to operator
  norms only (docs/lipschitz.md).
- With data: the local error ‖ΔW·x_l‖/‖W·x_l‖ on the reference layer's input, the propagated
  error ‖f̂_l(x) − f_l(x)‖/‖f_l(x)‖ between both graphs' layer outputs, and their ratio.

`lipschitz_report(reference, hardened, data)` is the library call; `LipschitzReport` is JSON
(`to_json`); qrdeploy.spectral.render writes it as markdown and CSV and draws the paper-style bar
chart.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from qrdeploy.core.runtime import SessionConfig, make_session, run_session
from qrdeploy.errors import ConfigError, GraphError
from qrdeploy.graphio import graph
from qrdeploy.graphio.fold import batchnorm_count, fold_batchnorm, inline_constants, scale_channels
from qrdeploy.graphio.graph import WeightLayer
from qrdeploy.graphio.twin import float_twin
from qrdeploy.hardening import passes
from qrdeploy.spectral import norms as spectral
from qrdeploy.spectral.norms import ConvGeometry, SpectralResult

ModelLike = onnx.ModelProto | str | os.PathLike[str]
SCHEMA_VERSION = 1
_CONV_OPS = ("Conv", "ConvTranspose")
AMPLIFICATION_NOTE = (
    "'||dW||_2 > 1 may amplify the error' (the paper's reading) holds for operator norms: the "
    "matrix norm of Gemm/MatMul and the conv operator norm at the layer's input shape; the "
    "reshaped conv norm (paper's likely convention) is not one, sqrt(kh*kw) times it is a bound."
)


@dataclass(frozen=True)
class LipschitzConfig:
    """How norms are computed. tol/max_iter/seed drive the Lanczos runs of conv operator norms
    (float32 arithmetic); the FFT bound is skipped where its estimated cost exceeds
    fft_max_flops (a few seconds here); batch_size and session drive the amplification runs."""

    operator_norms: bool = True
    fft_bound: bool = True
    fft_max_flops: float = 1e10  # skip FFT bounds estimated above this (WRN stage 1: 4.5e10)
    tol: float = 1e-5
    max_iter: int = 300
    seed: int = 0
    batch_size: int = 64
    session: SessionConfig = field(default_factory=SessionConfig)

    def __post_init__(self) -> None:
        if not 0 < self.tol < 1:
            raise ConfigError(f"tol must be in (0, 1), got {self.tol}; e.g. 1e-5")
        if self.max_iter < 1 or self.batch_size < 1:
            raise ConfigError(
                f"max_iter and batch_size must be >= 1, got {self.max_iter}, {self.batch_size}"
            )


# ---------------------------------------------------------------- result types


@dataclass(frozen=True)
class TensorNorms:
    """Norms of one weight-shaped tensor (W or a ΔW) of one layer."""

    matrix: SpectralResult  # Gemm/MatMul: the matrix; conv: the reshaped kernel
    operator: SpectralResult | None = None  # conv: operator norm at the layer's input shape
    fft_bound: float | None = None  # conv: circular-convolution upper bound of `operator`

    def to_json(self) -> dict[str, Any]:
        return {
            "matrix": _spectral_json(self.matrix),
            "operator": _spectral_json(self.operator) if self.operator else None,
            "fft_bound": self.fft_bound,
        }


def _spectral_json(r: SpectralResult) -> dict[str, Any]:
    out = asdict(r)
    out["method"] = r.method.value
    return out


@dataclass(frozen=True)
class Amplification:
    """Measured error per layer over n inputs: local ‖ΔW·x_l‖/‖W·x_l‖ on the reference layer's
    input, propagated ‖f̂_l(x) − f_l(x)‖/‖f_l(x)‖; ratio = propagated mean / local mean."""

    n: int
    local_mean: float | None
    local_max: float | None
    propagated_mean: float
    propagated_max: float

    @property
    def ratio(self) -> float | None:
        if self.local_mean is None or self.local_mean == 0:
            return None
        return self.propagated_mean / self.local_mean

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass(frozen=True)
class LayerReport:
    """One weight layer: ‖W‖₂, the paper's ΔW = Q(W′) − W′ and, if μ-law changed the layer, the
    total change Ŵ − W; optionally the measured amplification."""

    index: int
    node: str
    op_type: str
    shape: tuple[int, ...]
    input_shape: tuple[int, ...] | None  # (C, *spatial) for convs, from shape inference
    mulaw: bool
    w: TensorNorms
    dw: TensorNorms
    dw_total: TensorNorms | None = None
    amplification: Amplification | None = None
    note: str = ""
    w_prime: TensorNorms | None = None  # the μ-law-mapped W′ of a μ-law layer

    @property
    def ratio(self) -> float | None:
        """‖ΔW‖₂/‖W‖₂ in the matrix (reshaped) convention; for a μ-law layer ‖ΔW‖₂/‖W′‖₂, both
        in the mapped space where ΔW = Q(W′) − W′ lives."""
        base = self.w_prime if self.w_prime is not None else self.w
        w = base.matrix.value
        return self.dw.matrix.value / w if w else None

    @property
    def operator_ratio(self) -> float | None:
        base = self.w_prime if self.w_prime is not None else self.w
        if base.operator is None or self.dw.operator is None or not base.operator.value:
            return None
        return self.dw.operator.value / base.operator.value

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "node": self.node, "op_type": self.op_type,
            "shape": list(self.shape),
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "mulaw": self.mulaw, "w": self.w.to_json(), "dw": self.dw.to_json(),
            "dw_total": self.dw_total.to_json() if self.dw_total else None,
            "w_prime": self.w_prime.to_json() if self.w_prime else None,
            "ratio": self.ratio, "operator_ratio": self.operator_ratio,
            "amplification": self.amplification.to_json() if self.amplification else None,
            "note": self.note,
        }


@dataclass(frozen=True)
class LipschitzReport:
    """The analysis of one (reference, hardened) pair."""

    label: str
    recipe_source: str  # metadata | given | none
    recipes: tuple[dict[str, Any], ...]
    layers: tuple[LayerReport, ...]
    config: LipschitzConfig
    seconds: float  # wall time; kept out of JSON / markdown so outputs are reproducible

    def to_json(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["session"] = asdict(self.config.session)
        return {
            "schema_version": SCHEMA_VERSION, "label": self.label,
            "recipe_source": self.recipe_source, "recipes": list(self.recipes),
            "amplification_note": AMPLIFICATION_NOTE, "config": cfg,
            "layers": [lyr.to_json() for lyr in self.layers],
        }


# ---------------------------------------------------------------- loading and matching


def _load(model: ModelLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else graph.load_model(model)


def _output_key(model: onnx.ModelProto, layer: WeightLayer) -> str:
    """A layer's identity across encodings: harden keeps consumer nodes and their outputs."""
    return str(model.graph.node[layer.node_index].output[0])


def comparable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model itself, or for a quantized one (QLinear*, QGemm, ConvInteger, MatMulInteger,
    MatMulNBits, activation Q/DQ: any tool's) its dequantized float twin, whose weight layers
    are float ops reading DequantizeLinear of the stored codes (qrdeploy.graphio.twin)."""
    twin, info = float_twin(model, "ste")
    if info.unscaled:
        raise GraphError(f"the weight scale of integer layer {info.unscaled[0]!r} cannot be read "
                         "(expected Cast -> Mul by x_scale * w_scale after it); compare a model "
                         "quantized with onnxruntime's quantize_dynamic layout or a QDQ model")
    return twin if info.quantized else model


def _reference_is_float(reference: onnx.ModelProto, hardened: onnx.ModelProto) -> None:
    """A GraphError when the reference is the quantized one of the two (arguments swapped):
    its layers are integer kernels and the other's are not, or it carries qrdeploy's hardening
    provenance and the other does not (a weight-only model: float, qdq, int4, nbits)."""
    ref_q = float_twin(reference, "ste")[1]
    if ref_q.quantized and not float_twin(hardened, "ste")[1].quantized:
        ops = ", ".join(sorted(ref_q.rewritten)) or "quantized activations"
        raise GraphError(f"the reference model is the quantized one ({ops}) and the hardened "
                         "one is float: the arguments look swapped; pass the float model first")
    if passes.recipes_of(reference) and not passes.recipes_of(hardened) \
            and _plain_float(hardened):
        raise GraphError("the reference model was written by `qrdeploy harden` (it carries the "
                         "hardening recipe) and the other was not: the arguments look swapped; "
                         "pass the model before hardening first")


def _plain_float(model: onnx.ModelProto) -> bool:
    """Every weight layer reads a float32 initializer directly (no codes, no quantized ops): a
    float model no quantizer has touched, as far as the file shows."""
    dtypes = {t.name: t.data_type for t in model.graph.initializer}
    return not float_twin(model, "ste")[1].quantized and all(
        dtypes.get(layer.weight_name) == onnx.TensorProto.FLOAT
        for layer in graph.weight_layers(model))


FOLDED_NOTE = ("BatchNorm folded into this conv in the hardened model: W and Ŵ are the folded "
               "weights")


def aligned_reference(reference: onnx.ModelProto, hardened: onnx.ModelProto
                      ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The reference as the hardened model computes it: when the hardened graph has fewer
    BatchNormalizations because they were folded into the convolutions before them (`harden
    --activations int8`, onnxruntime's quant_pre_process, other converters), the reference with
    the same pairs folded (qrdeploy.graphio.fold), so that layer weights and outputs compare like
    with like; else the reference itself. Also returns the fold factor per folded weight name."""
    have = batchnorm_count(hardened)
    if have >= batchnorm_count(reference):
        return reference, {}
    folded, folds = fold_batchnorm(reference)
    if batchnorm_count(folded) != have:  # parameters behind Identity/Constant nodes
        folded, folds = fold_batchnorm(inline_constants(reference))
    if batchnorm_count(folded) != have:
        raise GraphError(
            f"the second model has {batchnorm_count(reference) - have} BatchNormalization(s) "
            f"fewer than the reference and qrdeploy folds {len(folds)} of the reference's into "
            "its convolutions, so the layers do not compare (ΔW would hold BatchNorm scales): "
            "fold the reference the way the second model was (e.g. onnxruntime's "
            "quant_pre_process) and pass that as the reference")
    return folded, {f.weight: f.factor for f in folds}


def match_layers(
    reference: onnx.ModelProto, hardened: onnx.ModelProto, *, in_order: bool = False
) -> list[tuple[WeightLayer, WeightLayer]]:
    """Pairs (reference layer, hardened layer), matched by the consumer node's output tensor
    (what qrdeploy's harden keeps). With `in_order` (models another tool quantized, read through
    `comparable`: renamed or fused outputs), when the outputs differ the layers are matched by
    node name (a quantizer's `_quant` suffix removed), else in graph order, each pair of the
    same kind (Conv; Gemm or MatMul) and the same weight shape up to a transpose. A layer
    missing on either side, or differing in op or shape, is a GraphError."""
    ref_layers, hard_layers = graph.weight_layers(reference), graph.weight_layers(hardened)
    ref = {_output_key(reference, lyr): lyr for lyr in ref_layers}
    hard = {_output_key(hardened, lyr): lyr for lyr in hard_layers}
    if not ref:
        raise GraphError("the reference model has no weight layers (Conv, Gemm, MatMul); "
                         "pass an ONNX classifier")
    if in_order and set(ref) != set(hard):
        by_order = _match_by_name(ref_layers, hard_layers) or \
            _match_in_order(ref_layers, hard_layers)
        if by_order is not None:
            return by_order
    for key, lyr in ref.items():
        if key not in hard:
            raise GraphError(
                f"layer {lyr.node_name!r} (output {key!r}) is in the reference model but not in "
                "the hardened one; compare a model with its own hardened version")
    for key, lyr in hard.items():
        if key not in ref:
            raise GraphError(
                f"layer {lyr.node_name!r} (output {key!r}) is in the hardened model but not in "
                "the reference; compare a model with its own hardened version")
    pairs = [(ref[k], hard[k]) for k in ref]
    for r, h in pairs:
        if r.op_type != h.op_type or r.shape != h.shape:
            raise GraphError(
                f"layer {r.node_name!r} is {r.op_type} {r.shape} in the reference but "
                f"{h.op_type} {h.shape} in the hardened model; they are different models")
    return pairs


_KIND = {"Conv": "conv", "ConvTranspose": "convT", "Gemm": "linear", "MatMul": "linear"}


#: what quantizers append to a node's name (onnxruntime's QOperator nodes: "/conv1/Conv_quant")
_NAME_SUFFIXES = ("_quant", "_quantized")


def _compatible(r: WeightLayer, h: WeightLayer) -> bool:
    return _KIND[r.op_type] == _KIND[h.op_type] and _matrix_shape(r) == _matrix_shape(h)


def _match_by_name(ref: Sequence[WeightLayer], hard: Sequence[WeightLayer]
                   ) -> list[tuple[WeightLayer, WeightLayer]] | None:
    """Pairs by node name, a quantizer's suffix removed, in reference order; None unless every
    layer finds exactly one compatible partner (two independent layers of one shape are told
    apart by name, not by their order in the file)."""
    by_name = {r.node_name: r for r in ref if r.node_name}
    found: dict[int, WeightLayer] = {}
    for h in hard:
        stem = next((h.node_name[:-len(x)] for x in _NAME_SUFFIXES if h.node_name.endswith(x)),
                    h.node_name)
        r = by_name.get(h.node_name) or by_name.get(stem)
        if r is None or not _compatible(r, h) or r.index in found:
            return None
        found[r.index] = h
    if len(found) != len(ref):
        return None
    return [(r, found[r.index]) for r in ref]


def _match_in_order(ref: Sequence[WeightLayer], hard: Sequence[WeightLayer]
                    ) -> list[tuple[WeightLayer, WeightLayer]] | None:
    if len(ref) != len(hard):
        return None
    for r, h in zip(ref, hard, strict=True):
        if not _compatible(r, h):
            return None
    return list(zip(ref, hard, strict=True))


def _matrix_shape(layer: WeightLayer) -> tuple[int, ...]:
    """The weight shape as the consumer applies it: (out, in, ...) for convolutions, (in, out)
    for Gemm / MatMul."""
    if layer.op_type == "Gemm" and layer.attrs.get("transB", 0):
        return tuple(reversed(layer.shape))
    return tuple(layer.shape)


def hardened_weight(hardened: onnx.ModelProto, r: WeightLayer, h: WeightLayer) -> np.ndarray:
    """The hardened layer's float32 weight in the reference layer's layout."""
    w = graph.layer_weight(hardened, h)
    if r.op_type in ("Gemm", "MatMul") and w.ndim == 2 and tuple(w.shape) != tuple(r.shape):
        return np.ascontiguousarray(w.T)
    return w


def _layer_output(model: onnx.ModelProto, layer: WeightLayer) -> str:
    """A layer's output; for a MatMul whose only reader is a bias Add, the Add's output (the
    Gemm of a reference model includes its bias)."""
    node = model.graph.node[layer.node_index]
    out = str(node.output[0])
    if node.op_type != "MatMul":
        return out
    readers = [n for n in model.graph.node if out in n.input]
    inits = {t.name for t in model.graph.initializer}
    if len(readers) == 1 and readers[0].op_type == "Add" and \
            any(i in inits for i in readers[0].input if i != out):
        return str(readers[0].output[0])
    return str(out)


def _mulaw_weights(reference: onnx.ModelProto, recipes: Sequence[passes.Recipe]
                   ) -> dict[int, np.ndarray]:
    """W′ per reference layer index: the recipes' μ-law passes replayed on the reference
    (quantization passes dropped); empty when no μ-law pass was recorded."""
    mulaw = [p for r in recipes for p in r.passes if isinstance(p, passes.MuLawMap)]
    if not mulaw:
        return {}
    mapped, records = passes.harden(reference, mulaw, "float")
    changed = {r.node for r in records if r.role == "weight" and r.max_abs_delta > 0}
    return {lyr.index: graph.layer_weight(mapped, lyr) for lyr in graph.weight_layers(mapped)
            if lyr.node_name in changed}


# ---------------------------------------------------------------- shapes and geometry


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a best effort; operator norms then need data
        inferred = model
    g = inferred.graph
    out = {}
    for v in (*g.input, *g.value_info, *g.output):
        dims = v.type.tensor_type.shape.dim
        out[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return out


def _observed_shapes(model: onnx.ModelProto, layers: Sequence[WeightLayer], data: np.ndarray,
                     config: LipschitzConfig) -> dict[str, tuple[int | None, ...]]:
    """Shapes of the conv layers' inputs and outputs on one sample of the data, for models whose
    spatial sizes shape inference cannot fix (symbolic H, W)."""
    nodes = [model.graph.node[lyr.node_index] for lyr in layers if lyr.op_type in _CONV_OPS]
    names = [n for node in nodes for n in (node.input[0], node.output[0])]
    if not names:
        return {}
    session = make_session(graph.model_to_bytes(_with_outputs(model, names)), config.session)
    feed = session.get_inputs()[0].name
    x1 = np.ascontiguousarray(data[:1], dtype=np.float32)
    values = _run(session, feed, x1)
    values.setdefault(feed, x1)
    return {n: tuple(values[n].shape) for n in names if n in values}


def _pads(attrs: Mapping[str, Any], spatial: Sequence[int], kernel: Sequence[int],
          strides: Sequence[int], dilations: Sequence[int]) -> tuple[int, ...]:
    """Explicit (begins..., ends...) pads, resolving ONNX auto_pad."""
    d = len(spatial)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return tuple(attrs.get("pads", [0] * 2 * d))
    if auto == "VALID":
        return (0,) * 2 * d
    begins, ends = [], []
    for n, k, s, dl in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * dl + 1 - n, 0)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return (*begins, *ends)


def conv_geometry(layer: WeightLayer, in_spatial: Sequence[int]) -> ConvGeometry:
    """The ConvGeometry of a Conv layer at a given input spatial size."""
    d = len(in_spatial)
    kernel = tuple(layer.shape[2:])
    strides = tuple(layer.attrs.get("strides", [1] * d))
    dilations = tuple(layer.attrs.get("dilations", [1] * d))
    pads = _pads(layer.attrs, in_spatial, kernel, strides, dilations)
    return ConvGeometry(tuple(in_spatial), strides, pads, dilations,
                        int(layer.attrs.get("group", 1)))


def _layer_geometry(
    model: onnx.ModelProto, layer: WeightLayer, shapes: Mapping[str, tuple[int | None, ...]]
) -> tuple[ConvGeometry | None, tuple[int, ...] | None, str]:
    """(geometry, input shape (C, *spatial), note) of a Conv; ConvTranspose norms are those of
    its adjoint Conv at the ConvTranspose's output shape (when output_padding is 0)."""
    node = model.graph.node[layer.node_index]
    if layer.op_type == "ConvTranspose":
        if any(layer.attrs.get("output_padding", [])) or "output_shape" in layer.attrs or \
                layer.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            return None, None, "operator norm skipped: ConvTranspose with output_padding/shape"
        name = node.output[0]
    else:
        name = node.input[0]
    shape = shapes.get(name)
    if shape is None or len(shape) != len(layer.shape) or any(s is None for s in shape[1:]):
        return None, None, f"operator norm skipped: input shape of {layer.node_name!r} unknown"
    full = tuple(int(s) for s in shape[1:] if s is not None)  # (C, *spatial)
    return conv_geometry(layer, full[1:]), full, ""


# ---------------------------------------------------------------- norms


def tensor_norms(weight: np.ndarray, geometry: ConvGeometry | None, config: LipschitzConfig
                 ) -> TensorNorms:
    """Matrix / reshaped norm always; operator norm and FFT bound for convs with a geometry."""
    try:
        return _tensor_norms(weight, geometry, config)
    except np.linalg.LinAlgError as exc:  # e.g. "SVD did not converge" on extreme values
        raise GraphError(f"the spectral norm of a {weight.shape} weight failed: {exc}; "
                         "check the weight's values") from None


def _tensor_norms(weight: np.ndarray, geometry: ConvGeometry | None, config: LipschitzConfig
                  ) -> TensorNorms:
    matrix = spectral.reshaped_kernel_norm(weight) if weight.ndim > 2 else \
        spectral.largest_singular_value(weight)
    if geometry is None:
        return TensorNorms(matrix)
    operator = None
    if config.operator_norms:
        operator = spectral.conv_operator_norm(
            weight, geometry, tol=config.tol, max_iter=config.max_iter, seed=config.seed)
    fft = spectral.conv_fft_bound(weight, geometry) if _want_fft(weight, geometry, config) \
        else None
    return TensorNorms(matrix, operator, fft)


def _want_fft(weight: np.ndarray, geometry: ConvGeometry, config: LipschitzConfig) -> bool:
    return config.fft_bound and \
        spectral.fft_bound_cost(weight.shape, geometry) <= config.fft_max_flops


def _matrix_view(weight: np.ndarray, layer: WeightLayer) -> np.ndarray:
    """The weight as one matrix. A batched MatMul weight (…, K, N) acts block-diagonally; its
    blocks stacked to (∏batch·K, N) have a norm >= the largest block's, so an upper bound."""
    if layer.op_type in _CONV_OPS or weight.ndim <= 2:
        return weight
    return weight.reshape(-1, weight.shape[-1])


def _layer_norms(
    layer: WeightLayer, w: np.ndarray, w_prime: np.ndarray | None, w_hat: np.ndarray,
    geometry: ConvGeometry | None, config: LipschitzConfig,
) -> tuple[TensorNorms, TensorNorms, TensorNorms | None, TensorNorms | None]:
    """‖W‖, ‖ΔW‖ (ΔW = Ŵ − W′), and for a μ-law layer ‖Ŵ − W‖ and ‖W′‖."""
    base = w if w_prime is None else w_prime
    for what, t in (("weight", w), ("deployed weight", w_hat)):
        if not np.isfinite(t).all():
            raise GraphError(f"layer {layer.node_name!r}: the {what} holds NaN or infinite values; "
                             "its spectral norm is undefined")
    w_n = tensor_norms(_matrix_view(w, layer), geometry, config)
    dw_n = tensor_norms(_matrix_view(w_hat - base, layer), geometry, config)
    total = None if w_prime is None else tensor_norms(_matrix_view(w_hat - w, layer), geometry,
                                                      config)
    prime = None if w_prime is None else tensor_norms(_matrix_view(w_prime, layer), geometry,
                                                      config)
    return w_n, dw_n, total, prime


# ---------------------------------------------------------------- amplification


def _with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of the model that also outputs the named tensors (float, shape left open)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                  None))
    return out


def _linear_part(layer: WeightLayer, x: np.ndarray, weight: np.ndarray,
                 geometry: ConvGeometry | None) -> np.ndarray | None:
    """The layer's weight applied to its input, without bias, as the ONNX op computes it."""
    a = layer.attrs
    if layer.op_type == "Conv" and geometry is not None:
        return spectral.conv_forward(x, weight, conv_geometry(layer, x.shape[2:]))
    if layer.op_type == "Gemm":
        xa = x.T if a.get("transA", 0) else x
        w = weight.T if a.get("transB", 0) else weight
        return np.asarray(float(a.get("alpha", 1.0)) * (xa @ w))
    if layer.op_type == "MatMul":
        return np.asarray(x @ weight)
    return None  # ConvTranspose: propagated error only


def _rel(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per-sample ‖num‖/‖den‖ (first axis = samples); 0/0 counts as 0."""
    n = np.linalg.norm(num.reshape(num.shape[0], -1), axis=1)  # (N,)
    d = np.linalg.norm(den.reshape(den.shape[0], -1), axis=1)  # (N,)
    return np.asarray(np.divide(n, d, out=np.zeros_like(n), where=d > 0))


@dataclass
class _Accumulator:
    local: list[np.ndarray] = field(default_factory=list)
    propagated: list[np.ndarray] = field(default_factory=list)

    def result(self) -> Amplification:
        prop = np.concatenate(self.propagated)
        loc = np.concatenate(self.local) if self.local else None
        return Amplification(
            n=int(prop.size),
            local_mean=float(loc.mean()) if loc is not None else None,
            local_max=float(loc.max()) if loc is not None else None,
            propagated_mean=float(prop.mean()), propagated_max=float(prop.max()))


def measure_amplification(
    reference: onnx.ModelProto,
    hardened: onnx.ModelProto,
    x: np.ndarray,
    config: LipschitzConfig | None = None,
) -> dict[int, Amplification]:
    """Per reference layer index: local and propagated relative errors on the inputs x, running
    both graphs with every weight layer's input and output exposed."""
    config = config or LipschitzConfig()
    twin = comparable(hardened)
    reference, _ = aligned_reference(reference, twin)
    pairs = match_layers(reference, twin, in_order=twin is not hardened)
    hardened = twin
    if x.ndim < 2 or x.shape[0] == 0:
        raise ConfigError(f"data must be a non-empty batch (N, ...), got shape {x.shape}")
    ref_nodes = [reference.graph.node[r.node_index] for r, _ in pairs]
    weights = {r.index: (graph.layer_weight(reference, r), hardened_weight(hardened, r, h))
               for r, h in pairs}
    hard_outputs = {r.index: _layer_output(hardened, h) for r, h in pairs}
    ref_sess = make_session(graph.model_to_bytes(_with_outputs(
        reference, [n for node in ref_nodes for n in (node.input[0], node.output[0])])),
        config.session)
    hard_sess = make_session(graph.model_to_bytes(_with_outputs(
        hardened, list(hard_outputs.values()))), config.session)
    feed_name = ref_sess.get_inputs()[0].name
    acc = {r.index: _Accumulator() for r, _ in pairs}
    fixed = graph.fixed_batch(reference) or graph.fixed_batch(hardened)
    step = fixed or config.batch_size
    for start in range(0, x.shape[0], step):
        xb = np.ascontiguousarray(x[start : start + step], dtype=np.float32)
        m = len(xb)
        if fixed is not None and m < fixed:  # a fixed-batch graph: fill up, then cut
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - m, axis=0)])
        ref_out = {k: v[:m] for k, v in _run(ref_sess, feed_name, xb).items()}
        hard_out = {k: v[:m] for k, v in
                    _run(hard_sess, hard_sess.get_inputs()[0].name, xb).items()}
        xb = xb[:m]
        ref_out.setdefault(feed_name, xb)
        for (r, _), node in zip(pairs, ref_nodes, strict=True):
            w, w_hat = weights[r.index]
            f, f_hat = ref_out[node.output[0]], hard_out[hard_outputs[r.index]]
            acc[r.index].propagated.append(_rel(f_hat - f, f))
            xl = ref_out[node.input[0]]
            geometry = conv_geometry(r, xl.shape[2:]) if r.op_type == "Conv" else None
            lin = _linear_part(r, xl, w, geometry)
            err = _linear_part(r, xl, w_hat - w, geometry)
            if lin is not None and err is not None:
                acc[r.index].local.append(_rel(err, lin))
    return {k: a.result() for k, a in acc.items()}


def _run(session: Any, feed: str, xb: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    values = run_session(session, names, {feed: xb}, what=f"run the model on data of shape "
                         f"{xb.shape}", fix="pass data the model accepts")
    return dict(zip(names, values, strict=True))


# ---------------------------------------------------------------- the report


def lipschitz_report(
    reference: ModelLike,
    hardened: ModelLike | None = None,
    data: np.ndarray | None = None,
    *,
    recipe: passes.Recipe | None = None,
    config: LipschitzConfig | None = None,
    label: str = "",
) -> LipschitzReport:
    """Analyse a hardened model against its reference, layer by layer.

    Either `hardened` (a file or ModelProto; the μ-law / quantization split comes from the recipe
    recorded in its metadata) or `recipe` (the hardening is run in memory, nothing written).
    `data` (N, C, H, W) float32 adds the measured amplification per layer.

    Example:
        report = lipschitz_report("model.onnx", "hard.onnx", x_test[:100])
        print(render_markdown(report))  # qrdeploy.spectral.render
    """
    config = config or LipschitzConfig()
    start = time.perf_counter()
    ref = _load(reference)
    hard, recipes, source = _hardened_and_recipes(ref, hardened, recipe)
    _reference_is_float(ref, hard)
    twin = comparable(hard)
    primes = _mulaw_weights(ref, recipes)
    ref, factors = aligned_reference(ref, twin)
    pairs = match_layers(ref, twin, in_order=twin is not hard)
    hard = twin
    weights = {lyr.index: lyr.weight_name for lyr in graph.weight_layers(ref)}
    primes = {i: scale_channels(w, factors[weights[i]]) if weights[i] in factors else w
              for i, w in primes.items()}
    shapes = _value_shapes(ref)
    amp = {}
    if data is not None:
        amp = measure_amplification(ref, hard, data, config)
        shapes |= _observed_shapes(ref, [p[0] for p in pairs], data, config)
    layers = []
    for r, h in pairs:
        geometry, in_shape, note = _layer_geometry(ref, r, shapes) if r.op_type in _CONV_OPS \
            else (None, None, "")
        w, w_hat = graph.layer_weight(ref, r), hardened_weight(hard, r, h)
        w_n, dw_n, total, prime = _layer_norms(r, w, primes.get(r.index), w_hat, geometry,
                                               config)
        if r.op_type == "MatMul" and w.ndim > 2:
            note = "batched MatMul weight flattened to (batch*K, N): an upper bound"
        if geometry is not None and not _want_fft(w, geometry, config) and config.fft_bound:
            note = f"FFT bound skipped: ~{spectral.fft_bound_cost(w.shape, geometry):.1e} flops"
        if r.weight_name in factors:  # last: the legend finds the folded layers by this note
            note = "; ".join(x for x in (FOLDED_NOTE, note) if x)
        layers.append(LayerReport(
            r.index, r.node_name, r.op_type, r.shape, in_shape, r.index in primes, w_n, dw_n,
            total, amplification=amp.get(r.index), note=note, w_prime=prime))
    return LipschitzReport(label or _label(reference, hardened, recipe), source,
                           tuple(rc.to_json() for rc in recipes), tuple(layers), config,
                           time.perf_counter() - start)


def _hardened_and_recipes(
    ref: onnx.ModelProto, hardened: ModelLike | None, recipe: passes.Recipe | None
) -> tuple[onnx.ModelProto, list[passes.Recipe], str]:
    if (hardened is None) == (recipe is None):
        raise ConfigError("pass either a hardened model or a recipe (e.g. --bits 3), not "
                          f"{'both' if recipe is not None else 'neither'}")
    if recipe is not None:
        hard, _ = passes.harden(ref, recipe.passes, recipe.encoding)
        return hard, [recipe], "given"
    assert hardened is not None
    hard = _load(hardened)
    recipes = passes.recipes_of(hard)
    return hard, recipes, "metadata" if recipes else "none"


def _label(reference: ModelLike, hardened: ModelLike | None, recipe: passes.Recipe | None) -> str:
    def name(m: ModelLike) -> str:
        return Path(m).stem if not isinstance(m, onnx.ModelProto) else m.graph.name or "model"
    if recipe is not None:
        return f"{name(reference)} ({_recipe_label(recipe)})"
    assert hardened is not None
    return name(hardened)


def _recipe_label(recipe: passes.Recipe) -> str:
    parts = []
    for p in recipe.passes:
        parts.append(f"mu={p.mu:g}" if isinstance(p, passes.MuLawMap) else f"{p.bits}-bit")
    return "+".join(parts)
