"""BatchNormalization folded into the convolution before it: the graph function, `harden
--activations int8` (which folds, keeping the weights' B-bit codes), and the Lipschitz analysis,
which compares a folded model with its unfolded reference like with like."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qrdeploy.errors import GraphError
from qrdeploy.graphio.fold import batchnorm_count, fold_batchnorm
from qrdeploy.graphio.graph import layer_weight, weight_layers
from qrdeploy.hardening.integer import IntegerActivations
from qrdeploy.hardening.passes import WeightQuant, describe_model, harden
from qrdeploy.hardening.quant import quantize
from qrdeploy.spectral.analysis import FOLDED_NOTE, comparable, lipschitz_report
from tests.unit.onnx_builders import cnn, inputs, ort_logits, quantize_static

CALIB = inputs(5, (40, 1, 8, 8))
SCALE = np.array([1.3, -0.7, 0.9, 1.1], np.float32)  # one negative channel: codes flip sign


def _bn_model(scale: np.ndarray = SCALE, bias: bool = True) -> onnx.ModelProto:
    model = cnn(0, bn=True)
    inits = {t.name: t for t in model.graph.initializer}
    inits["bn1.scale"].CopyFrom(numpy_helper.from_array(scale, "bn1.scale"))
    if not bias:
        conv = next(n for n in model.graph.node if n.name == "conv1")
        del conv.input[2]
        keep = [t for t in model.graph.initializer if t.name != "conv1.bias"]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return model


def _factor(model: onnx.ModelProto) -> np.ndarray:
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    return (p["bn1.scale"] / np.sqrt(p["bn1.var"] + np.float64(np.float32(1e-5)))
            ).astype(np.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_computes_what_conv_then_batchnorm_computed(bias: bool) -> None:
    model = _bn_model(bias=bias)
    folded, folds = fold_batchnorm(model)
    assert batchnorm_count(model) == 1 and batchnorm_count(folded) == 0
    assert [(f.conv, f.weight, f.batchnorm) for f in folds] == [("conv1", "conv1.weight", "bn1")]
    np.testing.assert_array_equal(folds[0].factor, _factor(model))
    conv = next(n for n in folded.graph.node if n.name == "conv1")
    assert len(conv.input) == 3 and conv.input[2]
    onnx.checker.check_model(folded)
    x = inputs(1, (16, 1, 8, 8))
    np.testing.assert_allclose(ort_logits(folded, x), ort_logits(model, x), rtol=1e-5,
                               atol=1e-5)
    again, _ = fold_batchnorm(model)
    assert again.SerializeToString() == folded.SerializeToString()  # deterministic


def test_pairs_that_cannot_fold_stay() -> None:
    zero = _bn_model(np.array([1.0, 0.0, 1.0, 1.0], np.float32))  # a channel would vanish
    assert fold_batchnorm(zero)[1] == [] and batchnorm_count(fold_batchnorm(zero)[0]) == 1
    model = _bn_model()
    conv = next(n for n in model.graph.node if n.name == "conv1")
    model.graph.node.append(helper.make_node("Identity", [conv.output[0]], ["peek"]))
    model.graph.output.append(helper.make_tensor_value_info("peek", onnx.TensorProto.FLOAT, None))
    folded, folds = fold_batchnorm(model)  # the conv's output is read twice
    assert folds == [] and batchnorm_count(folded) == 1
    refused, folds = fold_batchnorm(_bn_model(), accept=lambda weight, factor: False)
    assert folds == [] and batchnorm_count(refused) == 1


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_int8_harden_folds_batchnorm_and_keeps_the_codes(granularity: str) -> None:
    model = _bn_model()
    out, _ = harden(model, [WeightQuant(3, granularity)],
                    activations=IntegerActivations(40, "minmax", "test"), calibration=CALIB)
    assert batchnorm_count(out) == 0
    meta = {p.key: p.value for p in out.metadata_props}
    assert json.loads(meta["qrdeploy.folded_batchnorm"]) == [{"conv": "conv1",
                                                                "batchnorm": "bn1"}]
    shown = {r["node"]: r["folded_bn"] for r in describe_model(out)["layers"]}
    assert shown == {"conv1": True, "conv2": False, "fc1": False, "fc2": False}
    w = numpy_helper.to_array(next(t for t in model.graph.initializer
                                   if t.name == "conv1.weight"))
    q = quantize(w, 3, None if granularity == "tensor" else 0)
    a = _factor(model)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    codes = inits["conv1.weight_quantized"]
    sign = np.where(a < 0, -1, 1).astype(np.int8).reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(codes, q.codes.astype(np.int8) * sign)
    twin = comparable(out)
    conv1 = next(lyr for lyr in weight_layers(twin) if lyr.op_type == "Conv")
    np.testing.assert_allclose(layer_weight(twin, conv1), q.values * a.reshape(-1, 1, 1, 1),
                               rtol=1e-6, atol=1e-7)


def _norm2(w: np.ndarray) -> float:
    return float(np.linalg.svd(w.reshape(w.shape[0], -1).astype(np.float64),
                               compute_uv=False)[0])


def test_lipschitz_compares_a_folded_int8_model_like_with_like() -> None:
    model = _bn_model()
    out, _ = harden(model, [WeightQuant(3, "channel")],
                    activations=IntegerActivations(40, "minmax", "test"), calibration=CALIB)
    report = lipschitz_report(model, out, CALIB[:8])
    layer = report.layers[0]
    w = numpy_helper.to_array(next(t for t in model.graph.initializer
                                   if t.name == "conv1.weight"))
    a = _factor(model).reshape(-1, 1, 1, 1)
    q = quantize(w, 3, 0)
    assert FOLDED_NOTE in layer.note and FOLDED_NOTE not in report.layers[1].note
    assert layer.w.matrix.value == pytest.approx(_norm2(w * a), rel=1e-4)
    assert layer.dw.matrix.value == pytest.approx(_norm2((q.values - w) * a), rel=1e-4)
    assert layer.amplification is not None and layer.amplification.local_mean < 0.5


def test_lipschitz_on_onnxruntime_preprocessed_quantization(tmp_path: Path) -> None:
    """onnxruntime's recommended flow (quant_pre_process folds BatchNorm, then quantize_static):
    every layer's relative error stays at 8-bit size, not the BatchNorm factor's."""
    ortq = pytest.importorskip("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = _bn_model()
    src, pre, dst = tmp_path / "m.onnx", tmp_path / "pre.onnx", tmp_path / "q.onnx"
    onnx.save_model(model, src)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    assert batchnorm_count(onnx.load_model(pre)) == 0

    quantize_static(pre, dst, {"input": CALIB}, quant_format=ortq.QuantFormat.QDQ,
                    per_channel=True, activation_type=ortq.QuantType.QUInt8,
                    weight_type=ortq.QuantType.QInt8)
    report = lipschitz_report(model, onnx.load_model(dst))
    assert len(report.layers) == 4 and FOLDED_NOTE in report.layers[0].note
    assert max(lyr.ratio for lyr in report.layers if lyr.ratio is not None) < 0.05


def _behind_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as a legacy export without constant folding writes it: every BatchNorm
    parameter reaches the node through an Identity (the bias through an Identity of an
    Identity)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    extra = []
    for k in range(1, 5):
        name = bn.input[k]
        extra.append(helper.make_node("Identity", [name], [f"{name}_id"]))
        bn.input[k] = f"{name}_id"
    extra.append(helper.make_node("Identity", [bn.input[2]], [f"{bn.input[2]}2"]))
    bn.input[2] = f"{bn.input[2]}2"
    nodes = [*extra, *out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def test_lipschitz_folds_batchnorm_parameters_behind_identity_nodes() -> None:
    """The same reference with its BatchNorm parameters behind Identity nodes gives the same
    per-layer norms against the folded int8 model (it was compared unfolded, ΔW holding the
    BatchNorm factor); a second model that folded more than the reference can is refused."""
    model = _bn_model()
    out, _ = harden(model, [WeightQuant(3, "channel")],
                    activations=IntegerActivations(40, "minmax", "test"), calibration=CALIB)
    legacy = _behind_identities(model)
    assert fold_batchnorm(legacy)[1] == []  # as exported, the pair does not fold
    np.testing.assert_allclose(ort_logits(legacy, CALIB[:4]), ort_logits(model, CALIB[:4]),
                               rtol=1e-6, atol=1e-6)
    plain, behind = lipschitz_report(model, out), lipschitz_report(legacy, out)
    assert FOLDED_NOTE in behind.layers[0].note
    assert [lyr.ratio for lyr in behind.layers] == [lyr.ratio for lyr in plain.layers]
    zero = _bn_model(np.array([1.0, 0.0, 1.0, 1.0], np.float32))  # cannot fold
    with pytest.raises(GraphError, match="fold the reference the way the second model was"):
        lipschitz_report(zero, out)
