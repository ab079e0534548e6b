"""The `nbits` encoding: Gemm / MatMul layers with at most 4-bit codes become onnxruntime's
com.microsoft MatMulNBits (weight-only, 4-bit blocks, fp32 compute: accuracy_level 1), which
dequantizes block by block inside the matrix kernel instead of running a DequantizeLinear of the
whole weight on every inference. Other weight layers (Conv, and Gemm with transA, alpha or beta
other than 1) keep the `qdq` form.

MatMulNBits stores B as (N, blocks, block_size/2) bytes of uint4 codes (low nibble first) with a
float32 scale per (column, block) and the default zero point 8. qrdeploy writes its own codes
(code + 8) and its per-channel or per-tensor scale repeated over the blocks of each column, so the
dequantized weight is bit-identical to the other encodings ((code + 8 − 8)·scale in float32).
onnxruntime.quantization's MatMulNBitsQuantizer is not used because it computes its own scales and
zero points from float weights; the layout written here is the one it writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qrdeploy.graphio.graph import WeightLayer, unique_name
from qrdeploy.hardening.quant import Quantized

MS_DOMAIN = "com.microsoft"
MIN_BLOCK, MAX_BLOCK = 16, 128


def eligible(layer: WeightLayer, q: Quantized | None) -> bool:
    """Whether a layer's weight can become a MatMulNBits node."""
    if q is None or q.codebook is not None or q.bits > 4 or layer.chain or len(q.codes.shape) != 2:
        return False
    a = layer.attrs
    if layer.op_type == "Gemm":
        return not a.get("transA", 0) and float(a.get("alpha", 1.0)) == 1.0 and \
            float(a.get("beta", 1.0)) == 1.0
    return layer.op_type == "MatMul"


def block_size(k: int) -> int:
    """The largest power of two in [16, 128] not above K (16 for K < 16)."""
    size = MIN_BLOCK
    while size * 2 <= min(k, MAX_BLOCK):
        size *= 2
    return size


@dataclass(frozen=True)
class Packed:
    b: np.ndarray  # (N, blocks, block_size // 2) uint8
    scales: np.ndarray  # (N * blocks,) float32
    k: int
    n: int
    block: int


def pack(layer: WeightLayer, q: Quantized) -> Packed:
    """The pass's codes and scales in MatMulNBits's layout (rows = output columns N)."""
    transposed = layer.op_type == "Gemm" and bool(layer.attrs.get("transB", 0))
    codes = q.codes if transposed else q.codes.T  # (N, K)
    n, k = codes.shape
    scale = np.asarray(q.scale, np.float32)
    per_n = np.broadcast_to(scale.reshape(-1) if scale.size > 1 else scale.reshape(1), (n,))
    block = block_size(k)
    blocks = -(-k // block)
    padded = np.full((n, blocks * block), 8, np.uint8)  # code 0 -> value 0 in the padding
    padded[:, :k] = (codes.astype(np.int16) + 8).astype(np.uint8)
    pairs = padded.reshape(n, blocks, block // 2, 2)
    b = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    scales = np.repeat(per_n.astype(np.float32), blocks)
    return Packed(np.ascontiguousarray(b), scales, k, n, block)


def to_matmulnbits(model: onnx.ModelProto, layers: dict[str, tuple[WeightLayer, Quantized]]
                   ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Replace each listed layer (keyed by weight initializer; its node found by name in
    `model`, whose weights are stored as float) by MatMulNBits (+ Add for a Gemm bias). Returns
    the model and, per weight rewritten, the initializer that now holds its codes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    taken = {t.name for t in g.initializer} | {x for n in g.node for x in (*n.input, *n.output)}
    taken |= {n.name for n in g.node}
    by_weight = {name: (lyr, q) for name, (lyr, q) in layers.items()}
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    done: dict[str, str] = {}
    for node in g.node:
        hit = by_weight.get(node.input[1]) if node.op_type in ("Gemm", "MatMul") and \
            len(node.input) > 1 else None
        if hit is None:
            nodes.append(node)
            continue
        layer, q = hit
        p = pack(layer, q)
        base = node.input[1]
        b_name, s_name = unique_name(f"{base}_Q4", taken), unique_name(f"{base}_scales", taken)
        new_inits += [numpy_helper.from_array(p.b, b_name),
                      numpy_helper.from_array(p.scales, s_name)]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        out_name = unique_name(f"{node.output[0]}_matmul", taken) if bias else node.output[0]
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], b_name, s_name], [out_name],
            name=node.name or unique_name("MatMulNBits", taken), domain=MS_DOMAIN,
            K=p.k, N=p.n, bits=4, block_size=p.block, accuracy_level=1))
        if bias:
            nodes.append(helper.make_node("Add", [out_name, bias], [node.output[0]],
                                          name=unique_name(f"{node.name}_bias", taken)))
        done[base] = b_name
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name not in done or t.name in used]
    del g.initializer[:]
    g.initializer.extend([*keep, *new_inits])
    del g.node[:]
    g.node.extend(nodes)
    if done and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out, done
