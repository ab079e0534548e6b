"""Error paths of the gradient builder and OrtModel: one-line messages naming the op, the node
or the expected value and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.core.losses import Loss
from qrdeploy.errors import ConfigError, DataError, GraphError, UnsupportedOpError
from qrdeploy.gradients.builder import build_loss_grad, build_vjp, differentiability
from qrdeploy.model.ortmodel import OrtModel


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray] | None = None,
           x_dims: list[Any] | None = None, outputs: tuple[str, ...] = ("logits",),
           x_type: int = TensorProto.FLOAT, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", x_type, x_dims or ["N", 2, 4, 4])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(nodes, "err", [x], outs,
                              [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _flat(src: str = "y") -> onnx.NodeProto:
    return helper.make_node("Flatten", [src], ["logits"])


def _argmax_model() -> onnx.ModelProto:
    model = _model([helper.make_node("Flatten", ["x"], ["f"]),
                    helper.make_node("ArgMax", ["f"], ["logits"], name="am", axis=1)])
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    return model


W = {"w": np.ones((3, 2, 3, 3), np.float32)}
CASES: dict[str, tuple[onnx.ModelProto, type[Exception], str]] = {
    "op_without_rule": (
        _model([helper.make_node("Sin", ["x"], ["y"], name="sin1"), _flat()]),
        UnsupportedOpError, r"op Sin \(node 'sin1'\) has no gradient rule; supported: Add, "),
    "maxpool_storage_order": (
        _model([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2],
                                 storage_order=1), _flat()]),
        UnsupportedOpError, r"MaxPool node 'mp': storage_order=1"),
    "pad_reflect": (
        _model([helper.make_node("Pad", ["x", "p"], ["y"], name="pd", mode="reflect"), _flat()],
               {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}),
        UnsupportedOpError, r"Pad node 'pd': mode 'reflect'"),
    "conv_weight_from_input": (
        _model([helper.make_node("Conv", ["x", "x"], ["y"], name="cv"), _flat()],
               x_dims=["N", 2, 2, 2]),
        UnsupportedOpError, r"Conv node 'cv': a weight or bias that depends on the input"),
    "bn_training_mode": (
        _model([helper.make_node("BatchNormalization", ["x", "s", "b", "s", "s"], ["y", "rm", "rv"],
                                 name="bn", training_mode=1), _flat()],
               {"s": np.ones(2, np.float32), "b": np.zeros(2, np.float32)}, opset=15),
        UnsupportedOpError, r"BatchNormalization node 'bn': training mode"),
    "dropout_training": (
        _model([helper.make_node("Dropout", ["x", "", "t"], ["y"], name="dr"), _flat()],
               {"t": np.array(True)}),
        UnsupportedOpError, r"Dropout node 'dr': training_mode"),
    "avgpool_ceil_past_input": (
        _model([helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[3, 3],
                                 strides=[2, 2], ceil_mode=1), _flat()], x_dims=["N", 2, 6, 6]),
        UnsupportedOpError, r"AveragePool node 'ap': ceil_mode"),
    "reducemean_over_batch": (
        _model([helper.make_node("ReduceMean", ["x"], ["y"], name="rm", axes=[0, 1]), _flat()]),
        UnsupportedOpError, r"ReduceMean node 'rm': a mean over the batch axis"),
    "dynamic_spatial_shape": (
        _model([_flat("x")], x_dims=["N", 2, "H", "W"]), GraphError,
        r"pass input_shape=\(C, H, W\)"),
    "two_outputs": (
        _model([helper.make_node("Relu", ["x"], ["y"]), _flat()], outputs=("logits", "y")),
        GraphError, r"expected a classifier with 1 input and 1 output, got 1 and 2"),
    "int_input": (
        _model([_flat("x")], x_type=TensorProto.INT64), GraphError,
        r"expected a float32 input, got INT64"),
    "logits_independent_of_x": (
        _model([helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT),
                helper.make_node("Unsqueeze", ["y", "a"], ["logits"])],
               {"a": np.array([0], np.int64)}),
        GraphError, r"the logits do not depend on the input"),
    "conv_transpose_output_shape": (
        _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct",
                                 output_shape=[5, 5]), _flat()],
               {"w": np.ones((2, 1, 2, 2), np.float32)}),
        UnsupportedOpError, r"ConvTranspose node 'ct': output_shape or auto_pad=NOTSET has no "
        r"gradient rule; supported: explicit pads"),
    "gather_batch_axis": (
        _model([helper.make_node("Gather", ["x", "i"], ["y"], name="ga", axis=0), _flat()],
               {"i": np.array([0], np.int64)}),
        UnsupportedOpError, r"Gather node 'ga': an axis of unknown size \(the batch axis\)"),
    "slice_batch_axis": (
        _model([helper.make_node("Slice", ["x", "s", "e"], ["y"], name="sl"), _flat()],
               {"s": np.array([1], np.int64), "e": np.array([3], np.int64)}),
        UnsupportedOpError, r"Slice node 'sl': slicing the batch axis"),
    "output_not_logits": (
        _argmax_model(),
        UnsupportedOpError, r"op ArgMax \(node 'am'\) gives the output 'logits' as INT64 of "
        r"rank 2; expected logits of shape \(N, K\)"),
}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_build_vjp_refuses(name: str) -> None:
    model, exc, match = CASES[name]
    with pytest.raises(exc, match=match):
        build_vjp(model)


def test_fused_loss_needs_2d_logits() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["logits"])])
    with pytest.raises(GraphError, match=r"expected logits of shape \(N, K\)"):
        build_loss_grad(model, Loss.CE)


def _ok_model() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"]), _flat()])


OM_CASES = {
    "x_wrong_shape": (lambda m: m.logits(np.zeros((2, 2, 5, 5))), DataError,
                      r"expects images of shape \(2, 4, 4\), the data has \(2, 5, 5\)"),
    "cotangent_wrong_shape": (lambda m: m.vjp(np.zeros((2, 2, 4, 4)), np.zeros((2, 3))),
                              DataError, r"expected a cotangent of shape \(2, 32\)"),
    "label_out_of_range": (lambda m: m.loss_and_grad(np.zeros((2, 2, 4, 4)), [0, 32], Loss.CE),
                           DataError, r"expected 2 labels in \[0, 32\)"),
    "label_count": (lambda m: m.loss_and_grad(np.zeros((2, 2, 4, 4)), [0], Loss.CE),
                    DataError, r"expected 2 labels"),
    "temperature_not_positive": (
        lambda m: m.loss_and_grad(np.zeros((2, 2, 4, 4)), [0, 1], Loss.CE_T, 0.0),
        ConfigError, r"temperature must be > 0"),
}


@pytest.mark.parametrize("name", list(OM_CASES), ids=list(OM_CASES))
def test_ortmodel_refuses(name: str) -> None:
    call, exc, match = OM_CASES[name]
    with pytest.raises(exc, match=match):
        call(OrtModel(_ok_model()))


def test_ortmodel_batch_size_positive() -> None:
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        OrtModel(_ok_model(), batch_size=0)


REPORT_CASES: dict[str, tuple[onnx.ModelProto, list[tuple[str, str]]]] = {
    "differentiable": (_ok_model(), []),
    "two_blockers_listed": (
        _model([helper.make_node("Sin", ["x"], ["s"], name="sin1"),
                helper.make_node("ConvTranspose", ["s", "w"], ["y"], name="ct",
                                 output_shape=[5, 5]), _flat()],
               {"w": np.ones((2, 1, 2, 2), np.float32)}),
        [("Sin", "no gradient rule for Sin"), ("ConvTranspose", "output_shape")]),
    "graph_level": (CASES["two_outputs"][0], [("(graph)", "1 input and 1 output")]),
    "not_logits": (_argmax_model(), [("(graph)", "op ArgMax")]),
}


@pytest.mark.parametrize("name", list(REPORT_CASES), ids=list(REPORT_CASES))
def test_differentiability_report(name: str) -> None:
    model, expected = REPORT_CASES[name]
    report = differentiability(model)
    assert report.ok is (not expected)
    assert len(report.blocking) == len(expected)
    for (op, node, reason), (want_op, want_text) in zip(report.blocking, expected, strict=True):
        assert op == want_op and want_text in reason and "\n" not in reason and node


def _sin_files(root: Any, labelled: bool) -> Any:
    """sin.onnx (a Sin, which has no gradient rule, before the logits) and d.npz (6 images;
    labels: the model's own predictions, or all zero) in `root`."""
    sin = _model([helper.make_node("Sin", ["x"], ["s"], name="sin1"), _flat("s")])
    sin.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                               ["N", 32]))
    onnx.save(sin, root / "sin.onnx")
    x = np.random.default_rng(0).uniform(size=(6, 2, 4, 4)).astype(np.float32)
    y = OrtModel(sin).logits(x).argmax(1) if labelled else np.zeros(6, np.int64)
    np.savez(root / "d.npz", x=x, y=y)
    return root


