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
