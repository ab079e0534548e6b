"""Per-layer ‖W‖₂ / ‖ΔW‖₂ from ONNX graphs and the measured error amplification
(qrdeploy.spectral.analysis, `qrdeploy lipschitz`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from qrdeploy.cli import main
from qrdeploy.errors import GraphError
from qrdeploy.graphio import graph
from qrdeploy.hardening import quant
from qrdeploy.hardening.integer import IntegerActivations
from qrdeploy.hardening.passes import MuLawMap, Recipe, WeightQuant, harden
from qrdeploy.hardening.quant import Granularity, Quantizer
from qrdeploy.spectral.analysis import (
    AMPLIFICATION_NOTE,
    LipschitzConfig,
    conv_geometry,
    lipschitz_report,
    spectral,
)
from qrdeploy.spectral.render import plot_reports, render_csv, render_markdown
from tests.unit import onnx_builders as ob

QUANT_RECIPES = {
    "float": ([WeightQuant(3)], "float"),
    "qdq": ([WeightQuant(3)], "qdq"),
    "int4": ([WeightQuant(3)], "int4"),
    "codebook": ([WeightQuant(3, quantizer=Quantizer.COMPANDING)], "qdq"),
    "channel-qdq": ([WeightQuant(3, granularity=Granularity.CHANNEL)], "qdq"),
}


@pytest.fixture(scope="module")
def ref() -> onnx.ModelProto:
    return ob.cnn(0)


def _weights(model: onnx.ModelProto) -> list[np.ndarray]:
    return [graph.layer_weight(model, lyr) for lyr in graph.weight_layers(model)]


@pytest.mark.parametrize("name", list(QUANT_RECIPES))
def test_dw_is_numpys_norm_of_the_difference(ref: onnx.ModelProto, name: str) -> None:
    passes_, encoding = QUANT_RECIPES[name]
    hard, _ = harden(ref, passes_, encoding)
    report = lipschitz_report(ref, hard)
    for lyr, w, w_hat in zip(report.layers, _weights(ref), _weights(hard), strict=True):
        dw = (w_hat - w).reshape(w.shape[0], -1)
        assert lyr.dw.matrix.value == pytest.approx(np.linalg.norm(dw, 2), rel=1e-4)
        assert lyr.w.matrix.value == pytest.approx(np.linalg.norm(w.reshape(w.shape[0], -1), 2))
        assert lyr.dw_total is None and not lyr.mulaw
    assert report.recipe_source == "metadata"


def test_encodings_give_the_same_norms(ref: onnx.ModelProto) -> None:
    values = []
    for enc in ("float", "qdq", "int4"):
        hard, _ = harden(ref, [WeightQuant(3)], enc)
        values.append([(lyr.dw.matrix.value, lyr.dw.operator.value if lyr.dw.operator else 0.0)
                       for lyr in lipschitz_report(ref, hard).layers])
    np.testing.assert_allclose(values[1], values[0], rtol=1e-6)
    np.testing.assert_allclose(values[2], values[0], rtol=1e-6)


@pytest.mark.parametrize("rescale", [True, False], ids=["R", "U"])
def test_mulaw_splits_quantization_error_from_total_change(ref: onnx.ModelProto,
                                                           rescale: bool) -> None:
    hard, _ = harden(ref, [MuLawMap(255, rescale, "last:2"), WeightQuant(3)], "qdq")
    report = lipschitz_report(ref, hard)
    assert [lyr.mulaw for lyr in report.layers] == [False, False, True, True]
    for lyr, w, w_hat in zip(report.layers, _weights(ref), _weights(hard), strict=True):
        if not lyr.mulaw:
            assert lyr.dw_total is None
            continue
        s = np.float32(np.abs(w).max())
        w_prime = quant.mu_law(w / s, 255) * (s if rescale else 1)  # the paper's W'
        assert lyr.dw.matrix.value == pytest.approx(np.linalg.norm(w_hat - w_prime, 2), rel=1e-4)
        assert lyr.dw_total is not None
        assert lyr.dw_total.matrix.value == pytest.approx(np.linalg.norm(w_hat - w, 2), rel=1e-4)
        # the ratio stays in the mapped space: ‖ΔW‖/‖W′‖, not ‖ΔW‖/‖W‖
        assert lyr.w_prime is not None
        assert lyr.ratio == pytest.approx(np.linalg.norm(w_hat - w_prime, 2)
                                          / np.linalg.norm(w_prime, 2), rel=1e-4)


def test_recipe_in_memory_equals_file_path(ref: onnx.ModelProto, tmp_path: Path) -> None:
    recipe = Recipe((MuLawMap(255, layers="last:1"), WeightQuant(3)))
    hard, _ = harden(ref, recipe.passes, recipe.encoding)
    graph.save_model(hard, tmp_path / "hard.onnx")
    graph.save_model(ref, tmp_path / "ref.onnx")
    from_file = lipschitz_report(tmp_path / "ref.onnx", tmp_path / "hard.onnx")
    in_memory = lipschitz_report(ref, recipe=recipe)
    assert in_memory.recipe_source == "given"
    assert [lyr.to_json() for lyr in from_file.layers] == \
        [lyr.to_json() for lyr in in_memory.layers]


def test_conv_operator_norms_use_the_inferred_input_shape(ref: onnx.ModelProto) -> None:
    hard, _ = harden(ref, [WeightQuant(3)])
    report = lipschitz_report(ref, hard)
    conv1, conv2 = report.layers[:2]
    assert conv1.input_shape == (1, 8, 8) and conv2.input_shape == (4, 4, 4)  # after a 2x2 pool
    layers = graph.weight_layers(ref)
    w, w_hat = _weights(ref)[1], _weights(hard)[1]
    dense = spectral.conv_dense_matrix(w_hat - w, conv_geometry(layers[1], (4, 4)))
    assert conv2.dw.operator is not None and conv2.dw.fft_bound is not None
    assert conv2.dw.operator.value == pytest.approx(np.linalg.norm(dense, 2), rel=1e-4)
    assert conv2.dw.fft_bound >= conv2.dw.operator.value * (1 - 1e-6)


def test_options_switch_off_operator_norms(ref: onnx.ModelProto) -> None:
    hard, _ = harden(ref, [WeightQuant(3)])
    config = LipschitzConfig(operator_norms=False, fft_bound=False)
    for lyr in lipschitz_report(ref, hard, config=config).layers:
        assert lyr.dw.operator is None and lyr.dw.fft_bound is None


def test_amplification_first_layer_by_hand(ref: onnx.ModelProto) -> None:
    hard, _ = harden(ref, [WeightQuant(3)])
    x = ob.inputs(1, (12, 1, 8, 8))
    report = lipschitz_report(ref, hard, x, config=LipschitzConfig(batch_size=5))
    layer = graph.weight_layers(ref)[0]
    w, w_hat = _weights(ref)[0], _weights(hard)[0]
    bias = onnx.numpy_helper.to_array(graph.initializer_map(ref)["conv1.bias"])
    g = conv_geometry(layer, (8, 8))
    wx, dwx = spectral.conv_forward(x, w, g), spectral.conv_forward(x, w_hat - w, g)
    norm = lambda a: np.linalg.norm(a.reshape(len(a), -1), axis=1)  # noqa: E731
    local = norm(dwx) / norm(wx)
    propagated = norm(dwx) / norm(wx + bias[:, None, None])
    amp = report.layers[0].amplification
    assert amp is not None and amp.n == 12 and amp.local_mean is not None
    assert amp.local_mean == pytest.approx(local.mean(), rel=1e-4)
    assert amp.local_max == pytest.approx(local.max(), rel=1e-4)
    assert amp.propagated_mean == pytest.approx(propagated.mean(), rel=1e-3)
    assert amp.ratio == pytest.approx(amp.propagated_mean / amp.local_mean)
    assert all(lyr.amplification is not None for lyr in report.layers)


def test_untouched_layers_have_zero_error(ref: onnx.ModelProto) -> None:
    hard, _ = harden(ref, [WeightQuant(3, layers="last:1")])
    report = lipschitz_report(ref, hard, ob.inputs(2, (4, 1, 8, 8)))
    for lyr in report.layers[:3]:
        assert lyr.dw.matrix.value == 0.0 and lyr.ratio == 0.0
        assert lyr.amplification is not None and lyr.amplification.propagated_max == 0.0
    assert report.layers[3].dw.matrix.value > 0


@pytest.mark.parametrize("transpose", [False, True], ids=["plain", "behind-transpose"])
def test_matmul_layers(transpose: bool) -> None:
    ref = ob.mlp_matmul(0, transpose=transpose)
    hard, _ = harden(ref, [WeightQuant(2)], "qdq")
    report = lipschitz_report(ref, hard, ob.inputs(0, (6, 1, 8, 8)))
    for lyr, w, w_hat in zip(report.layers, _weights(ref), _weights(hard), strict=True):
        assert lyr.op_type == "MatMul"
        assert lyr.dw.matrix.value == pytest.approx(np.linalg.norm(w_hat - w, 2), rel=1e-6)
        assert lyr.amplification is not None and lyr.amplification.local_mean is not None


@pytest.mark.parametrize(("auto_pad", "stride"), [("SAME_UPPER", 2), ("SAME_LOWER", 2),
                                                  ("VALID", 1), ("SAME_UPPER", 1)])
def test_auto_pad_geometry_matches_onnxruntime(auto_pad: str, stride: int) -> None:
    b = ob.Builder(0)
    w = b.weight("c.weight", (3, 2, 4, 4))
    h = b.node("Conv", ["input", w], name="c", auto_pad=auto_pad, strides=[stride, stride])
    model = b.model(["N", 2, 7, 7], b.node("Flatten", [h]), 1)
    model.graph.output[0].type.tensor_type.shape.ClearField("dim")
    x = ob.inputs(0, (1, 2, 7, 7))
    from qrdeploy.core.runtime import make_session

    expected = make_session(model.SerializeToString()).run(None, {"input": x})[0]
    layer = graph.weight_layers(model)[0]
    got = spectral.conv_forward(x, _weights(model)[0], conv_geometry(layer, (7, 7)))
    np.testing.assert_allclose(got.reshape(1, -1), expected, rtol=1e-4, atol=1e-5)


def test_report_forms_are_reproducible(ref: onnx.ModelProto) -> None:
    hard, _ = harden(ref, [MuLawMap(255), WeightQuant(3)])
    a, b = lipschitz_report(ref, hard), lipschitz_report(ref, hard)
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)
    assert render_markdown(a) == render_markdown(b) and render_csv(a) == render_csv(b)
    rows = list(csv.DictReader(io.StringIO(render_csv(a))))
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc1", "fc2"]
    assert AMPLIFICATION_NOTE in render_markdown(a)
    assert a.to_json()["layers"][3]["dw_total"] is not None


def test_plot_writes_a_png(ref: onnx.ModelProto, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    reports = {f"{b}-bit": lipschitz_report(ref, recipe=Recipe((WeightQuant(b),)))
               for b in (2, 3)}
    path = plot_reports(reports, tmp_path / "dw.png", norm="operator", last=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_with_hardened_file(ref: onnx.ModelProto, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    hard, _ = harden(ref, [WeightQuant(3)], "int4")
    graph.save_model(ref, tmp_path / "ref.onnx")
    graph.save_model(hard, tmp_path / "hard.onnx")
    code = main(["lipschitz", str(tmp_path / "ref.onnx"), str(tmp_path / "hard.onnx"), "-q",
                 "-o", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")])
    assert code == 0
    assert "| conv1 |" in capsys.readouterr().out
    last = json.loads((tmp_path / "r.json").read_text())["layers"][-1]
    w, w_hat = _weights(ref)[-1], _weights(hard)[-1]
    assert last["dw"]["matrix"]["value"] == pytest.approx(np.linalg.norm(w_hat - w, 2), rel=1e-4)
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 5


def test_cli_bits_without_writing_a_model(ref: onnx.ModelProto, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    graph.save_model(ref, tmp_path / "ref.onnx")
    code = main(["lipschitz", str(tmp_path / "ref.onnx"), "--bits", "3", "--mulaw", "255",
                 "--json", "-q", "--no-fft-bound"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recipe_source"] == "given" and out["layers"][-1]["mulaw"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.onnx"]


def test_cli_data_from_npz(ref: onnx.ModelProto, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    graph.save_model(ref, tmp_path / "ref.onnx")
    np.savez(tmp_path / "d.npz", x=ob.inputs(0, (7, 1, 8, 8)), y=np.zeros(7, np.int64))
    code = main(["lipschitz", str(tmp_path / "ref.onnx"), "--bits", "3", "--json", "-q",
                 "--data", f"npz:{tmp_path / 'd.npz'}", "-n", "5"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["amplification"]["n"] == 5


def test_graph_output_helper_keeps_the_model_valid(ref: onnx.ModelProto) -> None:
    from qrdeploy.spectral.analysis import _with_outputs

    names = [n.output[0] for n in ref.graph.node if n.op_type == "Conv"]
    model = _with_outputs(ref, [*names, *names])
    assert [o.name for o in model.graph.output] == ["logits", *names]
    assert len(ref.graph.output) == 1  # the input model is not mutated


def test_conv_transpose_operator_norm_against_onnxruntime() -> None:
    ref = ob.conv_transpose_net(0)
    hard, _ = harden(ref, [WeightQuant(3)])
    report = lipschitz_report(ref, hard, ob.inputs(0, (3, 1, 4, 4)))
    up = report.layers[0]
    assert up.op_type == "ConvTranspose" and up.w.operator is not None
    # The explicit matrix of the ConvTranspose alone, column by column, from onnxruntime.
    from qrdeploy.core.runtime import make_session

    node = next(n for n in ref.graph.node if n.op_type == "ConvTranspose")
    single = helper.make_model(helper.make_graph(
        [node], "up", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
        [graph.initializer_map(ref)["up.weight"]]),
        opset_imports=[helper.make_opsetid("", 17)])
    basis = np.eye(16, dtype=np.float32).reshape(16, 1, 4, 4)
    cols = make_session(single.SerializeToString()).run(None, {"input": basis})[0]
    dense = cols.reshape(16, -1).T  # (n_out, n_in)
    assert up.w.operator.value == pytest.approx(np.linalg.norm(dense, 2), rel=1e-4)
    assert up.amplification is not None and up.amplification.local_mean is None


def test_symbolic_spatial_sizes_use_the_data(ref: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(ref)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"  # shape inference can no longer fix them
    hard, _ = harden(model, [WeightQuant(3)])
    without = lipschitz_report(model, hard)
    assert without.layers[0].dw.operator is None and "input shape" in without.layers[0].note
    with_data = lipschitz_report(model, hard, ob.inputs(0, (2, 1, 8, 8)))
    expected = lipschitz_report(ref, hard)
    for got, exp in zip(with_data.layers[:2], expected.layers[:2], strict=True):
        assert got.input_shape == exp.input_shape and got.dw.operator == exp.dw.operator


def test_two_unrelated_networks_are_flagged_and_a_quantization_is_not() -> None:
    ref = ob.cnn(seed=0)
    hard, _ = harden(ref, [WeightQuant(bits=3)])
    quantized = render_markdown(lipschitz_report(ref, hard))
    assert "**Warning**" not in quantized
    other = render_markdown(lipschitz_report(ref, ob.cnn(seed=1)))  # another initialisation
    assert "**Warning**: ‖ΔW‖/‖W‖ is at least 1 on every layer" in other
    assert "local: mean" not in other  # no data: the legend leaves out the measured columns


def test_identical_weights_are_flagged() -> None:
    """A quantizer that did nothing: ΔW = 0 on every layer is said, not shown as a clean bill."""
    ref = ob.cnn(seed=0)
    same = render_markdown(lipschitz_report(ref, ob.cnn(seed=0)))
    assert "**Warning**: ΔW is 0 on every layer" in same


def test_swapped_arguments_are_named() -> None:
    """The quantized model given as the reference, the float one as the hardened model."""
    ref = ob.cnn(seed=0)
    int8, _ = harden(ref, [WeightQuant(bits=3)], activations=IntegerActivations(8, "minmax", "t"),
                     calibration=ob.inputs(0, (8, 1, 8, 8)))
    with pytest.raises(GraphError, match=r"the arguments look swapped; pass the float model"):
        lipschitz_report(int8, ref)
    assert lipschitz_report(ref, int8).layers  # the right way round works


@pytest.mark.parametrize("encoding", ["float", "qdq", "int4"])
def test_swapped_weight_only_models_are_named(encoding: str) -> None:
    """A weight-only hardened model (float activations) given first: its recipe gives it away."""
    ref = ob.cnn(seed=0)
    hard, _ = harden(ref, [WeightQuant(bits=3)], encoding)
    with pytest.raises(GraphError, match=r"written by `qrdeploy harden`.*look swapped"):
        lipschitz_report(hard, ref)
    assert lipschitz_report(ref, hard).layers


def test_a_third_party_quantization_of_a_hardened_model_is_not_called_swapped() -> None:
    """A conversion pipeline: qrdeploy's float-encoded model, then another tool quantizes it
    (here: the same codes behind DequantizeLinear, without qrdeploy's metadata). Comparing the
    two is the right way round."""
    base, _ = harden(ob.cnn(seed=0), [WeightQuant(bits=3)], "float")
    other, _ = harden(ob.cnn(seed=0), [WeightQuant(bits=3)], "qdq")
    del other.metadata_props[:]
    assert lipschitz_report(base, other).layers


def test_layers_another_tool_reordered_are_matched_by_name(tmp_path: Path) -> None:
    """Two independent convolutions of one shape, quantized by onnxruntime (QOperator nodes
    named '<name>_quant'), then written in the other order: the pairs follow the names, so the
    norms are those of the file in the original order (graph order paired a with b: ‖ΔW‖ of
    the size of a weight)."""
    ortq = pytest.importorskip("onnxruntime.quantization")
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"wa": rng.normal(0, 0.3, (4, 1, 3, 3)), "wb": rng.normal(0, 3.0, (4, 1, 3, 3)),
             "fc": rng.normal(0, 0.1, (10, 4 * 8 * 8))}
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="/a/Conv", pads=[1] * 4),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="/b/Conv", pads=[1] * 4),
             helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], name="/fc/Gemm", transB=1)]
    g = helper.make_graph(nodes, "branch",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                          [numpy_helper.from_array(v.astype(np.float32), k)
                           for k, v in inits.items()])
    ref = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(ref, tmp_path / "f.onnx")
    x = rng.uniform(size=(16, 1, 8, 8)).astype(np.float32)
    q = ob.quantize_static(tmp_path / "f.onnx", tmp_path / "q.onnx", {"x": x},
                           quant_format=ortq.QuantFormat.QOperator)
    convs = [i for i, n in enumerate(q.graph.node) if n.op_type == "QLinearConv"]
    assert [q.graph.node[i].name for i in convs] == ["/a/Conv_quant", "/b/Conv_quant"]
    swapped = onnx.ModelProto()
    swapped.CopyFrom(q)
    i, j = convs
    a, b = onnx.NodeProto(), onnx.NodeProto()
    a.CopyFrom(q.graph.node[i])
    b.CopyFrom(q.graph.node[j])
    swapped.graph.node[i].CopyFrom(b)
    swapped.graph.node[j].CopyFrom(a)
    onnx.checker.check_model(swapped)
    plain, moved = lipschitz_report(ref, q), lipschitz_report(ref, swapped)
    assert [lyr.node for lyr in moved.layers] == ["/a/Conv", "/b/Conv", "/fc/Gemm"]
    assert [lyr.ratio for lyr in moved.layers] == [lyr.ratio for lyr in plain.layers]
    assert max(lyr.ratio for lyr in moved.layers if lyr.ratio is not None) < 0.05
