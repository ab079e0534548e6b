"""Reports of results JSON files, written to be pasted into a review: a summary block per model
first (the hardening recipe, clean accuracy and the paper's and the adaptive worst case before
and after hardening with paired tests, the masking verdict, one sentence of conclusion), then the
details: robust accuracy per attack (attacks as rows, 95 % intervals in every cell), the masking
checks with an explanation of each inside the report, the adaptive attacks, CW-L2 and noise,
paired tests between models and between attacks (each statistic named), the eps sweep, the
models and a readable settings table; a CSV of every cell and PNG plots of the eps curves. The
github format is one file for a pull-request comment, details collapsed, under 65,000
characters. matplotlib (the `plots` extra) is imported only to draw the
plots (qrdeploy.core.plotting); without it `report` stops with one line naming the extra, before it
writes anything, unless plots are left out (--no-plots)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.fileio import atomic_write_text
from qrdeploy.core.markdown import eps_text, table
from qrdeploy.core.plotting import legend_outside, pyplot, require, save_png, series_styles
from qrdeploy.core.stats import (
    PairedCounts,
    Proportion,
    mcnemar_exact,
    newcombe_paired_interval,
)
from qrdeploy.evaluation.build import comparison
from qrdeploy.evaluation.metrics import paired_test
from qrdeploy.evaluation.results import (
    Baseline,
    ColumnResult,
    Comparison,
    MaskingResult,
    NoiseResult,
    Results,
    load_results,
    unflag,
)
from qrdeploy.graphio.twin import is_bpda
from qrdeploy.hardening.passes import describe_recipe
from qrdeploy.report.masking import adaptive_columns, check_help, checks_section

NO_PLOTS = "qrdeploy report --no-plots"
PLOTS_HINT = ("eps-curve plots were left out (--no-plots); with the plots extra "
              "(pip install 'qrdeploy[plots]') rerun qrdeploy report without it")
ORIGIN = {"paper": "paper", "cleverhans": "cleverhans v3 (paper's likely library)",
          "default": "qrdeploy [DEFAULT]", "user": "set by the user"}


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path | None  # None in the github format
    plots: tuple[Path, ...]
    plot_note: str | None  # why there are no plots


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def fmt_cell(c: Proportion | None, attacked: Proportion | None = None) -> str:
    """'97.77 [96.6, 98.6]', with the paper-style accuracy on attacked inputs where it differs."""
    if c is None:
        return "—"
    lo, hi = c.interval
    text = f"{pct(c.value)} [{100 * lo:.1f}, {100 * hi:.1f}]"
    if attacked is not None and attacked.k != c.k:
        text += f" (att. {pct(attacked.value)})"
    return text


def row_names(docs: Sequence[Results]) -> list[str]:
    """Victim names, made unique with a sha256 prefix where two results share a name, and with
    a run number in the order given ("run 1", "run 2") where they share the file too (the same
    model attacked twice, with another seed, suite or -n)."""
    keys = [(d.victim.name, d.victim.sha256) for d in docs]
    out = []
    for i, (name, sha) in enumerate(keys):
        shas = {s for n, s in keys if n == name}
        label = f"{name} ({sha[:8]})" if len(shas) > 1 else name
        if keys.count((name, sha)) > 1:
            label += f" run {keys[:i + 1].count((name, sha))}"
        out.append(label)
    return out


def column_keys(docs: Sequence[Results]) -> list[str]:
    keys: dict[str, None] = {}
    for d in docs:
        keys.update((c.key, None) for c in d.columns)
    return list(keys)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return table(header, rows)


def fmt_noise(nz: NoiseResult) -> str:
    """The paper's noise column (mean over draws, bootstrap interval) and our worst of k."""
    lo, hi = nz.mean_ci95
    return (f"{pct(nz.mean)} [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"(worst of {nz.draws}: {pct(nz.worst.value)})")


def fmt_column(c: ColumnResult | None) -> str:
    if c is None:
        return "—"
    return fmt_noise(c.noise) if c.noise else fmt_cell(c.robust, c.attacked)


def _adaptive_wc(d: Results) -> str:
    return "—" if d.adaptive is None else fmt_cell(d.adaptive.worst_case.robust)


def main_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    """Attacks as rows, models as columns (a table that stays narrow however many attacks ran):
    clean, every paper column, the paper's worst case and, when any model ran the adaptive
    suite, the adaptive worst case (the adaptive entries have their own table). Clean comes
    first, also for runs that did not list it (it is always measured)."""
    keys = ["clean", *(k for k in column_keys(docs)
                       if k != "clean" and not k.startswith("adaptive/"))]
    rows = []
    for k in keys:
        col = next((c for d in docs if (c := d.column(k)) is not None), None)
        eps = "—" if col is None or col.eps is None else eps_text(col.eps)
        rows.append([k, eps, *(fmt_column(d.column(k)) if k != "clean" else fmt_cell(d.clean)
                               for d in docs)])
    worsts = [d.paper_worst() for d in docs]
    if any(cols for cols, _ in worsts):  # not over no columns: that would read clean
        rows.append(["paper worst case", "own eps",
                     *(fmt_cell(_prop(flags)) if cols else "—" for cols, flags in worsts)])
    if any(d.adaptive is not None for d in docs):
        rows.append(["adaptive worst case",
                     ", ".join(sorted({eps_text(d.adaptive.eps) for d in docs if d.adaptive})),
                     *(_adaptive_wc(d) for d in docs)])
    return _table(["attack", "eps", *names], rows)


def _prop(flags: np.ndarray) -> Proportion:
    return Proportion(int(np.asarray(flags, bool).sum()), int(np.asarray(flags).size))


def recipe_text(steps: list[Any] | None) -> str:
    """Every harden call of a model as a sentence, calls joined by ' | '."""
    if not steps:
        return "not hardened by qrdeploy (no recipe in its metadata)"
    return " | ".join(describe_recipe(step) for step in steps)


def models_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    rows = []
    for name, d in zip(names, docs, strict=True):
        src = d.source.model.name if d.source else "—"
        rows.append([name, d.victim.sha256[:12], recipe_text(d.victim.harden),
                     f"{d.data.name} ({d.data.split})", str(d.data.n), d.measure,
                     d.settings.suite, str(d.settings.seed), src])
    return _table(["model", "sha256", "hardening", "data", "n", "measure", "suite", "seed",
                   "transfer source"], rows)


def cw_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    rows = []
    for name, d in zip(names, docs, strict=True):
        for c in d.columns:
            if c.cw is None:
                continue
            med = c.cw.median_l2
            radii = [f"r={r:g}: {fmt_cell(p)}" for r, p in c.cw.at_radius]
            rows.append([name, c.key, str(c.cw.found), "—" if med is None else f"{med:.3f}",
                         "; ".join(radii)])
    if not rows:
        return []
    return _table(["model", "column", "found", "median L2", "accuracy at L2 <= r"], rows)


def noise_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    rows = []
    for name, d in zip(names, docs, strict=True):
        for c in d.columns:
            if (nz := c.noise) is None:
                continue
            lo, hi = nz.mean_ci95
            rows.append([name, c.key, str(nz.draws),
                         f"{pct(nz.mean)} [{100 * lo:.1f}, {100 * hi:.1f}]",
                         pct(nz.mean_attacked), fmt_cell(nz.worst)])
    if not rows:
        return []
    return _table(["model", "column", "draws", "mean robust [95% bootstrap CI]",
                   "mean on noisy inputs", "worst of k draws"], rows)


def _verdict(t: Comparison) -> str:
    return "significant" if t.significant else "not significant"


def _paired_row(t: Comparison, column: str) -> list[str]:
    lo, hi = t.ci95
    return [column, f"{t.a} {pct(t.acc_a)}", f"{t.b} {pct(t.acc_b)}",
            f"{100 * t.diff:+.2f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
            f"{t.a_only} / {t.b_only}", f"{t.p_value:.3g}", _verdict(t)]


PAIRED_HEADER = ["column", "A", "B", "A − B [95% Newcombe paired CI]", "A only / B only",
                 "McNemar exact p", "McNemar at 5%"]
PAIRED_NOTE = ("The interval is Newcombe's hybrid score interval for a paired difference of "
               "proportions; the test is McNemar's exact test on the discordant samples. They are "
               "two procedures and can disagree near the 5% level; the last column is the test's.")


def _robust(doc: Results, key: str) -> np.ndarray:
    if key == "paper worst case":
        return doc.paper_worst()[1]
    if key == "adaptive worst case":
        assert doc.adaptive is not None
        return doc.adaptive.worst_flags()
    if key == "clean":
        return doc.clean_flags()
    return doc.robust_flags(key)


def model_pairs(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    """Every model after the first against the first, per shared column, on the same samples."""
    if len(docs) < 2:
        return []
    base, rows, skipped = docs[0], [], []
    for name, d in zip(names[1:], docs[1:], strict=True):
        if d.data.fingerprint != base.data.fingerprint:
            skipped.append(f"- {name}: not compared with {names[0]} (different samples or labels)")
            continue
        shared = [k for k in column_keys([base]) if d.column(k) is not None]
        if base.paper_worst()[0] and d.paper_worst()[0]:
            shared.append("paper worst case")
        if base.adaptive is not None and d.adaptive is not None:
            shared.append("adaptive worst case")
        for k in shared:
            t = paired_test(_robust(d, k), _robust(base, k), name, names[0])
            noisy = (c := d.column(k)) is not None and c.noise is not None
            rows.append(_paired_row(comparison(t), f"{k} (worst of k)" if noisy else k))
    head = [f"A is each model after the first, B is {names[0]}. {PAIRED_NOTE}", ""]
    return [*head, *(_table(PAIRED_HEADER, rows) if rows else []), *skipped]


def attack_pairs_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    rows = [[name, *_paired_row(t, "")[1:]] for name, d in zip(names, docs, strict=True)
            for t in d.comparisons]
    if not rows:
        return []
    return ["A should be at least as strong as B: white-box against transfer of the same "
            "attack, iterative PGD against one-step FGSM with at most PGD's eps. A significantly "
            "positive A − B (A leaves more images correct) is a warning sign of gradient "
            f"masking. {PAIRED_NOTE}", "",
            *_table(["model", *PAIRED_HEADER[1:]], rows)]


def settings_table(docs: Sequence[Results]) -> list[str]:
    seen: dict[tuple[str, str | None], Any] = {}
    for d in docs:
        for a in d.settings.attacks:
            seen.setdefault((a.key, a.attack), a)
    rows = [[a.key, a.attack or "—", "—" if a.eps is None else eps_text(a.eps),
             ORIGIN[a.origin]] for a in seen.values()]
    return ["Where a setting comes from: the paper states no eps, step size or noise scale; "
            "those are qrdeploy's [DEFAULT]s (its documentation lists them with the reasons), "
            "and every one can be set per attack, e.g. --attacks 'pgd:eps=8/255,steps=100'.", "",
            *_table(["column", "attack", "eps", "origin"], rows)]


def sweep_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    rows = []
    for name, d in zip(names, docs, strict=True):
        for s in d.sweeps:
            pts = "; ".join(f"{eps_text(p.eps)}: {pct(p.robust.value)} (worst {pct(p.worst.value)})"
                            for p in s.points)
            rows.append([name, s.kind, pts])
    if not rows:
        return []
    return _table(["model", "attack", "eps: robust % (worst case over eps' <= eps)"], rows)


# ------------------------------------------------------------------------------- the summary


def _change(after: np.ndarray, before: np.ndarray) -> str:
    """after − before on the same samples: Newcombe interval and McNemar test, both named."""
    c = PairedCounts.from_flags(after, before)
    lo, hi = newcombe_paired_interval(c)
    p = mcnemar_exact(c.gains, c.losses)
    return (f"{100 * c.difference:+.1f} points (95% Newcombe CI {100 * lo:+.1f} to "
            f"{100 * hi:+.1f}; McNemar exact p = {p:.2g})")


@dataclass(frozen=True)
class _Row:
    label: str
    after: Proportion
    after_flags: np.ndarray
    before: Proportion | None = None
    before_flags: np.ndarray | None = None


def _summary_rows(d: Results) -> list[_Row]:
    b = d.baseline
    rows = [_Row(f"clean {d.measure}", d.clean, d.clean_flags(),
                 None if b is None else b.clean, None if b is None else unflag(b.clean_correct))]
    keys, worst = d.paper_worst()
    if keys:
        rows.append(_Row(f"paper worst case ({len(keys)} L-inf columns, own eps)",
                         _prop(worst), worst, None if b is None else b.worst_case.robust,
                         None if b is None else unflag(b.worst_flags)))
    if d.adaptive is not None:
        bw = None if b is None or b.adaptive_worst_case is None else b.adaptive_worst_case
        rows.append(_Row(f"adaptive worst case (eps {eps_text(d.adaptive.eps)})",
                         d.adaptive.worst_case.robust, d.adaptive.worst_flags(),
                         None if bw is None else bw.robust,
                         None if bw is None or b is None or b.adaptive_flags is None
                         else unflag(b.adaptive_flags)))
    return rows


def conclusion(d: Results) -> str:
    """One sentence a reviewer can act on."""
    m, b = d.masking, d.baseline
    if m is not None and m.suspected:
        fired = ", ".join(c.name for c in m.fired)
        trust = (f"trust the adaptive worst case ({pct(d.adaptive.worst_case.robust.value)}%)"
                 if d.adaptive is not None else "rerun with --suite paper,adaptive")
        return (f"The model shows signs of gradient masking ({fired}): its paper-column "
                f"robustness is not evidence of robustness; {trust}.")
    rows = _summary_rows(d)
    head = rows[-1]  # the strongest worst case measured
    what = head.label.split(" (")[0]
    narrowed = "adaptive" in d.settings.suite.split(",")  # asked for, then left out by --attacks
    masking_text = ("no sign of gradient masking" if m is not None
                    else "gradient masking was not checked (the --attacks list left out the "
                    "adaptive entries)" if narrowed
                    else "gradient masking was not checked (add --suite adaptive)")
    if b is None or head.before_flags is None or head.before is None:
        quantized = bool(d.victim.harden) or is_bpda(d.runtime.info.get("gradient_form"))
        hint = "" if b is not None or not quantized else " Attack the model before " \
            "hardening too (--unhardened) for a before/after."
        return (f"Clean {d.measure} {pct(d.clean.value)}%, {what} "
                f"{pct(head.after.value)}%; {masking_text}.{hint}")
    c = PairedCounts.from_flags(head.after_flags, head.before_flags)
    lo, hi = newcombe_paired_interval(c)
    clean = PairedCounts.from_flags(rows[0].after_flags, rows[0].before_flags
                                    if rows[0].before_flags is not None else rows[0].after_flags)
    if lo > 0:
        effect = f"raised the {what} by {100 * c.difference:.1f} points"
    elif hi < 0:
        effect = f"lowered the {what} by {-100 * c.difference:.1f} points"
    else:
        effect = (f"did not measurably change the {what} ({100 * c.difference:+.1f} points, "
                  "95% interval includes 0)")
    clo, chi = newcombe_paired_interval(clean)
    return (f"Hardening {effect}, at a clean {d.measure} change of "
            f"{100 * clean.difference:+.1f} points (95% interval {100 * clo:+.1f} to "
            f"{100 * chi:+.1f}); {masking_text}.")


def short_verdict(m: MaskingResult | None) -> str:
    """'no signs (8 checks ran)' or 'suspected: zero-gradient, logit-gap'."""
    if m is None:
        return "not checked (no adaptive suite)"
    if m.suspected:
        return "**suspected**: " + ", ".join(c.name for c in m.fired)
    return f"no signs ({sum(c.ran for c in m.checks)} checks ran)"


def _baseline_verdict(b: Baseline) -> str:
    if b.verdict is None:
        return "not checked"
    return "**suspected**: " + b.verdict.split(": ", 1)[1].split(";")[0] \
        if b.verdict.startswith("masking suspected") else "no signs"


def summary_block(d: Results) -> list[str]:
    """The summary of one results file: model, recipe, data, before/after, verdict, conclusion."""
    b = d.baseline
    rows = _summary_rows(d)
    verdict_after = short_verdict(d.masking)
    lines = [f"- **Model:** `{d.victim.name}` (sha256 {d.victim.sha256[:12]}), "
             f"{recipe_text(d.victim.harden)}",
             f"- **Data:** {d.data.name} ({d.data.split}), {d.data.n} images, "
             f"{'true labels' if d.data.labels == 'true' else 'labels from a reference model'}; "
             f"suite {d.settings.suite}; seed {d.settings.seed}", ""]
    if b is None:
        table_rows = [[r.label, fmt_cell(r.after)] for r in rows]
        table_rows.append(["gradient-masking verdict", verdict_after])
        lines += _table(["", d.victim.name], table_rows)
    else:
        table_rows = []
        for r in rows:
            change = "—" if r.before_flags is None else _change(r.after_flags, r.before_flags)
            table_rows.append([r.label, fmt_cell(r.before), fmt_cell(r.after), change])
        table_rows.append(["gradient-masking verdict", _baseline_verdict(b), verdict_after, ""])
        lines += _table(["", f"before hardening: {b.model.name}",
                         f"after: {d.victim.name}", "after − before (same images)"], table_rows)
    legend = "Cells: % correct with a 95% Wilson interval"
    if b is not None:
        legend += ("; after − before: Newcombe's 95% interval for the paired difference and "
                   "McNemar's exact test on the same images")
        if d.adaptive is not None and d.column("adaptive/transfer") is not None:
            legend += (". Before hardening, the adaptive worst case has no transfer column: it "
                       "would attack that model with examples crafted on itself, which its "
                       "white-box entries already do")
    lines += ["", legend + ".", "", f"**Conclusion:** {conclusion(d)}"]
    return lines


# ------------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Section:
    title: str
    lines: list[str]


class Format(StrEnum):
    MARKDOWN = "markdown"
    GITHUB = "github"


#: A GitHub pull-request comment holds at most 65,536 characters; the github format stays
#: below this, leaving room for a header a CI job may add.
GITHUB_LIMIT = 65_000


def sections(docs: Sequence[Results], plots: Sequence[str], plot_note: str | None,
             fmt: Format = Format.MARKDOWN) -> list[Section]:
    names = row_names(docs)
    out = [Section("Robust accuracy per attack", [
        "Cells: robust accuracy in % with a 95% Wilson interval; a clean error counts as a "
        "failure. Where the paper-style accuracy on the attacked inputs differs, it follows as "
        "(att. ...). Noise rows give the paper's figure, the mean over draws with a 95% percentile "
        "bootstrap interval, then (worst of k: ...), the share robust under all k draws; their "
        "scale is in the settings table. The paper's worst case is per sample over its L-inf "
        "columns at their own eps; the adaptive worst case is per sample over every L-inf column "
        "and sweep point of at most the adaptive eps and every adaptive attack. An attack gives an "
        "upper bound on robust accuracy, not a certificate.", "", *main_table(docs, names)])]
    if (checks := checks_section(docs, names, _table, help_below=fmt is Format.GITHUB)):
        out.append(Section("Gradient-masking checks", checks))
    if (adaptive := adaptive_columns(docs, names, fmt_cell, _table)):
        out.append(Section("Adaptive attacks", adaptive))
    if (cw := cw_table(docs, names)):
        out.append(Section("CW-L2 (unbounded): median L2 of the examples found, accuracy at "
                           "L2 <= r", cw))
    if (noise := noise_table(docs, names)):
        out.append(Section("Noise: mean over draws (the paper's column) and worst of k draws",
                           noise))
    if (pairs := model_pairs(docs, names)):
        out.append(Section("Paired differences between models (same images)", pairs))
    if (attacks := attack_pairs_table(docs, names)):
        out.append(Section("Paired differences between attacks", attacks))
    sweeps = sweep_table(docs, names)
    if sweeps:
        figs = [f"![{Path(p).stem}]({p})" for p in plots] if fmt is Format.MARKDOWN else \
            ["_The eps-curve plots are in the markdown report (qrdeploy report without "
             "--format github)._"]
        out.append(Section("Accuracy vs eps", [*sweeps, "", *(figs or [f"_{plot_note}_"])]))
    out.append(Section("Models", models_table(docs, names)))
    out.append(Section("Settings", settings_table(docs)))
    if fmt is Format.MARKDOWN and any(d.masking is not None for d in docs):
        out.append(Section("How to read the checks", check_help()))
    return out


def render_markdown(docs: Sequence[Results], plots: Sequence[str], plot_note: str | None,
                    fmt: Format = Format.MARKDOWN) -> str:
    """The report: a summary block per results file first, then the detail sections (as
    collapsed <details> blocks in the github format, which stays under GITHUB_LIMIT)."""
    names = row_names(docs)
    title = names[0] if len(docs) == 1 else f"{len(docs)} models"
    head = [f"# Robustness report: {title}", "", "## Summary", ""]
    for name, d in zip(names, docs, strict=True):
        if len(docs) > 1:
            head += [f"### {name}", ""]
        head += [*summary_block(d), ""]
    body = sections(docs, plots, plot_note, fmt)
    if fmt is Format.MARKDOWN:
        parts = [f"## {s.title}\n\n" + "\n".join(s.lines) + "\n" for s in body]
        return "\n".join(head) + "\n" + "\n".join(parts)
    text = "\n".join(head) + "\n"
    left_out = []
    for s in body:
        block = (f"<details><summary>{s.title}</summary>\n\n" + "\n".join(s.lines)
                 + "\n\n</details>\n\n")
        if len(text) + len(block) + 200 > GITHUB_LIMIT:
            left_out.append(s.title)
            continue
        text += block
    if left_out:
        text += (f"_Left out to stay under GitHub's comment size: {', '.join(left_out)}; "
                 "see the markdown report._\n")
    return text


#: the columns of report.csv (docs/evaluation.md, "Report files", says what each holds)
CSV_HEADER = ["model", "sha256", "role", "column", "mode", "eps", "origin", "statistic",
              "interval", "k", "n", "value", "ci_low", "ci_high", "attacked"]


def render_csv(docs: Sequence[Results]) -> str:
    """One row per model and cell of the markdown's attack table (the same names: clean, every
    column, noise as its mean over draws and its worst of k, paper worst case, adaptive worst
    case), then the rows of each model before hardening (`attack --unhardened`) that the
    summary's before/after shows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for name, d in zip(row_names(docs), docs, strict=True):
        for row in _csv_rows(d):
            w.writerow([name, d.victim.sha256, "attacked", *row])
        if (b := d.baseline) is not None:
            rows = [_csv_cell("clean", "clean", None, "paper", "accuracy", b.clean)]
            if b.worst_case.columns:
                rows.append(_csv_cell("paper worst case", "worst", None, "default",
                                      "robust accuracy", b.worst_case.robust))
            if b.adaptive_worst_case is not None and d.adaptive is not None:
                rows.append(_csv_cell("adaptive worst case", "worst", d.adaptive.eps, "default",
                                      "robust accuracy", b.adaptive_worst_case.robust))
            for row in rows:
                w.writerow([b.model.name, b.model.sha256, f"before hardening of {name}", *row])
    return buf.getvalue()


def _csv_cell(key: str, mode: str, eps: float | None, origin: str, statistic: str,
              c: Proportion, att: Proportion | None = None) -> list[Any]:
    lo, hi = c.interval
    return [key, mode, "" if eps is None else f"{eps:.6g}", origin, statistic, "wilson", c.k,
            c.n, f"{c.value:.6f}", f"{lo:.6f}", f"{hi:.6f}",
            "" if att is None else f"{att.value:.6f}"]


def _csv_rows(d: Results) -> list[list[Any]]:
    """The rows of one results file; see render_csv."""
    rows = [_csv_cell("clean", "clean", None, "paper", "accuracy", d.clean)]
    for c in d.columns:
        if c.key == "clean":
            continue
        if (nz := c.noise) is not None:
            rows.append([c.key, c.mode, "", c.origin, "mean robust accuracy over draws",
                         "bootstrap", "", c.robust.n, f"{nz.mean:.6f}", f"{nz.mean_ci95[0]:.6f}",
                         f"{nz.mean_ci95[1]:.6f}", f"{nz.mean_attacked:.6f}"])
            rows.append(_csv_cell(f"{c.key} worst of {nz.draws}", c.mode, None, c.origin,
                                  f"robust under all {nz.draws} draws", nz.worst))
        else:
            rows.append(_csv_cell(c.key, c.mode, c.eps, c.origin, "robust accuracy", c.robust,
                                  c.attacked))
    keys, worst = d.paper_worst()
    if keys:  # no paper column ran (--suite adaptive): no worst case over them
        rows.append(_csv_cell("paper worst case", "worst", None, "default", "robust accuracy",
                              _prop(worst)))
    if (ad := d.adaptive) is not None:
        rows.append(_csv_cell("adaptive worst case", "worst", ad.eps, "default",
                              "robust accuracy", ad.worst_case.robust))
    return rows


def plot_curves(docs: Sequence[Results], folder: Path, stem: str) -> tuple[Path, ...]:
    """One PNG per sweep kind (lines per model, 95 % interval bands)."""
    plt = pyplot(NO_PLOTS)
    kinds = dict.fromkeys(s.kind for d in docs for s in d.sweeps)
    out = []
    for kind in kinds:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        curves = [(name, s) for name, d in zip(row_names(docs), docs, strict=True)
                  for s in d.sweeps if s.kind == kind]
        for (name, s), style in zip(curves, series_styles(len(curves)), strict=True):
            eps = [p.eps for p in s.points]
            ax.plot(eps, [100 * p.robust.value for p in s.points], label=name, **style)
            ax.fill_between(eps, [100 * p.robust.interval[0] for p in s.points],
                            [100 * p.robust.interval[1] for p in s.points], alpha=0.15,
                            color=style["color"])
        ax.set(xlabel="eps (L-inf, [0, 1] pixel units)", ylabel="robust accuracy (%)",
               title=f"white-box {kind}: robust accuracy vs eps (95% bands)", ylim=(0, 100))
        legend_outside(ax)
        out.append(save_png(fig, folder / f"{stem}-eps-{kind}.png", dpi=100))
    return tuple(out)


def write_report(results: Sequence[str | Path], out: str | Path, plots: bool = True,
                 fmt: Format | str = Format.MARKDOWN) -> ReportFiles:
    """Load and validate the results files, write report.md, report.csv and eps-curve PNGs
    (`plots=False`: none, and the report says so; without matplotlib a one-line
    RuntimeMissingError before anything is written). `fmt='github'`: one markdown file for a
    pull-request comment (summary first, details collapsed, under GITHUB_LIMIT characters), no
    CSV and no plots."""
    docs = [load_results(p) for p in results]
    md = Path(out)
    fmt = Format(fmt)
    if fmt is Format.GITHUB:
        atomic_write_text(md, render_markdown(docs, [], None, fmt))
        return ReportFiles(md, None, (), None)
    wanted = plots and any(d.sweeps for d in docs)
    if wanted:
        require(NO_PLOTS)
    files: tuple[Path, ...] = plot_curves(docs, md.parent, md.stem) if wanted else ()
    note = None if files or not any(d.sweeps for d in docs) else PLOTS_HINT
    plots_ = files
    rel = [p.name for p in plots_]
    atomic_write_text(md, render_markdown(docs, rel, note))
    csv_path = md.with_suffix(".csv")
    atomic_write_text(csv_path, render_csv(docs))
    return ReportFiles(md, csv_path, plots_, note)