def test_require_gradients_fails_at_once_with_the_fix(tmp_path: Any) -> None:
    """A model with an op that has no gradient rule: `require_gradients` (what `attack` calls
    before any work) names the first blocking op, how many more there are, and the gradient-free
    suites to run instead; `attack --suite white` stops there without writing anything, and
    `--suite noise` (no gradients) runs."""
    from pathlib import Path

    from qrdeploy.cli import main

    model, _ = REPORT_CASES["two_blockers_listed"]
    with pytest.raises(GraphError, match=r"Sin node 'sin1': no gradient rule for Sin "
                                         r"\(and 1 more node\(s\); qrdeploy inspect lists them\); "
                                         r".*--suite black,noise"):
        OrtModel(model).require_gradients()
    OrtModel(_ok_model()).require_gradients()  # nothing to say
    root = _sin_files(Path(tmp_path), labelled=False)
    common = ["--data", f"npz:{root / 'd.npz'}", "--family", "mnist", "-q", "--no-input-guard"]
    assert main(["attack", str(root / "sin.onnx"), "--suite", "white", "-o",
                 str(root / "w.json"), *common]) == 1
    assert sorted(p.name for p in root.iterdir()) == ["d.npz", "sin.onnx"]
    assert main(["attack", str(root / "sin.onnx"), "--suite", "noise", "-o",
                 str(root / "n.json"), *common]) == 0


