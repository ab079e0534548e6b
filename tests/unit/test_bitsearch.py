"""`qrdeploy harden --search`: the selection rule, the greedy path, exact layer selections, the
TOML recipe it writes, and the whole search on the reference MNIST model (real digits)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qrdeploy.bitsearch.render import write_search
from qrdeploy.bitsearch.search import (
    Confirmed,
    LayerSensitivity,
    Option,
    PathPoint,
    SearchConfig,
    SearchResult,
    choose,
    greedy_path,
    search_file,
)
from qrdeploy.core.markdown import eps_text
from qrdeploy.core.stats import Proportion, non_inferiority
from qrdeploy.data.datasets import load_dataset
from qrdeploy.errors import ConfigError, PassError
from qrdeploy.graphio import graph
from qrdeploy.hardening.encodings import Encoding
from qrdeploy.hardening.integer import Calibration, IntegerActivations
from qrdeploy.hardening.passes import (
    META_BITS,
    GraphPass,
    MuLawMap,
    Recipe,
    WeightQuant,
    exact_selection,
    harden,
    harden_file,
    load_recipe,
    recipe_to_toml,
    rewritten_weight,
)
from qrdeploy.hardening.quant import Granularity
from tests.unit.onnx_builders import mnist_cnn

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "mnist-standard.onnx"


# ---------------------------------------------------------------- the selection rule


def _point(step: int, avg: float, new_ok: int, n: int = 1000, byts: int = 1000) -> PathPoint:
    """A path point whose clean test compares `new_ok` right answers with the float model's n
    (right on all n): losses = n - new_ok; up to 10 losses pass the 2-point margin."""
    old = np.ones(n, bool)
    new = np.arange(n) < new_ok
    return PathPoint(step, {0: Option(8, False)}, avg, 0.0, (), byts, None,
                     non_inferiority(new, old, 0.02))


def test_choose_without_budget_stops_at_the_first_failure() -> None:
    # 1000, 998, 995 pass; 900 fails; 999 after it must not be chosen (fixed sequence)
    path = [_point(0, 8, 1000), _point(1, 6, 998), _point(2, 4, 995), _point(3, 3, 900),
            _point(4, 2, 999)]
    assert [p.test.non_inferior for p in path if p.test] == [True, True, True, False, True]
    c = choose(path, SearchConfig(confirm=0))
    assert c.index == 2
    assert "3.00 average bits" in c.reason


def test_choose_with_budget_takes_the_first_point_within_it() -> None:
    path = [_point(0, 8, 1000), _point(1, 6, 998), _point(2, 4, 995), _point(3, 3, 995)]
    assert choose(path, SearchConfig(avg_bits=6, confirm=0)).index == 1
    assert choose(path, SearchConfig(avg_bits=3.5, confirm=0)).index == 3
    # a bytes budget reads the written size
    sized = [_point(i, 8 - i, 1000, byts=1000 - 100 * i) for i in range(4)]
    assert choose(sized, SearchConfig(max_bytes=850, confirm=0)).index == 2


def test_choose_refuses_when_the_budgets_conflict() -> None:
    path = [_point(0, 8, 1000), _point(1, 6, 998), _point(2, 4, 900), _point(3, 3, 995)]
    with pytest.raises(PassError, match="no recipe meets both budgets.*6.00 average bits"):
        choose(path, SearchConfig(avg_bits=3, confirm=0))
    with pytest.raises(PassError, match="no recipe meets the size budget"):
        choose(path, SearchConfig(max_bytes=10, confirm=0))
    bad = [_point(0, 8, 900), _point(1, 6, 1000)]
    with pytest.raises(PassError, match="even the widest recipe"):
        choose(bad, SearchConfig(confirm=0))


def test_config_refuses_an_unreachable_or_bad_budget_before_any_work() -> None:
    with pytest.raises(ConfigError, match="narrowest candidate is 2 bits"):
        SearchConfig(avg_bits=1.5)
    with pytest.raises(ConfigError, match="at most 4 bits"):
        SearchConfig(encoding=Encoding.INT4)
    with pytest.raises(ConfigError, match="--search-bits"):
        SearchConfig(bits=(0, 3))
    with pytest.raises(ConfigError, match="--max-drop"):
        SearchConfig(max_drop=2)
    assert SearchConfig(bits=(3, 8, 3)).bits == (8, 3)


# ---------------------------------------------------------------- the path


def _layer(index: int, params: int, gain: float, bits: tuple[int, ...]) -> LayerSensitivity:
    errors = {Option(b, False): 2.0 ** -b for b in bits}
    return LayerSensitivity(index, f"n{index}", f"w{index}", "Gemm", params, 1.0, gain, 0.0,
                            errors)


def test_greedy_path_walks_from_widest_to_narrowest_one_step_at_a_time() -> None:
    bits = (8, 4, 2)
    layers = [_layer(0, 100, 10.0, bits), _layer(1, 1000, 0.1, bits), _layer(2, 10, 5.0, bits)]
    path = greedy_path(layers, bits)
    assert len(path) == 3 * (len(bits) - 1) + 1
    assert all(o.bits == 8 for o in path[0].assignment.values())
    assert all(o.bits == 2 for o in path[-1].assignment.values())
    avg = [p.avg_bits for p in path]
    assert all(a > b for a, b in zip(avg, avg[1:], strict=False))
    for a, b in zip(path, path[1:], strict=False):  # exactly one layer narrows per step
        changed = [i for i in a.assignment if a.assignment[i] != b.assignment[i]]
        assert len(changed) == 1
    # the big insensitive layer goes first, the small sensitive one last
    assert path[1].assignment[1].bits == 4 and path[2].assignment[1].bits == 2
    assert [p.assignment[2].bits for p in path] == [8, 8, 8, 8, 4, 4, 2]
    assert [p.assignment[0].bits for p in path] == [8, 8, 8, 4, 4, 2, 2]
    est = [p.estimate for p in path]
    assert all(a < b for a, b in zip(est, est[1:], strict=False))


def test_mulaw_option_is_taken_only_where_it_lowers_the_error() -> None:
    errors = {Option(4, False): 0.1, Option(4, True): 0.05, Option(2, False): 0.3,
              Option(2, True): 0.9}
    s = LayerSensitivity(0, "n", "w", "Conv", 10, 1.0, 1.0, 0.0, errors)
    assert s.best(4) == Option(4, True) and s.best(2) == Option(2, False)


# ---------------------------------------------------------------- recipes


def test_exact_selection_names_each_layer_and_escapes_glob_characters() -> None:
    model = mnist_cnn(0)
    layers = graph.weight_layers(model)
    spec = exact_selection(layers, layers[1:3])
    hard, records = harden(model, [WeightQuant(3, layers=spec)], "float")
    assert sorted({r.tensor for r in records}) == sorted(lyr.weight_name for lyr in layers[1:3])
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    old = layers[0].weight_name
    for t in renamed.graph.initializer:
        if t.name == old:
            t.name = "w[0]*?"
    for node in renamed.graph.node:
        node.input[:] = ["w[0]*?" if i == old else i for i in node.input]
    rl = graph.weight_layers(renamed)
    assert exact_selection(rl, rl[:1]) == "w[[]0][*][?]"
    _, recs = harden(renamed, [WeightQuant(3, layers=exact_selection(rl, rl[:1]))], "float")
    assert [r.tensor for r in recs] == ["w[0]*?"]
    for bad in ("a,b", "Conv"):
        for t in renamed.graph.initializer:
            if t.name == rl[0].weight_name:
                t.name = bad
        for node in renamed.graph.node:
            node.input[:] = [bad if i == rl[0].weight_name else i for i in node.input]
        rl = graph.weight_layers(renamed)
        with pytest.raises(PassError, match="cannot be named"):
            exact_selection(rl, rl[:1])


def test_recipe_toml_round_trips(tmp_path: Path) -> None:
    recipe = Recipe((MuLawMap(255.0, layers="w[[]1]"),
                     WeightQuant(3, Granularity.CHANNEL, layers="a,b"),
                     WeightQuant(8, narrow=False)), Encoding.QDQ,
                    IntegerActivations(100, Calibration.ENTROPY, 'npz:dir "x"/d.npz:train'))
    path = tmp_path / "r.toml"
    path.write_text(recipe_to_toml(recipe, "two\nlines"), encoding="utf-8")
    assert load_recipe(path) == recipe
    assert path.read_text(encoding="utf-8").startswith("# two\n# lines\n")


def test_rewritten_weight_is_what_harden_stores() -> None:
    model = mnist_cnn(1)
    layer = graph.weight_layers(model)[1]
    w = numpy_helper.to_array(graph.initializer_map(model)[layer.weight_name])
    gp: list[GraphPass] = [MuLawMap(100.0, layers="all"),
                           WeightQuant(3, Granularity.CHANNEL, layers="all")]
    hard, _ = harden(model, gp, "float")
    stored = numpy_helper.to_array(graph.initializer_map(hard)[layer.weight_name])
    np.testing.assert_array_equal(rewritten_weight(layer, w, gp), stored)


# ---------------------------------------------------------------- the search on a real model


CFG = SearchConfig(avg_bits=4.1, confirm=24, steps=5, queries=60, frontier=1, seed=3)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchResult, Path]:
    out = tmp_path_factory.mktemp("search") / "api.onnx"
    result = search_file(MODEL, out, CFG, calibrate=300)
    write_search(result, out.with_name("api.search"), str(out), plot=False)
    return result, out


def test_search_meets_both_budgets_and_writes_the_chosen_graph(
        searched: tuple[SearchResult, Path]) -> None:
    result, out = searched
    chosen = result.chosen
    assert chosen.avg_bits <= 4.1
    assert all(p.test is not None and p.test.non_inferior
               for p in result.path[: result.choice.index + 1])
    assert result.choice.index == next(i for i, p in enumerate(result.path) if p.avg_bits <= 4.1)
    # the written file holds the chosen widths, layer by layer
    written = graph.load_model(out)
    bits = json.loads(graph.get_metadata(written)[META_BITS])
    layers = {lyr.index: lyr for lyr in graph.weight_layers(written)}
    for s in result.layers:
        assert bits[layers[s.index].weight_name] == chosen.assignment[s.index].bits
    # the hardened model is smaller than the float one (qdq: one byte per weight)
    assert result.written_bytes == out.stat().st_size < 0.3 * MODEL.stat().st_size
    assert result.validation == "mnist-5k" and result.float_clean.n == 300


def test_search_sensitivities_fall_with_more_bits(searched: tuple[SearchResult, Path]) -> None:
    result, _ = searched
    assert [s.node for s in result.layers] == [lyr.node_name for lyr in
                                               graph.weight_layers(graph.load_model(MODEL))]
    for s in result.layers:
        e = [s.errors[Option(b, False)] for b in CFG.bits]  # widest first
        assert all(a < b for a, b in zip(e, e[1:], strict=False)), (s.node, e)
        assert np.isfinite(s.gain) and s.gain > 0
        assert s.probe_logit_error > 0


def test_search_confirmation_is_paired_on_the_same_images(
        searched: tuple[SearchResult, Path]) -> None:
    result, _ = searched
    labels = [c.label for c in result.confirmed]
    assert labels[:2] == ["float", "chosen"] and len(labels) == 3
    base = result.confirmed[0]
    for c in result.confirmed[1:]:
        assert c.adaptive.n == base.adaptive.n == CFG.confirm
        assert c.delta == pytest.approx((c.adaptive.k - base.adaptive.k) / CFG.confirm)
        assert c.delta is not None and c.delta_ci95 is not None
        assert c.delta_ci95[0] <= c.delta <= c.delta_ci95[1]
        assert c.mcnemar_p is not None and 0 <= c.mcnemar_p <= 1
        assert c.adaptive.k <= c.clean.k  # the worst case counts clean errors as fooled
    assert result.confirmed[1].final_graph and result.eps == pytest.approx(0.1)


def test_search_files_replay_byte_for_byte(searched: tuple[SearchResult, Path],
                                           tmp_path: Path) -> None:
    result, out = searched
    folder = out.with_name("api.search")
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# Recipe search: mnist-standard.onnx")
    assert f"{result.chosen.avg_bits:.2f} average weight bits" in report
    assert "Adaptive worst case" in report and "(chosen)" in report
    data = json.loads((folder / "search.json").read_text(encoding="utf-8"))
    assert data["choice"]["step"] == result.choice.index
    assert len(data["path"]) == len(result.path)
    replay = harden_file(MODEL, tmp_path / "replay.onnx", load_recipe(folder / "recipe.toml"))
    assert replay.path.read_bytes() == out.read_bytes()


def test_search_cli_equals_the_api_and_exits_cleanly(searched: tuple[SearchResult, Path],
                                                     tmp_path: Path) -> None:
    result, out = searched
    cli = tmp_path / "cli.onnx"
    cmd = [sys.executable, "-m", "qrdeploy", "harden", "--seed", "3", str(MODEL), "-o", str(cli),
           "--search", "--avg-bits", "4.1", "--calibrate", "300", "--confirm", "24",
           "--confirm-steps", "5", "--confirm-queries", "60", "--frontier", "1", "--no-plot"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "**Chosen:**" in done.stdout and "wrote" in done.stdout
    assert cli.read_bytes() == out.read_bytes()  # deterministic, whichever entry point
    api_json = json.loads(out.with_name("api.search").joinpath("search.json").read_text())
    cli_json = json.loads(tmp_path.joinpath("cli.search", "search.json").read_text())
    assert api_json == cli_json
    assert sorted(p.name for p in (tmp_path / "cli.search").iterdir()) == \
        ["path.cache.npz", "recipe.toml", "report.md", "search.json"]  # attack states removed


def test_search_cli_errors_are_one_line(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "qrdeploy", "harden", str(MODEL), "-o",
            str(tmp_path / "x.onnx"), "--search"]
    for extra, message, code in (
            (["--bits", "3"], "--search chooses the bits itself", 2),  # usage: options clash
            (["--avg-bits", "1"], "narrowest candidate is 2 bits", 1),
            (["--search-bits", "two"], "--search-bits takes a range", 2),
            (["--confirm-eps", "8/2x55"], "--confirm-eps: '8/2x55' is not a", 1)):
        done = subprocess.run(base + extra, capture_output=True, text=True, check=False)
        assert done.returncode == code, (extra, done.stderr)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and message in lines[0], (extra, done.stderr)
    assert not (tmp_path / "x.onnx").exists()


def test_search_with_int8_activations_writes_the_integer_graph(tmp_path: Path) -> None:
    cfg = SearchConfig(bits=(8, 4), avg_bits=8, confirm=0,
                       activations=IntegerActivations(300, Calibration.MINMAX, "mnist-5k:train"))
    out = tmp_path / "int8.onnx"
    result = search_file(MODEL, out, cfg, calibrate=300)
    ops = {n.op_type for n in graph.load_model(out).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert result.recipe.activations is not None and not result.confirmed
    assert result.final_test is not None and result.final_test.n == 300
    assert result.written_bytes == out.stat().st_size != result.chosen.bytes  # int8 graph
    write_search(result, tmp_path / "s", str(out), plot=False)
    replay = harden_file(MODEL, tmp_path / "replay.onnx", load_recipe(tmp_path / "s/recipe.toml"),
                         calibration=graph_calibration(300))
    assert replay.path.read_bytes() == out.read_bytes()


def graph_calibration(n: int) -> np.ndarray:
    return load_dataset("mnist-5k", "train", n=n).x


def test_pareto_plot_draws_points_at_zero_and_full_accuracy(
        searched: tuple[SearchResult, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result, out = searched
    ends = (Confirmed("none", 1, 3.0, 10, Proportion(0, 200), Proportion(0, 200)),
            Confirmed("all", 2, 2.0, 10, Proportion(200, 200), Proportion(200, 200)))
    files = write_search(dataclasses.replace(result, confirmed=result.confirmed + ends),
                         tmp_path / "s", str(out))
    assert files.plot is not None and files.plot.stat().st_size > 1000
    assert "![size against clean accuracy" in files.report.read_text(encoding="utf-8")


def test_a_rerun_with_another_budget_measures_nothing_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qrdeploy.bitsearch.search as bs

    cfg = SearchConfig(bits=(8, 4, 2), avg_bits=8, confirm=0)
    first = search_file(MODEL, tmp_path / "a.onnx", cfg, calibrate=200, state_dir=tmp_path / "s")
    calls: list[int] = []
    real = bs.predict_logits

    def counted(*args: object, **kw: object) -> np.ndarray:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(bs, "predict_logits", counted)
    second = search_file(MODEL, tmp_path / "b.onnx", dataclasses.replace(cfg, avg_bits=4.1),
                         calibrate=200, state_dir=tmp_path / "s")
    assert len(calls) == 1  # the float model's flags only: every probe and point came cached
    assert [(p.clean, p.bytes) for p in second.path] == [(p.clean, p.bytes) for p in first.path]
    assert [s.gain for s in second.layers] == [s.gain for s in first.layers]
    assert second.chosen.avg_bits <= 4.1 < first.chosen.avg_bits  # the new budget decided
    # other path settings: the cache is not reused
    calls.clear()
    search_file(MODEL, tmp_path / "c.onnx", dataclasses.replace(cfg, bits=(8, 3)),
                calibrate=200, state_dir=tmp_path / "s")
    assert len(calls) > 1


def test_eps_is_written_as_the_user_would() -> None:
    assert [eps_text(e) for e in (0.3, 0.1, 4 / 255, 8 / 255, 0.5, 0.2, 0.0314, 1.0)] == \
        ["0.3", "0.1", "4/255", "8/255", "0.5", "0.2", "0.0314", "1"]
