"""Each gradient rule against torch float64 autograd on the equivalent function, and that float64
reference against central finite differences. Graphs are one op (plus a Flatten to (N, K))."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.gradients.builder import GRAD, X_COTANGENT, build_vjp, supported_ops
from qrdeploy.gradients.rules import GradOptions

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = 1e-4  # per-sample ||g - g_ref|| / ||g_ref||
COS = 1 - 1e-6
BATCH = 3


@dataclass(frozen=True)
class Case:
    """One op (or a few) from input x to y; the torch float64 twin maps (x, params) to y."""

    nodes: list[onnx.NodeProto]
    ref: Callable[[Any, dict[str, Any]], Any]
    x_shape: tuple[int, ...]
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    options: GradOptions | None = None


def _w(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32)


def _node(op: str, inputs: list[str], out: str = "y", **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [out], name=f"{op}_{out}", **attrs)


def _model(case: Case) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *case.x_shape])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    nodes = [*case.nodes, _node("Flatten", ["y"], "logits", axis=1)]
    inits = [numpy_helper.from_array(v, k) for k, v in case.inits.items()]
    graph = helper.make_graph(nodes, "case", [x], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])


def _torch_params(case: Case) -> dict[str, Any]:
    """The initializers as float64 torch tensors (4-bit ones, which torch cannot hold, left out:
    a reference that needs them uses the numpy arrays)."""
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in case.inits.items()
            if v.dtype not in (ml_dtypes.int4, ml_dtypes.uint4)}


def _torch_vjp(case: Case, x: np.ndarray, cot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    params = _torch_params(case)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    z = case.ref(xt, params).flatten(1)  # (N, K)
    (z * torch.tensor(cot, dtype=torch.float64)).sum().backward()
    return z.detach().numpy(), xt.grad.numpy()


def _tie_free(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Distinct values in [0, 1] (a shuffled grid) so MaxPool windows have unique maxima."""
    n = int(np.prod(shape))
    grid = (np.arange(n) + 0.5) / n
    return np.random.default_rng(seed).permutation(grid).reshape(shape).astype(np.float32)


def _conv(p: dict[str, Any], x: Any, pads: tuple[int, ...] = (0, 0, 0, 0), **kw: Any) -> Any:
    # ONNX pads are [top, left, bottom, right]; F.pad wants (left, right, top, bottom)
    t, left, b, r = pads
    return F.conv2d(F.pad(x, (left, r, t, b)), p["w"], p.get("b"), **kw)


def _fake_quant(x: Any, s: Any, zp: Any, qmin: int, qmax: int) -> Any:
    """torch's fake-quant STE in float64: forward (clamp(round(x/s) + z) − z)·s, backward 1
    where round(x/s) + z is inside [qmin, qmax], else 0 (fake_quantize_per_*_affine)."""
    code = torch.round(x / s) + zp
    inside = ((code >= qmin) & (code <= qmax)).to(x.dtype)
    fq = (torch.clamp(code, qmin, qmax) - zp) * s
    return fq.detach() + (x - x.detach()) * inside


def _dynamic_fake_quant(x: Any) -> Any:
    """DynamicQuantizeLinear then DequantizeLinear; scale and zero point held constant."""
    lo, hi = min(float(x.detach().min()), 0.0), max(float(x.detach().max()), 0.0)
    s = np.float32((hi - lo) / 255)
    zp = float(np.clip(np.rint(-lo / s), 0, 255))
    return _fake_quant(x, float(s), zp, 0, 255)


_S_CH = np.array([0.004, 0.009, 0.02], np.float32)
_W4 = np.random.default_rng(11).integers(-8, 8, (8, 6)).astype(np.int8)
_S4 = np.array([[0.05, 0.1, 0.02, 0.07, 0.03, 0.09], [0.04, 0.06, 0.08, 0.01, 0.05, 0.02]],
               np.float32)  # (K / block 4, N)

