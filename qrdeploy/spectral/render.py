"""Rendering of Lipschitz reports (qrdeploy.spectral.analysis): markdown and CSV tables, atomic
writes, and the bar chart in the style of the paper's figure (matplotlib, imported only when
plotting)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.fileio import atomic_write_text
from qrdeploy.core.markdown import table
from qrdeploy.core.plotting import legend_outside, pyplot, save_png
from qrdeploy.errors import ConfigError
from qrdeploy.hardening.passes import describe_recipe
from qrdeploy.spectral.analysis import (
    AMPLIFICATION_NOTE,
    FOLDED_NOTE,
    LayerReport,
    LipschitzReport,
)


class PlotNorm(StrEnum):
    """Which ‖ΔW‖₂ a bar chart shows."""

    MATRIX = "matrix"  # Gemm/MatMul matrix, conv reshaped kernel (the paper's likely convention)
    OPERATOR = "operator"  # conv operator norm at the input shape; Gemm/MatMul matrix norm


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _table_rows(report: LipschitzReport) -> list[dict[str, Any]]:
    """One flat dict per layer, shared by markdown and CSV."""
    rows = []
    for lyr in report.layers:
        amp = lyr.amplification
        op = lyr.dw.operator
        rows.append({
            "index": lyr.index, "layer": lyr.node, "op": lyr.op_type,
            "shape": "x".join(map(str, lyr.shape)),
            "input": "x".join(map(str, lyr.input_shape)) if lyr.input_shape else "",
            "mulaw": lyr.mulaw,
            "w_matrix": lyr.w.matrix.value, "dw_matrix": lyr.dw.matrix.value,
            "dw_over_w": lyr.ratio,
            "dw_total_matrix": lyr.dw_total.matrix.value if lyr.dw_total else None,
            "w_operator": lyr.w.operator.value if lyr.w.operator else None,
            "dw_operator": op.value if op else None,
            "dw_operator_iters": op.iterations if op else None,
            "dw_operator_residual": op.residual if op else None,
            "dw_fft_bound": lyr.dw.fft_bound,
            "dw_total_operator": lyr.dw_total.operator.value
            if lyr.dw_total and lyr.dw_total.operator else None,
            "local_mean": amp.local_mean if amp else None,
            "local_max": amp.local_max if amp else None,
            "propagated_mean": amp.propagated_mean if amp else None,
            "propagated_max": amp.propagated_max if amp else None,
            "amplification_ratio": amp.ratio if amp else None,
            "note": lyr.note,
        })
    return rows


_MD_COLUMNS = (
    ("#", "index"), ("layer", "layer"), ("op", "op"), ("shape", "shape"), ("input", "input"),
    ("μ", "mulaw"), ("‖W‖₂", "w_matrix"), ("‖ΔW‖₂", "dw_matrix"), ("‖ΔW‖/‖W‖", "dw_over_w"),
    ("‖Ŵ−W‖₂", "dw_total_matrix"), ("‖W‖op", "w_operator"), ("‖ΔW‖op", "dw_operator"),
    ("iters", "dw_operator_iters"), ("resid", "dw_operator_residual"),
    ("FFT bound", "dw_fft_bound"), ("local", "local_mean"), ("propagated", "propagated_mean"),
    ("prop/local", "amplification_ratio"),
)


def _md_cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return _fmt(value)
    return "-" if value is None else str(value)


def render_markdown(report: LipschitzReport) -> str:
    """The per-layer table with a legend saying which norm the amplification reading fits."""
    rows = _table_rows(report)
    cols = [c for c in _MD_COLUMNS if any(r[c[1]] not in (None, "", False) for r in rows)
            or c[1] in ("index", "layer", "op", "w_matrix", "dw_matrix", "dw_over_w")]
    lines = [
        f"### ‖ΔW‖₂ per layer: {report.label}",
        "",
        f"Recipe ({report.recipe_source}): "
        + ("; ".join(_recipe_text(r) for r in report.recipes) or "not recorded"),
        "",
        *table([h for h, _ in cols], [[_md_cell(r[k]) for _, k in cols] for r in rows]),
    ]
    lines += ["", *_legend(report, {k for _, k in cols})]
    return "\n".join(lines) + "\n"


def _recipe_text(recipe: Mapping[str, Any]) -> str:
    return describe_recipe(recipe)


#: ‖ΔW‖₂/‖W‖₂ at or above this on every layer: the second model is not a quantization of the
#: first (docs/lipschitz.md: 0.24-0.31 for 3-bit weights, 1.37-1.42 for two training runs).
UNRELATED_RATIO = 1.0


def _legend(report: LipschitzReport, shown: set[str] | None = None) -> list[str]:
    """The table's legend; `shown`: the column keys in the table (lines on absent ones are
    left out)."""
    cfg = report.config
    shown = shown if shown is not None else {k for _, k in _MD_COLUMNS}
    ratios = [r for lyr in report.layers if (r := lyr.ratio) is not None]
    unrelated = [] if not ratios or min(ratios) < UNRELATED_RATIO else [
        f"- **Warning**: ‖ΔW‖/‖W‖ is at least {UNRELATED_RATIO:g} on every layer (smallest "
        f"{min(ratios):.3g}): the second model does not look like a quantized version of the "
        "first (another training run, another network?), so this is no quantization error."]
    if ratios and max(ratios) == 0:
        unrelated = ["- **Warning**: ΔW is 0 on every layer: the second model holds the first "
                     "one's weights unchanged, so nothing was quantized (a quantizer that found "
                     "no layer it handles leaves the model as it was)."]
    folded = [str(lyr.index) for lyr in report.layers if FOLDED_NOTE in lyr.note]
    fold_line = [] if not folded else [
        f"- Layers {', '.join(folded)}: the hardened model folds the BatchNormalization after "
        "each into it (as integer deployments do), so W and Ŵ are both folded (W·γ/√(σ²+ε) per "
        "output channel) and ‖ΔW‖₂ is the error of the layer as deployed."]
    total = ("; ‖Ŵ−W‖₂: the total change from the reference" if "dw_total_matrix" in shown
             else "")
    operator = "w_operator" in shown or "dw_operator" in shown or "dw_fft_bound" in shown
    measured = "local_mean" in shown or "propagated_mean" in shown
    return unrelated + fold_line + [
        "- ‖ΔW‖₂: ΔW = Q(W′) − W′, the paper's quantization error of the weights (activation "
        "quantization, in an integer graph, is not in it), W′ = the μ-law-mapped weights "
        f"(W′ = W for layers without μ-law){total}; ‖ΔW‖/‖W‖ is ‖ΔW‖₂/‖W′‖₂ on a μ-law layer, "
        "both in the mapped space.",
        "- Gemm/MatMul: matrix norm. Conv: ‖·‖₂ of the kernel reshaped to C_out × C_in/groups·k·k "
        "(the paper's likely convention, [DEFAULT])" + (
            "; ‖·‖op: operator norm of the convolution at "
            f"the input shape (Lanczos, float32, stop at relative change ≤ {cfg.tol:g}; resid: "
            "relative residual); FFT bound: circular-convolution norm, an upper bound of ‖·‖op "
            "(loose for strided convs)." if operator else "."),
        f"- {AMPLIFICATION_NOTE}",
        *(["- local: mean ‖ΔW·x_l‖/‖W·x_l‖ on the reference layer input (ΔW = Ŵ − W); "
           "propagated: mean ‖f̂_l(x) − f_l(x)‖/‖f_l(x)‖; prop/local: their ratio."]
          if measured else []),
    ]


def render_csv(report: LipschitzReport) -> str:
    rows = _table_rows(report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["label", *rows[0].keys()], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"label": report.label, **{k: "" if v is None else v
                                                   for k, v in r.items()}})
    return buf.getvalue()


def write_report(report: LipschitzReport, *, json_path: str | None = None,
                 csv_path: str | None = None, markdown_path: str | None = None) -> None:
    """Write the report's forms atomically."""
    if json_path:
        atomic_write_text(json_path, json.dumps(report.to_json(), indent=2, sort_keys=True))
    if csv_path:
        atomic_write_text(csv_path, render_csv(report))
    if markdown_path:
        atomic_write_text(markdown_path, render_markdown(report))