def test_a_model_without_gradients_runs_square_without_the_gradient_checks(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Square queries only the model's outputs: on a model with an op that has no gradient rule,
    `--attacks square` runs, and only the two masking checks that differentiate the model
    (PGD at eps 1, the probe's gradient) are left out, said in a note. A gradient column still
    refuses the run at once."""
    import json
    from pathlib import Path

    from qrdeploy.cli import main

    root = _sin_files(Path(tmp_path), labelled=True)
    common = ["--data", f"npz:{root / 'd.npz'}", "--family", "mnist", "--no-input-guard",
              "--suite", "paper,adaptive", "-q"]
    assert main(["attack", str(root / "sin.onnx"), "--attacks", "square", "-o",
                 str(root / "s.json"), *common]) == 0
    doc = json.loads((root / "s.json").read_text())
    assert [c["key"] for c in doc["columns"]] == ["adaptive/square"]
    assert any(n.startswith("masking checks unbounded-below-100 and zero-gradient not run: the "
                            "model gives no input gradients (") and "Sin node 'sin1'" in n
               for n in doc["notes"])
    checks = {c["name"]: c for c in doc["masking"]["checks"]}
    assert not checks["unbounded-below-100"]["ran"] and not checks["zero-gradient"]["ran"]
    assert checks["unbounded-below-100"]["detail"] == "not run: no input gradients"
    assert checks["logit-gap"]["ran"]
    capsys.readouterr()
    assert main(["attack", str(root / "sin.onnx"), "--attacks", "square,pgd", "-o",
                 str(root / "p.json"), *common]) == 1
    err = capsys.readouterr().err
    # the hint names the form that runs (`--attacks square` alone is not a column of the
    # default suite)
    assert "no gradient rule for Sin" in err
    assert "--suite paper,adaptive --attacks square,transfer" in err
    assert not (root / "p.json").exists()
