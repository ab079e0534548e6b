"""Tiny ONNX classifiers built in code with onnx.helper, for graph / pass / encoding tests.

Every builder takes a seed and returns a checked onnx.ModelProto with input 'input'
(N, C, H, W) float32 and output 'logits' (N, K)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    """Accumulates nodes and initializers; names are generated in order, so builds are stable."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: Sequence[int], std: float = 0.1) -> str:
        return self.init(name, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def node(self, op: str, inputs: Sequence[str], name: str | None = None, **attrs: object) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name or f"{op}_{self.n}",
                                           **attrs))
        return out

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 3) -> str:
        w = self.weight(f"{name}.weight", (cout, cin, k, k), std=0.3)
        b = self.weight(f"{name}.bias", (cout,), std=0.05)
        return self.node("Conv", [x, w, b], name=name, pads=[k // 2] * 4)

    def gemm(self, x: str, name: str, fin: int, fout: int, trans_b: int = 1) -> str:
        shape = (fout, fin) if trans_b else (fin, fout)
        w = self.weight(f"{name}.weight", shape, std=1.0 / np.sqrt(fin))
        b = self.weight(f"{name}.bias", (fout,), std=0.05)
        return self.node("Gemm", [x, w, b], name=name, transB=trans_b)

    def model(self, x_shape: Sequence[int | str], out: str, k: int, opset: int = 17
              ) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], ["logits"], name="output"))
        g = helper.make_graph(
            self.nodes, "tiny",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
            self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="qrdeploy-tests")
        m.ir_version = 10 if opset >= 21 else 8
        onnx.checker.check_model(m)
        return m


def cnn(seed: int = 0, *, bn: bool = False, opset: int = 17, c: int = 1, hw: int = 8,
        c1: int = 4, c2: int = 8, hidden: int = 16, k: int = 10, ksize: int = 3,
        trans_b: int = 1) -> onnx.ModelProto:
    """conv-relu-pool-conv-relu-pool-flatten-gemm-relu-gemm (optionally BN after conv1)."""
    b = Builder(seed)
    h = b.conv("input", "conv1", c, c1, ksize)
    if bn:
        h = b.node("BatchNormalization", [
            h, b.init("bn1.scale", b.rng.uniform(0.5, 1.5, c1).astype(np.float32)),
            b.init("bn1.bias", b.rng.normal(0, 0.1, c1).astype(np.float32)),
            b.init("bn1.mean", b.rng.normal(0, 0.1, c1).astype(np.float32)),
            b.init("bn1.var", b.rng.uniform(0.5, 1.5, c1).astype(np.float32))], name="bn1")
    h = b.node("MaxPool", [b.node("Relu", [h])], kernel_shape=[2, 2], strides=[2, 2])
    h = b.conv(h, "conv2", c1, c2, ksize)
    h = b.node("MaxPool", [b.node("Relu", [h])], kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Flatten", [h])
    flat = c2 * (hw // 4) ** 2
    h = b.node("Relu", [b.gemm(h, "fc1", flat, hidden, trans_b)])
    return b.model(["N", c, hw, hw], b.gemm(h, "fc2", hidden, k, trans_b), k, opset)


def mnist_cnn(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """The paper's MNIST CNN shape: conv 5x5x32 SAME, pool, conv 5x5x64 SAME, pool,
    fc 3136->1024, fc 1024->10 (3.3 M parameters), random weights."""
    return cnn(seed, opset=opset, hw=28, c1=32, c2=64, hidden=1024, ksize=5)


def mlp_matmul(seed: int = 0, *, transpose: bool = False, dynamo_reshape: bool = False,
               opset: int = 17) -> onnx.ModelProto:
    """Flatten/Reshape -> MatMul + Add -> Relu -> MatMul + Add. transpose=True stores the first
    weight as (out, in) behind a Transpose node; dynamo_reshape=True flattens with Reshape and an
    int64 shape initializer, as the dynamo exporter does."""
    b = Builder(seed)
    if dynamo_reshape:
        h = b.node("Reshape", ["input", b.init("val_6", np.array([-1, 64], np.int64))])
    else:
        h = b.node("Flatten", ["input"])
    if transpose:
        w1 = b.node("Transpose", [b.weight("fc1.weight", (16, 64), std=0.125)], perm=[1, 0])
    else:
        w1 = b.weight("fc1.weight", (64, 16), std=0.125)
    h = b.node("Add", [b.node("MatMul", [h, w1], name="fc1"), b.weight("fc1.bias", (16,))])
    h = b.node("Relu", [h])
    h = b.node("MatMul", [h, b.weight("fc2.weight", (16, 10), std=0.25)], name="fc2")
    return b.model(["N", 1, 8, 8], b.node("Add", [h, b.weight("fc2.bias", (10,))]), 10, opset)


def conv_transpose_net(seed: int = 0) -> onnx.ModelProto:
    """ConvTranspose (weight (C_in, C_out, k, k)) -> Relu -> Flatten -> Gemm."""
    b = Builder(seed)
    w = b.weight("up.weight", (1, 3, 2, 2), std=0.5)
    h = b.node("Relu", [b.node("ConvTranspose", ["input", w], name="up", strides=[2, 2])])
    h = b.node("Flatten", [h])
    return b.model(["N", 1, 4, 4], b.gemm(h, "fc", 3 * 8 * 8, 10), 10)


def shared_weight_net(seed: int = 0) -> onnx.ModelProto:
    """Two MatMuls reading the same (64, 64) weight initializer (tied weights)."""
    b = Builder(seed)
    h = b.node("Flatten", ["input"])
    w = b.weight("tied.weight", (64, 64), std=0.125)
    h = b.node("MatMul", [b.node("Relu", [b.node("MatMul", [h, w], name="a")]), w], name="b")
    h = b.node("MatMul", [h, b.weight("out.weight", (64, 10), std=0.125)], name="out")
    return b.model(["N", 1, 8, 8], h, 10)


def inputs(seed: int, shape: Sequence[int]) -> np.ndarray:
    """Random images in [0, 1], float32."""
    return np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)


def ort_logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Logits from onnxruntime (CPU, 1 thread). onnxruntime >= 1.2x fuses DequantizeLinear ->
    MatMul/Gemm(transB=0) into MatMulNBits with accuracy_level 4 by default, which quantizes the
    activations to int8 (logit error ~1e-3 relative); level 1 (fp32 compute) keeps the weight-only
    graph exact. qrdeploy.core.runtime.make_session should pin the same entry (reported to the
    lead)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x})[0])


