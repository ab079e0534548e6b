"""Reports: markdown and CSV tables with intervals (models as rows, attacks as columns), paired
tests that say when a difference is not significant, eps-curve PNGs with matplotlib, the tables
and a note with --no-plots, and one error without matplotlib in every command that plots."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from qrdeploy.core.stats import Proportion
from qrdeploy.evaluation.build import build_results
from qrdeploy.evaluation.results import Results, write_results
from qrdeploy.evaluation.runner import RunConfig, Subject, evaluate
from qrdeploy.evaluation.suites import build_suite
from qrdeploy.report.render import PLOTS_HINT, fmt_cell, render_csv, render_markdown, write_report
from tests.unit.attack_models import NumpyLinear

ATTACKS = "clean,fgsm-s,pgd,normal"


def linear(seed: int, scale: float = 1.0) -> NumpyLinear:
    r = np.random.default_rng(seed)
    return NumpyLinear(r.normal(size=(4, 16)) * scale, r.normal(size=4) * 0.1)


def make_doc(model: NumpyLinear, name: str, sha: str, data_seed: int = 1) -> Results:
    x = np.random.default_rng(data_seed).uniform(size=(40, 1, 4, 4)).astype(np.float32)
    y = linear(0).logits(x).argmax(1)
    suite = build_suite("paper", "mnist", attacks=ATTACKS, eps=(0.05, 0.1, 0.2))
    ev = evaluate(Subject(name, sha * 64, model), x, y, suite, config=RunConfig(batch_size=20))
    return build_results(ev, data_name="toy", split="test")


@pytest.fixture(scope="module")
def docs() -> list[Results]:
    return [make_doc(linear(0), "a.onnx", "a"), make_doc(linear(0, 1.02), "b.onnx", "b"),
            make_doc(linear(0), "a.onnx", "c", data_seed=2)]


@pytest.mark.parametrize(("cell", "attacked", "text"), [
    (Proportion(9777, 10000), None, "97.77 [97.5, 98.0]"),
    (Proportion(5, 10), Proportion(6, 10), "50.00 [23.7, 76.3] (att. 60.00)"),
    (Proportion(5, 10), Proportion(5, 10), "50.00 [23.7, 76.3]"),
], ids=["plain", "attacked-differs", "attacked-same"])
def test_cell_format(cell: Proportion, attacked: Proportion | None, text: str) -> None:
    assert fmt_cell(cell, attacked) == text


def test_markdown_has_models_as_rows_and_attacks_as_columns(docs: list[Results]) -> None:
    md = render_markdown(docs, [], None)
    header = next(line for line in md.splitlines() if line.startswith("| model | clean"))
    assert header.split(" | ")[2:5] == ["white/fgsm-s", "white/pgd", "noise/normal"]
    rows = [line for line in md.splitlines() if line.startswith("| a.onnx (")]
    assert len(rows) >= 2  # same name, made unique by sha256 prefix
    pgd = docs[0].column("white/pgd")
    assert pgd is not None
    lo, hi = pgd.robust.interval
    assert f"{100 * pgd.robust.value:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]" in md
    assert "qrdeploy [DEFAULT]" in md and "mean over draws" in md
    noise = docs[0].column("noise/normal").noise  # type: ignore[union-attr]
    assert noise is not None
    assert f"(worst of 10: {100 * noise.worst.value:.2f})" in md  # the paper's mean first


def test_paired_tests_say_not_significant(docs: list[Results]) -> None:
    md = render_markdown(docs, [], None)
    section = md.split("## Paired differences between models")[1].split("##")[0]
    assert "**not significant**" in section  # a 2 % weight change: no detectable difference
    assert "not compared" in section and "different samples" in section  # the third result


def test_csv_has_one_row_per_model_and_cell(docs: list[Results]) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(docs))))
    per_model = 1 + 2 + 2 + 1  # clean, fgsm-s and pgd, noise mean and worst of k, worst case
    assert len(rows) == 3 * per_model
    pgd = next(r for r in rows if r["column"] == "white/pgd")
    cell = docs[0].column("white/pgd").robust  # type: ignore[union-attr]
    assert float(pgd["robust"]) == pytest.approx(cell.value, abs=1e-6)
    assert float(pgd["ci_low"]) <= float(pgd["robust"]) <= float(pgd["ci_high"])
    assert pgd["origin"] == "default" and pgd["eps"] == "0.1"
    noise = docs[0].column("noise/normal").noise  # type: ignore[union-attr]
    assert noise is not None
    mean, worst = (r for r in rows[:per_model] if r["column"].startswith("noise/normal"))
    assert float(mean["robust"]) == pytest.approx(noise.mean, abs=1e-6) and mean["k"] == ""
    assert worst["column"] == "noise/normal worst of 10" and int(worst["k"]) == noise.worst.k


def _files(docs: list[Results], tmp: Path) -> list[Path]:
    return [write_results(tmp / f"r{i}.json", d) for i, d in enumerate(docs)]


def test_report_with_matplotlib_writes_plots(docs: list[Results], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    files = write_report(_files(docs[:2], tmp_path), tmp_path / "out" / "report.md")
    assert [p.name for p in files.plots] == ["report-eps-fgsm.png", "report-eps-pgd.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files.plots)
    md = files.markdown.read_text()
    assert "![report-eps-pgd](report-eps-pgd.png)" in md and files.plot_note is None
    assert files.csv.read_text().startswith("model,sha256,column")


def test_report_without_plots_says_how_and_keeps_tables(
        docs: list[Results], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    files = write_report(_files(docs[:2], tmp_path), tmp_path / "report.md", plots=False)
    md = files.markdown.read_text()
    assert files.plots == () and files.plot_note == PLOTS_HINT
    assert "pip install 'qrdeploy[plots]'" in md and "| model | clean" in md
    assert not list(tmp_path.glob("*.png")) and files.csv.exists()


def test_every_plotting_command_gives_one_error_without_matplotlib_before_any_work(
        docs: list[Results], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """margins --plot, lipschitz --plot, report and reproduce: exit 1 with one line that names
    the extra and how to run without plots, and nothing computed or written first."""
    from qrdeploy.cli import main

    model = str(Path(__file__).resolve().parents[2] / "models" / "mnist-standard.onnx")
    results = [str(p) for p in _files(docs[:2], tmp_path)]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    commands = {
        "margins": ["margins", model, "--data", "mnist-5k", "-n", "5", "--plot",
                    str(tmp_path / "m.png")],
        "lipschitz": ["lipschitz", model, "--bits", "3", "--plot", str(tmp_path / "l.png"),
                      "-o", str(tmp_path / "l.json")],
        "report": ["report", *results, "-o", str(tmp_path / "rep" / "report.md")],
        "reproduce": ["reproduce", "--profile", "smoke", "-o", str(tmp_path / "repro")],
    }
    lines = {}
    for name, argv in commands.items():
        assert main(argv) == 1, name
        err = capsys.readouterr().err.strip()
        assert "\n" not in err, err
        lines[name] = err
    for err in lines.values():
        assert err.startswith("qrdeploy: error: plots need matplotlib, which is not installed; "
                              "pip install 'qrdeploy[plots]' (or run without plots: "), err
    assert lines["report"].endswith("qrdeploy report --no-plots)")
    assert lines["reproduce"].endswith("qrdeploy reproduce --no-plots)")
    assert lines["margins"].endswith("leave out --plot)") and lines["lipschitz"] == lines["margins"]
    assert not (tmp_path / "l.json").exists() and not (tmp_path / "rep").exists()
    assert not (tmp_path / "repro").exists()
