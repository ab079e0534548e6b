"""Reports: a summary block first (recipe, before/after with named paired statistics, verdict,
conclusion), attacks as rows and models as columns with intervals, paired tests with both
statistics named, no Python reprs, links that resolve where the report is written, the github
format under 65,000 characters, CSV, eps-curve PNGs with matplotlib, the tables and a note with
--no-plots, and one error without matplotlib in every command that plots."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from qrdeploy.core.stats import PairedCounts, Proportion, newcombe_paired_interval
from qrdeploy.evaluation.build import build_baseline, build_results
from qrdeploy.evaluation.results import Results, write_results
from qrdeploy.evaluation.runner import RunConfig, Subject, evaluate
from qrdeploy.evaluation.suites import build_suite
from qrdeploy.report.masking import CHECK_HELP
from qrdeploy.report.render import (
    GITHUB_LIMIT,
    PLOTS_HINT,
    Format,
    fmt_cell,
    render_csv,
    render_markdown,
    write_report,
)
from tests.unit.attack_models import NumpyLinear

ATTACKS = "clean,fgsm-s,pgd,normal"


def linear(seed: int, scale: float = 1.0) -> NumpyLinear:
    r = np.random.default_rng(seed)
    return NumpyLinear(r.normal(size=(4, 16)) * scale, r.normal(size=4) * 0.1)


def make_doc(model: NumpyLinear, name: str, sha: str, data_seed: int = 1,
             before: NumpyLinear | None = None, attacks: str = ATTACKS,
             suite_name: str = "paper") -> Results:
    x = np.random.default_rng(data_seed).uniform(size=(40, 1, 4, 4)).astype(np.float32)
    y = linear(0).logits(x).argmax(1)
    suite = build_suite(suite_name, "mnist", attacks=attacks, eps=(0.05, 0.1, 0.2))
    cfg = RunConfig(batch_size=20)
    ev = evaluate(Subject(name, sha * 64, model), x, y, suite, config=cfg)
    base = None
    if before is not None:
        base = build_baseline(evaluate(Subject("before.onnx", "f" * 64, before), x, y, suite,
                                       config=cfg))
    return build_results(ev, data_name="toy", split="test", baseline=base)


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


def test_markdown_has_attacks_as_rows_and_models_as_columns(docs: list[Results]) -> None:
    md = render_markdown(docs, [], None)
    table = md.split("## Robust accuracy per attack")[1].split("\n## ")[0]
    header = next(line for line in table.splitlines() if line.startswith("| attack | eps"))
    names = header.strip("| ").split(" | ")[2:]
    assert len(names) == 3 and names[0].startswith("a.onnx (")  # same name: sha256 prefix
    keys = [line.split(" | ")[0].strip("| ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| attack", "|---"))]
    assert keys == ["clean", "white/fgsm-s", "white/pgd", "noise/normal", "paper worst case"]
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
    section = md.split("## Paired differences between models")[1].split("\n## ")[0]
    assert "| not significant |" in section  # a 2 % weight change: no detectable difference
    assert "not compared" in section and "different samples" in section  # the third result
    assert "Newcombe paired CI" in section and "McNemar exact p" in section  # both named
    assert "bootstrap" not in section  # the interval is Newcombe's, as the results compute it


def test_csv_has_one_row_per_model_and_cell(docs: list[Results]) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(docs))))
    per_model = 1 + 2 + 2 + 1  # clean, fgsm-s and pgd, noise mean and worst of k, worst case
    assert len(rows) == 3 * per_model
    assert all(r["role"] == "attacked" for r in rows)
    pgd = next(r for r in rows if r["column"] == "white/pgd")
    cell = docs[0].column("white/pgd").robust  # type: ignore[union-attr]
    assert float(pgd["value"]) == pytest.approx(cell.value, abs=1e-6)
    assert float(pgd["ci_low"]) <= float(pgd["value"]) <= float(pgd["ci_high"])
    assert pgd["origin"] == "default" and pgd["eps"] == "0.1"
    assert (pgd["statistic"], pgd["interval"]) == ("robust accuracy", "wilson")
    noise = docs[0].column("noise/normal").noise  # type: ignore[union-attr]
    assert noise is not None
    mean, worst = (r for r in rows[:per_model] if r["column"].startswith("noise/normal"))
    assert float(mean["value"]) == pytest.approx(noise.mean, abs=1e-6) and mean["k"] == ""
    assert (mean["statistic"], mean["interval"]) == ("mean robust accuracy over draws",
                                                     "bootstrap")
    assert worst["column"] == "noise/normal worst of 10" and int(worst["k"]) == noise.worst.k
    # the worst case is the markdown's "paper worst case", with its value
    wc = rows[per_model - 1]
    assert wc["column"] == "paper worst case"
    assert int(wc["k"]) == int(docs[0].paper_worst()[1].sum())


def test_csv_has_the_before_hardening_rows_of_the_summary() -> None:
    """With a baseline: clean and the paper worst case of the model before hardening, named and
    with its own sha256, the numbers of the summary's before column."""
    doc = make_doc(linear(0, 1.02), "after.onnx", "d", before=linear(0))
    rows = list(csv.DictReader(io.StringIO(render_csv([doc]))))
    before = [r for r in rows if r["role"] != "attacked"]
    assert doc.baseline is not None
    assert [r["column"] for r in before] == ["clean", "paper worst case"]
    assert {r["model"] for r in before} == {"before.onnx"}
    assert {r["role"] for r in before} == {"before hardening of after.onnx"}
    assert int(before[0]["k"]) == doc.baseline.clean.k
    assert int(before[1]["k"]) == doc.baseline.worst_case.robust.k
    md = render_markdown([doc], [], None)
    lo, hi = doc.baseline.clean.interval
    assert f"{100 * doc.baseline.clean.value:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]" in md


