"""`qrdeploy attack` and `qrdeploy report` end to end on tiny ONNX classifiers run by
onnxruntime (OrtModel): white-box, transfer, noise, sweeps, no-labels mode, provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qrdeploy.cli import main
from qrdeploy.core.fileio import sha256_file
from qrdeploy.core.schema import errors, load_schema
from qrdeploy.hardening.passes import MuLawMap, WeightQuant, harden
from tests.unit.onnx_builders import cnn, ort_logits

SCHEMA = load_schema("results.schema.json")
ROOT = Path(__file__).resolve().parents[2]
NO_TORCH = """
import sys
class Block:  # importing torch fails, as on a deploy machine without it
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked")
sys.meta_path.insert(0, Block())
from qrdeploy.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(code)
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    victim, _ = harden(cnn(seed=0, c=1, hw=8), [MuLawMap(mu=255), WeightQuant(bits=3)])
    onnx.save(victim, d / "v.onnx")
    onnx.save(cnn(seed=1, c=1, hw=8), d / "s.onnx")
    x = np.random.default_rng(0).uniform(size=(24, 1, 8, 8)).astype(np.float32)  # (N, 1, 8, 8)
    y = ort_logits(victim, x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    np.savez(d / "d.npz", x=x, y=y)
    np.savez(d / "nolabels.npz", x=x)
    return {"v": d / "v.onnx", "s": d / "s.onnx", "d": d / "d.npz", "nl": d / "nolabels.npz"}


def attack(files: dict[str, Path], out: Path, *extra: str, data: str = "d") -> int:
    return main(["attack", str(files["v"]), "--data", f"npz:{files[data]}", "--batch-size", "8",
                 "-o", str(out), *extra])


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    assert errors(doc, SCHEMA, SCHEMA) == []
    return dict(doc)


def test_white_black_noise_and_sweep(files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc = attack(files, out, "--source", str(files["s"]), "--attacks",
                "clean,fgsm-s,pgd,black/fgsm-s,normal", "--eps", "0.05,0.1")
    assert rc == 0
    doc = load(out)
    assert [c["key"] for c in doc["columns"]] == ["clean", "white/fgsm-s", "white/pgd",
                                                  "black/fgsm-s", "noise/normal"]
    (recipe,) = doc["victim"]["harden"]  # one harden call, read back from the model's metadata
    assert [p["kind"] for p in recipe["passes"]] == ["mulaw", "quant"]
    assert doc["victim"]["sha256"] == sha256_file(files["v"])
    assert doc["source"]["sha256"] == sha256_file(files["s"])
    assert doc["clean"]["k"] == 21 and doc["data"]["family"] == "mnist"
    assert [s["kind"] for s in doc["sweeps"]] == ["fgsm", "pgd"]
    assert "onnxruntime" in doc["runtime"]["packages"]
    cached = list((Path(os.environ["QRDEPLOY_CACHE"]) / "transfer").glob("transfer-*.npz"))
    assert cached and not (tmp_path / ".qrdeploy-transfer").exists()
    assert not (tmp_path / "r.json.state.npz").exists()
    printed = capsys.readouterr().out
    assert "white/pgd" in printed and "results written to" in printed


def test_paper_suite_without_source_skips_black(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert attack(files, out, "--attacks", "clean,fgsm-w,normal", "-q") == 0
    assert {c["mode"] for c in load(out)["columns"]} == {"clean", "white", "noise"}


@pytest.mark.parametrize(("data", "extra", "agree_all"), [
    ("d", ["--labels", "none"], True),
    ("nl", [], True),
    ("d", ["--labels", "none", "--reference", "s"], False),
], ids=["labels-none-self", "npz-without-y", "reference"])
def test_no_labels_mode(files: dict[str, Path], tmp_path: Path, data: str, extra: list[str],
                        agree_all: bool) -> None:
    extra = [str(files["s"]) if e == "s" else e for e in extra]
    out = tmp_path / "r.json"
    assert attack(files, out, "--suite", "white", "--attacks", "clean,fgsm-s", "--eps", "none",
                  "-q", *extra, data=data) == 0
    doc = load(out)
    assert doc["data"]["labels"] == "reference"
    assert (doc["clean"]["value"] == 1.0) == agree_all  # agreement with itself is 100 %
    if not agree_all:
        assert doc["reference"]["sha256"] == sha256_file(files["s"])


@pytest.mark.parametrize(("extra", "match", "code"), [
    (["--suite", "black"], "need --source SRC.onnx", 1),
    (["--attacks", "square"], "'square' is not a column", 2),
    (["--eps", "0.1,x"], "'x' is not a number", 2),
], ids=["black-without-source", "unknown-attack", "bad-eps"])
def test_cli_errors_are_one_line(files: dict[str, Path], tmp_path: Path, extra: list[str],
                                 match: str, code: int, capsys: pytest.CaptureFixture[str]
                                 ) -> None:
    """One line each; option values that do not parse are usage errors (exit 2), checked
    before any model is opened; a missing source model is an error of the run (exit 1)."""
    assert attack(files, tmp_path / "r.json", "-q", *extra) == code
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag", ["--unhardened", "--source"])
def test_a_second_model_that_does_not_fit_the_data_fails_first(
        files: dict[str, Path], tmp_path: Path, flag: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "rgb.onnx"
    onnx.save(cnn(seed=2, c=3, hw=8), other)  # 3 channels: the data has 1
    assert attack(files, tmp_path / "r.json", "-q", "--suite", "paper", flag, str(other)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{other} expects images of shape (3, 8, 8), the data has (1, 8, 8)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.onnx"]  # no attack ran


def test_family_override_and_idle_no_baseline_are_noted(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert attack(files, tmp_path / "r.json", "--attacks", "fgsm-s", "--family", "cifar10",
                  "--no-baseline") == 0
    out = capsys.readouterr().out
    assert "note: --no-baseline does nothing without --unhardened" in out
    notes = load(tmp_path / "r.json")["notes"]
    assert any("cifar10 attack parameters" in n and "mnist's" in n for n in notes), notes
    assert attack(files, tmp_path / "m.json", "--attacks", "fgsm-s", "--family", "mnist") == 0
    assert not any("attack parameters" in n for n in load(tmp_path / "m.json")["notes"])


def _byte_twin(src: Path, out: Path) -> Path:
    """The same CNN taking pixels in 0-255: conv1's weight divided by 255."""
    m = onnx.load(src)
    for i, t in enumerate(m.graph.initializer):
        if t.name == "conv1.weight":
            w = numpy_helper.to_array(t) / np.float32(255)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(w.astype(np.float32),
                                                                    t.name))
    onnx.save(m, out)
    return out


def test_input_contract_keeps_pixel_units(files: dict[str, Path], tmp_path: Path) -> None:
    twin = _byte_twin(files["s"], tmp_path / "s255.onnx")
    common = ["--data", f"npz:{files['d']}", "--suite", "white", "--attacks", "clean,fgsm-s",
              "--eps", "none", "-q"]
    assert main(["attack", str(files["s"]), "-o", str(tmp_path / "a.json"), *common]) == 0
    assert main(["attack", str(twin), "--input-spec", "range=0-255", "-o",
                 str(tmp_path / "b.json"), *common]) == 0
    a, b = load(tmp_path / "a.json"), load(tmp_path / "b.json")
    assert a["per_sample"]["clean_correct"] == b["per_sample"]["clean_correct"]
    fa, fb = (d["columns"][1]["per_sample"]["fooled"] for d in (a, b))
    assert sum(x != y for x, y in zip(fa, fb, strict=True)) <= 1
    assert max(b["columns"][1]["per_sample"]["linf"]) <= 0.3 + 1e-6  # eps in [0, 1] pixels


def test_isolate_opens_models_first(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert attack(files, out, "--isolate", "--suite", "white", "--attacks", "clean",
                  "--eps", "none", "-q") == 0
    assert load(out)["clean"]["k"] == 21


def test_default_source_and_cw_budget(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["attack", str(tiny_onnx), "--data", "mnist-5k", "-n", "8", "--attacks",
                 "clean,black/fgsm-s", "--eps", "none", "--cw-budget", "paper", "-q", "-o",
                 str(out)]) == 0
    doc = load(out)
    seed1 = ROOT / "models" / "mnist-standard-seed1.onnx"
    assert doc["source"]["origin"] == "default" and doc["source"]["name"] == seed1.name
    assert doc["source"]["sha256"] == sha256_file(seed1)
    assert any(seed1.name in n for n in doc["notes"])
    assert doc["settings"]["cw_budget"] == "paper"


def test_no_default_source_when_the_model_before_hardening_serves(tiny_onnx: Path,
                                                                  tmp_path: Path) -> None:
    """--suite adaptive with --unhardened: the adaptive transfer column crafts on the model
    before hardening, and no black-box column runs, so no default source is opened or named in
    a note (the note contradicted the report's models table)."""
    out = tmp_path / "r.json"
    assert main(["attack", str(tiny_onnx), "--data", "mnist-5k", "-n", "8", "--suite",
                 "adaptive", "--attacks", "pgd-cw,transfer", "--unhardened", str(tiny_onnx),
                 "--no-baseline", "-q", "-o", str(out)]) == 0
    doc = load(out)
    assert doc["source"] is None
    assert doc["adaptive"]["source"]["name"] == tiny_onnx.name
    assert not any("transfer source" in n for n in doc["notes"]), doc["notes"]


def test_results_that_cannot_be_written_say_where_the_work_is_kept(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk at the end of a run: the error says that the attacks' results are kept in the
    state file and that a rerun writes them without attacking again (it does)."""
    from qrdeploy.errors import OutputError
    from qrdeploy.evaluation import campaign

    real = campaign.write_results

    def full(path: Path, results: object) -> None:
        raise OutputError(f"cannot write {path}: No space left on device; free some space "
                          "there and rerun")

    monkeypatch.setattr(campaign, "write_results", full)
    out = tmp_path / "r.json"
    assert attack(files, out, "--attacks", "clean,pgd", "--eps", "none", "-n", "8", "-q") == 1
    err = capsys.readouterr().err
    assert f"the attacks' results are kept in {out}.state.npz" in err and "\n" not in err.strip()
    monkeypatch.setattr(campaign, "write_results", real)
    assert attack(files, out, "--attacks", "clean,pgd", "--eps", "none", "-n", "8") == 0
    assert "2 of 2 columns" in capsys.readouterr().err  # resumed, nothing attacked again
    assert not (tmp_path / "r.json.state.npz").exists()


def test_cifar10_runs_get_their_own_default_source(tmp_path: Path) -> None:
    """The CIFAR-10 seed-1 reference model is the cifar10 family's default transfer source."""
    out = tmp_path / "r.json"
    assert main(["attack", str(ROOT / "models" / "cifar10-standard.onnx"), "--data",
                 "cifar10-10k", "-n", "4", "--attacks", "clean,black/fgsm-s", "--eps", "none",
                 "-q", "-o", str(out)]) == 0
    doc = load(out)
    seed1 = ROOT / "models" / "cifar10-standard-seed1.onnx"
    assert doc["source"]["origin"] == "default" and doc["source"]["name"] == seed1.name
    assert any("qrdeploy's default for cifar10" in n for n in doc["notes"])


def test_dropped_black_box_columns_are_noted(files: dict[str, Path], tmp_path: Path) -> None:
    """No source for 1x8x8 inputs: the paper suite runs without its black-box columns, and the
    results say so (the report prints the notes)."""
    out = tmp_path / "r.json"
    assert attack(files, out, "--suite", "paper", "-n", "6", "--eps", "none",
                  "--cw-budget", "quick", "-q") == 0
    doc = load(out)
    assert not any(c["mode"] == "black" for c in doc["columns"])
    assert any(n.startswith("black-box columns dropped: no transfer source") for n in doc["notes"])


@pytest.mark.parametrize("suite", ["paper,grey", "paper;adaptive"], ids=["unknown", "separator"])
def test_bad_suite_list_is_usage_error(files: dict[str, Path], tmp_path: Path, suite: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert attack(files, tmp_path / "r.json", "--suite", suite) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_report_command(files: dict[str, Path], tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--suite", "white", "--attacks", "clean,fgsm-s,pgd", "--eps", "0.05,0.1", "-q"]
    assert attack(files, a, *common) == 0
    assert main(["attack", str(files["s"]), "--data", f"npz:{files['d']}", "-o", str(b),
                 *common]) == 0
    assert main(["report", str(a), str(b), "-o", str(tmp_path / "rep" / "report.md"), "-q"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| v.onnx |" in md and "| s.onnx |" in md
    assert (tmp_path / "rep" / "report.csv").exists()


def test_report_rows_start_with_clean_when_a_run_did_not_list_it(
        files: dict[str, Path], tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert attack(files, a, "--attacks", "fgsm-s,pgd", "-q") == 0  # clean not listed
    assert attack(files, b, "--attacks", "clean,fgsm-s", "-q") == 0
    assert main(["report", str(a), str(b), "-o", str(tmp_path / "report.md"), "-q"]) == 0
    table = (tmp_path / "report.md").read_text().split("## Robust accuracy per attack")[1]
    rows = [line.split("|")[1].strip() for line in table.split("\n## ")[0].splitlines()
            if line.startswith("| ") and not line.startswith("| attack")]
    assert rows[:3] == ["clean", "white/fgsm-s", "white/pgd"], rows


def test_tiny_trained_model_on_mnist_5k(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    rc = main(["attack", str(tiny_onnx), "--data", "mnist-5k", "-n", "32", "--suite", "white",
               "--attacks", "clean,fgsm-s,pgd", "--eps", "none", "-q", "-o", str(out)])
    assert rc == 0
    doc = load(out)
    assert doc["data"]["name"] == "mnist-5k" and doc["data"]["n"] == 32
    pgd = next(c for c in doc["columns"] if c["key"] == "white/pgd")
    # a model trained 3 epochs on 256 digits: PGD at the MNIST table eps fools some of them
    assert doc["clean"]["k"] > 0 and pgd["robust"]["k"] < doc["clean"]["k"]
    assert max(pgd["per_sample"]["linf"]) <= pgd["eps"] + 1e-6 == 0.1 + 1e-6


def test_deploy_side_runs_with_torch_blocked(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    attack_cmd = ["attack", str(files["v"]), "--data", f"npz:{files['d']}", "--source",
                  str(files["s"]), "--attacks", "clean,fgsm-s,mim,black/fgsm-s,uniform",
                  "--eps", "0.1", "-q", "-o", str(out)]
    for cmd in (attack_cmd, ["report", str(out), "-o", str(tmp_path / "report.md"), "-q"]):
        done = subprocess.run([sys.executable, "-c", NO_TORCH, *cmd], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert load(out)["columns"][1]["key"] == "white/fgsm-s"
    assert (tmp_path / "report.csv").exists()


def test_report_says_when_attacks_left_out_the_adaptive_suite(
        files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert attack(files, out, "--suite", "white,adaptive", "--attacks", "clean,fgsm-s",
                  "-q") == 0
    assert main(["report", str(out), "--format", "github", "-o", str(tmp_path / "github.txt"),
                 "-q"]) == 0
    text = (tmp_path / "github.txt").read_text()
    assert "the --attacks list left out the adaptive entries" in text
    assert "add --suite adaptive" not in text
