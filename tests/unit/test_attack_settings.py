"""Attack control from the command line: '--attacks name[=eps][:key=value,...]' sets any setting
of an attack (eps and steps as fractions too), is validated before a model is loaded, and the
eps sweep runs only when asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from qrdeploy.attacks import L2PGD, PGD
from qrdeploy.cli import main
from qrdeploy.errors import ConfigError
from qrdeploy.evaluation.suites import Origin, build_suite, parse_attacks


def test_settings_of_one_attack_and_fractions() -> None:
    suite = build_suite("white", "cifar10",
                        "clean,pgd:eps=8/255,steps=100,step=1/255,restarts=5,fgsm-s=4/255")
    by = {c.key: c for c in suite.columns}
    pgd = by["white/pgd"].attack
    assert isinstance(pgd, PGD)
    assert (pgd.eps, pgd.steps, pgd.step, pgd.restarts) == pytest.approx((8 / 255, 100, 1 / 255,
                                                                         5))
    assert by["white/pgd"].eps == pytest.approx(8 / 255) and by["white/pgd"].origin is Origin.USER
    assert by["white/fgsm-s"].eps == pytest.approx(4 / 255)
    assert list(by) == ["clean", "white/fgsm-s", "white/pgd"]


def test_the_old_forms_still_work() -> None:
    suite = build_suite("paper", "mnist", "pgd=0.2,black/fgsm-s=8/255")
    assert [(c.key, c.eps) for c in suite.columns] == [("white/pgd", 0.2),
                                                       ("black/fgsm-s", pytest.approx(8 / 255))]


def test_the_issue_example_targeted_with_restarts() -> None:
    (col,) = build_suite("white", "cifar10",
                         "pgd:eps=8/255,steps=100,step=1/255,restarts=5,targeted").columns
    assert isinstance(col.attack, PGD) and col.attack.targeted and col.attack.restarts == 5
    (col,) = build_suite("white", "mnist", "pgd:random_start=false").columns
    assert isinstance(col.attack, PGD) and not col.attack.random_start


def test_l2_pgd_leaves_the_linf_worst_case() -> None:
    (col,) = build_suite("white", "mnist", "pgd:norm=l2,eps=1.5,steps=40").columns
    assert isinstance(col.attack, L2PGD) and col.attack.eps == 1.5 and col.attack.steps == 40
    assert col.eps is None and not col.bounded


def test_adaptive_entries_take_settings_too() -> None:
    (col,) = build_suite("adaptive", "mnist", "apgd-ce:steps=20").columns
    assert col.attack.attack.steps == 20  # type: ignore[union-attr]


def test_parse_keeps_items_and_settings_apart() -> None:
    items = parse_attacks("clean,pgd:steps=3,step=0.1,mim,black/fgsm-s=0.2")
    assert [(i.mode, i.name, i.value, i.settings) for i in items] == [
        (None, "clean", None, ()), (None, "pgd", None, (("steps", "3"), ("step", "0.1"))),
        (None, "mim", None, ()), ("black", "fgsm-s", 0.2, ())]


@pytest.mark.parametrize(("attacks", "match"), [
    ("pgd:size=3", "unknown setting 'size'"),
    ("fgsm-s:steps=3", "FGSM has no setting 'steps'; its settings: eps, loss, norm, temperature"),
    ("pgd:steps=many", "'many' is not a number"),
    ("pgd:norm=l1", "norm must be linf, or l2 for pgd"),
    ("pgd:steps=0", "steps must be"),
    ("pgd:targeted=maybe", "'maybe' is not true or false"),
    ("pgd:eps", "write settings as key=value"),
], ids=["unknown", "not-of-this-attack", "not-a-number", "norm", "range", "flag",
        "no-value"])
def test_bad_settings_are_one_line_errors(attacks: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        build_suite("white", "mnist", attacks)
    assert "\n" not in str(err.value)


def test_settings_are_checked_before_any_model_is_opened(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attack", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "r.json"),
                 "--attacks", "pgd:size=3", "-n", "4"]) == 2  # a usage error
    err = capsys.readouterr().err
    assert "unknown setting 'size'" in err and "missing.onnx" not in err


def test_no_sweep_unless_asked() -> None:
    assert build_suite("paper", "mnist", eps=()).sweep == ()
    assert build_suite("paper", "mnist", eps=None).sweep != ()  # the library's paper default
    assert len(build_suite("white", "mnist", "pgd", eps=(0.1, 0.2)).sweep) == 2
