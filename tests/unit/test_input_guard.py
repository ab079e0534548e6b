"""The input-contract guard: a model that expects other pixels than declared stops eval, attack
and check with one line naming the --input-spec that fits (0-255 and mean/std wrappers of the
MNIST reference model, its full-integer version, BGR and NHWC twins of a 3-channel model); a
model near chance with nothing better warns and goes on; --no-input-guard goes on as declared;
reproduce never runs it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qrdeploy.cli import main
from qrdeploy.data.datasets import Dataset, load_dataset
from qrdeploy.evaluation.guard import Verdict, candidates, input_guard
from qrdeploy.graphio.inputspec import Channels, InputContract, InputSpec, Range
from qrdeploy.model.ortmodel import OrtModel
from tests.unit import inputspec_models as im
from tests.unit.onnx_builders import cnn

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "models" / "mnist-standard.onnx"


def expecting(model: onnx.ModelProto, spec: InputSpec) -> onnx.ModelProto:
    """`model` (float NCHW pixels in [0, 1]) behind nodes that undo `spec`: a model that
    expects its input as the spec says, as a model zoo would ship it."""
    undo, consts = im.undo_nodes(spec)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    old = out.graph.input[0].name
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = "img"
    out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    for node in reversed(undo):
        out.graph.node.insert(0, node)
    out.graph.input[0].name = "in"
    return out


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("guard")
    base = onnx.load(MNIST)
    out = {}
    for name, spec in {"byte": "range=0-255", "norm": "mean=0.1307,std=0.3081",
                       "plain": ""}.items():
        out[name] = d / f"{name}.onnx"
        onnx.save(expecting(base, InputSpec.parse(spec)), out[name])
    data = load_dataset("mnist-5k", "test", n=120)
    np.savez(d / "unlabelled.npz", x=data.x)
    out["unlabelled"] = d / "unlabelled.npz"
    return out


def cli(*argv: str) -> list[str]:
    return [*argv, "--data", "mnist-5k", "-n", "120", "-q"]


@pytest.mark.parametrize(("name", "flag"), [("byte", "range=0-255"),
                                            ("norm", "mean=0.1307,std=0.3081")])
def test_eval_and_attack_stop_and_name_the_spec(mnist: dict[str, Path], name: str, flag: str,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model = str(mnist[name])
    for argv in (cli("eval", model), cli("attack", model, "--attacks", "pgd", "-o",
                                          str(tmp_path / "r.json"))):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "input contract mismatch" in err
        assert f"pass --input-spec {flag} (or --no-input-guard" in err
    assert not (tmp_path / "r.json").exists()  # stopped before any attack
    assert main([*cli("eval", model), "--input-spec", flag]) == 0
    accuracy = float(capsys.readouterr().out.split("accuracy: ")[1].split("%")[0])
    assert accuracy > 90
    assert main([*cli("eval", model), "--no-input-guard"]) == 0  # goes on as declared
    assert float(capsys.readouterr().out.split("accuracy: ")[1].split("%")[0]) < 60


def test_with_a_reference_the_guard_judges_the_reference(mnist: dict[str, Path],
                                                          tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """A model far worse than its reference (here one that expects normalized pixels, given
    [0, 1] ones) is a finding about the model when the reference fits the declared contract:
    eval --reference and attack --unhardened score it instead of calling the contract wrong,
    as check does; without the reference they stop."""
    model, ref = str(mnist["norm"]), str(mnist["plain"])
    assert main([*cli("eval", model), "--reference", ref]) == 0
    assert float(capsys.readouterr().out.split("accuracy: ")[1].split("%")[0]) < 60
    assert main([*cli("attack", model), "--unhardened", ref, "--no-baseline", "--suite", "white",
                 "--attacks", "clean,fgsm-w", "-o", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["clean"]["value"] < 0.6
    assert main(cli("eval", model)) == 1


def test_the_plain_model_passes_quietly(mnist: dict[str, Path]) -> None:
    found = input_guard(onnx.load(mnist["plain"]), load_dataset("mnist-5k", "test", n=120))
    assert found.verdict is Verdict.OK and found.best is None
    assert found.declared_score is not None and found.declared_score > 0.9


def test_a_layout_mismatch_names_the_model_it_was_found_on(mnist: dict[str, Path]) -> None:
    contract = InputContract(InputSpec.parse("layout=nhwc"))
    data = load_dataset("mnist-5k", "test", n=20)
    found = input_guard(onnx.load(mnist["plain"]), data, contract, name="--reference ref.onnx")
    assert found.verdict is Verdict.MISMATCH
    assert found.message().startswith("input contract mismatch on --reference ref.onnx: the "
                                      "model's input shape fits the images only as NCHW; pass "
                                      "--input-spec range=0-1 ")
    unnamed = input_guard(onnx.load(mnist["plain"]), data, contract)
    assert unnamed.message().startswith("input contract mismatch: the model's input shape")
    own = input_guard(onnx.load(mnist["plain"]), data, contract, name="--reference ref.onnx",
                      option="--reference-input-spec")  # the reference's own contract is wrong
    assert "; pass --reference-input-spec range=0-1 (or --no-input-guard" in own.message()


def test_full_integer_model(mnist: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """qrdeploy's own int8 model behind a 0-255 front: the guard runs the integer graph."""
    int8 = tmp_path / "int8.onnx"
    assert main(["harden", str(MNIST), "-o", str(int8), "--bits", "8", "--activations", "int8",
                 "--calibrate", "64", "-q"]) == 0
    front = tmp_path / "int8-0255.onnx"
    onnx.save(expecting(onnx.load(int8), InputSpec.parse("range=0-255")), front)
    capsys.readouterr()
    assert main(cli("eval", str(front))) == 1
    assert "pass --input-spec range=0-255 " in capsys.readouterr().err
    assert main([*cli("eval", str(front)), "--input-spec", "range=0-255"]) == 0


