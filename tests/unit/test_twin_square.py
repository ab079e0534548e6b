"""Square on the float-activation twin of an integer graph (adaptive `square-twin`, masking
check `twin-stronger`).

The plateau graph below is the failure the entry exists for, built so that its outcome does not
depend on the machine: a linear two-class model on 16 x 16 images whose logits pass through one
QuantizeLinear / DequantizeLinear pair of scale 2 (as onnxruntime's QDQ quantizer quantizes
logits). The varying logit has checkerboard weights of +-0.1, so every Square window moves it by
a few multiples of 0.06 while the quantized logit moves only when it crosses an odd integer:
Square on the graph sees no candidate that strictly lowers the margin and stalls at its start,
although the graph is fooled wherever the float logit exceeds 5.0 (reachable: up to 7.68 at
eps 0.3). The twin's logits are continuous, so Square climbs them, and it stops at the first
point that fools the twin (float logit >= 5.04 on the lattice of 0.06 steps, never in the tie
window (4.99, 5.0]), which fools the graph too."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.attacks.adaptive import AdaptiveAttack, Role, adaptive_suite
from qrdeploy.attacks.square import Square
from qrdeploy.cli import main
from qrdeploy.errors import ConfigError
from qrdeploy.evaluation.masking import Arm, CheckName, check_twin
from qrdeploy.evaluation.suites import INTEGER_ENTRIES, Family, build_suite, with_integer_columns
from qrdeploy.model.ortmodel import OrtModel

SIDE, W, Z1, SCALE, EPS, QUERIES = 16, 0.1, 4.99, 2.0, 0.3, 3000
Batch = tuple[np.ndarray, np.ndarray]


def plateau_graph(quantized: bool = True) -> onnx.ModelProto:
    """x (N, 1, 16, 16) -> logits (N, 2): class 0 = checkerboard(+-W) . (x - 0.5), class 1 = Z1,
    through QuantizeLinear / DequantizeLinear (scale SCALE, uint8 zero point 128) if quantized."""
    sign = np.where(np.add.outer(np.arange(SIDE), np.arange(SIDE)) % 2 == 0, 1.0, -1.0).ravel()
    weight = np.zeros((SIDE * SIDE, 2), np.float32)  # (256, 2)
    weight[:, 0] = W * sign
    bias = np.array([-0.5 * W * sign.sum(), Z1], np.float32)  # (2,)
    out = "z" if quantized else "logits"
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W", "B"], [out])]
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]
    if quantized:
        nodes += [helper.make_node("QuantizeLinear", ["z", "s", "zp"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["logits"])]
        inits += [numpy_helper.from_array(np.array(SCALE, np.float32), "s"),
                  numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    graph = helper.make_graph(
        nodes, "plateau", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["N", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def batch() -> Batch:
    return np.full((8, 1, SIDE, SIDE), 0.5, np.float32), np.ones(8, np.int64)


def twin_entry(queries: int = QUERIES) -> AdaptiveAttack:
    (entry,) = [e for e in adaptive_suite(EPS, queries=queries, integer=True)
                if e.role is Role.TWIN]
    return entry


def test_the_twin_of_an_integer_graph_has_float_activations(batch: Batch) -> None:
    model = OrtModel(plateau_graph())
    twin = model.activation_twin()
    assert twin is not None and model.activation_twin() is twin  # built once
    assert not {n.op_type for n in twin.deployed.graph.node} & {"QuantizeLinear",
                                                                 "DequantizeLinear"}
    x, _ = batch
    np.testing.assert_array_equal(model.logits(x), [[0.0, 4.0]] * 8)  # rounded to steps of 2
    np.testing.assert_allclose(twin.logits(x), [[0.0, Z1]] * 8, atol=1e-5)
    assert OrtModel(plateau_graph(quantized=False)).activation_twin() is None


def test_square_stalls_on_quantized_logits_and_the_twin_breaks_through(batch: Batch) -> None:
    model = OrtModel(plateau_graph())
    x, y = batch
    own = Square(eps=EPS, queries=QUERIES)(model, x, y, seed=0)
    assert not own.fooled.any()  # no window crosses a quantization step: a plateau
    res = twin_entry()(model, x, y, seed=0)
    assert res.fooled.all()  # scored on the integer graph
    z = model.logits(res.x_adv)
    assert (z.argmax(1) == 0).all() and np.abs(res.x_adv - x).max() <= EPS + 1e-6
    c = check_twin(Arm("adaptive/square-twin", ~res.fooled, EPS),
                   [Arm("adaptive/square", ~own.fooled, EPS)])
    assert c.name is CheckName.TWIN_STRONGER and c.ran and c.fired
    assert "breaks 8 of 8 samples" in c.detail


@pytest.mark.parametrize(("added", "fired"), [(0, False), (2, False), (5, True), (12, True)])
def test_twin_check_fires_on_what_the_twin_adds_to_the_graphs_own_worst_case(
        added: int, fired: bool) -> None:
    """200 samples; the graph's own attacks leave 120 (two arms, each alone leaves more); the
    twin leaves those 120 less `added`, and breaks many the graph's attacks broke too (which
    must not count). The paired rule: more than 2 points and 2 standard errors."""
    own = np.zeros(200, bool)
    own[:120] = True
    white, square = own.copy(), own.copy()
    white[120:140] = True  # each arm alone leaves samples the other breaks
    square[140:150] = True
    twin = own.copy()
    twin[:added] = False  # the twin's extra successes
    twin[150:] = False  # the twin also breaks what the graph's own attacks broke
    c = check_twin(Arm("adaptive/square-twin", twin, EPS),
                   [Arm("adaptive/pgd-cw", white, EPS), Arm("adaptive/square", square, EPS)])
    assert c.ran and c.fired is fired and f"breaks {added} of 200" in c.detail
    assert c.statistic == pytest.approx(added / 200)


def test_twin_check_skips_without_a_twin_or_a_comparable_arm() -> None:
    both = np.array([True] * 50 + [False] * 50)
    for twin, graph, why in ((None, [Arm("adaptive/square", both, EPS)], "integer graph"),
                             (Arm("adaptive/square-twin", both, 0.3), [Arm("pgd", both, 0.1)],
                              "twin's eps")):
        skipped = check_twin(twin, graph, integer=twin is not None)
        assert not skipped.ran and not skipped.fired and why in skipped.detail
        assert skipped.applies is (twin is not None)  # a float graph: it does not apply
    missing = check_twin(None, [Arm("adaptive/square", both, EPS)], integer=True)
    assert not missing.ran and missing.applies  # an integer graph without its twin's arm


def test_the_twin_entry_refuses_a_float_graph_in_one_line(batch: Batch) -> None:
    x, y = batch
    with pytest.raises(ConfigError, match="quantized at run time") as err:
        twin_entry(100)(OrtModel(plateau_graph(quantized=False)), x, y, seed=0)
    assert "\n" not in str(err.value)


def test_integer_runs_get_the_twin_column_at_the_suites_adaptive_eps() -> None:
    assert "square-twin" in INTEGER_ENTRIES
    base = build_suite("adaptive", Family.MNIST)
    assert "square-twin" not in {c.name for c in base.columns}  # float graphs: not run
    at3 = replace(base, columns=tuple(
        replace(c, attack=next(e for e in adaptive_suite(0.3) if e.name == c.name), eps=0.3)
        for c in base.columns))
    suite, added = with_integer_columns(at3)
    assert added == ["adaptive/square-twin"]
    (col,) = [c for c in suite.columns if c.name == "square-twin"]
    assert isinstance(col.attack, AdaptiveAttack) and col.attack.role is Role.TWIN
    assert col.eps == 0.3 and col.attack.eps == 0.3


def per_channel_activation_graph() -> onnx.ModelProto:
    """x (N, 1, 6, 6) -> Conv (2 channels) -> QuantizeLinear / DequantizeLinear per channel
    (axis 1) -> Flatten -> Gemm -> logits (N, 3): quantized activations without a float twin."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0.02, 0.03], np.float32), "s"),
             numpy_helper.from_array(np.array([128, 128], np.uint8), "zp"),
             numpy_helper.from_array(rng.normal(0, 0.3, (32, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(3, np.float32), "B")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"], axis=1),
             helper.make_node("Flatten", ["d"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W", "B"], ["logits"])]
    graph = helper.make_graph(
        nodes, "per-channel", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_graph_without_a_twin_is_attacked_without_square_twin_and_says_why(
        tmp_path: Path) -> None:
    """Per-channel activation quantization has no float twin (graphio.twin refuses it): the
    model reports why, and `attack` runs the other integer columns and notes the gap."""
    model = per_channel_activation_graph()
    ort_model = OrtModel(model)
    assert ort_model.bpda and ort_model.activation_twin() is None
    assert ort_model.twin_error is not None and "per-channel" in ort_model.twin_error
    path, data, out = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "r.json"
    onnx.save(model, path)
    x = np.random.default_rng(1).random((8, 1, 6, 6)).astype(np.float32)
    np.savez(data, x=x, y=ort_model.predict(x))
    assert main(["attack", str(path), "--data", f"npz:{data}", "--suite", "white", "--attacks",
                 "pgd", "--batch-size", "8", "-q", "--no-baseline", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "adaptive/square-twin" not in [c["key"] for c in doc["columns"]]
    assert "adaptive/square" in [c["key"] for c in doc["columns"]]
    assert any("square-twin not run" in n and "per-channel" in n for n in doc["notes"])
