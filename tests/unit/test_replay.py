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
    for guard in (True, False):  # replay's own line, before the guard (whose advice is attack's)
        with pytest.raises(DataError, match=r"takes inputs of shape \(1, 12, 12\), the set holds "
                                            r"\(1, 8, 8\); replay on a model of the same task"):
            replay(tmp_path / "other.onnx", world["set"], guard=guard)


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


def test_replay_checks_the_input_contract_like_eval(world: dict[str, Any], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The same network taking NHWC input: replay names --input-spec layout=nhwc (it said "replay
    on a model of the same task"), runs with it, and --no-input-guard skips the guard."""
    from onnx import TensorProto, helper

    nchw = cnn(seed=0, c=1, hw=8)
    first = nchw.graph.input[0].name
    for node in nchw.graph.node:
        node.input[:] = ["nchw" if i == first else i for i in node.input]
    nchw.graph.node.insert(0, helper.make_node("Transpose", ["img"], ["nchw"], perm=[0, 3, 1, 2]))
    del nchw.graph.input[:]
    nchw.graph.input.append(helper.make_tensor_value_info("img", TensorProto.FLOAT,
                                                          ["N", 8, 8, 1]))
    onnx.save(nchw, tmp_path / "nhwc.onnx")
    model, adv = str(tmp_path / "nhwc.onnx"), str(world["set"])
    assert main(["replay", model, adv]) == 1
    err = capsys.readouterr().err
    assert "input contract mismatch" in err and "--input-spec layout=nhwc" in err
    assert main(["replay", model, adv, "--input-spec", "layout=nhwc", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(c["still_fooled"]["k"] == c["still_fooled"]["n"] for c in doc["columns"])
    assert main(["replay", model, adv, "--no-input-guard"]) == 1
    assert "takes inputs of shape (8, 8, 1)" in capsys.readouterr().err


def test_a_uint8_nhwc_model_is_told_its_whole_contract(world: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """The integer graph as converters from NHWC runtimes ship it (uint8 NHWC input), replayed
    without --input-spec: one line advising the whole contract, which then runs (it said
    "expected a float32 input", then the layout on the next run)."""
    from tests.unit.onnx_builders import uint8_input

    onnx.save(uint8_input(onnx.load(world["root"] / "int8.onnx"), nhwc=True), tmp_path / "u8.onnx")
    model, adv = str(tmp_path / "u8.onnx"), str(world["set"])
    assert main(["replay", model, adv]) == 1
    assert capsys.readouterr().err.endswith(
        "the model's input shape fits the images only as NHWC; pass --input-spec "
        "range=0-255,layout=nhwc,dtype=uint8 (or --no-input-guard to go on as declared)\n")
    assert main(["replay", model, adv, "--input-spec", "range=0-255,layout=nhwc,dtype=uint8",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clean"]["n"] == len(world["x"])


def test_a_model_of_another_task_is_named_as_such(world: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Inputs of another size (a CIFAR-shaped model on an MNIST-shaped set): replay's own line,
    not the guard's advice to pass --data, an option replay does not have."""
    onnx.save(cnn(seed=0, c=3, hw=8), tmp_path / "rgb.onnx")
    assert main(["replay", str(tmp_path / "rgb.onnx"), str(world["set"])]) == 1
    err = capsys.readouterr().err
    assert "takes inputs of shape (3, 8, 8), the set holds (1, 8, 8); replay on a model of the " \
        "same task" in err
    assert "--data" not in err


def test_a_uint8_model_is_replayed_on_8_bit_images(tmp_path: Path) -> None:
    """dtype=uint8: the saved inputs are rounded to k/255, what the uint8 input gets on the
    device. A threshold model at pixel 100.3/255 and an adversarial pixel of 100.4/255: as a
    float it is above the threshold (not fooled), as the 8-bit pixel 100/255 it is below."""
    from onnx import TensorProto, helper, numpy_helper

    from qrdeploy.evaluation.replay import FORMAT, VERSION
    from qrdeploy.graphio.inputspec import InputContract

    t = 100.3
    w = np.array([[1, 0, 0, 0], [-1, 0, 0, 0]], np.float32)
    nodes = [helper.make_node("Cast", ["u8"], ["raw"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["raw"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "threshold",
                          [helper.make_tensor_value_info("u8", TensorProto.UINT8, ["N", 1, 2, 2])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(np.array([-t, t], np.float32), "b")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "u8.onnx")
    x = np.full((1, 1, 2, 2), 110 / 255, np.float32)
    adv = x.copy()
    adv[0, 0, 0, 0] = 100.4 / 255
    meta = {"format": FORMAT, "version": VERSION, "victim": {"name": "m", "sha256": "0" * 64},
            "data": {"name": "d", "split": "test", "n": 1, "fingerprint": "0"},
            "labels": "true", "seed": 0,
            "columns": [{"key": "white/pgd", "mode": "white", "eps": 0.1, "attack": "PGD"}]}
    np.savez(tmp_path / "set.npz", meta=np.array(json.dumps(meta)),
             sample_ids=np.zeros(1, np.int64), labels=np.zeros(1, np.int64), x=x,
             clean_correct=np.ones(1, bool), adv_0=adv, fooled_0=np.zeros(1, bool))
    contract = InputContract.from_options("dtype=uint8,range=0-255", None, None, False)
    r = replay(tmp_path / "u8.onnx", tmp_path / "set.npz", contract, guard=False)
    assert r.clean.k == 1 and r.rows[0].robust.k == 0  # the 8-bit pixel crosses the threshold
