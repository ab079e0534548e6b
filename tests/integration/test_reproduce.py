"""`qrdeploy reproduce`: the step cache on toy steps, and the smoke profile end to end on the
committed reference models (every artefact exists and parses; a rerun reuses every step, asserted
via the step log; --force reruns one step; a corrupted step output is detected and rerun)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from qrdeploy.cli import main
from qrdeploy.errors import ConfigError
from qrdeploy.paper.cache import MANIFEST, Status, Step, StepCache, verify
from qrdeploy.paper.pipeline import reproduce

MODELS = Path(__file__).resolve().parents[2] / "models"


# ------------------------------------------------------------------------------ the cache


def counting_step(calls: list[str], value: str, settings: dict[str, int] | None = None) -> Step:
    def body(out: Path, work: Path) -> None:
        calls.append(value)
        (out / "value.txt").write_text(value)

    return Step("toy.a", settings or {"x": 1}, {}, body)


def test_cache_reuses_and_forces(tmp_path: Path) -> None:
    calls: list[str] = []
    first = StepCache(tmp_path).run(counting_step(calls, "1"))
    again = StepCache(tmp_path)
    assert again.run(counting_step(calls, "1")) == first
    forced = StepCache(tmp_path, force=["toy.*"])
    forced.run(counting_step(calls, "1"))
    assert calls == ["1", "1"]
    assert [e.status for e in again.events + forced.events] == [Status.REUSED, Status.FORCED]


def test_settings_change_the_key(tmp_path: Path) -> None:
    calls: list[str] = []
    a = StepCache(tmp_path).run(counting_step(calls, "1", {"x": 1}))
    b = StepCache(tmp_path).run(counting_step(calls, "2", {"x": 2}))
    assert a != b and calls == ["1", "2"]


def test_input_file_change_changes_the_key(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"a")
    step = Step("toy.b", {}, {"src": src}, lambda out, work: (out / "o").write_bytes(b"o"))
    k1 = StepCache(tmp_path).key(step)
    src.write_bytes(b"b")
    assert StepCache(tmp_path).key(step) != k1


def test_killed_step_resumes_from_its_work_folder(tmp_path: Path) -> None:
    """A body that dies half-way leaves no output folder, and its work folder is kept for the
    rerun, which continues from it."""
    seen: list[bool] = []

    def body(out: Path, work: Path) -> None:
        seen.append((work / "half.txt").exists())
        if not seen[-1]:
            (work / "half.txt").write_text("first half")
            raise KeyboardInterrupt  # the kill
        (out / "done.txt").write_text((work / "half.txt").read_text() + " + second half")

    step = Step("toy.kill", {}, {}, body)
    with pytest.raises(KeyboardInterrupt):
        StepCache(tmp_path).run(step)
    assert not list((tmp_path / "steps").glob("toy.kill-*"))
    folder = StepCache(tmp_path).run(step)
    assert seen == [False, True]
    assert (folder / "done.txt").read_text() == "first half + second half"
    assert not (tmp_path / "steps" / ".work" / folder.name).exists()


def test_verify_detects_changed_file(tmp_path: Path) -> None:
    folder = StepCache(tmp_path).run(counting_step([], "1"))
    assert verify(folder) == "ok"
    (folder / "value.txt").write_text("tampered")
    assert verify(folder) == "corrupt"
    (folder / MANIFEST).unlink()
    assert verify(folder) == "corrupt"


# ------------------------------------------------------------------------------ smoke profile


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The smoke profile run once through the CLI: (run folder, models folder). The Adv. model
    is stood in by the seed-1 standard model (the real one may not be committed yet); F.L. is
    absent on purpose, so its cells must say 'not run'. The hardening rows read the committed
    stronger adversarial model and its 3-bit QAT fine-tuning."""
    for name in ("mnist-standard.onnx", "mnist-standard-seed1.onnx", *HARDENING):
        if not (MODELS / name).is_file():
            pytest.skip(f"committed model {name} missing")
    root = tmp_path_factory.mktemp("reproduce")
    models = root / "models"
    models.mkdir()
    shutil.copy(MODELS / "mnist-standard.onnx", models)
    shutil.copy(MODELS / "mnist-standard-seed1.onnx", models)
    shutil.copy(MODELS / "mnist-standard-seed1.onnx", models / "mnist-adversarial.onnx")
    for name in HARDENING:
        shutil.copy(MODELS / name, models)
    out = root / "run"
    assert main(["reproduce", "--profile", "smoke", "-o", str(out), "--models", str(models),
                 "--quiet"]) == 0
    return out, models


HARDENING = ("mnist-adversarial-strong.onnx", "mnist-adversarial-strong.searched.toml",
              "mnist-adversarial-strong-qat3.onnx")


