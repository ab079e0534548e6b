"""The wrong files a new user passes get one line that names the fix: a folder, a training
checkpoint, a check summary given to report, a model with two outputs."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from qrdeploy.cli import main
from tests.unit.onnx_builders import cnn

VERBS = [["eval"], ["inspect"], ["attack", "-o", "{tmp}/r.json"],
         ["harden", "--bits", "3", "-o", "{tmp}/h.onnx"]]


def run(verb: list[str], model: Path, tmp: Path, capsys: pytest.CaptureFixture[str],
        *extra: str) -> tuple[int, str]:
    argv = [a.format(tmp=tmp) for a in verb] + [str(model), "-n", "8", "-q", *extra]
    if verb[0] in ("inspect", "harden"):
        argv.remove("-n"), argv.remove("8")
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return code, err


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v[0])
def test_a_folder_is_not_called_missing(verb: list[str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    code, err = run(verb, folder, tmp_path, capsys)
    assert code == 1 and "is a folder; pass the path of an .onnx file inside it" in err
    assert "does not exist" not in err


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v[0])
@pytest.mark.parametrize(("name", "fix"), [
    ("net.safetensors", "convert it first: qrdeploy export "),
    ("net.pt", "export the model with torch.onnx.export"),
])
def test_a_checkpoint_names_the_converter(verb: list[str], name: str, fix: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / name
    ckpt.write_bytes(b"\x00" * 64)
    code, err = run(verb, ckpt, tmp_path, capsys)
    assert code == 1 and "not ONNX" in err and fix in err and "export it again" not in err


def test_report_of_a_check_summary_says_what_it_is(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"schema": "qrdeploy/check-summary", "schema_version": 2,
                                   "passed": True}))
    assert main(["report", str(summary), "-o", str(tmp_path / "r.md"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "is the summary of qrdeploy check, not a results file" in err
    assert "rerun qrdeploy attack" not in err


def test_report_of_a_reproduce_summary_points_to_its_attack_results(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = tmp_path / "results.json"
    summary.write_text(json.dumps({"schema": "qrdeploy/reproduce", "schema_version": 1}))
    assert main(["report", str(summary), "-o", str(tmp_path / "r.md"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "is the summary of qrdeploy reproduce" in err and "steps/attack.*/results.json" in err
    assert "rerun qrdeploy attack" not in err and "\n" not in err


@pytest.fixture
def two_outputs(tmp_path: Path) -> Path:
    m = cnn(seed=0, c=1, hw=28)
    m.graph.node.append(helper.make_node("Softmax", [m.graph.output[0].name], ["probs"], axis=1))
    m.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10]))
    path = tmp_path / "two.onnx"
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("verb", [["eval"], ["attack", "-o", "{tmp}/r.json"]],
                         ids=["eval", "attack"])
def test_two_outputs_name_the_option_and_it_works(verb: list[str], two_outputs: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--attacks", "clean"] if verb[0] == "attack" else []
    code, err = run(verb, two_outputs, tmp_path, capsys, *extra)
    assert code == 1 and "logits, probs" in err and "--output-name" in err
    code, _ = run(verb, two_outputs, tmp_path, capsys, *extra, "--output-name", "logits")
    assert code == 0
