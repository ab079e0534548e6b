"""Error paths of qrdeploy.spectral.norms, qrdeploy.spectral.analysis and `qrdeploy lipschitz`:
one-line QrdeployErrors saying what was expected and the fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from qrdeploy.cli import main
from qrdeploy.errors import ConfigError, GraphError, QrdeployError, RuntimeMissingError
from qrdeploy.graphio import graph
from qrdeploy.hardening.passes import Recipe, WeightQuant, harden
from qrdeploy.spectral.analysis import LipschitzConfig, lipschitz_report, match_layers, spectral
from qrdeploy.spectral.norms import ConvGeometry
from qrdeploy.spectral.render import plot_reports
from tests.unit import onnx_builders as ob


@pytest.fixture(scope="module")
def ref() -> onnx.ModelProto:
    return ob.cnn(0)


def _renamed_output(model: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    """A copy whose weight layer `node_name` writes a differently named tensor: for the matcher,
    the layer is absent and another one appears."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = next(n for n in out.graph.node if n.name == node_name)
    old, new = node.output[0], node.output[0] + "_other"
    node.output[0] = new
    for n in out.graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
    return out


def _no_weights() -> onnx.ModelProto:
    b = ob.Builder(0)
    return b.model(["N", 1, 8, 8], b.node("Flatten", [b.node("Relu", ["input"])]), 64)


MODEL_CASES: dict[str, tuple[Callable[[onnx.ModelProto], tuple[object, object]], str]] = {
    "missing-in-hardened": (
        lambda m: (m, _renamed_output(harden(m, [WeightQuant(3)])[0], "fc1")),
        r"layer 'fc1' \(output '.*'\) is in the reference model but not in the hardened one"),
    "missing-in-reference": (
        lambda m: (_renamed_output(m, "conv2"), harden(m, [WeightQuant(3)])[0]),
        r"layer 'conv2' \(output '.*'\) is in the reference model but not in the hardened"),
    "different-shapes": (
        lambda m: (m, ob.cnn(0, c2=6)),
        r"layer 'conv2' is Conv \(8, 4, 3, 3\) in the reference but Conv \(6, 4, 3, 3\)"),
    "no-weight-layers": (
        lambda m: (_no_weights(), _no_weights()),
        "the reference model has no weight layers"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_unmatched_models(ref: onnx.ModelProto, case: str) -> None:
    build, message = MODEL_CASES[case]
    a, b = build(ref)
    with pytest.raises(GraphError, match=message):
        lipschitz_report(a, b)  # type: ignore[arg-type]


def _extra_layer(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with one more weight layer (a Gemm on the logits, exposed as a second output)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.append(onnx.numpy_helper.from_array(np.eye(10, dtype=np.float32), "xw"))
    out.graph.node.append(onnx.helper.make_node("Gemm", ["logits", "xw"], ["extra"], name="xfc"))
    out.graph.output.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT,
                                                               None))
    return out


def test_extra_layer_in_the_hardened_model(ref: onnx.ModelProto) -> None:
    assert len(match_layers(ref, ref)) == 4
    with pytest.raises(GraphError, match=r"layer 'xfc' \(output 'extra'\) is in the hardened "
                                         "model but not in the reference"):
        match_layers(ref, _extra_layer(harden(ref, [WeightQuant(3)])[0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "pass either a hardened model or a recipe .* not neither"),
        ({"hardened": "x", "recipe": Recipe((WeightQuant(3),))},
         "pass either a hardened model or a recipe .* not both"),
    ],
    ids=["neither", "both"],
)
def test_hardened_or_recipe(ref: onnx.ModelProto, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        lipschitz_report(ref, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tol": 0.0}, "tol must be in"), ({"tol": 1.5}, "tol must be in"),
     ({"max_iter": 0}, "max_iter and batch_size must be >= 1"),
     ({"batch_size": 0}, "max_iter and batch_size must be >= 1")],
    ids=["tol0", "tol-big", "max-iter", "batch"],
)
def test_bad_config(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LipschitzConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [(ob.inputs(0, (3, 2, 8, 8)), GraphError,
      "failed to run the model on data of shape .*; pass data the model accepts"),
     (np.zeros((0, 1, 8, 8), np.float32), ConfigError, "data must be a non-empty batch"),
     (np.zeros(5, np.float32), ConfigError, "data must be a non-empty batch")],
    ids=["wrong-channels", "empty", "1-d"],
)
def test_bad_data(ref: onnx.ModelProto, x: np.ndarray, error: type, message: str) -> None:
    hard, _ = harden(ref, [WeightQuant(3)])
    with pytest.raises(error, match=message):
        lipschitz_report(ref, hard, x)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="does not exist"):
        lipschitz_report(tmp_path / "nope.onnx", tmp_path / "nope2.onnx")


