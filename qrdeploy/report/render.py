"""Reports of results JSON files: one markdown table with models as rows and attacks as columns
(95 % intervals in every cell), CW-L2 and noise details, paired tests between models and between
attacks, a settings table that labels qrdeploy's own defaults, a CSV of every cell, and PNG plots
of the accuracy-vs-eps curves. matplotlib (the `plots` extra) is imported only to draw the
plots (qrdeploy.core.plotting); without it `report` stops with one line naming the extra, before it
writes anything, unless plots are left out (--no-plots)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.fileio import atomic_write_text
from qrdeploy.core.markdown import table
from qrdeploy.core.plotting import pyplot, require, save_png
from qrdeploy.core.stats import Proportion
from qrdeploy.evaluation.build import comparison
from qrdeploy.evaluation.metrics import paired_test
from qrdeploy.evaluation.results import (
    ColumnResult,
    Comparison,
    NoiseResult,
    Results,
    load_results,
    unflag,
)
from qrdeploy.report.masking import adaptive_columns, checks_section, side_by_side

NO_PLOTS = "qrdeploy report --no-plots"
PLOTS_HINT = ("eps-curve plots were left out (--no-plots); with the plots extra "
              "(pip install 'qrdeploy[plots]') rerun qrdeploy report without it")
ORIGIN = {"paper": "paper", "cleverhans": "cleverhans v3 (paper's likely library)",
          "default": "qrdeploy [DEFAULT]", "user": "set by the user"}


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
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
    """Victim names, made unique with a sha256 prefix where two results share a name."""
    names = [d.victim.name for d in docs]
    return [f"{n} ({d.victim.sha256[:8]})" if names.count(n) > 1 else n
            for n, d in zip(names, docs, strict=True)]


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
    """The paper's columns (adaptive ones have their own table), its worst case and, when any
    model ran the adaptive suite, the adaptive worst case beside it."""
    keys = [k for k in column_keys(docs) if k != "clean" and not k.startswith("adaptive/")]
    extra = any(d.adaptive is not None for d in docs)
    rows = []
    for name, d in zip(names, docs, strict=True):
        cells = [fmt_column(d.column(k)) for k in keys]
        rows.append([name, fmt_cell(d.clean), *cells, fmt_cell(d.worst_case.robust),
                     *([_adaptive_wc(d)] if extra else [])])
    return _table(["model", "clean", *keys, "worst case",
                   *(["adaptive worst case"] if extra else [])], rows)


def _pass_text(p: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in p.items() if k != "kind")
    return f"{p.get('kind', '?')}({args})"


def recipe_text(steps: list[Any] | None) -> str:
    """'mulaw(mu=255.0, ...) + quant(bits=3, ...) [float]' per harden call, calls joined by ';'."""
    if not steps:
        return "—"
    return "; ".join(" + ".join(_pass_text(p) for p in step.get("passes", []))
                     + f" [{step.get('encoding', '?')}]" for step in steps)


def models_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    rows = []
    for name, d in zip(names, docs, strict=True):
        recipe = recipe_text(d.victim.harden)
        src = d.source.model.name if d.source else "—"
        rows.append([name, d.victim.sha256[:12], recipe, d.data.name, str(d.data.n), d.measure,
                     d.settings.suite, str(d.settings.seed), src])
    return _table(["model", "sha256", "harden recipe", "data", "n", "measure", "suite", "seed",
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
    return ["## CW-L2 (unbounded): median L2 of the examples found, accuracy at L2 <= r", "",
            *_table(["model", "column", "found", "median L2", "accuracy at L2 <= r"], rows), ""]


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
    return ["## Noise: mean over draws (the paper's column) and worst case over k draws (ours)",
            "", *_table(["model", "column", "draws", "mean robust", "mean on noisy inputs",
                         "worst of k draws"], rows), ""]


def _verdict(t: Comparison) -> str:
    return ("significant" if t.significant
            else f"**not significant** (p = {t.p_value:.3g} >= 0.05)")


def _paired_row(t: Comparison, column: str) -> list[str]:
    lo, hi = t.ci95
    return [column, f"{t.a} {pct(t.acc_a)}", f"{t.b} {pct(t.acc_b)}",
            f"{100 * t.diff:+.2f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
            f"{t.a_only} / {t.b_only}", f"{t.p_value:.3g}", _verdict(t)]


def _robust(doc: Results, key: str) -> np.ndarray:
    if key == "worst case":
        return unflag(doc.per_sample.worst_case)
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
        shared = [k for k in column_keys([base]) if d.column(k) is not None] + ["worst case"]
        if base.adaptive is not None and d.adaptive is not None:
            shared.append("adaptive worst case")
        for k in shared:
            t = paired_test(_robust(d, k), _robust(base, k), name, names[0])
            noisy = (c := d.column(k)) is not None and c.noise is not None
            rows.append(_paired_row(comparison(t), f"{k} (worst of k)" if noisy else k))
    head = ["## Paired differences between models (same samples)", "",
            "Difference = row model minus the first model, with a 95 % paired bootstrap interval; "
            "p from McNemar's exact test on the discordant samples.", ""]
    table = _table(["column", "model A", "model B", "A - B [95% CI]", "A only / B only", "p",
                    "verdict"], rows) if rows else []
    return [*head, *table, *skipped, ""]


def attack_pairs_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    rows = [_paired_row(t, name) for name, d in zip(names, docs, strict=True)
            for t in d.comparisons]
    if not rows:
        return []
    return ["## Paired differences between attacks (gradient-masking checks)", "",
            "White-box should not be weaker than transfer of the same attack, nor FGSM (s) weaker "
            "than PGD; a significant reversal is a warning sign (docs/evaluation.md).", "",
            *_table(["model", "attack A", "attack B", "A - B [95% CI]", "A only / B only", "p",
                     "verdict"], rows), ""]


def settings_table(docs: Sequence[Results]) -> list[str]:
    seen: dict[tuple[str, str | None], Any] = {}
    for d in docs:
        for a in d.settings.attacks:
            seen.setdefault((a.key, a.attack), a)
    rows = [[a.key, a.attack or "—", "—" if a.eps is None else f"{a.eps:.6g}",
             ORIGIN[a.origin]] for a in seen.values()]
    return ["## Settings", "", "Where a setting comes from: the paper states no eps, step or noise "
            "scale (method.md section 5); those are qrdeploy's [DEFAULT]s, overridable with "
            "--attacks name=eps.", "", *_table(["column", "attack", "eps", "origin"], rows), ""]


def sweep_table(docs: Sequence[Results], names: Sequence[str]) -> list[str]:
    rows = []
    for name, d in zip(names, docs, strict=True):
        for s in d.sweeps:
            pts = "; ".join(f"{p.eps:.4g}: {pct(p.robust.value)} (worst {pct(p.worst.value)})"
                            for p in s.points)
            rows.append([name, s.kind, pts])
    if not rows:
        return []
    return _table(["model", "attack", "eps: robust % (worst case over eps' <= eps)"], rows)


def render_markdown(docs: Sequence[Results], plots: Sequence[str], plot_note: str | None) -> str:
    names = row_names(docs)
    lines = ["# qrdeploy robustness report", "",
             "Cells: robust accuracy in % with a 95 % Wilson interval; a clean error counts as "
             "a failure. Where the paper-style accuracy on the attacked inputs differs, it follows "
             "as (att. ...). 'worst case' is the per-sample worst case over the L-inf columns. "
             "With --labels none the measure is top-1 agreement with the reference. Definitions: "
             "docs/evaluation.md.", "", "## Models", "", *models_table(docs, names), "",
             "## Robust accuracy (models as rows, attacks as columns)", "",
             *main_table(docs, names), "", *side_by_side(docs, names, fmt_cell, _table),
             *checks_section(docs, names, _table), *adaptive_columns(docs, names, fmt_cell, _table),
             *cw_table(docs, names), *noise_table(docs, names),
             *model_pairs(docs, names), *attack_pairs_table(docs, names)]
    sweeps = sweep_table(docs, names)
    if sweeps:
        lines += ["## Accuracy vs eps", "", *sweeps, ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots] or [f"_{plot_note}_"]
        lines.append("")
    return "\n".join([*lines, *settings_table(docs)]) + "\n"


def render_csv(docs: Sequence[Results]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "sha256", "column", "mode", "eps", "origin", "k", "n", "robust",
                "ci_low", "ci_high", "attacked"])
    for name, d in zip(row_names(docs), docs, strict=True):
        sha = d.victim.sha256
        for row in _csv_rows(d):
            w.writerow([name, sha, *row])
    return buf.getvalue()


def _csv_cell(key: str, mode: str, eps: float | None, origin: str, c: Proportion,
              att: Proportion | None) -> list[Any]:
    lo, hi = c.interval
    return [key, mode, "" if eps is None else f"{eps:.6g}", origin, c.k, c.n,
            f"{c.value:.6f}", f"{lo:.6f}", f"{hi:.6f}", "" if att is None else f"{att.value:.6f}"]


def _csv_rows(d: Results) -> list[list[Any]]:
    """Clean, every column (noise: the mean over draws, then the worst of k), the worst case."""
    rows = [_csv_cell("clean", "clean", None, "paper", d.clean, d.clean)]
    for c in d.columns:
        if c.key == "clean":
            continue
        if (nz := c.noise) is not None:
            rows.append([c.key, c.mode, "", c.origin, "", c.robust.n, f"{nz.mean:.6f}",
                         f"{nz.mean_ci95[0]:.6f}", f"{nz.mean_ci95[1]:.6f}",
                         f"{nz.mean_attacked:.6f}"])
            rows.append(_csv_cell(f"{c.key} worst of {nz.draws}", c.mode, None, c.origin,
                                  nz.worst, None))
        else:
            rows.append(_csv_cell(c.key, c.mode, c.eps, c.origin, c.robust, c.attacked))
    rows.append(_csv_cell("worst case", "worst", None, "default", d.worst_case.robust, None))
    if (ad := d.adaptive) is not None:
        rows.append(_csv_cell("adaptive worst case", "worst", ad.eps, "default",
                              ad.worst_case.robust, None))
    return rows


def plot_curves(docs: Sequence[Results], folder: Path, stem: str) -> tuple[Path, ...]:
    """One PNG per sweep kind (lines per model, 95 % interval bands)."""
    plt = pyplot(NO_PLOTS)
    kinds = dict.fromkeys(s.kind for d in docs for s in d.sweeps)
    out = []
    for kind in kinds:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, d in zip(row_names(docs), docs, strict=True):
            for s in (s for s in d.sweeps if s.kind == kind):
                eps = [p.eps for p in s.points]
                ax.plot(eps, [100 * p.robust.value for p in s.points], marker="o", label=name)
                ax.fill_between(eps, [100 * p.robust.interval[0] for p in s.points],
                                [100 * p.robust.interval[1] for p in s.points], alpha=0.2)
        ax.set(xlabel="eps (L-inf, [0, 1] pixel units)", ylabel="robust accuracy (%)",
               title=f"white-box {kind}", ylim=(0, 100))
        ax.legend(fontsize=7)
        out.append(save_png(fig, folder / f"{stem}-eps-{kind}.png", dpi=100))
    return tuple(out)


def write_report(results: Sequence[str | Path], out: str | Path, plots: bool = True
                 ) -> ReportFiles:
    """Load and validate the results files, write report.md, report.csv and eps-curve PNGs
    (`plots=False`: none, and the report says so; without matplotlib a one-line
    RuntimeMissingError before anything is written)."""
    docs = [load_results(p) for p in results]
    md = Path(out)
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
