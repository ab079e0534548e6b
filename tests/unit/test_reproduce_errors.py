"""Error paths of `qrdeploy reproduce`: one-line ConfigErrors naming the fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qrdeploy.cli import main
from qrdeploy.commands.reproduce import parse_models
from qrdeploy.errors import ConfigError
from qrdeploy.paper.cache import check_force
from qrdeploy.paper.pipeline import reproduce
from qrdeploy.paper.profiles import Budget, get_profile

CASES = [
    pytest.param(lambda: get_profile("fast"), "unknown profile 'fast'", id="unknown-profile"),
    pytest.param(lambda: check_force(["bogus"]), "names no step", id="force-unknown-kind"),
    pytest.param(lambda: parse_models(["fl"]), "REGIME=PATH", id="model-without-path"),
    pytest.param(lambda: Budget(cw_iterations=0), "cw_iterations must be >= 1",
                 id="budget-zero-iterations"),
]


@pytest.mark.parametrize(("call", "match"), CASES)
def test_config_errors(call: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()  # type: ignore[operator]


def test_unknown_regime_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown regime"):
        reproduce("smoke", tmp_path, models={"ensemble": tmp_path / "m.onnx"})


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["--model", "orig=/nonexistent.onnx"], 1, "--model orig=/nonexistent.onnx: no such file"),
    (["--models", "/nonexistent"], 1, "--models /nonexistent: no such folder"),
    (["--model", "bogus=m.onnx"], 2, "--model names unknown regime(s) bogus"),
], ids=["model-path", "models-folder", "unknown-regime"])
def test_explicit_model_paths_must_exist(argv: list[str], code: int, message: str,
                                         tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A path the user typed that is not there is an error, not a table of 'not run' cells."""
    assert main(["reproduce", "--profile", "smoke", "-o", str(tmp_path / "run"), *argv]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_unknown_hardening_regime_of_a_custom_profile_is_refused(tmp_path: Path) -> None:
    profile = replace(get_profile("smoke"), hardening_regimes=("adv-qat", "adv-lip"))
    with pytest.raises(ConfigError, match="unknown hardening regime.*adv-lip; use adv-strong"):
        reproduce(profile, tmp_path)


def test_cli_exit_code_on_bad_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--profile", "smoke", "-o", str(tmp_path), "--force", "x"]) == 1
    assert "--force 'x' names no step" in capsys.readouterr().err


def test_missing_models_and_data_give_a_report_not_a_crash(tmp_path: Path) -> None:
    """paper-cifar with no CIFAR-10 folder and no models: every cell says why it did not run."""
    res = reproduce("paper-cifar", tmp_path / "run", models_dir=tmp_path,
                    data_root=tmp_path / "no-data")
    text = res.report.read_text()
    assert res.events == ()
    assert "not run (model missing" in text and "not run (no CIFAR-10 folder" in text


def test_the_sufficiency_budget_doubles_iterations_restarts_and_cw_search() -> None:
    b = get_profile("quick").budget
    d = b.doubled()
    assert (d.iter_steps, d.pgd_restarts) == (2 * b.iter_steps, 2 * b.pgd_restarts)
    assert (d.cw_binary_steps, d.cw_iterations) == (2 * b.cw_binary_steps, 2 * b.cw_iterations)
    assert (d.adaptive_steps, d.adaptive_queries) == (2 * b.adaptive_steps,
                                                      2 * b.adaptive_queries)


SEARCHED = Path(__file__).resolve().parents[2] / "models/mnist-adversarial-strong.searched.toml"


def test_searched_form_replays_the_recipe_beside_the_model(tmp_path: Path) -> None:
    """The "searched" hardening form is the passes of <stem>.searched.toml, exactly what
    `harden --recipe` applies (fc1 at 3 bits: 7 levels; the rest at 8 bits)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from qrdeploy.hardening.passes import harden, load_recipe
    from qrdeploy.paper import steps
    from qrdeploy.paper.pipeline import searched_recipe
    from tests.unit.onnx_builders import cnn

    src = tmp_path / "net.onnx"
    onnx.save_model(cnn(0), src)
    recipe = searched_recipe(src)
    assert recipe == tmp_path / "net.searched.toml"
    recipe.write_text(SEARCHED.read_text())
    step = steps.harden_step("harden.adv-strong.searched", get_profile("smoke"), src,
                             "searched", recipe)
    assert step.inputs == {"model": src, "recipe": recipe}  # a changed recipe reruns the step
    out = tmp_path / "out"
    out.mkdir()
    step.body(out, tmp_path)
    hardened = onnx.load(out / "model.onnx")
    got = {t.name: numpy_helper.to_array(t) for t in hardened.graph.initializer}
    want, _ = harden(onnx.load(src), list(load_recipe(recipe).passes), "float")
    for t in want.graph.initializer:
        np.testing.assert_array_equal(got[t.name], numpy_helper.to_array(t))
    assert len(np.unique(got["fc1.weight"])) <= 7 < len(np.unique(got["fc2.weight"]))


def test_searched_form_refuses_an_int8_recipe_and_notes_a_missing_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qrdeploy.paper import pipeline, steps
    from qrdeploy.paper.cache import StepCache
    from qrdeploy.paper.collected import Collected
    from qrdeploy.paper.report import hardening_table, header

    bad = tmp_path / "int8.toml"
    bad.write_text(SEARCHED.read_text() + '\n[activations]\nkind = "int8"\n')
    with pytest.raises(ConfigError, match="quantizes activations.*float activations"):
        steps.harden_step("h", get_profile("smoke"), tmp_path / "m.onnx", "searched", bad)
    src = tmp_path / "m.onnx"
    src.write_bytes(b"")
    c = Collected(get_profile("smoke"), 0, {"adv-strong": src, "orig-seed1": None})
    monkeypatch.setitem(pipeline.HARDENING_FORMS, "adv-strong", ("searched",))
    pipeline._hardening_steps(StepCache(tmp_path / "run", ()), c, "adv-strong",
                              None, "", tmp_path, None)  # type: ignore[arg-type]
    assert c.missing["adv-strong:searched"].startswith(
        f"not run (no searched recipe: {tmp_path / 'm.searched.toml'}; write one with")
    assert not c.results
    assert any(line.startswith("- Adv. strong (searched): not run (no searched recipe")
               for line in header(c, {}))
    assert any("| Adv. strong (searched) | not run (no searched recipe" in line
               for line in hardening_table(c))


def test_a_force_pattern_that_matches_no_step_is_said(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """paper-cifar without models or data runs no step: --force 'attack.*' recomputed nothing,
    and the run says so instead of passing in silence."""
    import logging

    caplog.set_level(logging.WARNING)
    reproduce("paper-cifar", tmp_path / "run", models_dir=tmp_path,
              data_root=tmp_path / "no-data", force=["attack.*"])
    assert "--force 'attack.*' matched no step of this run" in caplog.text


def test_the_profile_table_shows_the_sample_counts_that_run() -> None:
    """The bits sweep runs on the n_test samples loaded: a larger bits_n must not be printed as
    if it ran (smoke asked 50 on 8 loaded)."""
    rows = dict(get_profile("smoke").rows())
    assert rows["bits_n"].startswith("8 (asks 50")
    assert rows["sufficiency_n"] == "8"


def test_a_step_that_runs_heads_its_progress_lines_and_logs_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A reproduce log of many steps says which step each progress line belongs to, and when
    each computed step ended; a reused step is silent."""
    import io

    from qrdeploy.core.progress import Line, RunProgress, Stage
    from qrdeploy.paper.cache import Step, StepCache

    out = io.StringIO()

    def body(dest: Path, work: Path) -> None:
        bar = RunProgress([Stage("white/pgd", 4, 1.0)], line=Line(out))
        bar.start("white/pgd")
        (dest / "x.txt").write_text("x")

    cache = StepCache(tmp_path / "run")
    step = Step("attack.orig.q", {"n": 4}, {}, body)
    with caplog.at_level("INFO", logger="qrdeploy.paper.cache"):
        cache.run(step)
        cache.run(step)  # reused
    assert out.getvalue().startswith("[step attack.orig.q: column 1 of 1] white/pgd: 0/4 samples")
    ends = [r.getMessage() for r in caplog.records if r.name == "qrdeploy.paper.cache"]
    assert len(ends) == 1 and ends[0].startswith("step attack.orig.q done in 0s (so far: 1 "
                                                 "computed, 0 reused; ")