def log_of(out: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (out / "steps.log").read_text().splitlines()]


def rerun(out: Path, models: Path, **kw: object) -> dict[str, Status]:
    res = reproduce("smoke", out, models_dir=models, **kw)  # type: ignore[arg-type]
    return {e.name: e.status for e in res.events}


KINDS = ["harden", "attack", "lipschitz", "bits", "ablation", "sufficiency"]


def test_first_run_ran_every_kind_of_step(smoke: tuple[Path, Path]) -> None:
    out, _ = smoke
    log = log_of(out)
    assert {e["status"] for e in log} == {"ran"}
    assert {e["step"].split(".")[0] for e in log} == set(KINDS)


def _png(p: Path) -> None:
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _csv(p: Path) -> None:
    rows = list(csv.reader(p.open()))
    assert len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows)


def _json(p: Path) -> None:
    doc = json.loads(p.read_text())
    assert doc["schema"] == "qrdeploy/reproduce" and doc["claims"] and doc["cells"]
    assert len(doc["models"]["orig"]["sha256"]) == 64 and doc["models"]["fl"] is None
    assert doc["retrained"] is False
    # the hardening rows ran and qrdeploy's own claims were decided on them
    own = {c["claim"]: c for c in doc["claims"]
           if c["claim"] in ("qat3-within-2-of-float", "qat3-beats-ptq", "qat-2bit-no-collapse")}
    assert len(own) == 3 and all(c["outcome"] != "not run" for c in own.values()), own
    assert set(doc["masking"]) >= {"adv-strong:plain", "adv-strong:q", "adv-strong:searched",
                                   "adv-qat:q", "adv-qat:q2"}


def _md(p: Path) -> None:
    text = p.read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4", "## Claims",
                    "## Adaptive attacks", "## Headline", "## μ ablation", "## Budget",
                    "## Models", "## Hardening that holds"):
        assert heading in text
    assert "| Adv.+QAT (Q, 2 bits) |" in text
    assert "| Adv. strong (searched) |" in text
    assert "not run (model missing" in text  # F.L.
    assert "not run (CIFAR-10: profile smoke is mnist; use --profile quick-cifar" in text
    # the adaptive table's cascade cell: counts for the gradient entries, % for the others
    adaptive = text.split("## Adaptive attacks")[1].split("\n## ")[0]
    assert "| gradient entries: broken/attacked; square, transfer: robust % |" in adaptive
    rows = [ln for ln in adaptive.splitlines()
            if ln.startswith("| ") and not ln.startswith(("| Model", "|---"))]
    assert rows
    for row in rows:
        cell = row.split(" | ")[4]
        assert re.search(r"\bpgd-cw \d+/\d+", cell) and re.search(r"\bsquare \d+\.\d%", cell), row


ARTEFACTS = [
    pytest.param("report.md", _md, id="report-md"),
    pytest.param("results.json", _json, id="results-json"),
    pytest.param("tables.csv", _csv, id="tables-csv"),
    pytest.param("claims.csv", _csv, id="claims-csv"),
    pytest.param("bits.csv", _csv, id="bits-csv"),
    pytest.param("mu-ablation.png", _png, id="mu-ablation-png"),
    pytest.param("bits-sweep.png", _png, id="bits-sweep-png"),
    pytest.param("dw-bars.png", _png, id="dw-bars-png"),
    pytest.param("eps-pgd.png", _png, id="eps-pgd-png"),
    pytest.param("eps-fgsm.png", _png, id="eps-fgsm-png"),
]


@pytest.mark.parametrize(("name", "check"), ARTEFACTS)
def test_artefact_exists_and_parses(smoke: tuple[Path, Path], name: str, check: object) -> None:
    out, _ = smoke
    check(out / name)  # type: ignore[operator]


def test_rerun_reuses_every_step(smoke: tuple[Path, Path]) -> None:
    out, models = smoke
    first = {e["step"]: float(e["seconds"]) for e in log_of(out)}
    events = reproduce("smoke", out, models_dir=models).events
    assert sorted(e.name for e in events) == sorted(first)
    assert {e.status for e in events} == {Status.REUSED}
    # a reused step reports what computing it took, from its manifest
    for e in events:
        assert e.seconds == 0.0 and e.computed_seconds is not None
        assert 0 <= e.computed_seconds <= first[e.name] + 1e-3
    assert "seconds (when computed)" in (out / "report.md").read_text()


def test_force_reruns_one_step(smoke: tuple[Path, Path]) -> None:
    out, models = smoke
    statuses = rerun(out, models, force=["attack.orig.q"])
    assert statuses.pop("attack.orig.q") is Status.FORCED
    assert set(statuses.values()) == {Status.REUSED}  # downstream keys do not move


