"""`harden --activations int8`: onnxruntime's QDQ quantization with calibrated uint8 activations
around qrdeploy's low-bit weight codes; and shapes that static inference leaves unknown, taken
from sample runs by the gradient preparation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.cli import main
from qrdeploy.errors import PassError
from qrdeploy.gradients.prepare import prepare
from qrdeploy.graphio.graph import layer_weight
from qrdeploy.graphio.twin import float_twin
from qrdeploy.hardening.encodings import Encoding
from qrdeploy.hardening.integer import IntegerActivations, images_digest
from qrdeploy.hardening.passes import (
    Recipe,
    WeightQuant,
    harden,
    harden_file,
    recipe_from_dict,
    recipes_of,
)
from qrdeploy.hardening.quant import quantize
from qrdeploy.model.kernels import kernel_summary
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.spectral.analysis import comparable, hardened_weight, match_layers
from tests.unit.onnx_builders import cnn, inputs, ort_logits

pytest.importorskip("onnxruntime.quantization")
CALIB = inputs(5, (40, 1, 8, 8))


def _int8(model: onnx.ModelProto, wq: WeightQuant, method: str = "minmax") -> onnx.ModelProto:
    out, _ = harden(model, [wq], activations=IntegerActivations(40, method, "test"),
                    calibration=CALIB)
    return out


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_int8_weights_hold_the_pass_codes(granularity: str) -> None:
    model = cnn(0)
    wq = WeightQuant(3, granularity)
    out, records = harden(model, [wq], activations=IntegerActivations(40, "minmax", "test"),
                          calibration=CALIB)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    src = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bits = json.loads({p.key: p.value for p in out.metadata_props}["qrdeploy.bits"])
    for r in records:
        axis = r.axis
        want = quantize(src[r.tensor], 3, axis).codes
        held = f"{r.tensor}_quantized"
        np.testing.assert_array_equal(inits[held], want.astype(np.int8))
        assert np.abs(inits[held]).max() <= 3 and bits[held] == 3 and r.encoding == "int8"
    (recipe,) = recipes_of(out)
    act = IntegerActivations(40, "minmax", "test")
    assert recipe.activations == replace(act, images_sha256=images_digest(CALIB, act))
    assert kernel_summary(out)["verdict"] == "integer"


def test_int8_is_deterministic_and_every_calibration_method_runs() -> None:
    wq = WeightQuant(3, "channel")
    a, b = _int8(cnn(0), wq), _int8(cnn(0), wq)
    assert a.SerializeToString() == b.SerializeToString()
    for method in ("percentile", "entropy"):
        assert _int8(cnn(0), wq, method).graph.node


def test_int8_names_are_compact_and_only_names_change() -> None:
    """The quantizer's long names become q<i> / n<i>; the float model's names (input, output,
    every layer's output, the weights) and the weight codes' initializers stay; the graph
    computes exactly what onnxruntime's own output did."""
    import copy

    from qrdeploy.hardening.integer import compact_names

    model = cnn(0)
    out = _int8(model, WeightQuant(3, "channel"))
    g = out.graph
    source = {t.name for t in model.graph.initializer}
    source |= {x for n in model.graph.node for x in (*n.input, *n.output)}
    source |= {v.name for v in (*model.graph.input, *model.graph.output)}
    names = {t.name for t in g.initializer} | {x for n in g.node for x in (*n.input, *n.output)}
    invented = {x for x in names if x and x not in source and not x.endswith("_quantized")}
    assert invented and all(x[0] == "q" and x[1:].isdigit() for x in invented)
    assert [v.name for v in g.input] == [v.name for v in model.graph.input]
    assert [v.name for v in g.output] == [v.name for v in model.graph.output]
    assert len(match_layers(model, comparable(out), in_order=True)) == 4  # lipschitz still pairs
    assert not any("QuantizeLinear" in x or x.endswith("_scale") for x in names | {
        n.name for n in g.node})
    assert not g.value_info  # the source had none; the quantizer's inferred shapes are dropped
    onnx.checker.check_model(out, full_check=True)
    # rename the compact graph back to long names: compacting it again gives the same bytes,
    # and the logits are bit-identical to those of the long-named graph
    long = copy.deepcopy(out)
    back = {x: f"{x}_a_long_name_as_onnxruntime_writes_them" for x in invented}
    source_nodes = {m.name for m in model.graph.node}
    for n in long.graph.node:
        n.input[:] = [back.get(x, x) for x in n.input]
        n.output[:] = [back.get(x, x) for x in n.output]
        if n.name not in source_nodes:
            n.name = f"{n.name}_QuantizeLinear_node"
    for t in long.graph.initializer:
        t.name = back.get(t.name, t.name)
    x = inputs(2, (7, 1, 8, 8))
    np.testing.assert_array_equal(ort_logits(long, x), ort_logits(out, x))
    assert len(long.SerializeToString()) > len(out.SerializeToString())
    compact_names(long, model, keep={t.name for t in g.initializer if t.name.endswith(
        "_quantized")})
    assert long.SerializeToString() == out.SerializeToString()


def test_int8_model_is_scored_on_its_integer_graph_with_bpda_gradients() -> None:
    m = OrtModel(_int8(cnn(0), WeightQuant(3, "channel")))
    assert m.bpda and str(m.info["gradient_form"]).startswith("BPDA (STE")
    x = inputs(1, (6, 1, 8, 8))
    _, g = m.vjp(x, np.ones((6, 10), np.float32))
    assert np.abs(g).sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"passes": [WeightQuant(3, quantizer="companding")]},
         "integer kernels, which need uniform codes; the companding quantizer gives a codebook"),
        ({"encoding": "int4"}, "drop --encoding int4"),
        ({"passes": []}, "no pass given"),
        ({"calibration": CALIB[:5]}, "--calibrate 40 needs that many calibration images"),
        ({"calibration": None}, "needs calibration images"),
        ({"calibration": np.zeros((40, 3, 8, 8), np.float32)},
         r"have shape \(3, 8, 8\), the model takes \(1, 8, 8\); pass --calibration-data"),
    ])
