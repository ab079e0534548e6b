"""InputSpec parsing and wrap_model: a wrapped deployed model (normalised, 0-255, NHWC, uint8)
gives the logits of its pixel-space twin and the gradient of torch float64 autograd w.r.t. the
[0, 1] pixels; one input and one output are chosen; a static batch of 1 is made dynamic when
safe; float16 models are upcast on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.graphio.inputspec import (
    PIXELS,
    DType,
    InputContract,
    InputSpec,
    Layout,
    Range,
    one_by_one,
    wrap_model,
)
from qrdeploy.model.ortmodel import OrtModel
from tests.unit.inputspec_models import (
    WEIGHTS,
    K,
    as_deployed,
    base_nodes,
    pixels,
    torch_base,
    twin,
)
from tests.unit.test_gradients import assert_close_per_sample

IMAGENET = "mean=0.485/0.456/0.406,std=0.229/0.224/0.225"
SPECS = {
    "pixels_identity": "",
    "torchvision_mean_std": f"range=0-1,{IMAGENET}",
    "caffe_0_255_mean": "range=0-255,mean=123.68/116.78/103.94",
    "nhwc": "layout=nhwc",
    "nhwc_0_255_mean_std": "range=0-255,mean=120/115/100,std=58/57/57,layout=NHWC",
    "uint8_nhwc": "range=0-255,layout=nhwc,dtype=uint8",
    "uint8_nchw": "range=0-255,dtype=uint8",
}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(("text", "expected"), [
    ("", InputSpec()),
    (f"range=0-1,{IMAGENET}", InputSpec(Range.UNIT, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    ("range=0-255, layout=NHWC ,dtype=uint8", InputSpec(Range.BYTE, layout=Layout.NHWC,
                                                        dtype=DType.UINT8)),
    ("std=255", InputSpec(std=(255.0,))),
], ids=["empty", "torchvision", "uint8_nhwc_spaces_case", "std_only"])
def test_parse(text: str, expected: InputSpec) -> None:
    spec = InputSpec.parse(text)
    assert spec == expected
    assert InputSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("name", list(SPECS), ids=list(SPECS))
def test_wrapped_gives_pixel_twin_logits(name: str) -> None:
    spec = InputSpec.parse(SPECS[name])
    p = pixels()
    deployed = twin(spec)
    ref = _run(twin(InputSpec()), p)  # (N, K)
    # the twin is what it claims: fed the user's preprocessing, it gives the pixel logits
    np.testing.assert_allclose(_run(deployed, as_deployed(spec, p)), ref, rtol=1e-4, atol=1e-4)
    wrapped = wrap_model(deployed, spec)
    assert [i.name for i in wrapped.graph.input] == [PIXELS]
    np.testing.assert_allclose(_run(wrapped, p), ref, rtol=1e-4, atol=1e-4)
    assert not one_by_one(wrapped)


@pytest.mark.parametrize("name", list(SPECS), ids=list(SPECS))
def test_gradient_through_wrapped_matches_torch(name: str) -> None:
    torch = pytest.importorskip("torch")
    spec = InputSpec.parse(SPECS[name])
    p = pixels(seed=1)
    cot = np.random.default_rng(2).normal(size=(len(p), 5)).astype(np.float32)  # (N, K)
    xt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    (torch_base(torch, xt) * torch.tensor(cot, dtype=torch.float64)).sum().backward()
    _, g = OrtModel(wrap_model(twin(spec), spec)).vjp(p, cot)
    assert g.shape == p.shape
    assert_close_per_sample(g, xt.grad.numpy())


@pytest.mark.parametrize("name", ["uint8_nhwc", "uint8_nchw"])
def test_uint8_moved_before_its_cast(name: str) -> None:
    """A uint8 input transposed / passed through Identity before its Cast (as converters from NHWC
    runtimes write it) is wrapped: the same logits as the pixel twin and torch's gradient."""
    torch = pytest.importorskip("torch")
    spec = InputSpec.parse(SPECS[name])
    deployed = twin(spec, moves_first=True)
    ops = [n.op_type for n in deployed.graph.node]
    assert ops.index("Cast") > ops.index("Identity") >= 0  # the uint8 tensor moves first
    p = pixels(seed=3)
    ref = _run(twin(InputSpec()), p)  # (N, K)
    np.testing.assert_allclose(_run(deployed, as_deployed(spec, p)), ref, rtol=1e-4, atol=1e-4)
    wrapped = wrap_model(deployed, spec)
    np.testing.assert_allclose(_run(wrapped, p), ref, rtol=1e-4, atol=1e-4)
    cot = np.random.default_rng(5).normal(size=(len(p), 5)).astype(np.float32)  # (N, K)
    xt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    (torch_base(torch, xt) * torch.tensor(cot, dtype=torch.float64)).sum().backward()
    _, g = OrtModel(wrapped).vjp(p, cot)
    assert_close_per_sample(g, xt.grad.numpy())


