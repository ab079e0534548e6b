"""`qrdeploy check` and `qrdeploy attack` go through the same attack runner: on the same model,
samples, seed and suite (the reference as transfer source and as the model before hardening)
they report the same masking checks, verdict and adaptive worst case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from qrdeploy.cli import main
from tests.unit.onnx_builders import cnn, inputs, ort_logits

N = 24


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("agree")
    for name, seed in (("victim", 1), ("ref", 0)):
        onnx.save(cnn(seed), root / f"{name}.onnx")
    x = inputs(2, (N, 1, 8, 8))
    y = ort_logits(cnn(1), x).argmax(1).astype(np.int64)  # the victim is right on every sample
    np.savez(root / "d.npz", x=x, y=y)
    (root / "policy.toml").write_text(
        "[robust]\nn = 24\n[[robust.threshold]]\nattack = \"pgd\"\neps = 0.1\n"
        "min_accuracy = 0.0\n[masking]\nfail_if_suspected = true\nsuite = \"paper,adaptive\"\n"
        "[latency]\nbatch_sizes = [1]\nrepeats = 2\nwarmup = 0\n")
    return {"root": root, "victim": root / "victim.onnx", "ref": root / "ref.onnx",
            "data": root / "d.npz", "policy": root / "policy.toml"}


def test_attack_and_check_report_the_same_verdict_and_worst_case(files: dict[str, Path]) -> None:
    root = files["root"]
    common = ["--data", f"npz:{files['data']}", "--seed", "3", "--batch-size", "8", "-q"]
    assert main(["attack", str(files["victim"]), "--suite", "paper,adaptive", "--source",
                 str(files["ref"]), "--unhardened", str(files["ref"]), "-o",
                 str(root / "r.json"), *common]) == 0
    code = main(["check", str(files["victim"]), "--reference", str(files["ref"]), "--policy",
                 str(files["policy"]), "-o", str(root / "s.json"), *common])
    assert code in (0, 3)
    results = json.loads((root / "r.json").read_text())
    summary = json.loads((root / "s.json").read_text())
    a, c = results["masking"], summary["masking"]
    assert a["verdict"] == c["verdict"] and a["suspected"] == c["suspected"]
    adaptive = results["adaptive"]["worst_case"]["robust"]["value"]
    assert a["worst_case"] == c["worst_case"] == adaptive
    assert [(k["name"], k["fired"], k["ran"], k["statistic"]) for k in a["checks"]] == \
        [(k["name"], k["fired"], k["ran"], k["statistic"]) for k in c["checks"]]
    assert len(c["checks"]) == 10  # the two integer-graph checks are skipped on a float model
    assert [k["name"] for k in c["checks"] if not k["ran"]] == ["bpda-weaker", "twin-stronger"]
    (pgd,) = [t for t in summary["thresholds"] if t["metric"] == "robust.pgd@0.1"]
    (col,) = [k for k in results["columns"] if k["key"] == "white/pgd"]
    assert pgd["value"] == col["robust"]["value"]  # the suite's PGD at its own eps 0.1


def test_sharded_check_equals_the_one_process_check(files: dict[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`check --shards 3` and `check --workers 2` split the attack runs and give the same
    thresholds, masking checks and verdict as the one-process check (timings apart)."""
    from qrdeploy.evaluation import shard

    calls: list[int] = []
    sharded = shard.evaluate_sharded

    def counted(*a: object, **kw: object) -> object:
        calls.append(1)
        return sharded(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(shard, "evaluate_sharded", counted)
    root = files["root"]
    common = ["--data", f"npz:{files['data']}", "--seed", "3", "--batch-size", "8", "-q",
              "--reference", str(files["ref"]), "--policy", str(files["policy"])]
    docs = {}
    for label, extra in (("plain", []), ("shards", ["--shards", "3"]),
                         ("workers", ["--workers", "2"])):
        out = root / f"check-{label}.json"
        assert main(["check", str(files["victim"]), "-o", str(out), *common, *extra]) in (0, 3)
        doc = json.loads(out.read_text())
        for key in ("timings", "latency"):
            doc.pop(key, None)
        doc["thresholds"] = [t for t in doc["thresholds"] if not t["metric"].startswith("latency")]
        docs[label] = doc
    assert docs["shards"] == docs["plain"] == docs["workers"]
    assert docs["plain"]["masking"]["checks"]  # the masking suite ran
    assert len(calls) == 4  # the threshold's and the masking suite's runs, sharded twice