def test_refusals_are_one_line(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"passes": [WeightQuant(3)], "encoding": "float",
                               "calibration": CALIB, **kwargs}
    with pytest.raises(PassError, match=message) as info:
        harden(cnn(0), args["passes"], args["encoding"],  # type: ignore[arg-type]
               activations=IntegerActivations(40), calibration=args["calibration"])
    assert "\n" not in str(info.value)


def test_recipe_round_trip_and_bad_settings() -> None:
    r = recipe_from_dict({"encoding": "qdq", "passes": [{"kind": "quant", "bits": 3}],
                          "activations": {"kind": "int8", "samples": 10, "method": "entropy"}})
    assert r.activations == IntegerActivations(10, "entropy")
    assert recipe_from_dict({"passes": [], "activations": "float"}).activations is None
    with pytest.raises(PassError, match="calibration method must be one of"):
        IntegerActivations(10, "mse")
    with pytest.raises(PassError, match="--calibrate needs a number of samples >= 1"):
        IntegerActivations(0)


def test_cli_harden_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(cnn(0), src)
    np.savez(tmp_path / "c.npz", x=CALIB)
    out = tmp_path / "int8.onnx"
    assert main(["harden", str(src), "-o", str(out), "--bits", "3", "--granularity", "channel",
                 "--activations", "int8", "--calibrate", "30", "--calibration-data",
                 f"npz:{tmp_path / 'c.npz'}"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "int8" in printed and "analysis form" not in printed  # the graph to ship: no note
    assert "calibrating int8 activations: 30 images" in captured.err  # the slow step is said
    steps = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["qrdeploy.harden"])
    # an npz file is one set: the provenance names it without a split it does not have
    assert steps[-1]["activations"]["data"] == f"npz:{tmp_path / 'c.npz'}"
    assert main(["inspect", str(out)]) == 0
    assert "onnxruntime runs (integer kernels)" in capsys.readouterr().out
    assert main(["harden", str(src), "-o", str(out), "--bits", "3", "--quantizer",
                 "companding", "--activations", "int8", "--calibration-data",
                 f"npz:{tmp_path / 'c.npz'}", "--calibrate", "30"]) == 2  # options conflict
    assert "need uniform codes" in capsys.readouterr().err
    # the library refuses the same recipe, from the codes, where no option built it
    with pytest.raises(PassError, match="need uniform codes"):
        harden(cnn(0), [WeightQuant(3, quantizer="companding")],
               activations=IntegerActivations(30), calibration=CALIB)


@pytest.mark.parametrize("encoding", ["float", "qdq"])
def test_float_activations_say_they_are_the_analysis_form(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str) -> None:
    """A float-activation graph is not the one an edge team ships: harden says so, with the fix,
    and the library result carries the same note."""
    src = tmp_path / "m.onnx"
    onnx.save(cnn(0), src)
    out = tmp_path / "h.onnx"
    assert main(["harden", str(src), "-o", str(out), "--bits", "3", "--encoding", encoding]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "analysis form" in notes[0]
    assert "add --activations int8" in notes[0]
    assert ("dequantized on every run" in notes[0]) == (encoding == "qdq")
    assert main(["harden", str(src), "-o", str(out), "--bits", "3", "-q"]) == 0
    assert "note:" not in capsys.readouterr().out  # --quiet: only the final line
    result = harden_file(src, out, Recipe((WeightQuant(3),), Encoding(encoding)))
    assert result.notes == tuple(n.removeprefix("note: ") for n in notes)


def _legacy_reduce_mean() -> onnx.ModelProto:
    """What torch's legacy exporter makes of x.view(n, c, -1).mean over H, W after a transpose:
    a Reshape fed by a shape computed at run time (static inference cannot follow the Cast ->
    Mul -> Cast chain), a Transpose, then ReduceMean over axes (2, 3) with keepdims 0."""
    w = np.random.default_rng(0).normal(size=(6, 1, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sf", "one"], ["sm"]),
        helper.make_node("Cast", ["sm"], ["si"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["c", "si"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("ReduceMean", ["t"], ["logits"], axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "legacy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(1.0), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_shapes_static_inference_misses_come_from_sample_runs() -> None:
    model = _legacy_reduce_mean()
    prep = prepare(model)
    assert {"r", "t"} <= set(prep.observed_shapes)
    m = OrtModel(model)
    x = inputs(2, (3, 1, 4, 5))
    cot = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    z, g = m.vjp(x, cot)
    w = numpy_helper.to_array(model.graph.initializer[0]).reshape(6)
    np.testing.assert_allclose(z, x.mean(axis=(2, 3)).reshape(3, 1) * w, rtol=1e-5, atol=1e-6)
    want = np.broadcast_to((cot @ w / 20).reshape(3, 1, 1, 1), x.shape)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_nbits_encoding_holds_the_float_encodings_weights(trans_b: int) -> None:
    model = cnn(0, trans_b=trans_b, hidden=40)
    wq = WeightQuant(3, "channel")
    nb, records = harden(model, [wq], "nbits")
    fl, _ = harden(model, [wq], "float")
    forms = {r.op_type: r.encoding for r in records}
    assert forms == {"Conv": "qdq", "Gemm": "matmulnbits"}
    assert [n.op_type for n in nb.graph.node].count("MatMulNBits") == 2
    x = inputs(3, (16, 1, 8, 8))
    np.testing.assert_allclose(ort_logits(nb, x), ort_logits(fl, x), rtol=1e-5, atol=1e-5)
    twin = comparable(nb)  # weights read back through the twin: bit-identical to float's
    for r, h in match_layers(fl, twin, in_order=True):
        np.testing.assert_array_equal(hardened_weight(twin, r, h), layer_weight(fl, r))
    assert float_twin(nb)[1].rewritten["MatMulNBits"] == 2
    # inspect's rows: the file's op, container and initializer, and the bits recorded for it
    from qrdeploy.graphio.twin import stored_layers
    from qrdeploy.hardening.passes import describe_model

    rows = describe_model(float_twin(nb)[0], stored_layers(nb))["layers"]
    inits = {t.name for t in nb.graph.initializer}
    assert [(r["op"], r["bits"]) for r in rows] == [("Conv", 3)] * 2 + [("MatMulNBits", 3)] * 2
    assert all(r["weight"] in inits for r in rows)
    with pytest.raises(PassError, match="--encoding nbits holds at most 4 bits"):
        harden(model, [WeightQuant(5)], "nbits")


def test_torch_legacy_export_reshape_transpose_mean() -> None:
    """A real legacy-exporter graph (dynamic batch): Reshape fed by Shape/Gather/Mul/Div/Cast,
    Transpose, ReduceMean over (2, 3) with keepdims 0; the shapes come from sample runs and the
    gradient equals torch's."""
    import io
    import warnings

    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x))
            h = h.reshape(h.shape[0], 4, h.shape[2] * h.shape[3] // 8, 8).transpose(2, 3)
            return self.fc(h.mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.rand(2, 1, 8, 8), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    model = onnx.load_from_string(buf.getvalue())
    assert prepare(model).observed_shapes  # static inference left the Reshape output unknown
    x = inputs(4, (3, 1, 8, 8))
    _, g = OrtModel(model).vjp(x, np.ones((3, 3), np.float32))
    xt = torch.tensor(x, requires_grad=True)
    net(xt).sum().backward()
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_api_harden_int8(tmp_path: Path) -> None:
    import qrdeploy
    from qrdeploy.data.datasets import Dataset

    src = tmp_path / "m.onnx"
    onnx.save(cnn(0), src)
    data = Dataset("mine", "train", CALIB, None, 10)
    r = qrdeploy.harden(src, tmp_path / "i.onnx", bits=3, granularity="channel",
                        activations="int8", calibrate=20, calibration_data=data,
                        calibration_method="percentile")
    assert {x.encoding for x in r.records} == {"int8"}
    (recipe,) = recipes_of(onnx.load(tmp_path / "i.onnx"))
    act = IntegerActivations(20, "percentile", "mine:train")
    assert recipe.activations == replace(act, images_sha256=images_digest(CALIB, act))


def test_the_provenance_names_the_calibration_pixels_and_a_replay_checks_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An npz file is named by its path, which says nothing of its content: the provenance also
    records the sha256 of the calibration images used, and replaying the recipe on a file whose
    images changed says so (the activation scales, so the model, differ); on the same images
    the replay is silent and gives the same bytes."""
    import qrdeploy

    src = tmp_path / "m.onnx"
    onnx.save(cnn(0), src)
    data = tmp_path / "c.npz"
    np.savez(data, x=CALIB)
    first = qrdeploy.harden(src, tmp_path / "a.onnx", bits=3, activations="int8", calibrate=20,
                            calibration_data=f"npz:{data}")
    (recipe,) = recipes_of(onnx.load(first.path))
    assert recipe.activations is not None
    assert recipe.activations.images_sha256 == images_digest(CALIB, recipe.activations)
    assert images_digest(CALIB[::-1], recipe.activations) != recipe.activations.images_sha256
    with caplog.at_level("WARNING", logger="qrdeploy"):
        again = qrdeploy.harden(src, tmp_path / "b.onnx", recipe=recipe)
        assert again.path.read_bytes() == first.path.read_bytes()
        assert not [r for r in caplog.records if "calibration images differ" in r.getMessage()]
        np.savez(data, x=CALIB[::-1])  # the same path, other images
        qrdeploy.harden(src, tmp_path / "c.onnx", recipe=recipe)
    said = [r.getMessage() for r in caplog.records if "calibration images differ" in r.getMessage()]
    assert len(said) == 1 and f"npz:{data}" in said[0]
    # the new model records the images it was calibrated on
    (redone,) = recipes_of(onnx.load(tmp_path / "c.onnx"))
    assert redone.activations is not None
    assert redone.activations.images_sha256 == images_digest(CALIB[::-1], redone.activations)


def test_inspect_without_loadable_kernels(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A graph onnxruntime cannot load (an op of an unknown domain) is still inspected."""
    model = cnn(0)
    last = model.graph.node[-1]
    last.output[0] = "pre"
    model.graph.node.append(helper.make_node("Scale", ["pre"], [model.graph.output[0].name],
                                             domain="example.custom"))
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime kernels: unknown (onnxruntime cannot load the model" in out


# ------------------------------------------------------------------ calibration through a contract

CONTRACTS = ["dtype=uint8,range=0-255", "layout=nhwc",
             "range=0-255,mean=123.7/116.3/103.5,std=58.4/57.1/57.4"]


def _activation_scales(model: onnx.ModelProto) -> list[float]:
    """The scales of every activation QuantizeLinear, in graph order."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [float(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


@pytest.mark.parametrize("spec", CONTRACTS)
def test_model_input_is_what_the_wrapper_computes(spec: str) -> None:
    from qrdeploy.graphio.inputspec import InputSpec, model_input
    from tests.unit.inputspec_models import as_deployed, pixels

    s, p = InputSpec.parse(spec), pixels(6)
    got, want = model_input(s, p), as_deployed(s, p)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("spec", CONTRACTS)
def test_int8_calibration_reaches_the_model_through_its_input_spec(spec: str) -> None:
    """A model that takes uint8, NHWC or normalised input is calibrated on what it really sees:
    the activations behind its own input conversion get the scales the canonical model's get."""
    from qrdeploy.graphio.inputspec import InputSpec
    from tests.unit.inputspec_models import pixels, twin

    calib = pixels(40, seed=3)
    wq = WeightQuant(3, "channel")
    canonical, _ = harden(twin(InputSpec()), [wq], activations=IntegerActivations(
        40, "minmax", "test"), calibration=calib)
    deployed, _ = harden(twin(InputSpec.parse(spec)), [wq], activations=IntegerActivations(
        40, "minmax", "test", spec), calibration=calib)
    inner = _activation_scales(canonical)[1:]  # behind the input: the network's activations
    np.testing.assert_allclose(_activation_scales(deployed)[-len(inner):], inner, rtol=1e-4)
    (recipe,) = recipes_of(deployed)
    assert recipe.activations is not None
    assert InputSpec.parse(recipe.activations.input_spec) == InputSpec.parse(spec)


@pytest.mark.parametrize(("spec", "message"), [
    ("dtype=uint8,range=0-255", r"input 'in' is UINT8, the calibration images are FLOAT; pass "
                                r"--input-spec dtype=uint8,range=0-255"),
    ("layout=nhwc", r"the model takes \(6, 6, 3\); .*--input-spec .*layout=nhwc"),
])
def test_int8_calibration_without_the_input_spec_is_refused_in_one_line(spec: str,
                                                                       message: str) -> None:
    from qrdeploy.graphio.inputspec import InputSpec
    from tests.unit.inputspec_models import pixels, twin

    with pytest.raises(PassError, match=message) as err:
        harden(twin(InputSpec.parse(spec)), [WeightQuant(3, "channel")],
               activations=IntegerActivations(40, "minmax", "test"), calibration=pixels(40))
    assert "\n" not in str(err.value)


def test_cli_harden_int8_of_a_uint8_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    from qrdeploy.graphio.inputspec import InputSpec
    from tests.unit.inputspec_models import pixels, twin

    model = twin(InputSpec.parse("dtype=uint8,range=0-255"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                 ["N", 5]))
    onnx.save(model, tmp_path / "u8.onnx")
    np.savez(tmp_path / "d.npz", x=pixels(40), y=np.zeros(40, np.int64))
    argv = ["harden", str(tmp_path / "u8.onnx"), "-o", str(tmp_path / "i.onnx"), "--bits", "3",
            "--activations", "int8", "--calibrate", "40", "--calibration-data",
            f"npz:{tmp_path / 'd.npz'}", "-q"]
    assert main(argv) == 1
    assert "pass --input-spec dtype=uint8,range=0-255" in capsys.readouterr().err
    assert main([*argv, "--input-spec", "dtype=uint8,range=0-255"]) == 0
    assert kernel_summary(onnx.load(tmp_path / "i.onnx"))["verdict"] in ("integer", "mixed")


def _fixed_batch(model: onnx.ModelProto, n: int) -> onnx.ModelProto:
    for v in (model.graph.input[0], model.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_value = n  # replaces the symbolic "N"
    return model


def test_a_model_with_a_fixed_batch_calibrates_in_its_batch() -> None:
    """Edge exports often fix the batch at 1: calibration feeds it batches of that size (it sent
    50 and onnxruntime stopped on 'index: 0 Got: 50 Expected: 1')."""
    out, _ = harden(_fixed_batch(cnn(0), 1), [WeightQuant(3)],
                    activations=IntegerActivations(30), calibration=CALIB)
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert ort_logits(out, CALIB[:1]).shape == (1, 10)
    with pytest.raises(PassError, match="batches of exactly 4; --calibrate 30 is not a multiple "
                                        r"of it \(e.g. --calibrate 28\)"):
        harden(_fixed_batch(cnn(0), 4), [WeightQuant(3)], activations=IntegerActivations(30),
               calibration=CALIB)


def _activation_ranges(model: onnx.ModelProto) -> dict[str, float]:
    """Each per-tensor uint8 activation's representable range, scale * (255 - zero point)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) * (255 - int(inits[n.input[2]]))
            for n in model.graph.node
            if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1}


def test_entropy_calibration_clips_ranges_without_collapsing_accuracy(
        capsys: pytest.CaptureFixture[str]) -> None:
    """--calibration-method entropy is not min-max under another name (onnxruntime's defaults
    through quantize_static give its search one candidate, the min-max range): on the MNIST
    reference model every entropy range lies within the min-max one and some are narrower; and
    the zero spike of ReLU outputs does not drive it to the narrowest candidate (that cost 15
    points of clean accuracy). onnxruntime's calibration chatter stays off stdout."""
    from qrdeploy.data.datasets import load_dataset

    model = onnx.load(Path(__file__).parents[2] / "models" / "mnist-standard.onnx")
    calib = load_dataset("mnist-5k", "train", n=100).x
    test = load_dataset("mnist-5k", "test", n=500)
    built = {m: harden(model, [WeightQuant(3)], activations=IntegerActivations(100, m),
                       calibration=calib)[0] for m in ("minmax", "entropy")}
    assert capsys.readouterr().out == ""
    minmax, entropy = (_activation_ranges(built[m]) for m in ("minmax", "entropy"))
    assert minmax.keys() == entropy.keys() and len(minmax) >= 5
    assert all(entropy[k] <= minmax[k] * (1 + 1e-6) for k in minmax)
    assert sum(entropy[k] < 0.99 * minmax[k] for k in minmax) >= 2
    acc = {m: float((ort_logits(built[m], test.x).argmax(1) == test.y).mean()) for m in built}
    assert acc["entropy"] >= acc["minmax"] - 0.02, acc


def test_the_exports_accuracy_and_batchnorm_keys_do_not_describe_the_hardened_graph() -> None:
    """`qrdeploy export` writes the trained model's validation accuracy and whether BatchNorm was
    kept; a hardened graph keeps the accuracy as its source's and, when the int8 pass folds
    BatchNorm, says so."""
    from qrdeploy.graphio import graph as g

    model = g.set_metadata(cnn(0, bn=True), {"qrdeploy.val_accuracy": "0.9740",
                                             "qrdeploy.bn": "kept"})
    for kwargs in ({}, {"activations": IntegerActivations(30), "calibration": CALIB}):
        out, _ = harden(model, [WeightQuant(3)], **kwargs)  # type: ignore[arg-type]
        meta = g.get_metadata(out)
        assert "qrdeploy.val_accuracy" not in meta
        assert meta["qrdeploy.source_val_accuracy"] == "0.9740"
    assert meta["qrdeploy.bn"] == "folded by harden (qrdeploy.folded_batchnorm)"


def test_calibration_refusals_come_alone_and_before_the_slow_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Too few images: one line (not an -n warning that says it goes on, then the refusal); an
    all-constant set is refused (it calibrated every range to a point: 48.9 % for
    mnist-standard); a model that already runs integer kernels is refused before the images
    are loaded, naming the op (it said 'matches none of the 0 weight layers')."""
    src = tmp_path / "m.onnx"
    onnx.save(cnn(0), src)
    np.savez(tmp_path / "small.npz", x=CALIB[:20])
    np.savez(tmp_path / "zero.npz", x=np.zeros_like(CALIB))
    args = ["harden", str(src), "-o", str(tmp_path / "o.onnx"), "--bits", "3",
            "--activations", "int8", "--calibrate", "30", "--calibration-data"]
    assert main([*args, f"npz:{tmp_path / 'small.npz'}"]) == 1
    err = capsys.readouterr().err
    assert "--calibrate 30 needs that many calibration images, the data has 20" in err
    assert "-n 30" not in err and len(err.strip().splitlines()) == 2  # the step line, the error
    assert main([*args, f"npz:{tmp_path / 'zero.npz'}"]) == 1
    assert "the 30 calibration images are all one value (0)" in capsys.readouterr().err
    with pytest.raises(PassError, match="all one value"):
        harden(cnn(0), [WeightQuant(3)], activations=IntegerActivations(30),
               calibration=np.full_like(CALIB, 0.5))
    from onnxruntime.quantization import QuantFormat

    from tests.unit.onnx_builders import quantize_static

    qop = quantize_static(src, tmp_path / "qop.onnx", {"input": CALIB[:16]},
                          quant_format=QuantFormat.QOperator)
    assert main(["harden", str(tmp_path / "qop.onnx"), *args[2:],
                 f"npz:{tmp_path / 'small.npz'}"]) == 1
    err = capsys.readouterr().err
    assert "the model is already quantized (QLinearConv" in err and "harden the float" in err
    assert "calibrating" not in err and "needs that many" not in err  # refused first
    with pytest.raises(PassError, match="already quantized"):
        harden(qop, [WeightQuant(3)])