def test_corrupted_output_is_detected_and_rerun(smoke: tuple[Path, Path]) -> None:
    out, models = smoke
    folder = next((out / "steps").glob("bits.orig-*"))
    (folder / "bits.json").write_text('{"truncated": ')
    statuses = rerun(out, models)
    assert statuses.pop("bits.orig") is Status.CORRUPT
    assert set(statuses.values()) == {Status.REUSED}
    assert verify(folder) == "ok" and json.loads((folder / "bits.json").read_text())["points"]


# ------------------------------------------------------------------------------ --retrain


def test_retrain_trains_every_regime_then_reuses(tmp_path: Path) -> None:
    """--retrain on the smoke profile: the four recipes (qrdeploy.train.recipes with the profile's
    tiny overrides) are trained as cached steps, F.L. from the fresh standard checkpoint, and every
    regime's rows are filled; the rerun reuses everything."""
    out = tmp_path / "run"
    res = reproduce("smoke", out, models_dir=tmp_path / "no-models", retrain=True)
    trained = {e.name: e.status for e in res.events if e.name.startswith("train.")}
    assert trained == {f"train.{r}": Status.RAN for r in ("orig", "orig-seed1", "adv", "fl")}
    fl = next(f for f in (out / "steps").iterdir() if f.name.startswith("train.fl-"))
    manifest = json.loads((fl / MANIFEST).read_text())
    assert manifest["settings"]["recipe"]["method"] == "feedback"
    doc = json.loads((out / "results.json").read_text())
    # the paper's four are trained; the hardening rows read files, absent from this folder
    assert set(doc["missing"]) == {"adv-strong", "adv-qat"} and doc["retrained"] is True
    assert "not run (model missing" in doc["missing"]["adv-qat"]
    assert doc["models"]["fl"]["path"].startswith(str(out / "steps" / "train.fl-"))
    assert {c["row"].split(":")[0] for c in doc["cells"]} >= {"orig", "adv", "fl"}
    again = reproduce("smoke", out, models_dir=tmp_path / "no-models", retrain=True)
    assert {e.status for e in again.events} == {Status.REUSED}


def test_retrain_and_model_files_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--retrain trains every model"):
        reproduce("smoke", tmp_path, models={"fl": tmp_path / "fl.onnx"}, retrain=True)


# ------------------------------------------------------------------------------ SIGKILL


def _stable(path: Path) -> dict[str, object]:
    doc = json.loads(path.read_text())
    doc.pop("steps"), doc.pop("wall_seconds")  # timings of this run only
    return doc


def test_sigkill_mid_run_then_rerun_gives_the_same_results(smoke: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    """SIGKILL trials in CI (tools/kill_trials_runs.py runs 20 trials at random moments): kill
    a run after its 8th step, check that every finished step folder is complete and that nothing
    else is there, then rerun: it reuses those steps and ends with the uninterrupted results."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, models = smoke
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "qrdeploy", "reproduce", "--profile", "smoke",
                             "-o", str(run), "--models", str(models), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        log = run / "steps.log"
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [f for f in (run / "steps").iterdir() if not f.name.startswith(".")]
    assert len(finished) >= 8 and all(verify(f) == "ok" for f in finished)
    assert not (run / "results.json").exists() and not (run / "report.md").exists()
    statuses = rerun(run, models)
    assert sum(s is Status.REUSED for s in statuses.values()) >= len(finished)
    assert _stable(run / "results.json") == _stable(out / "results.json")
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp-") or
                p.name.endswith(".tmp")]


def test_int8_row_is_the_integer_graph_of_the_q_row(smoke: tuple[Path, Path]) -> None:
    """The (Q, int8 act.) row: its model is the (Q) model's weights as a full-integer graph
    (onnxruntime runs integer kernels), attacked through BPDA with the adaptive suite and the
    integer-graph entries (Square on its float-activation twin), and the report pairs it with
    the (Q) row."""
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.model.kernels import kernel_summary

    out, _ = smoke
    (folder,) = (out / "steps").glob("harden.orig.q-int8-*")
    summary = kernel_summary(load_model(folder / "model.onnx"))
    assert summary["verdict"] == "integer", summary
    doc = json.loads(next((out / "steps").glob("attack.orig.q-int8-*/results.json")).read_text())
    assert doc["adaptive"] is not None and doc["masking"] is not None
    assert {c["key"] for c in doc["columns"]} >= {"adaptive/square", "adaptive/transfer",
                                                  "adaptive/square-twin"}
    assert {c["name"]: c["ran"] for c in doc["masking"]["checks"]}["twin-stronger"]
    text = (out / "report.md").read_text()
    assert "## The integer graphs that ship" in text
    assert "| Orig. (Q, int8 act.) |" in text
