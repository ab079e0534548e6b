"""PNG figures of `qrdeploy reproduce` (matplotlib, Agg): μ ablation, bits sweep, ‖ΔW‖₂ bars
and eps curves, drawn from the collected step outputs. PNGs carry no Software tag, so they depend
only on the data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.plotting import legend_outside, pyplot, save_png, series_styles
from qrdeploy.evaluation.results import unflag
from qrdeploy.paper import claims as cl
from qrdeploy.paper.collected import Collected

NO_PLOTS = "qrdeploy reproduce --no-plots"


def _figure(draw: Callable[[Any], None], path: Path, xlabel: str, ylabel: str, title: str
            ) -> Path:
    fig, ax = pyplot(NO_PLOTS).subplots(figsize=(7.5, 4.2))
    draw(ax)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ax.get_legend_handles_labels()[0]:
        legend_outside(ax)
    else:
        ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
    return save_png(fig, path, dpi=100)


def plot_ablation(c: Collected, path: Path) -> Path:
    def draw(ax: Any) -> None:
        series = [(regime, quant, key) for regime in c.ablation for quant in (False, True)
                  for key in ("paper", "adaptive")]
        for (regime, quant, key), style in zip(series, series_styles(len(series)), strict=True):
            pts = [p for p in c.ablation[regime]["points"] if p["quant"] is quant]
            xs = [max(p["mu"], 0.5) for p in pts]  # μ = 0 drawn at 0.5 on the log axis
            ys = [100 * unflag(p[key]).mean() for p in pts]
            label = f"{cl.REGIME_LABEL[regime]}{' (Q)' if quant else ''} {key}"
            ax.plot(xs, ys, label=label, **style)
        ax.set_xscale("log")

    return _figure(draw, path, "μ (0 drawn at 0.5)", "robust accuracy (%)",
                   "μ ablation, last layer")


def plot_bits(c: Collected, path: Path) -> Path:
    def draw(ax: Any) -> None:
        for (regime, b), style in zip(c.bits.items(), series_styles(len(c.bits)), strict=True):
            xs = [p["bits"] for p in b["points"]]
            ax.plot(xs, [100 * p["value"] for p in b["points"]],
                    label=cl.REGIME_LABEL[regime], **style)
            ax.fill_between(xs, [100 * p["ci95"][0] for p in b["points"]],
                            [100 * p["ci95"][1] for p in b["points"]], alpha=0.15,
                            color=style["color"])

    return _figure(draw, path, "weight bits", "clean accuracy (%)", "clean accuracy vs bits")


def plot_dw(c: Collected, path: Path) -> Path:
    def draw(ax: Any) -> None:
        bars = [(f"{cl.REGIME_LABEL[r]}{cl.FORM_SUFFIX[f]}", rep["layers"])
                for r, forms in c.lipschitz.items() for f, rep in forms.items()]
        width = 0.8 / max(len(bars), 1)
        for k, (label, layers) in enumerate(bars):
            xs = np.arange(len(layers)) + k * width
            ax.bar(xs, [lyr["dw"]["matrix"]["value"] for lyr in layers], width, label=label)
        if bars:
            ax.set_xticks(np.arange(len(bars[0][1])) + 0.4 - width / 2)
            ax.set_xticklabels([lyr["node"] for lyr in bars[0][1]], rotation=30, fontsize=7)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8)

    return _figure(draw, path, "layer", "‖ΔW‖₂ (matrix / reshaped kernel)", "‖ΔW‖₂ per layer")


def plot_eps(c: Collected, kind: str, path: Path) -> Path:
    def draw(ax: Any) -> None:
        curves = [(row, doc, s) for row, doc in c.results.items() for s in doc.sweeps
                  if s.kind == kind]
        for (row, doc, s), style in zip(curves, series_styles(len(curves)), strict=True):
            xs = [p.eps for p in s.points]
            ys = [100 * (doc.clean_flags() & ~unflag(p.fooled)).mean() for p in s.points]
            ax.plot(xs, ys, label=cl.row_label(row), **style)

    return _figure(draw, path, "eps (L-inf, [0, 1] pixels)", "robust accuracy (%)",
                   f"white-box {kind} vs eps")


def write_plots(c: Collected, out: Path) -> tuple[Path, ...]:
    return (plot_ablation(c, out / "mu-ablation.png"), plot_bits(c, out / "bits-sweep.png"),
            plot_dw(c, out / "dw-bars.png"), plot_eps(c, "pgd", out / "eps-pgd.png"),
            plot_eps(c, "fgsm", out / "eps-fgsm.png"))
