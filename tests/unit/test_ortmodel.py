"""OrtModel: the protocol on onnxruntime, batching, session reuse, recorded settings, softmax cut,
opset normalisation. Tiny models built with onnx.helper; no torch needed."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.core.losses import Loss, loss_value_and_cotangent
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.gradients.builder import supported_ops
from qrdeploy.model.ortmodel import OrtModel
from tests.unit.onnx_builders import quantize_static

K = 5


def tiny(opset: int = 17, head: str | None = None, static_batch: bool = False) -> onnx.ModelProto:
    """x (N, 2, 4, 4) -> Conv 3x3 -> Relu -> MaxPool 2 -> Flatten -> Gemm -> logits (N, 5)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (3, 2, 3, 3)).astype(np.float32)
    fc = rng.normal(0, 0.5, (K, 12)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["z"], transB=1)]
    out = "z"
    if head:
        nodes.append(helper.make_node(head, ["z"], ["prob"], axis=1))
        out = "prob"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 if static_batch else "N", 2, 4,
                                                               4])
    graph = helper.make_graph(nodes, "tiny", [x],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(n: int = 7) -> np.ndarray:
    return np.random.default_rng(1).random((n, 2, 4, 4)).astype(np.float32)  # (N, C, H, W)


def test_num_classes_and_info_recorded() -> None:
    om = OrtModel(tiny(), SessionConfig("cpu", threads=1), batch_size=4)
    assert om.num_classes == K
    assert om.info["providers"] == ["CPUExecutionProvider"]
    assert om.info["threads_requested"] == 1 and om.info["intra_op_threads"] == 1
    assert om.info["batch_size"] == 4 and om.info["softmax_cut"] is None


@pytest.mark.parametrize("batch_size", [1, 3, 100], ids=["b1", "b3", "b100"])
def test_batching_gives_the_same_arrays(batch_size: int) -> None:
    x = _x()
    y = np.arange(len(x)) % K
    ref = OrtModel(tiny(), batch_size=1000)
    om = OrtModel(tiny(), batch_size=batch_size)
    np.testing.assert_array_equal(om.logits(x), ref.logits(x))
    for a, b in zip(om.loss_and_grad(x, y, Loss.CW), ref.loss_and_grad(x, y, Loss.CW),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert om.logits(x).shape == (len(x), K)


def test_gradient_sessions_are_built_once() -> None:
    om = OrtModel(tiny())
    x = _x(2)
    om.vjp(x, np.ones((2, K), np.float32))
    first = om._grads["vjp"][1]
    om.vjp(x, np.ones((2, K), np.float32))
    assert om._grads["vjp"][1] is first
    om.loss_and_grad(x, np.array([0, 1]), Loss.CE)
    assert set(om._grads) == {"vjp", "ce"}


def test_vjp_with_loss_cotangent_equals_fused_loss() -> None:
    om = OrtModel(tiny())
    x, y = _x(), np.arange(7) % K
    for loss in Loss:
        z, value, g = om.loss_and_grad(x, y, loss, 2.0)
        ref_value, cot = loss_value_and_cotangent(z, y, loss, 2.0)
        _, g_vjp = om.vjp(x, cot.astype(np.float32))
        np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, g_vjp, rtol=1e-4, atol=1e-6)


def test_scalar_temperature_equals_per_sample() -> None:
    om = OrtModel(tiny())
    x, y = _x(3), np.array([0, 1, 2])
    a = om.loss_and_grad(x, y, Loss.CE_T, 4.0)
    b = om.loss_and_grad(x, y, Loss.CE_T, np.full(3, 4.0))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("head", ["Softmax", "LogSoftmax"], ids=["softmax", "logsoftmax"])
def test_trailing_softmax_is_cut_and_reported(head: str) -> None:
    om, plain = OrtModel(tiny(head=head)), OrtModel(tiny())
    assert om.info["softmax_cut"] == head
    np.testing.assert_array_equal(om.logits(_x()), plain.logits(_x()))


def test_a_softmax_quantized_after_is_cut_with_its_quantization() -> None:
    """Softmax -> QuantizeLinear -> DequantizeLinear at the output (a quantized model's
    probabilities on a 1/255 grid): the gradient graph ends at the logits before the softmax,
    so its CE gradient is the plain model's; scoring stays the file's quantized probabilities."""
    model = tiny(head="Softmax")
    scale = numpy_helper.from_array(np.array(1 / 255, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "zp")
    model.graph.initializer.extend([scale, zero])
    model.graph.node.extend([helper.make_node("QuantizeLinear", ["prob", "s", "zp"], ["q"]),
                             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"])])
    model.graph.output[0].name = "dq"
    om, plain = OrtModel(model), OrtModel(tiny())
    assert om.info["softmax_cut"] == "Softmax, then quantized"
    x, y = _x(), np.arange(7) % K
    probs = om.logits(x)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.02)  # the file's output, scored
    np.testing.assert_allclose(probs * 255, np.round(probs * 255), atol=1e-4)  # on the grid
    np.testing.assert_allclose(om.loss_and_grad(x, y, Loss.CE)[2],
                               plain.loss_and_grad(x, y, Loss.CE)[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [13, 17, 21], ids=["op13", "op17", "op21"])
def test_opsets_are_normalised_into_range(opset: int) -> None:
    om = OrtModel(tiny(opset))
    assert om.info["source_opset"] == opset
    assert om.info["opset"] == min(max(opset, 16), 21)
    _, g = om.vjp(_x(2), np.ones((2, K), np.float32))
    assert np.abs(g).sum() > 0


def test_static_batch_becomes_dynamic() -> None:
    om = OrtModel(tiny(static_batch=True))
    assert om.logits(_x(5)).shape == (5, K)


@pytest.mark.parametrize("fixed", [1, 4])
def test_a_fixed_batch_deployed_graph_is_scored_in_its_batch(fixed: int) -> None:
    """gradients=False runs the graph as it ships: a fixed batch (1 for many edge exports) gets
    batches of that size, the last one filled up and cut, and the same logits as a dynamic
    graph (onnxruntime refused 'index: 0 Got: 7 Expected: 1' before)."""
    model = tiny()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = fixed
    om = OrtModel(model, gradients=False)
    assert om.fixed_batch == fixed
    x = _x(7)
    np.testing.assert_allclose(om.logits(x), OrtModel(tiny(), gradients=False).logits(x),
                               rtol=1e-6, atol=1e-6)


def test_onnxruntime_errors_keep_the_details_their_first_line_announces() -> None:
    from qrdeploy.errors import first_line

    text = ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for "
            "the following indices\n index: 0 Got: 7 Expected: 1\n Please fix the model.")
    assert first_line(RuntimeError(text)).endswith(
        "following indices index: 0 Got: 7 Expected: 1 Please fix the model.")
    assert first_line(RuntimeError("one\ntwo")) == "one"
    assert first_line(RuntimeError("")) == "RuntimeError"


def test_supported_ops_lists_the_issue_rules() -> None:
    assert set(supported_ops()) >= {
        "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "MaxPool",
        "AveragePool", "GlobalAveragePool", "ReduceMean", "BatchNormalization", "Flatten",
        "Reshape", "Pad", "Identity", "Dropout"}


def test_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, qrdeploy.model.ortmodel, qrdeploy.gradients.builder; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_satisfies_the_differentiable_protocol() -> None:
    from qrdeploy.model import protocol as models
    om = OrtModel(tiny())
    assert isinstance(om, models.Classifier) and isinstance(om, models.Differentiable)


def test_deployed_graph_is_what_predict_and_latency_run() -> None:
    """gradients=False never prepares: the deployed graph (here with its softmax) runs as is;
    the default runs the prepared form for logits, and both agree on the prediction."""
    x = np.random.default_rng(1).random((6, 2, 4, 4), dtype=np.float32)
    deployed = OrtModel(tiny(head="Softmax"), gradients=False)
    prepared = OrtModel(tiny(head="Softmax"))
    assert deployed.prepared is None and not deployed.differentiable
    np.testing.assert_allclose(deployed.logits(x).sum(axis=1), 1.0, rtol=1e-5)  # probabilities
    assert prepared.differentiable and prepared.info["softmax_cut"] == "Softmax"
    np.testing.assert_array_equal(deployed.predict(x), prepared.predict(x))
    assert deployed.time_run(x) > 0 and prepared.time_run(x) > 0
    assert OrtModel(tiny(static_batch=True), gradients=False).fixed_batch == 1
    assert deployed.fixed_batch is None


def test_a_graph_that_cannot_be_prepared_still_predicts_and_says_why_no_gradients(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from qrdeploy.errors import GraphError
    from qrdeploy.model import ortmodel

    def refuse(model: onnx.ModelProto, shape: object = None, activations: str = "ste") -> None:
        raise GraphError("shape inference failed on the prepared model: an example reason")

    monkeypatch.setattr(ortmodel, "prepare", refuse)
    m = OrtModel(tiny())
    x = np.zeros((2, 2, 4, 4), np.float32)
    assert m.predict(x).shape == (2,) and not m.differentiable
    assert "unavailable: shape inference failed" in str(m.info["gradients"])
    with pytest.raises(GraphError, match="white-box gradients are not available for this graph: "
                                         "shape inference failed"):
        m.vjp(x, np.zeros((2, K), np.float32))


def test_a_qoperator_model_with_a_quantized_softmax_is_attackable(tmp_path: Any) -> None:
    """onnxruntime's QOperator quantization turns a trailing Softmax into com.microsoft
    QLinearSoftmax: the twin dequantizes it to a Softmax (cut with its quantization), so the
    model gets BPDA gradients instead of an invalid twin."""
    from pathlib import Path

    ortq = pytest.importorskip("onnxruntime.quantization")
    root = Path(tmp_path)
    onnx.save(tiny(head="Softmax"), root / "f.onnx")
    x = _x(32)
    q = quantize_static(root / "f.onnx", root / "q.onnx", {"x": x},
                        quant_format=ortq.QuantFormat.QOperator)
    assert "QLinearSoftmax" in {n.op_type for n in q.graph.node}
    om = OrtModel(q)
    assert om.bpda and om.info["softmax_cut"] == "Softmax, then quantized"
    _, _, g = om.loss_and_grad(x, np.arange(32) % K, Loss.CE)
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    assert om.activation_twin() is not None
