"""Weight encodings: how a rewritten tensor is stored in the hardened graph (docs/design.md,
decision 4).

- float:    the dequantized float32 values baked into the initializer.
- qdq:      int8 codes + DequantizeLinear (scale per tensor, or per channel with `axis`).
- int4:     INT4 codes (packed two per byte by onnx.numpy_helper) + DequantizeLinear; ≤ 4 bits,
            opset 21.
- codebook: the companding quantizer's codes as uint8 (qdq) or UINT4 (int4) indices →
            Cast(int64) → Gather(codebook) → Mul(scale); Gather rejects uint8 indices.

Every form gives bit-identical float32 weights in onnxruntime: DequantizeLinear computes
float32(q − zp) · scale, and Gather + Mul computes codebook[i] · scale, exactly as quant.py does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from qrdeploy.errors import PassError
from qrdeploy.graphio.graph import unique_name
from qrdeploy.hardening.quant import Quantized


class Encoding(StrEnum):
    FLOAT = "float"
    QDQ = "qdq"
    INT4 = "int4"
    NBITS = "nbits"  # MatMulNBits for Gemm / MatMul (qrdeploy.hardening.nbits), qdq elsewhere


@dataclass(frozen=True)
class Encoded:
    """New initializers and nodes for one tensor; `output` is the name its readers now use."""

    initializers: tuple[onnx.TensorProto, ...]
    nodes: tuple[onnx.NodeProto, ...]
    output: str
    form: str  # float | qdq | int4 | codebook-uint8 | codebook-uint4


def encode_float(name: str, values: np.ndarray, dtype: np.dtype) -> Encoded:
    t = numpy_helper.from_array(np.ascontiguousarray(values.astype(dtype)), name)
    return Encoded((t,), (), name, "float")


def encode_quantized(name: str, q: Quantized, encoding: Encoding, taken: set[str]) -> Encoded:
    """The qdq / int4 / codebook form of a quantized tensor (never called for `float`)."""
    if encoding is Encoding.INT4 and q.bits > 4:
        raise PassError(f"--encoding int4 holds at most 4 bits, tensor {name!r} has {q.bits}; "
                        "use --encoding qdq or --bits 4 or fewer")
    make: Callable[[str, Quantized, Encoding, set[str]], Encoded] = (
        _codebook if q.codebook is not None else _dequantize_linear)
    return make(name, q, encoding, taken)


def _dequantize_linear(name: str, q: Quantized, encoding: Encoding, taken: set[str]) -> Encoded:
    store = ml_dtypes.int4 if encoding is Encoding.INT4 else np.int8
    codes = numpy_helper.from_array(q.codes.astype(store), unique_name(f"{name}_quantized", taken))
    scale = numpy_helper.from_array(np.asarray(q.scale, np.float32),
                                    unique_name(f"{name}_scale", taken))
    zp = numpy_helper.from_array(np.zeros(np.shape(q.scale), store),
                                 unique_name(f"{name}_zero_point", taken))
    out = unique_name(f"{name}_dequantized", taken)
    node = helper.make_node("DequantizeLinear", [codes.name, scale.name, zp.name], [out],
                            name=unique_name(f"{name}_DequantizeLinear", taken))
    if q.axis is not None:
        node.attribute.append(helper.make_attribute("axis", q.axis))
    return Encoded((codes, scale, zp), (node,), out, encoding.value)


def _codebook(name: str, q: Quantized, encoding: Encoding, taken: set[str]) -> Encoded:
    store = ml_dtypes.uint4 if encoding is Encoding.INT4 else np.uint8
    assert q.codebook is not None
    index = (q.codes.astype(np.int16) - q.qmin).astype(store)  # codes shifted to 0..K-1
    idx = numpy_helper.from_array(index, unique_name(f"{name}_codes", taken))
    book = numpy_helper.from_array(q.codebook, unique_name(f"{name}_codebook", taken))
    shape = [1] * q.codes.ndim
    if q.axis is not None:
        shape[q.axis] = -1
    scale = numpy_helper.from_array(np.asarray(q.scale, np.float32).reshape(shape),
                                    unique_name(f"{name}_scale", taken))
    wide, looked, out = (unique_name(f"{name}_{s}", taken) for s in ("int64", "levels", "decoded"))
    nodes = (
        helper.make_node("Cast", [idx.name], [wide], to=onnx.TensorProto.INT64,
                         name=unique_name(f"{name}_Cast", taken)),
        helper.make_node("Gather", [book.name, wide], [looked], axis=0,
                         name=unique_name(f"{name}_Gather", taken)),
        helper.make_node("Mul", [looked, scale.name], [out],
                         name=unique_name(f"{name}_Mul", taken)),
    )
    form = "codebook-uint4" if encoding is Encoding.INT4 else "codebook-uint8"
    return Encoded((idx, book, scale), nodes, out, form)