@pytest.mark.parametrize(("spec", "flag"), [("channels=bgr", "channels=bgr"),
                                            ("layout=nhwc", "layout=nhwc"),
                                            ("range=0-255,channels=bgr", "range=0-255,"
                                                                         "channels=bgr")])
def test_three_channel_twins(spec: str, flag: str) -> None:
    x = np.random.default_rng(0).uniform(size=(200, im.C, im.H, im.W)).astype(np.float32)
    y = OrtModel(im.twin(InputSpec()), gradients=False).predict(x)
    assert len(np.unique(y)) >= 3  # labels with some spread: accuracy can tell contracts apart
    data = Dataset("npz:twins", "test", x, y, im.K)
    model = im.twin(InputSpec.parse(spec))
    found = input_guard(model, data)
    assert found.verdict is Verdict.MISMATCH and found.best is not None
    assert found.best.cli() == InputSpec.parse(flag).cli()
    assert found.p_value is None or found.p_value < 1e-3
    right = input_guard(model, data, InputContract.from_options(flag))
    assert right.verdict is Verdict.OK and right.declared_score == 1.0


def test_near_chance_warns_and_goes_on(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A network that answers class 0 whatever the input scores at chance (class 0's share of
    the digits) under every contract: nothing fits better, so the guard only warns, and the
    warning lands in the results' notes."""
    model = cnn(seed=0, c=1, hw=28)
    for t in model.graph.initializer:
        zero = np.zeros_like(numpy_helper.to_array(t))
        if t.name == "fc2.bias":
            zero[0] = 1.0
        t.CopyFrom(numpy_helper.from_array(zero, t.name))
    path = tmp_path / "constant.onnx"
    onnx.save(model, path)
    out = tmp_path / "r.json"
    assert main(cli("attack", str(path), "--attacks", "clean", "-o", str(out))) == 0
    notes = json.loads(out.read_text())["notes"]
    assert any("near chance, and no common input contract does better" in n for n in notes)
    assert main(cli("eval", str(path))) == 0
    assert capsys.readouterr().out.count("warning: input guard:") == 1
    # the same near-chance network as the reference: its warning once, too
    assert main(cli("eval", str(path), "--reference", str(path))) == 0
    assert capsys.readouterr().out.count("warning: input guard:") == 1


def test_without_labels_the_guard_never_stops(mnist: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Diversity shows a collapse but cannot say which contract is right: it warns."""
    data = Dataset("npz:x", "test", np.load(mnist["unlabelled"])["x"], None, 10)
    found = input_guard(onnx.load(mnist["byte"]), data)
    assert found.verdict is Verdict.SUSPECT and found.measure == "prediction diversity"
    assert "without labels qrdeploy cannot tell" in found.message()
    assert main(["eval", str(mnist["byte"]), "--data", f"npz:{mnist['unlabelled']}",
                 "--reference", str(MNIST), "-q"]) == 0


def test_check_fails_the_gate_on_a_wrong_contract(mnist: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("[clean]\nmin_agreement = 0.5\n[latency]\nrepeats = 2\nwarmup = 0\n"
                      "batch_sizes = [1]\n")
    argv = ["check", str(mnist["byte"]), "--reference", str(mnist["byte"]), "--data",
            "mnist-5k", "-n", "120", "--policy", str(policy)]
    assert main(argv) == 3
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("FAIL input.contract_mismatch = 1") and "range=0-255" in first
    assert main([*argv, "--input-spec", "range=0-255"]) == 0
    assert main([*argv, "--no-input-guard"]) == 0  # agreement of a model with itself


def test_check_fails_the_gate_on_a_wrong_layout_and_measures_nothing_else(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An NHWC model checked as NCHW: the layout finding is the failed threshold (exit 3), not
    a shape error from the clean run that would follow with the wrong contract."""
    path = tmp_path / "nhwc.onnx"
    model = expecting(onnx.load(MNIST), InputSpec.parse("layout=nhwc"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims[1:], (28, 28, 1), strict=True):
        d.dim_value = v  # (N, 28, 28, 1)
    onnx.save(model, path)
    policy = tmp_path / "p.toml"
    policy.write_text("[clean]\nmin_agreement = 0.5\n[size]\nmax_mb = 100\n")
    argv = ["check", str(path), "--reference", str(path), "--data", "mnist-5k", "-n", "40",
            "--policy", str(policy), "-o", str(tmp_path / "s.json")]
    assert main(argv) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAIL input.contract_mismatch = 1") and "NHWC" in lines[0]
    assert "the other thresholds were not measured" in lines[0]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [t["metric"] for t in summary["thresholds"]] == ["input.contract_mismatch"]
    assert summary["exit_code"] == 3
    assert main([*argv, "--input-spec", "layout=nhwc"]) == 0


def test_candidates_keep_layout_and_dtype() -> None:
    declared = InputSpec.parse("layout=nhwc")
    specs = candidates(declared, 3)
    assert all(s.layout == declared.layout for s in specs) and declared not in specs
    assert len(candidates(InputSpec(), 1)) == 2 * 3 - 1  # ranges x (none, mnist, symmetric)
    byte = candidates(InputSpec.parse("range=0-255,dtype=uint8"), 1)
    assert byte == []  # a uint8 input holds raw 0-255 pixels: nothing else to try
    # a BGR candidate's mean and std are in the model's (BGR) channel order: ImageNet's
    # statistics on 0-255 BGR pixels, as Caffe-era models take them
    caffe = InputSpec(range=Range.BYTE, mean=(103.53, 116.28, 123.675),
                      std=(57.375, 57.12, 58.395), channels=Channels.BGR)
    near = [s for s in candidates(InputSpec(), 3) if s.channels is Channels.BGR and s.mean
            and len(s.mean) == 3 and s.range is Range.BYTE]
    assert any(np.allclose(s.mean or (), caffe.mean or ()) and np.allclose(s.std or (),
                                                                          caffe.std or ())
               for s in near), near


def test_reproduce_never_runs_the_guard() -> None:
    """The paper pipeline scores qrdeploy's own models, where a 2-bit model at chance is a
    result: no module of qrdeploy.paper imports the guard or the file-level calls that run it
    (attack_files, evaluate_files, check)."""
    guarded = {"input_guard", "attack_files", "evaluate_files", "check", "enforce"}
    for path in (ROOT / "qrdeploy" / "paper").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and (n.module or "").startswith("qrdeploy.") for a in n.names}
        assert not names & guarded, (path.name, names & guarded)


def test_a_suspect_near_chance_names_the_better_alternative_it_found() -> None:
    """Near chance with an alternative that does better but not enough for a mismatch (a BGR
    model under a contract close to its own, 9 % against 30 %): the warning names it instead of
    saying that nothing does better."""
    from qrdeploy.evaluation.guard import GuardResult

    found = GuardResult(Verdict.SUSPECT, InputSpec(), "accuracy", 200, 0.09,
                        InputSpec.parse("range=0-255,channels=bgr"), 0.30)
    text = found.message()
    assert "9.0% with the declared input, near chance" in text
    assert "the best common alternative, range=0-255,channels=bgr, gives 30.0%" in text
    assert "no common input contract does better" not in text


@pytest.mark.parametrize(("spec", "refused"), [
    ("layout=nhwc", r"its input is FLOAT \(N, 3, 6, 6\) and the model's FLOAT \(N, 6, 6, 3\)"),
    ("range=0-255,dtype=uint8", r"its input is FLOAT \(N, 3, 6, 6\) and the model's UINT8 "
                                r"\(N, 3, 6, 6\)"),
    ("range=0-255", None),  # the same input: one contract may serve both
])
def test_a_reference_with_another_input_is_refused_at_once(spec: str, refused: str | None
                                                           ) -> None:
    from qrdeploy.errors import ConfigError
    from qrdeploy.evaluation.guard import check_same_input

    model, reference = im.twin(InputSpec.parse(spec)), im.twin(InputSpec())
    if refused is None:
        check_same_input(model, reference, "--reference r.onnx", None)
        return
    with pytest.raises(ConfigError, match=rf"^--reference r.onnx: {refused}, so one input "
                                          r"contract cannot serve both; give the reference its "
                                          r"own input contract with --reference-input-spec"):
        check_same_input(model, reference, "--reference r.onnx", None)