def _files(docs: list[Results], tmp: Path) -> list[Path]:
    return [write_results(tmp / f"r{i}.json", d) for i, d in enumerate(docs)]


def test_report_with_matplotlib_writes_plots(docs: list[Results], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    files = write_report(_files(docs[:2], tmp_path), tmp_path / "out" / "report.md")
    assert [p.name for p in files.plots] == ["report-eps-fgsm.png", "report-eps-pgd.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files.plots)
    md = files.markdown.read_text()
    assert "![report-eps-pgd](report-eps-pgd.png)" in md and files.plot_note is None
    assert files.csv.read_text().startswith("model,sha256,role,column")


def test_report_without_plots_says_how_and_keeps_tables(
        docs: list[Results], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    files = write_report(_files(docs[:2], tmp_path), tmp_path / "report.md", plots=False)
    md = files.markdown.read_text()
    assert files.plots == () and files.plot_note == PLOTS_HINT
    assert "pip install 'qrdeploy[plots]'" in md and "| attack | eps |" in md
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


@pytest.fixture(scope="module")
def before_after() -> Results:
    """A 'hardened' model (weights scaled by 0.05: the same predictions, flatter logits) with
    the model before hardening as baseline, on the paper and adaptive suites."""
    return make_doc(linear(0, 0.05), "hard.onnx", "d", before=linear(0),
                    attacks="clean,fgsm-s,pgd,pgd-cw,square", suite_name="paper,adaptive")


def test_summary_block_comes_first_with_before_after(before_after: Results) -> None:
    md = render_markdown([before_after], [], None)
    assert md.startswith("# Robustness report: hard.onnx\n\n## Summary\n")
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert "before hardening: before.onnx" in summary and "after: hard.onnx" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| ")]
    labels = [r.split(" | ")[0].strip("| ") for r in rows[1:]]  # rows[0]: the header
    assert labels[0] == "clean accuracy" and labels[1].startswith("paper worst case")
    assert labels[2].startswith("adaptive worst case") and labels[3] == "gradient-masking verdict"
    assert all("Newcombe CI" in r and "McNemar exact p" in r for r in rows[1:4])
    assert "**Conclusion:** Hardening " in summary
    assert md.index("## Summary") < md.index("## Robust accuracy per attack")


def test_summary_numbers_are_the_paired_ones(before_after: Results) -> None:
    b = before_after.baseline
    assert b is not None
    before = np.array([c == "1" for c in b.clean_correct])
    after = before_after.clean_flags()
    md = render_markdown([before_after], [], None)
    diff = 100 * (after.mean() - before.mean())
    assert f"| clean accuracy | {fmt_cell(b.clean)} | {fmt_cell(before_after.clean)} | " \
        f"{diff:+.1f} points" in md


def test_without_baseline_the_summary_says_how_to_get_one(docs: list[Results]) -> None:
    """A hardened model without --unhardened is told how to get a before/after; a model that
    was never hardened (nothing before it) is not."""
    from qrdeploy.report.render import conclusion

    md = render_markdown(docs[:1], [], None)
    assert "before hardening:" not in md
    assert "--unhardened" not in conclusion(docs[0])  # not hardened, not quantized
    hard = dataclasses.replace(docs[0], victim=dataclasses.replace(
        docs[0].victim, harden=[{"passes": [{"pass": "weight_quant", "bits": 3}]}]))
    assert "Attack the model before hardening too (--unhardened)" in conclusion(hard)
    integer = dataclasses.replace(docs[0], runtime=dataclasses.replace(
        docs[0].runtime, info={"gradient_form": "BPDA (straight-through)"}))
    assert "(--unhardened)" in conclusion(integer)


def test_the_conclusion_gives_the_clean_change_its_interval(before_after: Results) -> None:
    from qrdeploy.report.render import conclusion

    b = before_after.baseline
    assert b is not None
    c = PairedCounts.from_flags(before_after.clean_flags(),
                                np.array([ch == "1" for ch in b.clean_correct]))
    lo, hi = newcombe_paired_interval(c)
    assert (f"clean accuracy change of {100 * c.difference:+.1f} points (95% interval "
            f"{100 * lo:+.1f} to {100 * hi:+.1f})") in conclusion(before_after)
    md = render_markdown([before_after], [], None)
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert "Cells: % correct with a 95% Wilson interval; after − before: Newcombe" in summary


def test_no_python_reprs(before_after: Results) -> None:
    md = render_markdown([before_after], [], None)
    for pattern in (r"<\w+\.\w+: ", r"\w+=<", r"'\w+'", r"\w+\(\w+="):
        assert not re.search(pattern, md), (pattern, re.search(pattern, md))
    assert "PGD: eps 0.1" in md  # settings as a reader wants them


def test_every_link_resolves_where_the_report_is_written(before_after: Results,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "deep" / "report.md"
    files = write_report([write_results(tmp_path / "r.json", before_after)], out)
    md = files.markdown.read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', md))
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert links, "the report links its checks and plots"
    for target in links:
        if target.startswith("#"):
            assert target[1:] in anchors, target
        else:
            assert (out.parent / target).is_file(), target
    assert {f"check-{name}" for name in CHECK_HELP} <= anchors


def test_github_format_collapses_and_fits(docs: list[Results], before_after: Results,
                                         tmp_path: Path) -> None:
    paths = _files([before_after, *docs], tmp_path)
    files = write_report(paths, tmp_path / "comment.md", fmt=Format.GITHUB)
    text = files.markdown.read_text()
    assert files.csv is None and files.plots == ()
    assert len(text) < GITHUB_LIMIT and "<details><summary>" in text
    assert text.index("## Summary") < text.index("<details>")
    # every check link lands in the collapsed block that holds the link (a link into another
    # closed block opens nothing on GitHub)
    blocks = text.split("<details>")[1:]
    for block in blocks:
        for target in re.findall(r"\]\(#([^)]+)\)", block):
            assert f'<a id="{target}"></a>' in block, target
    assert sum('<a id="check-' in b for b in blocks) == 1
    assert "How to read the checks</summary>" not in text
    # many large results still fit: sections that do not are named, not cut mid-table
    many = [dataclasses.replace(before_after, notes=("x" * 3000,) * 3) for _ in range(12)]
    big = render_markdown(many, [], None, Format.GITHUB)
    assert len(big) < GITHUB_LIMIT


def test_the_transfer_entrys_settings_name_the_model_it_was_crafted_on() -> None:
    """Without --unhardened the adaptive transfer column crafts on the black-box source; its
    settings line must say so, as the notes do (not 'the model before hardening')."""
    from qrdeploy.evaluation.build import _describe
    from qrdeploy.evaluation.suites import build_suite

    suite = build_suite("paper,adaptive", "mnist")
    col = next(c for c in suite.columns if c.key == "adaptive/transfer")
    black = _describe(col, "black-box source")
    assert black is not None and "crafted on the black-box source, scored on the victim" in black
    before = _describe(col, "unhardened")
    assert before is not None and "crafted on the model before hardening" in before


def test_the_cascade_footnote_only_when_a_cell_carries_its_mark(before_after: Results) -> None:
    md = render_markdown([before_after], [], None)
    marked = any(cell.strip().endswith("†") for line in md.splitlines()
                 if line.startswith("|") for cell in line.split("|"))
    assert marked == ("† ran only on the samples" in md)
    plain = make_doc(linear(0), "p.onnx", "e", attacks="clean,pgd,square",
                     suite_name="paper,adaptive")
    assert not any(c.restricted for c in plain.columns)
    assert "† ran only" not in render_markdown([plain], [], None)


def test_eps_in_255ths_is_written_as_the_user_wrote_it() -> None:
    """A CIFAR-style eps of 8/255 reads '8/255' in the attack table, the settings and the
    sweep, not 0.03137."""
    x = np.random.default_rng(1).uniform(size=(20, 1, 4, 4)).astype(np.float32)
    y = linear(0).logits(x).argmax(1)
    suite = build_suite("paper", "mnist", attacks="clean,pgd=8/255,fgsm-s=4/255",
                        eps=(2 / 255, 0.1))
    ev = evaluate(Subject("m.onnx", "a" * 64, linear(0)), x, y, suite,
                  config=RunConfig(batch_size=20))
    md = render_markdown([build_results(ev, data_name="toy", split="test")], [], None)
    assert "| white/pgd | 8/255 |" in md and "| white/fgsm-s | 4/255 |" in md
    assert "2/255: " in md and "0.1: " in md  # the sweep's points
    assert "0.0313" not in md and "0.0156" not in md


@pytest.mark.parametrize(("name", "stat", "thr", "detail", "text"), [
    ("logit-gap", 0.47, 0.5, "47.0% of inputs ...", "47.0% (fires above 50%)"),
    ("black-box-stronger", -0.11, 0.07464, "black/fgsm-s 11.0 points above ...",
     "-11.0 pts (fires above 7.5 pts)"),
    ("eps-no-effect", 0.11, 0.06289, "pgd: accuracy falls 11.0 points from eps 0.1 to 1.0",
     "fall 11.0 pts (fires at 6.3 pts or less, where a fall could be seen)"),
    ("eps-no-effect", 0.08, 0.05, "pgd: accuracy rises 8.0 points from eps 0.1 to 0.2",
     "+8.0 pts (fires above 5.0 pts)"),
    ("unbounded-below-100", 0.0, 0.01, "white/pgd@1 ...", "0.0% (fires above 1%)"),
], ids=["share", "paired", "eps-fall", "eps-rise", "unbounded"])
def test_check_statistics_say_their_rule_in_the_details_units(
        name: str, stat: float, thr: float, detail: str, text: str) -> None:
    """A statistic above its threshold that did not fire (eps-no-effect's fall) or below one
    that did not either (logit-gap) read the same without the rule; the cell says it, in % or
    points as the detail does."""
    from qrdeploy.evaluation.results import CheckEntry
    from qrdeploy.report.masking import _stat

    assert _stat(CheckEntry(name, False, True, stat, thr, detail, "")) == text
    assert _stat(CheckEntry(name, False, False, None, None, "not run", "")) == "—"


def test_the_same_model_twice_gets_two_names(docs: list[Results]) -> None:
    """The same file (name and sha256) in two results: a run number tells them apart; two
    files of one name: their sha256 prefixes."""
    from qrdeploy.report.render import row_names

    names = row_names([docs[0], docs[1], docs[0]])
    assert names == ["a.onnx run 1", "b.onnx", "a.onnx run 2"]
    assert row_names([docs[0], docs[2]]) == ["a.onnx (aaaaaaaa)", "a.onnx (cccccccc)"]


def test_no_paper_worst_case_when_no_paper_column_ran() -> None:
    """--suite adaptive: a worst case over no paper column is no worst case (it read as the
    clean accuracy, 100 % robust in the review's run) in the markdown, the pairs and the CSV."""
    x = np.random.default_rng(1).uniform(size=(40, 1, 4, 4)).astype(np.float32)
    y = linear(0).logits(x).argmax(1)
    suite = build_suite("adaptive", "mnist", attacks="pgd-cw")
    cfg = RunConfig(batch_size=20)
    base = build_baseline(evaluate(Subject("before.onnx", "f" * 64, linear(0)), x, y, suite,
                                   config=cfg))
    adaptive = build_results(evaluate(Subject("hard.onnx", "d" * 64, linear(0, 0.05)), x, y,
                                      suite, config=cfg), data_name="toy", split="test",
                             baseline=base)
    assert adaptive.paper_worst()[0] == ()
    paper = make_doc(linear(0), "a.onnx", "a")
    md = render_markdown([adaptive], [], None)
    assert "paper worst case" not in md and "adaptive worst case" in md
    assert not [r for r in csv.DictReader(io.StringIO(render_csv([adaptive])))
                if r["column"] == "paper worst case"]
    both = render_markdown([paper, adaptive], [], None)
    row = next(ln for ln in both.splitlines() if ln.startswith("| paper worst case | own eps"))
    assert row.rstrip(" |").endswith("—")  # the adaptive-only run has none
    assert "paper worst case" not in both.split("A is each model after the first")[1]