def _fully_quantized(tmp_path: Path, fmt: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The pixel twin quantized by onnxruntime (QDQ or QOperator `fmt`, uint8 activations, scale
    1/255 at the input), and the same graph as a fully quantized model ships it: a uint8 NHWC
    input, transposed, then read as codes by what read the input's QuantizeLinear (a
    DequantizeLinear, or QLinearConv)."""
    from onnxruntime.quantization import QuantFormat, QuantType

    from tests.unit.onnx_builders import quantize_static, uint8_input

    (tmp_path / "f.onnx").write_bytes(twin(InputSpec()).SerializeToString())
    qdq = quantize_static(tmp_path / "f.onnx", tmp_path / "q.onnx", {"in": pixels(16, seed=7)},
                          per_channel=True, quant_format=QuantFormat.from_string(fmt),
                          activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    u8 = uint8_input(qdq, nhwc=True)
    reader = "DequantizeLinear" if fmt == "QDQ" else "QLinearConv"
    assert [n.op_type for n in u8.graph.node if n.input and n.input[0] == "moved"] == [reader]
    return qdq, u8


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_fully_quantized_uint8_input_keeps_its_integer_graph(tmp_path: Path, fmt: str) -> None:
    """A uint8 input read as codes by DequantizeLinear or QLinearConv (behind a Transpose) is
    wrapped: the wrapper feeds it the pixels rounded to uint8, so the logits and the BPDA
    gradient are those of the same integer graph behind a float input."""
    qdq, u8 = _fully_quantized(tmp_path, fmt)
    spec = InputSpec.parse("range=0-255,layout=nhwc,dtype=uint8")
    p = pixels(seed=8)
    ref = _run(qdq, p)
    np.testing.assert_allclose(_run(u8, as_deployed(spec, p)), ref, rtol=0, atol=1e-6)
    wrapped = wrap_model(u8, spec)
    np.testing.assert_allclose(_run(wrapped, p), ref, rtol=0, atol=1e-6)
    # off the 8-bit grid the device rounds: the wrapped model scores the rounded image
    off = np.clip(p + np.float32(0.4 / 255), 0, 1)
    np.testing.assert_allclose(_run(wrapped, off), ref, rtol=0, atol=1e-6)
    model = OrtModel(wrapped)
    assert model.info["gradient_form"].startswith("BPDA")
    cot = np.random.default_rng(6).normal(size=(len(p), 5)).astype(np.float32)  # (N, K)
    _, g = model.vjp(p, cot)
    _, g_ref = OrtModel(qdq).vjp(p, cot)
    assert np.abs(g).max() > 0
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_the_guard_advises_layout_and_dtype_at_once(tmp_path: Path) -> None:
    """A uint8 NHWC model run with no --input-spec: the guard's layout finding advises the whole
    contract that fits (range, layout and dtype), which then runs, instead of the layout alone
    and a dtype error on the next run; a float NCHW model declared uint8 NHWC is advised the
    float dtype and its [0, 1] range."""
    from qrdeploy.data.datasets import Dataset
    from qrdeploy.evaluation.guard import Verdict, input_guard

    _, u8 = _fully_quantized(tmp_path, "QDQ")
    data = Dataset("px", "test", pixels(16, seed=3), None, K)
    found = input_guard(u8, data)
    assert found.verdict is Verdict.MISMATCH and found.best is not None
    assert "; pass --input-spec range=0-255,layout=nhwc,dtype=uint8 (or --no-input-guard" \
        in found.message()
    assert input_guard(u8, data, InputContract(found.best)).verdict is not Verdict.MISMATCH
    declared = InputContract(InputSpec.parse("range=0-255,layout=nhwc,dtype=uint8"))
    # the 0-255 range came with the uint8 dtype: the float model is advised [0, 1], the default
    assert input_guard(twin(InputSpec()), data, declared).best == InputSpec()


@pytest.mark.parametrize(("flatten", "expect_one_by_one"), [
    (None, False),
    (helper.make_node("Reshape", ["feat", "shape"], ["flat"], name="rs"), True),
], ids=["flatten_made_dynamic", "reshape_batch_1_kept"])
def test_static_batch_of_one(flatten: onnx.NodeProto | None, expect_one_by_one: bool) -> None:
    spec = InputSpec.parse("layout=nhwc")
    model = twin(spec, batch=1, flatten=flatten)
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    wrapped = wrap_model(model, spec)
    assert one_by_one(wrapped) is expect_one_by_one
    dim0 = wrapped.graph.input[0].type.tensor_type.shape.dim[0]
    assert (dim0.dim_value == 1) is expect_one_by_one
    n = 1 if expect_one_by_one else 3
    p = pixels(n)
    np.testing.assert_allclose(_run(wrapped, p), _run(twin(InputSpec()), p), rtol=1e-4, atol=1e-4)


def test_choose_input_and_output() -> None:
    spec = InputSpec.parse("layout=nhwc")
    model = twin(spec, extra_outputs=("feat",))
    # a second input with an initializer default is allowed (not fed)
    model.graph.input.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [4]))
    wrapped = wrap_model(model, spec, input_name="in", output_name="logits")
    assert [o.name for o in wrapped.graph.output] == ["logits"]
    assert [i.name for i in wrapped.graph.input] == [PIXELS]
    p = pixels()
    np.testing.assert_allclose(_run(wrapped, p), _run(twin(InputSpec()), p), rtol=1e-4, atol=1e-4)


def test_float16_model_upcast() -> None:
    spec = InputSpec()
    model = twin(spec)
    half = {k: v.astype(np.float16) for k, v in WEIGHTS.items()}
    del model.graph.initializer[:]
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in half.items())
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    wrapped = wrap_model(model, spec, upcast_fp16=True)
    ref = twin(spec)
    del ref.graph.initializer[:]
    ref.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k)
                                 for k, v in half.items())
    p = pixels()
    np.testing.assert_allclose(_run(wrapped, p), _run(ref, p), rtol=1e-5, atol=1e-5)


def test_base_nodes_are_the_pixel_model() -> None:
    # guards the fixture: the pixel twin is the base graph behind an Identity
    ops = [n.op_type for n in twin(InputSpec()).graph.node]
    assert ops == ["Identity", *(n.op_type for n in base_nodes("img"))]


def test_contract_is_wrap_model() -> None:
    spec = "range=0-255,layout=nhwc,dtype=uint8"
    model = twin(InputSpec.parse(spec), extra_outputs=("feat",))
    contract = InputContract.from_options(spec, "in", "logits")
    wrapped = contract.apply(model)
    assert wrapped == wrap_model(model, InputSpec.parse(spec), "in", "logits")
    assert {p.key: p.value for p in wrapped.metadata_props}["qrdeploy.input_spec"] == \
        "range=0-255,layout=nhwc,dtype=uint8"


def _batch_of_one(spec: InputSpec) -> onnx.ModelProto:
    """The pixel twin expecting `spec`, with its batch hard-coded to 1 by a Reshape to (1, -1)
    (logits of shape (1, 5)), as edge exports often are."""
    model = twin(spec, batch=1, flatten=helper.make_node("Reshape", ["feat", "shape"], ["flat"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                 [1, 5]))
    return model


def test_eval_attack_and_check_run_a_batch_of_one_model_sample_by_sample(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A deployed model with a hard-coded batch of 1 (kept by the wrapper): `eval`, `attack` and
    `check` all run it one sample at a time through the same helper, and agree on its clean
    accuracy (12 samples, labels = the pixel twin's predictions, 3 of them flipped)."""
    import json

    from qrdeploy.cli import main

    onnx.save(_batch_of_one(InputSpec.parse("layout=nhwc")), tmp_path / "b1.onnx")
    p = pixels(12, seed=3)
    y = _run(twin(InputSpec()), p).argmax(1).astype(np.int64)
    y[:3] = (y[:3] + 1) % 5  # K = 5 classes
    np.savez(tmp_path / "d.npz", x=p, y=y)
    common = ["--data", f"npz:{tmp_path / 'd.npz'}", "--input-spec", "layout=nhwc", "-q"]
    assert main(["eval", str(tmp_path / "b1.onnx"), "--json", *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["accuracy"]["value"] == pytest.approx(9 / 12)
    assert (doc["schema"], doc["schema_version"]) == ("qrdeploy/eval", 1)
    assert main(["attack", str(tmp_path / "b1.onnx"), "--attacks", "clean,fgsm-s", "--eps",
                 "none", "--family", "cifar10", "-o", str(tmp_path / "r.json"), *common]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "policy.toml").write_text("[clean]\nmin_accuracy = 0.3\n[latency]\nrepeats = 2\n"
                                          "warmup = 0\nbatch_sizes = [1]\n")
    assert main(["check", str(tmp_path / "b1.onnx"), "--reference", str(tmp_path / "b1.onnx"),
                 "--policy", str(tmp_path / "policy.toml"), "-o", str(tmp_path / "s.json"),
                 *common]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    (acc,) = [t for t in summary["thresholds"] if t["metric"] == "clean.accuracy"]
    assert acc["value"] == pytest.approx(9 / 12)
    assert doc["clean"]["value"] == pytest.approx(9 / 12)


def test_a_batch_of_one_model_needs_no_input_spec_to_be_attacked(tmp_path: Path) -> None:
    """A float32 NCHW model with a hard-coded batch of 1 and no contract options: the gradient
    graph (whose batch is made symbolic) is still fed one sample at a time, so `attack`,
    `lipschitz --data` and `margins` run instead of failing in onnxruntime's Reshape."""
    import json

    from qrdeploy.cli import main

    onnx.save(_batch_of_one(InputSpec()), tmp_path / "b1.onnx")
    p = pixels(8, seed=4)
    y = _run(twin(InputSpec()), p).argmax(1).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=p, y=y)
    assert main(["attack", str(tmp_path / "b1.onnx"), "--data", f"npz:{tmp_path / 'd.npz'}",
                 "--attacks", "clean,fgsm-s,pgd", "--family", "cifar10", "-q",
                 "-o", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["clean"]["value"] == 1.0
    assert {c["key"] for c in doc["columns"]} >= {"white/fgsm-s", "white/pgd"}
    # lipschitz's measured amplification and margins feed it one sample at a time too
    assert main(["lipschitz", str(tmp_path / "b1.onnx"), "--bits", "3", "--data",
                 f"npz:{tmp_path / 'd.npz'}", "-o", str(tmp_path / "l.json"), "-q"]) == 0
    layers = json.loads((tmp_path / "l.json").read_text())["layers"]
    assert all(lyr["amplification"] is not None for lyr in layers)
    assert main(["margins", str(tmp_path / "b1.onnx"), "--data", f"npz:{tmp_path / 'd.npz'}",
                 "--directions", "4", "--top", "2", "--json", "-q"]) == 0