def quantize_static(src: str | Path, dst: str | Path, feed: dict[str, np.ndarray],
                    **options: Any) -> onnx.ModelProto:
    """onnxruntime's `quantize_static` of the model file `src` into `dst`, calibrated on one
    batch `feed` ({input name: array}); `options` go to onnxruntime (quant_format, per_channel,
    ...). Returns the written model."""
    from onnxruntime import quantization as ortq

    class Reader(ortq.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.left = [feed]

        def get_next(self) -> dict[str, np.ndarray] | None:
            return self.left.pop() if self.left else None

    ortq.quantize_static(str(src), str(dst), Reader(), **options)
    return onnx.load(str(dst))


def uint8_input(qdq: onnx.ModelProto, nhwc: bool = False) -> onnx.ModelProto:
    """A QDQ model (onnxruntime's quantize_static) as a fully quantized model ships it: its first
    QuantizeLinear (the image's, with the Identity before it if any) gone, and the model's input,
    now uint8 0-255 (NHWC and transposed with `nhwc`), read by the DequantizeLinear that followed
    it; that QuantizeLinear's scale becomes 1/255 and its zero point 0 in `qdq` itself, so
    `qdq` on pixels k/255 computes what the new model computes on k."""
    inits = {t.name: t for t in qdq.graph.initializer}
    first = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear")  # of the image
    inits[first.input[1]].CopyFrom(numpy_helper.from_array(np.float32(1 / 255), first.input[1]))
    inits[first.input[2]].CopyFrom(numpy_helper.from_array(np.uint8(0), first.input[2]))
    x = qdq.graph.input[0]
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    gone = [first.output[0]]
    before = next((n for n in qdq.graph.node if n.output[0] == first.input[0]), None)
    if before is not None and before.op_type == "Identity":
        gone.append(before.output[0])
    for name in gone:
        out.graph.node.remove(next(n for n in out.graph.node if n.output[0] == name))
    moved = "moved" if nhwc else x.name
    for node in out.graph.node:
        node.input[:] = [moved if i == first.output[0] else i for i in node.input]
    dims: list[Any] = [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim]
    if nhwc:
        out.graph.node.insert(0, helper.make_node("Transpose", [x.name], [moved],
                                                  perm=[0, 3, 1, 2]))
        dims = [dims[0], dims[2], dims[3], dims[1]]
    out.graph.input[0].CopyFrom(helper.make_tensor_value_info(x.name, TensorProto.UINT8,
                                                              dims))
    return out
