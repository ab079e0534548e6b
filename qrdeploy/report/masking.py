"""The report's adaptive and gradient-masking sections, from typed results
(qrdeploy.evaluation.results).

Per model: the adaptive columns (a restricted column ran on the survivors of the cheaper attacks
and of the gradient entries before it, so its cell is the worst case of it and them), the
one-line verdict, and every check with its statistic, threshold and a link to its explanation,
which the report carries itself (`check_help`): a link must resolve wherever the report is
written."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qrdeploy.core.stats import Proportion
from qrdeploy.evaluation.results import CheckEntry, ColumnResult, Results

Fmt = Callable[[Proportion | None], str]
Table = Callable[[Sequence[str], Sequence[Sequence[str]]], list[str]]


def adaptive_columns(docs: Sequence[Results], names: Sequence[str], fmt: Fmt,
                     table: Table) -> list[str]:
    keys = list(dict.fromkeys(c.key for d in docs for c in d.columns if c.mode == "adaptive"))
    if not keys:
        return []
    rows = [[name, *(_adaptive_cell(d.column(k), fmt) for k in keys)]
            for name, d in zip(names, docs, strict=True)]
    header = [k.removeprefix("adaptive/") for k in keys]
    dagger = any(c is not None and c.restricted for d in docs for c in map(d.column, keys))
    note = ["† ran only on the samples that survived the paper's cheaper white-box L-inf "
            "attacks of at most its eps and the gradient entries before it (a cascade, a "
            "legitimate saving for a worst case): the cell is robust accuracy under it and them "
            "together.", ""]
    return [*(note if dagger else []), *table(["model", *header], rows), ""]


def _adaptive_cell(c: ColumnResult | None, fmt: Fmt) -> str:
    if c is None:
        return "—"
    return fmt(c.robust) + (" †" if c.restricted else "")


#: checks whose statistic is a share of inputs or an accuracy (fire above a fixed threshold);
#: the others compare two accuracies by the paired rule (a gap in points against a margin)
SHARE_CHECKS = ("zero-gradient", "logit-gap", "probability-outputs", "unbounded-below-100")


def _stat(c: CheckEntry) -> str:
    """The statistic and the rule that fires the check, in the detail's units (%, points)."""
    if c.statistic is None or c.threshold is None:
        return "—"
    if c.name in SHARE_CHECKS:
        return f"{100 * c.statistic:.1f}% (fires above {100 * c.threshold:.3g}%)"
    if c.name == "eps-no-effect" and "accuracy rises" not in c.detail:
        return (f"fall {100 * c.statistic:.1f} pts (fires at {100 * c.threshold:.1f} pts or "
                "less, where a fall could be seen)")
    return f"{100 * c.statistic:+.1f} pts (fires above {100 * c.threshold:.1f} pts)"


def checks_section(docs: Sequence[Results], names: Sequence[str], table: Table,
                   help_below: bool = False) -> list[str]:
    """The verdict and every check of each model, fired checks first, each linked to its
    explanation: in the section 'How to read the checks' at the end of the report, or
    (`help_below`, the github format, whose sections are collapsed: a link into another closed
    block would open nothing) right below the tables, in the same block."""
    out: list[str] = []
    for name, d in zip(names, docs, strict=True):
        m = d.masking
        if m is None:
            continue
        checks = sorted(m.checks, key=lambda c: (not c.fired, not c.ran))
        rows = [[f"[{c.name}](#{anchor(c.name)})",
                 "**fired**" if c.fired else ("not run" if not c.ran else "no"),
                 _stat(c), c.detail] for c in checks]
        edges = ["∞" if e is None else f"{e:.4g}" for e in m.gap_edges]
        bins = ", ".join(f"[{a}, {b}): {n}" for a, b, n in
                         zip(edges, edges[1:], m.gap_counts, strict=False))
        out += [f"### {name}", "", f"**Verdict:** {m.verdict}", "",
                *table(["check", "fired", "statistic (rule)", "detail"], rows), "",
                f"Clean top-1 − top-2 logit gap histogram: {bins}", ""]
        out += [f"- note: {n}" for n in d.notes]
        out += [""] if d.notes else []
    if not out:
        return []
    if help_below:
        return ["Each check is explained, with its threshold and what to do when it fires, "
                "below the tables (linked per check).", "", *out, "**How to read the checks**",
                "", *check_help()]
    return ["Each check is explained, with its threshold and what to do when it fires, under "
            "'How to read the checks' at the end of this report (linked per check).", "", *out]