def test_plot_without_matplotlib(ref: onnx.ModelProto, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    report = lipschitz_report(ref, recipe=Recipe((WeightQuant(3),)),
                              config=LipschitzConfig(operator_norms=False))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(RuntimeMissingError, match=r"plots need matplotlib.*qrdeploy\[plots\]"):
        plot_reports([report], tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_plot_needs_a_report(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one report"):
        plot_reports([], tmp_path / "p.png")


SPECTRAL_CASES: dict[str, tuple[Callable[[], object], str]] = {
    "3-d matrix": (lambda: spectral.largest_singular_value(np.zeros((2, 2, 2))),
                   "expected a 2-D matrix"),
    "bad method": (lambda: spectral.largest_singular_value(np.eye(2), "qr"),
                   "unknown norm method 'qr'; choose one of"),
    "tol": (lambda: spectral.largest_singular_value(np.eye(2), "lanczos", tol=0),
            "tol must be in"),
    "max_iter": (lambda: spectral.largest_singular_value(np.eye(2), "power", max_iter=0),
                 "max_iter must be >= 1"),
    "kernel rank": (lambda: spectral.conv_operator_norm(np.ones((2, 2, 3)),
                                                        ConvGeometry.simple((5, 5))),
                    r"kernel of shape \(2, 2, 3\) does not match a 2-d input"),
    "groups": (lambda: spectral.conv_operator_norm(np.ones((3, 1, 3, 3)),
                                                   ConvGeometry.simple((5, 5), group=2)),
               "C_out 3 is not divisible by group 2"),
    "kernel too big": (lambda: spectral.conv_operator_norm(np.ones((1, 1, 7, 7)),
                                                           ConvGeometry.simple((5, 5))),
                       r"kernel \(7, 7\) does not fit input \(5, 5\)"),
    "geometry arity": (lambda: ConvGeometry((5, 5), (1,), (0, 0, 0, 0), (1, 1)),
                       "one stride/dilation and two pads per spatial dim"),
    "negative pad": (lambda: ConvGeometry((5, 5), (1, 1), (0, -1, 0, 0), (1, 1)),
                     "non-positive size or negative pad"),
    "zero stride": (lambda: ConvGeometry.simple((5, 5), stride=0),
                    "non-positive size or negative pad"),
    "group 0": (lambda: ConvGeometry.simple((5, 5), group=0), "group must be >= 1"),
    "conv with gram": (lambda: spectral.conv_operator_norm(np.ones((1, 1, 3, 3)),
                                                           ConvGeometry.simple((5, 5)), "gram"),
                       "conv operator norms use lanczos or power, got 'gram'"),
}


@pytest.mark.parametrize("case", list(SPECTRAL_CASES))
def test_spectral_errors(case: str) -> None:
    call, message = SPECTRAL_CASES[case]
    with pytest.raises(QrdeployError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [  # 2: options that do not go together (usage); 1: a value out of range
        ([], "nothing to compare: give HARDENED, or --bits B", 2),
        (["HARD", "--bits", "3"], "give either HARDENED or --bits/--mulaw/--recipe, not both", 2),
        (["--bits", "3", "--recipe", "r.toml"], "--recipe cannot be combined with --mulaw/--bits",
         2),
        (["--bits", "9"], r"bits must be in 1..8, got 9", 2),
        (["--bits", "3", "--tol", "2"], "tol must be in", 1),
    ],
    ids=["nothing", "both", "recipe-and-bits", "bad-bits", "bad-tol"],
)
def test_cli_errors(ref: onnx.ModelProto, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    argv: list[str], message: str, code: int) -> None:
    graph.save_model(ref, tmp_path / "ref.onnx")
    graph.save_model(ref, tmp_path / "HARD")
    argv = [str(tmp_path / a) if a == "HARD" else a for a in argv]
    assert main(["lipschitz", str(tmp_path / "ref.onnx"), *argv, "-q"]) == code
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # argparse's own usage errors print the usage lines first
    assert last.startswith("qrdeploy") and "error:" in last and message in last
    assert "\n" not in err or last.startswith("qrdeploy lipschitz: error: argument")