# ---------------------------------------------------------------- plot


def _bar_value(layer: LayerReport, norm: PlotNorm) -> float:
    if norm is PlotNorm.OPERATOR and layer.dw.operator is not None:
        return layer.dw.operator.value
    return layer.dw.matrix.value


def plot_reports(
    reports: Mapping[str, LipschitzReport] | Sequence[LipschitzReport],
    path: str | os.PathLike[str],
    *,
    norm: PlotNorm | str = PlotNorm.MATRIX,
    last: int | None = None,
    title: str = "",
) -> Path:
    """Grouped bars in the style of the paper's figure: layers on the x axis, ‖ΔW‖₂ per model
    variant, with the ‖ΔW‖₂ = 1 line. `last` keeps the last N layers (CIFAR figure: 5)."""
    norm = PlotNorm(norm)
    named = dict(reports) if isinstance(reports, Mapping) else {r.label: r for r in reports}
    if not named:
        raise ConfigError("plot_reports needs at least one report")
    plt = pyplot()
    n_layers = max(len(r.layers) for r in named.values())
    first = max(0, n_layers - last) if last else 0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * (n_layers - first) * len(named) + 2), 4))
    width = 0.8 / len(named)
    for k, (name, rep) in enumerate(named.items()):
        layers = rep.layers[first:]
        xs = np.arange(len(layers)) + k * width
        ax.bar(xs, [_bar_value(lyr, norm) for lyr in layers], width, label=name)
    ticks = next(r for r in named.values() if len(r.layers) == n_layers).layers[first:]
    ax.set_xticks(np.arange(len(ticks)) + 0.4 - width / 2)
    ax.set_xticklabels([lyr.node for lyr in ticks], rotation=45, ha="right", fontsize=8)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8, label="‖ΔW‖₂ = 1")
    which = "operator norm" if norm is PlotNorm.OPERATOR else "matrix / reshaped kernel"
    ax.set_ylabel(f"‖ΔW‖₂ ({which})")
    ax.set_title(title or "‖ΔW‖₂ per layer")
    legend_outside(ax, fontsize=8)
    return save_png(fig, path, dpi=120)
