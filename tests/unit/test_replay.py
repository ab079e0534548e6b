"""attack --save-adversarials and qrdeploy replay: the adversarial inputs found on the analysis
graph, saved with ids, labels and settings, scored again on another model (the integer graph that
ships); the set file is validated as untrusted input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from qrdeploy.cli import main
from qrdeploy.errors import DataError
from qrdeploy.evaluation.replay import load_adversarials, replay
from qrdeploy.model.ortmodel import OrtModel
from tests.unit.onnx_builders import cnn, ort_logits

ort_q = pytest.importorskip("onnxruntime.quantization")


class _Reader:
    def __init__(self, x: np.ndarray) -> None:
        self.it = iter([{"input": x[i:i + 8]} for i in range(0, len(x), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("replay")
    model = cnn(seed=0, c=1, hw=8)
    onnx.save(model, d / "float.onnx")
    x = np.random.default_rng(0).uniform(size=(24, 1, 8, 8)).astype(np.float32)
    np.savez(d / "d.npz", x=x, y=ort_logits(model, x).argmax(1))
    ort_q.quantize_static(str(d / "float.onnx"), str(d / "int8.onnx"), _Reader(x),
                          quant_format=ort_q.QuantFormat.QDQ)
    out = d / "adv.npz"
    assert main(["attack", str(d / "float.onnx"), "--data", f"npz:{d / 'd.npz'}", "--suite",
                 "white", "--attacks", "clean,fgsm-s,pgd:eps=0.3", "--batch-size", "10",
                 "--save-adversarials", str(out), "-q", "-o", str(d / "r.json")]) == 0
    return {"root": d, "x": x, "set": out, "results": json.loads((d / "r.json").read_text())}


def test_the_set_holds_what_the_run_found(world: dict[str, Any]) -> None:
    s = load_adversarials(world["set"])
    assert s.keys == ["white/fgsm-s", "white/pgd"]
    np.testing.assert_array_equal(s.x, world["x"])
    cols = {c["key"]: c for c in world["results"]["columns"]}
    for key, adv, fooled in zip(s.keys, s.adv, s.fooled, strict=True):
        assert "".join("1" if f else "0" for f in fooled) == cols[key]["per_sample"]["fooled"]
        assert np.abs(adv - s.x).max() <= 0.3 + 1e-6  # inside the eps ball
        # the victim's verdict on the saved inputs is the recorded one
        pred = OrtModel(world["root"] / "float.onnx", gradients=False).predict(adv)
        np.testing.assert_array_equal(pred != s.labels, fooled)
    assert s.meta["columns"][1]["attack"].startswith("PGD: eps 0.3")
    assert s.meta["victim"]["sha256"] == world["results"]["victim"]["sha256"]


def test_replay_on_the_same_model_reproduces_the_record(world: dict[str, Any]) -> None:
    r = replay(world["root"] / "float.onnx", world["set"])
    for row in r.rows:
        assert row.robust == row.recorded and row.still_fooled.k == row.still_fooled.n
    assert r.clean == r.recorded_clean


def test_replay_on_the_integer_graph(world: dict[str, Any],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(world["root"] / "int8.onnx"), str(world["set"])]) == 0
    out = capsys.readouterr().out
    assert "int8.onnx on the adversarial set of float.onnx" in out
    assert "recorded successes still fool" in out
    assert main(["replay", str(world["root"] / "int8.onnx"), str(world["set"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    pgd = doc["columns"][1]
    assert pgd["key"] == "white/pgd" and 0 <= pgd["still_fooled"]["k"] <= pgd["still_fooled"]["n"]


@pytest.mark.parametrize(("damage", "match"), [
    ("meta", "no readable 'meta'"),
    ("version", "version 99"),
    ("shape", "adv_0 is float32 of shape"),
    ("range", "outside \\[0, 1\\]"),
    ("pickle", "not a readable npz|not a qrdeploy adversarial set"),
])
def test_a_damaged_set_is_one_line(world: dict[str, Any], tmp_path: Path, damage: str,
                                   match: str) -> None:
    with np.load(world["set"]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if damage == "meta":
        arrays["meta"] = np.array("{not json")
    elif damage == "version":
        meta = json.loads(str(arrays["meta"]))
        arrays["meta"] = np.array(json.dumps({**meta, "version": 99}))
    elif damage == "shape":
        arrays["adv_0"] = arrays["adv_0"][:3]
    elif damage == "range":
        arrays["adv_0"] = arrays["adv_0"] + 2.0
    bad = tmp_path / "bad.npz"
    if damage == "pickle":
        np.save(bad.with_suffix(".npy"), np.array([object()], dtype=object), allow_pickle=True)
        bad.write_bytes(bad.with_suffix(".npy").read_bytes())
    else:
        np.savez(bad, **arrays)
    with pytest.raises(DataError, match=match) as err:
        load_adversarials(bad)
    assert "\n" not in str(err.value)


def test_replay_refuses_a_model_of_another_shape(world: dict[str, Any], tmp_path: Path) -> None:
    onnx.save(cnn(seed=0, c=1, hw=12), tmp_path / "other.onnx")
    with pytest.raises(DataError, match="takes inputs of shape"):
        replay(tmp_path / "other.onnx", world["set"])


def test_restricted_adaptive_columns_replay_their_recorded_successes(
        world: dict[str, Any], tmp_path: Path) -> None:
    """The adaptive gradient entries attack only what the cheaper columns left; the samples they
    skipped count as fooled and are saved with the example that fooled them, so a replay on the
    same model finds every recorded success (not the clean input, which would not fool)."""
    d = world["root"]
    out = tmp_path / "adaptive.npz"
    assert main(["attack", str(d / "float.onnx"), "--data", f"npz:{d / 'd.npz'}", "--suite",
                 "white,adaptive", "--attacks", "clean,pgd:eps=0.3,pgd-cw=0.3,apgd-ce=0.3",
                 "--batch-size", "10", "--save-adversarials", str(out), "-q",
                 "-o", str(tmp_path / "r.json")]) == 0
    s = load_adversarials(out)
    assert {"adaptive/pgd-cw", "adaptive/apgd-ce"} <= set(s.keys)
    pgd = s.fooled[s.keys.index("white/pgd")]
    assert (pgd & s.clean_correct).any()  # the cascade skipped some samples
    r = replay(d / "float.onnx", out)
    for row in r.rows:
        assert row.still_fooled.k == row.still_fooled.n, (row.key, row.still_fooled)
        assert row.robust == row.recorded