#: What each masking check measures, when it fires and what to do then: the report's own copy
#: of the explanations (paraphrased from the documentation), so its links always resolve.
CHECK_HELP: dict[str, tuple[str, str, str]] = {
    "zero-gradient": (
        "the share of inputs whose cross-entropy input gradient is exactly zero at the clean "
        "point", "above 1 %",
        "sign(0) = 0, so FGSM, BIM and MIM do not move those inputs: the CE white-box columns "
        "are no evidence of robustness. Read the adaptive columns (pgd-cw, apgd-dlr, pgd-f64, "
        "pgd-njs); a μ-law model may need --mulaw-rescale."),
    "logit-gap": (
        "the share of inputs whose top-1 − top-2 logit gap exceeds 24 ln 2 ≈ 16.6, where "
        "float32 softmax rounds the true class's probability to exactly 1", "above 50 %",
        "CE attacks lose their pull away from the true class; prefer margin/DLR losses or "
        "temperature-scaled CE. A confident but honest model can fire this check alone."),
    "probability-outputs": (
        "the share of output rows that are probabilities or log-probabilities rather than "
        "logits", "above 99 %",
        "attacks are defined on logits; export the model without its final softmax or point "
        "qrdeploy at the logits output (--output-name)."),
    "black-box-stronger": (
        "the paired gap of every transfer or noise column below the per-sample worst case of "
        "the gradient attacks with at least its eps",
        "when the gap exceeds max(2 points, 2 standard errors of the paired difference)",
        "an attacker with the gradients should never do worse than one who transfers examples "
        "or adds noise: the white-box gradients are broken; trust the transfer column, Square "
        "and the adaptive worst case."),
    "one-step-stronger": (
        "the paired gap of FGSM below PGD, BIM or MIM at the same or a larger eps",
        "when the gap exceeds max(2 points, 2 standard errors)",
        "an iterative attack can take FGSM's step and more; when FGSM wins, later steps are "
        "misled. Read APGD (adaptive step size) and pgd-f64."),
    "square-stronger": (
        "the paired gap of Square (queries only, no gradients) below the gradient attacks' "
        "per-sample worst case", "when the gap exceeds max(2 points, 2 standard errors)",
        "a random search should not beat gradient attacks on a differentiable model: the "
        "gradients are uninformative; trust Square and the adaptive worst case."),
    "unbounded-below-100": (
        "robust accuracy under L-inf PGD at eps = 1, where any image is reachable", "above 1 %",
        "an attack that fails with an unlimited budget is not using working gradients: never "
        "report its bounded-eps numbers as robustness."),
    "bpda-weaker": (
        "on an integer graph, whose white-box gradient is the straight-through estimator of its "
        "dequantized twin (BPDA): the paired gap of Square, the transfer column and the "
        "black-box columns below the BPDA white-box worst case",
        "when the gap exceeds max(2 points, 2 standard errors)",
        "the straight-through gradient misleads on this graph: its white-box columns overstate "
        "robustness; trust Square, the transfer column and the adaptive worst case."),
    "twin-stronger": (
        "on an integer graph: the samples that Square run on its float-activation twin (the "
        "same weights, activations not rounded; examples scored on the graph) breaks and every "
        "attack on the graph itself left, as a paired gap",
        "when the gap exceeds max(2 points, 2 standard errors)",
        "the graph's quantized outputs leave its query attack on plateaus of equal margins: its "
        "own columns overstate robustness; the adaptive worst case includes the twin's column."),
    "eps-no-effect": (
        "along an eps curve (or the PGD column against PGD at eps = 1), accuracy rising with eps "
        "or not falling from the smallest to the largest", "when either is significant",
        "a larger budget contains every smaller one, so accuracy must fall; a flat curve means "
        "the attack does not move the inputs. Look at zero-gradient and the adaptive columns."),
}


def anchor(name: str) -> str:
    """The in-report anchor of a check's explanation."""
    return f"check-{name}"


def check_help() -> list[str]:
    out = ["The paired rule: a check that compares two accuracies on the same images fires when "
           "A < B − max(2 points, 2 SE), SE the standard error of the paired difference. "
           "Thresholds are qrdeploy's [DEFAULT]s.", ""]
    for name, (statistic, fires, action) in CHECK_HELP.items():
        out += [f'<a id="{anchor(name)}"></a>**{name}**: {statistic}; fires {fires}. {action}',
                ""]
    return out
