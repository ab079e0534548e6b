"""The report's adaptive and gradient-masking sections, from typed results
(qrdeploy.evaluation.results).

Per model: the paper's worst case and the adaptive worst case side by side, the adaptive columns
(a restricted column ran on the survivors of the cheaper attacks and of the gradient entries before
it, so its cell is the worst case of it and them), the one-line verdict, and every check with its
statistic, threshold and a link to its section of docs/masking.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qrdeploy.core.stats import Proportion
from qrdeploy.evaluation.results import CheckEntry, ColumnResult, Results

Fmt = Callable[[Proportion | None], str]
Table = Callable[[Sequence[str], Sequence[Sequence[str]]], list[str]]


def side_by_side(docs: Sequence[Results], names: Sequence[str], fmt: Fmt,
                 table: Table) -> list[str]:
    """Paper worst case | adaptive worst case | verdict, one row per model with adaptive runs."""
    rows = [[name, fmt(d.clean), fmt(d.worst_case.robust),
             f"{fmt(d.adaptive.worst_case.robust)} (eps {d.adaptive.eps:.4g})",
             d.masking.verdict if d.masking else "—"]
            for name, d in zip(names, docs, strict=True) if d.adaptive is not None]
    if not rows:
        return []
    return ["## Paper columns vs adaptive worst case", "",
            "The worst case is over every L-inf column that ran, at its own eps; the adaptive "
            "worst case is over every paper L-inf column and sweep point of at most the adaptive "
            "eps and every adaptive attack (docs/masking.md). An attack gives an upper bound on "
            "robust accuracy, not a certificate.", "",
            *table(["model", "clean", "worst case", "adaptive worst case", "verdict"], rows),
            ""]


def adaptive_columns(docs: Sequence[Results], names: Sequence[str], fmt: Fmt,
                     table: Table) -> list[str]:
    keys = list(dict.fromkeys(c.key for d in docs for c in d.columns if c.mode == "adaptive"))
    if not keys:
        return []
    rows = [[name, *(_adaptive_cell(d.column(k), fmt) for k in keys)]
            for name, d in zip(names, docs, strict=True)]
    header = [k.removeprefix("adaptive/") for k in keys]
    return ["## Adaptive attacks", "",
            "† ran only on the samples that survived the paper's cheaper L-inf attacks of at most "
            "its eps and the gradient entries before it (a cascade, a legitimate saving for a "
            "worst case): the cell is robust accuracy under it and them together.", "",
            *table(["model", *header], rows), ""]


def _adaptive_cell(c: ColumnResult | None, fmt: Fmt) -> str:
    if c is None:
        return "—"
    return fmt(c.robust) + (" †" if c.restricted else "")


def _stat(c: CheckEntry) -> str:
    if c.statistic is None or c.threshold is None:
        return "—"
    return f"{c.statistic:.4g} (threshold {c.threshold:.4g})"


def checks_section(docs: Sequence[Results], names: Sequence[str], table: Table) -> list[str]:
    """The verdict and every check of each model, fired checks first, with their docs links."""
    out: list[str] = []
    for name, d in zip(names, docs, strict=True):
        m = d.masking
        if m is None:
            continue
        checks = sorted(m.checks, key=lambda c: (not c.fired, not c.ran))
        rows = [[f"[{c.name}]({c.doc})",
                 "**fired**" if c.fired else ("not run" if not c.ran else "no"),
                 _stat(c), c.detail] for c in checks]
        edges = ["∞" if e is None else f"{e:.4g}" for e in m.gap_edges]
        bins = ", ".join(f"[{a}, {b}): {n}" for a, b, n in
                         zip(edges, edges[1:], m.gap_counts, strict=False))
        out += [f"### {name}", "", f"**Verdict:** {m.verdict}", "",
                *table(["check", "fired", "statistic", "detail"], rows), "",
                f"Clean top-1 − top-2 logit gap histogram: {bins}", ""]
        out += [f"- note: {n}" for n in d.notes]
        out += [""] if d.notes else []
    if not out:
        return []
    return ["## Gradient masking checks", "",
            "Each check is explained, with its threshold and what to do when it fires, in "
            "docs/masking.md (linked per check).", "", *out]