CASES: dict[str, Case] = {
    "quantize_dequantize_uint8_clipped": Case(
        [_node("QuantizeLinear", ["x", "s", "z"], "q"), _node("DequantizeLinear", ["q", "s", "z"])],
        lambda x, p: _fake_quant(x, float(np.float32(0.006)), 128, 0, 255), (3, 4, 4),
        {"s": np.array(0.006, np.float32), "z": np.array(128, np.uint8)}),
    "quantize_dequantize_int8_per_channel": Case(
        [_node("QuantizeLinear", ["x", "s", "z"], "q", axis=1),
         _node("DequantizeLinear", ["q", "s", "z"], axis=1)],
        lambda x, p: _fake_quant(x, torch.tensor(_S_CH.astype(np.float64)).reshape(3, 1, 1),
                                 0, -128, 127), (3, 4, 4),
        {"s": _S_CH, "z": np.zeros(3, np.int8)}),
    "quantize_int4_then_blocked_int4_weight": Case(
        [_node("QuantizeLinear", ["x", "s", "z"], "q"), _node("DequantizeLinear", ["q", "s", "z"],
                                                            "xd"),
         _node("DequantizeLinear", ["wq", "ws"], "w", axis=0, block_size=4),
         _node("MatMul", ["xd", "w"])],
        lambda x, p: _fake_quant(x, float(np.float32(0.15)), 0, -8, 7) @ torch.tensor(
            _W4.astype(np.float64) * np.repeat(_S4, 4, axis=0)),
        (8,), {"s": np.array(0.15, np.float32), "z": np.array(0, ml_dtypes.int4),
               "wq": _W4.astype(ml_dtypes.int4), "ws": _S4}, opset=21),
    "dynamic_quantize_linear": Case(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"], name="dynq"),
         _node("DequantizeLinear", ["q", "qs", "qz"])],
        lambda x, p: _dynamic_fake_quant(x), (3, 4, 4)),
    "conv": Case([_node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1])],
                 lambda x, p: _conv(p, x, (1, 1, 1, 1)), (3, 6, 6),
                 {"w": _w(4, 3, 3, 3), "b": _w(4)}),
    "conv_stride2_asym_pads": Case(
        [_node("Conv", ["x", "w"], strides=[2, 2], pads=[1, 0, 2, 1])],
        lambda x, p: _conv(p, x, (1, 0, 2, 1), stride=2), (2, 7, 8), {"w": _w(3, 2, 3, 3)}),
    "conv_same_upper_s2": Case(
        [_node("Conv", ["x", "w"], strides=[2, 2], auto_pad="SAME_UPPER")],
        lambda x, p: _conv(p, x, (1, 1, 2, 2), stride=2),  # total 3: 1 before, 2 after
        (2, 7, 7), {"w": _w(3, 2, 4, 4)}),
    "conv_same_lower": Case(
        [_node("Conv", ["x", "w"], auto_pad="SAME_LOWER")],
        lambda x, p: _conv(p, x, (2, 2, 1, 1)), (2, 6, 6), {"w": _w(3, 2, 4, 4)}),  # 2 before
    "conv_groups_dilations": Case(
        [_node("Conv", ["x", "w"], group=2, dilations=[2, 2], pads=[2, 2, 2, 2])],
        lambda x, p: _conv(p, x, (2, 2, 2, 2), groups=2, dilation=2), (4, 7, 7),
        {"w": _w(6, 2, 3, 3)}),
    "conv_16ch_as_conv": Case(
        [_node("Conv", ["x", "w"], group=2, pads=[1, 2, 1, 0])],
        lambda x, p: _conv(p, x, (1, 2, 1, 0), groups=2), (16, 5, 5), {"w": _w(8, 8, 3, 3)}),
    "conv_16ch_transpose": Case(
        [_node("Conv", ["x", "w"], group=2, pads=[1, 2, 1, 0])],
        lambda x, p: _conv(p, x, (1, 2, 1, 0), groups=2), (16, 5, 5), {"w": _w(8, 8, 3, 3)},
        options=GradOptions(conv_as_conv=False)),
    "gemm_transB_alpha_beta": Case(
        [_node("Gemm", ["x", "w", "c"], transB=1, alpha=0.7, beta=1.3)],
        lambda x, p: 0.7 * x @ p["w"].T + 1.3 * p["c"], (6,), {"w": _w(4, 6), "c": _w(4)}),
    "gemm_plain": Case([_node("Gemm", ["x", "w"])], lambda x, p: x @ p["w"], (6,),
                       {"w": _w(6, 5)}),
    "gemm_both_from_x": Case(
        [_node("Gemm", ["x", "x", "c"], transB=1, alpha=0.5, beta=2.0)],
        lambda x, p: 0.5 * x @ x.T + 2.0 * p["c"], (5,), {"c": _w(1)}),
    "gemm_transA_both_from_x": Case(
        [_node("Gemm", ["x", "x"], transA=1, alpha=1.5)],
        lambda x, p: 1.5 * x.T @ x, (4,)),
    "matmul_const": Case([_node("MatMul", ["x", "w"])], lambda x, p: x @ p["w"], (2, 3, 4),
                         {"w": _w(4, 5)}),
    "matmul_both_from_x": Case([_node("MatMul", ["x", "x"])], lambda x, p: x @ x, (2, 4, 4)),
    "add_broadcast_const": Case([_node("Add", ["x", "c"])], lambda x, p: x + p["c"], (3, 4, 4),
                                {"c": _w(3, 1, 1)}),
    "add_both_from_x": Case(
        [_node("ReduceMean", ["x"], "m", axes=[2, 3], keepdims=1), _node("Add", ["x", "m"])],
        lambda x, p: x + x.mean(dim=(2, 3), keepdim=True), (3, 4, 4)),
    "sub_both_from_x": Case(
        [_node("ReduceMean", ["x"], "m", axes=[1], keepdims=1), _node("Sub", ["m", "x"])],
        lambda x, p: x.mean(dim=1, keepdim=True) - x, (3, 4, 4)),
    "mul_both_from_x": Case(
        [_node("GlobalAveragePool", ["x"], "m"), _node("Mul", ["x", "m"])],
        lambda x, p: x * x.mean(dim=(2, 3), keepdim=True), (3, 4, 4)),
    "mul_square": Case([_node("Mul", ["x", "x"])], lambda x, p: x * x, (2, 3, 3)),
    "div_both_from_x": Case(
        [_node("GlobalAveragePool", ["x"], "m"), _node("Add", ["m", "one"], "d"),
         _node("Div", ["x", "d"])],
        lambda x, p: x / (x.mean(dim=(2, 3), keepdim=True) + 1.0), (3, 4, 4),
        {"one": np.ones(1, np.float32)}),
    "div_const": Case([_node("Div", ["c", "x"])], lambda x, p: p["c"] / x, (3, 2, 2),
                      {"c": _w(3, 1, 1)}),
    "sqrt": Case([_node("Sqrt", ["x"])], lambda x, p: x.sqrt(), (2, 3, 3)),
    "pow_const": Case([_node("Pow", ["x", "p"])], lambda x, p: x ** p["p"], (2, 3, 3),
                      {"p": np.array([2.0, 3.0, 0.5], np.float32)}),
    "clip_min_max": Case([_node("Clip", ["x", "lo", "hi"])],
                         lambda x, p: x.clamp(-0.3, 0.4), (2, 4, 4),
                         {"lo": np.float32(-0.3), "hi": np.float32(0.4)}),
    "clip_min_only": Case([_node("Clip", ["x", "lo"])], lambda x, p: x.clamp(min=0.1),
                          (2, 4, 4), {"lo": np.float32(0.1)}),
    "expand_from_x": Case(
        [_node("ReduceMean", ["x"], "m", axes=[1, 3], keepdims=1),
         _node("Expand", ["m", "s"], "e"), _node("Mul", ["e", "x"])],
        lambda x, p: x.mean(dim=(1, 3), keepdim=True).expand(-1, 3, 4, 4) * x, (3, 4, 4),
        {"s": np.array([1, 3, 1, 4], np.int64)}),
    "cast_castlike": Case(
        [_node("Cast", ["x"], "c", to=TensorProto.FLOAT), _node("CastLike", ["c", "x"], "d"),
         _node("Mul", ["d", "d"])], lambda x, p: x * x, (2, 3, 3)),
    "relu": Case([_node("Relu", ["x"])], lambda x, p: F.relu(x), (2, 4, 4)),
    "leaky_relu": Case([_node("LeakyRelu", ["x"], alpha=0.2)],
                       lambda x, p: F.leaky_relu(x, 0.2), (2, 4, 4)),
    "maxpool_2x2_unpool": Case([_node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])],
                               lambda x, p: F.max_pool2d(x, 2), (2, 6, 6)),
    "maxpool_2x2_scatter": Case(
        [_node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])],
        lambda x, p: F.max_pool2d(x, 2), (2, 6, 6), options=GradOptions(maxunpool=False)),
    "maxpool_overlap_pads": Case(
        [_node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])],
        lambda x, p: F.max_pool2d(x, 3, 1, 1), (2, 5, 5)),
    "maxpool_ceil_dilated": Case(
        [_node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2],
               ceil_mode=1)],
        lambda x, p: F.max_pool2d(x, 2, 2, dilation=2, ceil_mode=True), (2, 7, 7)),
    "relu_maxpool_premasked": Case(
        [_node("Relu", ["x"], "r"),
         _node("MaxPool", ["r"], kernel_shape=[2, 2], strides=[2, 2])],
        lambda x, p: F.max_pool2d(F.relu(x), 2), (2, 6, 6)),
    "relu_maxpool_overlap_premasked": Case(
        [_node("Relu", ["x"], "r"),
         _node("MaxPool", ["r"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])],
        lambda x, p: F.max_pool2d(F.relu(x), 3, 1, 1), (2, 5, 5)),
    "relu_two_consumers": Case(
        [_node("Relu", ["x"], "r"),
         _node("MaxPool", ["r"], "m", kernel_shape=[2, 2], strides=[2, 2]),
         _node("AveragePool", ["r"], "a", kernel_shape=[2, 2], strides=[2, 2]),
         _node("Add", ["m", "a"])],
        lambda x, p: F.max_pool2d(F.relu(x), 2) + F.avg_pool2d(F.relu(x), 2), (2, 4, 4)),
    "avgpool_2x2": Case([_node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])],
                        lambda x, p: F.avg_pool2d(x, 2), (2, 6, 6)),
    "avgpool_pads_exclude": Case(
        [_node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        lambda x, p: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (2, 7, 7)),
    "avgpool_pads_include": Case(
        [_node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=1)],
        lambda x, p: F.avg_pool2d(x, 3, 2, 1, count_include_pad=True), (2, 7, 7)),
    "global_avgpool": Case([_node("GlobalAveragePool", ["x"])],
                           lambda x, p: x.mean(dim=(2, 3), keepdim=True), (3, 4, 5)),
    "reducemean_attr_nokeep": Case([_node("ReduceMean", ["x"], axes=[2, 3], keepdims=0)],
                                   lambda x, p: x.mean(dim=(2, 3)), (3, 4, 5)),
    "reducemean_input_opset18": Case(
        [_node("ReduceMean", ["x", "axes"], keepdims=1)],
        lambda x, p: x.mean(dim=(-1,), keepdim=True), (3, 4, 5),
        {"axes": np.array([-1], np.int64)}, opset=18),
    "batchnorm": Case(
        [_node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
        lambda x, p: F.batch_norm(x, p["m"], p["v"], p["s"], p["b"], False, 0.0, 1e-3),
        (3, 4, 4), {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.1}),
    "flatten": Case([_node("Flatten", ["x"], axis=1)], lambda x, p: x.flatten(1), (2, 3, 3)),
    "reshape": Case([_node("Reshape", ["x", "s"])], lambda x, p: x.reshape(-1, 3, 6),
                    (2, 3, 3), {"s": np.array([0, 3, 6], np.int64)}),
    "pad_constant_crop": Case(
        [_node("Pad", ["x", "pads", "v"], mode="constant")],
        lambda x, p: F.pad(x, (2, -1, 1, 2), value=0.5), (2, 4, 4),
        {"pads": np.array([0, 0, 1, 2, 0, 0, 2, -1], np.int64), "v": np.float32(0.5)}),
    "pad_axes_opset18": Case(
        [_node("Pad", ["x", "pads", "", "axes"], mode="constant")],
        lambda x, p: F.pad(x, (1, 2)), (2, 3, 3),
        {"pads": np.array([1, 2], np.int64), "axes": np.array([3], np.int64)}, opset=18),
    "shape_chain_kept": Case(
        [_node("Shape", ["x"], "s"), _node("Gather", ["s", "i0"], "n", axis=0),
         _node("Unsqueeze", ["n", "a0"], "nu"), _node("Concat", ["nu", "m1"], "shp", axis=0),
         _node("Reshape", ["x", "shp"])],
        lambda x, p: x.reshape(x.shape[0], -1), (2, 3, 3),
        {"i0": np.array(0, np.int64), "a0": np.array([0], np.int64),
         "m1": np.array([-1], np.int64)}),
    "folded_constant_and_transpose": Case(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(_w(4, 5))),
         _node("Transpose", ["c"], "cT", perm=[1, 0]), _node("Mul", ["cT", "two"], "w2"),
         _node("MatMul", ["x", "w2"])],
        lambda x, p: x @ (2 * torch.tensor(_w(4, 5), dtype=torch.float64).T), (3, 5),
        {"two": np.float32(2.0)}),
    "identity_dropout": Case(
        [_node("Identity", ["x"], "i"), _node("Dropout", ["i", "r"])],
        lambda x, p: x, (2, 3, 3), {"r": np.float32(0.3)}),
    # --- part 2: the ops torchvision models and other exporters use ---------------------------
    "conv_transpose_s2_outpad": Case(
        [_node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1],
               output_padding=[1, 1])],
        lambda x, p: F.conv_transpose2d(x, p["w"], p["b"], stride=2, padding=1,
                                        output_padding=1), (2, 4, 4),
        {"w": _w(2, 3, 3, 3), "b": _w(3)}),
    "conv_transpose_groups_dilated": Case(
        [_node("ConvTranspose", ["x", "w"], group=2, dilations=[2, 2])],
        lambda x, p: F.conv_transpose2d(x, p["w"], groups=2, dilation=2), (4, 3, 3),
        {"w": _w(4, 1, 3, 3)}),
    "prelu_per_channel": Case([_node("PRelu", ["x", "s"])],
                              lambda x, p: torch.where(x > 0, x, p["s"] * x), (3, 4, 4),
                              {"s": _w(3, 1, 1)}),
    "clip_attrs_opset10": Case([_node("Clip", ["x"], min=-0.3, max=0.4)],
                               lambda x, p: x.clamp(-0.3, 0.4), (2, 4, 4), opset=10),
    "clip_relu6_inputs": Case(
        [_node("Mul", ["x", "k"], "xk"), _node("Clip", ["xk", "lo", "hi"])],
        lambda x, p: F.relu6(8 * x), (2, 4, 4),
        {"k": np.float32(8), "lo": np.float32(0), "hi": np.float32(6)}),
    "sigmoid": Case([_node("Sigmoid", ["x"])], lambda x, p: torch.sigmoid(x), (2, 3, 3)),
    "tanh": Case([_node("Tanh", ["x"])], lambda x, p: torch.tanh(x), (2, 3, 3)),
    "hard_sigmoid_onnx_defaults": Case(
        [_node("Mul", ["x", "k"], "xk"), _node("HardSigmoid", ["xk"])],
        lambda x, p: (0.2 * 4 * x + 0.5).clamp(0, 1), (2, 4, 4), {"k": np.float32(4)}),
    "hard_sigmoid_torch_form": Case(
        [_node("Mul", ["x", "k"], "xk"), _node("HardSigmoid", ["xk"], alpha=1 / 6)],
        lambda x, p: F.hardsigmoid(4 * x), (2, 4, 4), {"k": np.float32(4)}),
    "hard_swish": Case([_node("Mul", ["x", "k"], "xk"), _node("HardSwish", ["xk"])],
                       lambda x, p: F.hardswish(4 * x), (2, 4, 4), {"k": np.float32(4)}),
    "erf_gelu": Case(
        [_node("Div", ["x", "r2"], "xs"), _node("Erf", ["xs"], "ef"),
         _node("Add", ["ef", "one"], "e1"), _node("Mul", ["x", "e1"], "xe"),
         _node("Mul", ["xe", "half"])],
        lambda x, p: F.gelu(x), (2, 3, 3),
        {"r2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}),
    "softmax_inside_axis1": Case([_node("Softmax", ["x"], axis=1)],
                                 lambda x, p: F.softmax(x, dim=1), (4, 3, 3)),
    "logsoftmax_inside_last": Case([_node("LogSoftmax", ["x"], axis=-1)],
                                   lambda x, p: F.log_softmax(x, dim=-1), (2, 3, 4)),
    "concat_x_relu_scaled": Case(
        [_node("Relu", ["x"], "r"), _node("Mul", ["x", "c"], "xc"),
         _node("Concat", ["x", "xc", "r"], axis=1)],
        lambda x, p: torch.cat([x, x * p["c"], F.relu(x)], 1), (2, 3, 3), {"c": _w(1, 1, 3)}),
    "split_input_one_output_used": Case(
        [helper.make_node("Split", ["x", "sp"], ["s0", "s1"], axis=1, name="split"),
         _node("Mul", ["s1", "s1"])],
        lambda x, p: x[:, 1:] ** 2, (3, 3, 3), {"sp": np.array([1, 2], np.int64)}),
    "split_attr_opset11": Case(
        [helper.make_node("Split", ["x"], ["s0", "s1"], axis=2, split=[1, 3], name="split"),
         _node("Concat", ["s1", "s0"], axis=2)],
        lambda x, p: torch.cat([x[:, :, 1:], x[:, :, :1]], 2), (2, 4, 3), opset=11),
    "split_num_outputs_opset18": Case(
        [helper.make_node("Split", ["x"], ["s0", "s1"], axis=3, num_outputs=2, name="split"),
         _node("Mul", ["s0", "s1"])],
        lambda x, p: x[..., :2] * x[..., 2:], (2, 3, 4), opset=18),
    "slice_steps_negative": Case(
        [_node("Slice", ["x", "st", "en", "ax", "sp"])],
        lambda x, p: x[:, :, 1:4:2][..., [4, 2, 0]], (2, 5, 5),
        {"st": np.array([1, -1], np.int64), "en": np.array([4, -100], np.int64),
         "ax": np.array([2, 3], np.int64), "sp": np.array([2, -2], np.int64)}),
    "slice_no_axes": Case([_node("Slice", ["x", "st", "en"])],
                          lambda x, p: x[:, 1:3, :, 1:], (4, 3, 3),
                          {"st": np.array([0, 1, 0, 1], np.int64),
                           "en": np.array([2**63 - 1, 3, 9, 9], np.int64)}),
    "transpose_nhwc": Case([_node("Transpose", ["x"], perm=[0, 2, 3, 1]),],
                           lambda x, p: x.permute(0, 2, 3, 1), (3, 2, 4)),
    "unsqueeze_squeeze": Case(
        [_node("Unsqueeze", ["x", "a"], "u"), _node("Mul", ["u", "u"], "uu"),
         _node("Squeeze", ["uu", "a"])],
        lambda x, p: x * x, (2, 3, 3), {"a": np.array([2], np.int64)}),
    "where_both_branches": Case(
        [_node("Greater", ["x", "z"], "cond"), _node("Mul", ["x", "x"], "sq"),
         _node("ReduceMean", ["x"], "m", axes=[2, 3], keepdims=1),
         _node("Where", ["cond", "sq", "m"])],
        lambda x, p: torch.where(x > 0, x * x, x.mean(dim=(2, 3), keepdim=True)), (2, 3, 3),
        {"z": np.float32(0)}),
    "cast_double_roundtrip": Case(
        [_node("Cast", ["x"], "d", to=TensorProto.DOUBLE), _node("Mul", ["d", "d"], "dd"),
         _node("Cast", ["dd"], to=TensorProto.FLOAT)], lambda x, p: x * x, (2, 3, 3)),
    "gather_repeated_indices": Case([_node("Gather", ["x", "i"], axis=1)],
                                    lambda x, p: x[:, [2, 0, 2]], (3, 2, 2),
                                    {"i": np.array([2, 0, 2], np.int64)}),
    "gather_scalar_last_axis": Case([_node("Gather", ["x", "i"], axis=-1)],
                                    lambda x, p: x[..., -1], (3, 2, 4),
                                    {"i": np.array(-1, np.int64)}),
    "reducesum_axes_input": Case([_node("ReduceSum", ["x", "ax"], keepdims=0)],
                                 lambda x, p: x.sum(dim=(1, 3)), (3, 4, 5),
                                 {"ax": np.array([1, 3], np.int64)}),
    "reducemax_attr": Case([_node("ReduceMax", ["x"], axes=[1], keepdims=0)],
                           lambda x, p: x.amax(dim=1), (3, 4, 5)),
    "reducemax_ties_split_opset18": Case(
        [_node("Concat", ["x", "x"], "xx", axis=1), _node("ReduceMax", ["xx", "ax"], keepdims=1)],
        lambda x, p: torch.cat([x, x], 1).amax(dim=1, keepdim=True), (3, 4, 4),
        {"ax": np.array([1], np.int64)}, opset=18),
    "matmul_batch_broadcast_const": Case([_node("MatMul", ["x", "w"])],
                                         lambda x, p: x @ p["w"], (2, 3, 4), {"w": _w(2, 4, 5)}),
    "matmul_batch_both_from_x": Case(
        [_node("Transpose", ["x"], "xt", perm=[0, 1, 3, 2]), _node("MatMul", ["x", "xt"])],
        lambda x, p: x @ x.transpose(-1, -2), (2, 3, 4)),
}


def _ort_vjp(case: Case, x: np.ndarray, cot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gm = build_vjp(_model(case), options=case.options)
    sess = ort.InferenceSession(gm.model.SerializeToString(), providers=["CPUExecutionProvider"])
    z, g = sess.run(list(gm.outputs), {"x": x, X_COTANGENT: cot})
    return z, g


def assert_close_per_sample(g: np.ndarray, ref: np.ndarray) -> None:
    g64, r64 = g.reshape(len(g), -1).astype(np.float64), ref.reshape(len(ref), -1)
    norms = np.linalg.norm(r64, axis=1)
    assert np.all(norms > 0), "reference gradient is zero: the case tests nothing"
    rel = np.linalg.norm(g64 - r64, axis=1) / norms
    cos = (g64 * r64).sum(axis=1) / (np.linalg.norm(g64, axis=1) * norms)
    assert rel.max() <= RTOL, f"relative error {rel.max():.2e}"
    assert cos.min() >= COS, f"cosine {cos.min():.8f}"


def _inputs(case: Case) -> tuple[np.ndarray, np.ndarray]:
    x = _tie_free((BATCH, *case.x_shape)) * 2 - 1  # (N, ...) distinct values in [-1, 1]
    if any(n.op_type in ("Div", "Sqrt", "Pow") for n in case.nodes):
        x = np.abs(x) + 0.5  # away from 0: denominators, sqrt and fractional powers
    params = _torch_params(case)
    with torch.no_grad():
        out = case.ref(torch.tensor(x, dtype=torch.float64), params).flatten(1)  # (N, K)
    cot = np.random.default_rng(7).normal(size=tuple(out.shape)).astype(np.float32)  # (N, K)
    return x, cot


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_rule_matches_torch_float64(name: str) -> None:
    case = CASES[name]
    x, cot = _inputs(case)
    z_ref, g_ref = _torch_vjp(case, x, cot)
    z, g = _ort_vjp(case, x, cot)
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    assert g.shape == x.shape
    assert_close_per_sample(g, g_ref)


@pytest.mark.parametrize("name", ["conv_stride2_asym_pads", "maxpool_overlap_pads",
                                  "avgpool_pads_exclude", "div_both_from_x", "gemm_both_from_x"],
                         ids=lambda n: n)
def test_float64_reference_matches_finite_differences(name: str) -> None:
    case = CASES[name]
    x, cot = _inputs(case)
    _, g_ref = _torch_vjp(case, x, cot)
    params = _torch_params(case)
    cot_t = torch.tensor(cot, dtype=torch.float64)
    h = 1e-6
    for seed in range(3):
        v = np.random.default_rng(seed).normal(size=x.shape)  # a random direction

        def f(t: float, v: np.ndarray = v) -> float:
            xt = torch.tensor(x + t * v, dtype=torch.float64)
            with torch.no_grad():
                return float((case.ref(xt, params).flatten(1) * cot_t).sum())

        numeric = (f(h) - f(-h)) / (2 * h)
        assert numeric == pytest.approx(float((g_ref * v).sum()), rel=1e-6, abs=1e-8)


def test_every_registered_rule_has_a_case() -> None:
    covered = {n.op_type for c in CASES.values() for n in c.nodes}
    assert set(supported_ops()) <= covered


@pytest.mark.parametrize("options", [GradOptions(), GradOptions(False, False)],
                         ids=["fast", "generic"])
def test_backward_kernels_follow_options(options: GradOptions) -> None:
    case = Case([_node("Conv", ["x", "w"], "y0", pads=[1, 1, 1, 1]),
                 _node("MaxPool", ["y0"], kernel_shape=[2, 2], strides=[2, 2])],
                lambda x, p: x, (16, 4, 4), {"w": _w(4, 16, 3, 3)})
    ops = {n.op_type for n in build_vjp(_model(case), options=options).model.graph.node}
    fast = options.maxunpool
    assert ("MaxUnpool" in ops) is fast and ("ScatterElements" in ops) is not fast
    assert ("ConvTranspose" in ops) is not fast


def test_constants_are_folded_and_shape_chains_kept() -> None:
    folded = build_vjp(_model(CASES["folded_constant_and_transpose"]))
    assert folded.info["folded_nodes"] == 3
    assert not {"Constant", "Transpose"} & {n.op_type for n in folded.model.graph.node}
    kept = build_vjp(_model(CASES["shape_chain_kept"])).model.graph.node
    assert {"Shape", "Gather", "Concat"} <= {n.op_type for n in kept}


def test_docs_list_the_registry() -> None:
    doc = Path(__file__).parents[2] / "docs" / "gradients.md"
    line = next(ln for ln in doc.read_text().splitlines() if ln.startswith("Supported ops:"))
    assert line.removeprefix("Supported ops:").strip().split(", ") == supported_ops()


def test_build_is_deterministic_across_processes() -> None:
    """Two interpreters with different string hashing build byte-identical gradient graphs (no
    set or dict order leaks into node names or order)."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib, sys; sys.path.insert(0, '.')\n"
            "from tests.unit.test_gradients import CASES, _model\n"
            "from qrdeploy.core.losses import Loss\n"
            "from qrdeploy.gradients.builder import build_loss_grad, build_vjp\n"
            "m = _model(CASES['relu_maxpool_premasked'])\n"
            "print(hashlib.sha256(build_vjp(m).model.SerializeToString()\n"
            "      + build_loss_grad(m, Loss.CW).model.SerializeToString()).hexdigest())")
    root = Path(__file__).resolve().parents[2]
    digests = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                              text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")}
    assert len(digests) == 1 and len(next(iter(digests))) == 64
    assert hashlib.sha256(b"").hexdigest() not in digests


def test_grad_output_named() -> None:
    gm = build_vjp(_model(CASES["relu"]))
    assert gm.outputs == ("logits", GRAD) and gm.inputs == ("x", X_COTANGENT)
