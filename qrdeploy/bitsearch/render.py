"""The search's files: recipe.toml (an ordinary recipe, `qrdeploy harden --recipe` reads it),
search.json (every measurement, no timings), report.md (the trade-off, to paste into a pull
request) and pareto.png (size against clean accuracy and the adaptive worst case)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qrdeploy.bitsearch.search import Confirmed, SearchResult
from qrdeploy.core import plotting
from qrdeploy.core.fileio import atomic_write_text
from qrdeploy.core.markdown import eps_text, table
from qrdeploy.errors import RuntimeMissingError
from qrdeploy.hardening.passes import describe_recipe, recipe_to_toml


@dataclass(frozen=True)
class SearchFiles:
    recipe: Path
    json: Path
    report: Path
    plot: Path | None  # None when matplotlib (the plots extra) is missing


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _bits_text(result: SearchResult, step: int) -> str:
    p = result.path[step]
    return ", ".join(f"{s.node} {p.assignment[s.index].label()}" for s in result.layers)


def _delta(c: Confirmed) -> str:
    if c.delta is None or c.delta_ci95 is None:
        return "(reference)"
    lo, hi = c.delta_ci95
    return f"{100 * c.delta:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p = {c.mcnemar_p:.2g}"


def summary_lines(result: SearchResult, model_out: str) -> list[str]:
    """The block a reviewer reads first."""
    cfg, chosen = result.config, result.chosen
    budget = []
    if cfg.avg_bits is not None:
        budget.append(f"at most {cfg.avg_bits:g} average bits")
    if cfg.max_bytes is not None:
        budget.append(f"at most {cfg.max_bytes:,} bytes")
    size = " and ".join(budget) or "no size budget (the smallest recipe that keeps clean accuracy)"
    assert chosen.test is not None
    written = result.written_bytes
    lines = [
        f"- **Chosen:** step {chosen.step} of {len(result.path) - 1}: {chosen.avg_bits:.2f} "
        f"average weight bits over {len(result.layers)} layers, {written:,} bytes "
        f"({written / result.model_bytes:.3f}x the float model's {result.model_bytes:,}) "
        f"in `{model_out}`.",
        f"- **Budgets:** {size}; clean accuracy non-inferior to the float model within "
        f"{100 * cfg.max_drop:g} points on {result.float_clean.n} validation images "
        f"({result.validation}).",
        f"- **Clean (validation):** {chosen.clean} vs float {result.float_clean}: "
        f"{chosen.test}.",
        f"- **Why this point:** {result.choice.reason}.",
    ]
    ft = result.final_test
    if ft is not None:
        warn = "" if ft.non_inferior else " **It does not meet the clean budget**: the int8 " \
            "activations cost more than the weights; raise --calibrate or try " \
            "--calibration-method percentile."
        lines.append(f"- **Clean of the written graph** (int8 activations, validation images): "
                     f"{ft}.{warn}")
    final = next((c for c in result.confirmed if c.final_graph), None)
    base = next((c for c in result.confirmed if c.step is None), None)
    if final is not None and base is not None:
        lines.append(
            f"- **Adaptive worst case** (eps {eps_text(result.eps)}, {final.adaptive.n} held-out "
            f"images of {result.held_out}): {final.adaptive} vs float {base.adaptive}; difference "
            f"{_delta(final)} (points, Newcombe 95 %, exact McNemar).")
    else:
        lines.append("- **Adaptive worst case:** not confirmed (--confirm 0).")
    return lines


def render_markdown(result: SearchResult, model_out: str, plot: str | None) -> str:
    cfg = result.config
    out = [f"# Recipe search: {result.model_name}", "", *summary_lines(result, model_out), "",
           "## The recipe", "", describe_recipe(result.recipe.to_json()) + ".", "",
           "Per layer: " + _bits_text(result, result.choice.index) + " ('+mu': μ-law first).",
           "", "## Layers", "",
           "Relative weight error e = ‖Ŵ − W‖₂ / ‖W‖₂ (unfolded along the output channels) at "
           f"each width; the gain is the measured relative logit error with this layer alone "
           f"at {cfg.bits[-1]} bits divided by e there.", ""]
    widths = list(cfg.bits)
    out += table(["layer", "op", "weights", "‖W‖₂", "gain", *(f"e @ {b}" for b in widths),
                  "chosen"],
                 [[s.node, s.op_type, f"{s.params:,}", f"{s.norm:.3g}", f"{s.gain:.3g}",
                   *(f"{s.errors[s.best(b)]:.3g}" for b in widths),
                   result.chosen.assignment[s.index].label()] for s in result.layers])
    conf = {c.step: c for c in result.confirmed if c.step is not None and not c.final_graph}
    final = next((c for c in result.confirmed if c.final_graph), None)
    if final is not None:
        conf.setdefault(result.choice.index, final)
    out += ["", "## The path", "",
            "Widest first; each step narrows one layer by one candidate width. Clean: on the "
            "validation images, paired against the float model (one-sided 95 % lower bound of "
            "the difference, margin "
            f"{100 * cfg.max_drop:g} points). Adaptive: on the held-out images where confirmed."
            + ("" if cfg.encoding.value in ("int4", "nbits") else
               f" The {cfg.encoding.value} encoding stores every width in one byte per weight "
               "(float: four), so the bytes change with the bits only in the int4 and nbits "
               "encodings."), ""]
    rows = []
    for p in result.path:
        assert p.test is not None and p.clean is not None
        c = conf.get(p.step)
        mark = " (chosen)" if p.step == result.choice.index else ""
        rows.append([f"{p.step}{mark}", f"{p.avg_bits:.2f}", f"{p.bytes:,}", _pct(p.clean.value),
                     f"{100 * p.test.estimate:+.1f}", f"{100 * p.test.lower:+.1f}",
                     p.test.decision, "" if c is None else str(c.adaptive)])
    out += table(["step", "avg bits", "bytes", "clean %", "Δ clean", "lower bound", "decision",
                  "adaptive worst case"], rows)
    if result.confirmed:
        out += ["", "## Confirmation on held-out images", "",
                "The adaptive suite of `qrdeploy attack --suite adaptive` at eps "
                f"{eps_text(result.eps)} ({cfg.steps} steps, Square {cfg.queries} queries, "
                f"transfer crafted on the float model), seed {cfg.seed}, on "
                f"{result.confirmed[0].adaptive.n} images of {result.held_out}.", ""]
        out += table(["model", "avg bits", "bytes", "clean", "adaptive worst case",
                      "Δ vs float (points)"],
                     [[c.label + (" (as written, with its activations)" if c.final_graph else ""),
                       f"{c.avg_bits:.2f}", f"{c.bytes:,}", str(c.clean), str(c.adaptive),
                       _delta(c)] for c in result.confirmed])
    if plot:
        out += ["", f"![size against clean accuracy and adaptive worst case]({plot})"]
    out += ["", "## How it was chosen", "",
            "Sensitivity = gain × e for each layer and width; the path narrows, one step at a "
            "time, the layer with the least added sensitivity per weight bit saved. The clean "
            "tests run in path order and the walk stops at the first failure (a fixed-sequence "
            "procedure, so the chance of accepting a too-costly point stays at 5 %). With a size "
            "budget the choice is the first point within it. qrdeploy's own method: the paper "
            "uses one width for every layer. `qrdeploy harden MODEL -o OUT --recipe recipe.toml` "
            "rebuilds the written model byte for byte.", ""]
    return "\n".join(out)


def draw_pareto(result: SearchResult, path: Path) -> Path:
    plt = plotting.pyplot("pass --no-plot")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    xs = [p.avg_bits for p in result.path]
    ys = [100 * p.clean.value for p in result.path if p.clean is not None]
    ax1.plot(xs, ys, marker="o", ms=3, lw=1, label="path")
    c = result.chosen
    assert c.clean is not None
    ax1.plot([c.avg_bits], [100 * c.clean.value], marker="*", ms=12, ls="", label="chosen")
    ax1.axhline(100 * result.float_clean.value, ls="--", lw=1, color="gray", label="float")
    ax1.set_xlabel("average weight bits")
    ax1.set_ylabel("clean accuracy (validation) %")
    ax1.set_xscale("log", base=2)
    for conf in sorted(result.confirmed, key=lambda k: k.avg_bits):
        lo, hi = conf.adaptive.interval
        v = conf.adaptive.value
        below, above = max(0.0, v - lo), max(0.0, hi - v)
        ax2.errorbar([conf.avg_bits], [100 * v], yerr=[[100 * below], [100 * above]],
                     marker="*" if conf.final_graph else "o", ms=9 if conf.final_graph else 5,
                     capsize=3, ls="", label=conf.label)
    ax2.set_xlabel("average weight bits")
    ax2.set_ylabel(f"adaptive worst case @ eps {eps_text(result.eps)} %")
    ax2.set_xscale("log", base=2)
    plotting.legend_outside(ax1)
    plotting.legend_outside(ax2)
    fig.tight_layout()
    return plotting.save_png(fig, path)


def write_search(result: SearchResult, out_dir: str | Path, model_out: str,
                 plot: bool = True) -> SearchFiles:
    """Write the four files into out_dir (created); the plot is skipped, with a line in the
    report, when matplotlib is missing."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    comment = (f"qrdeploy harden --search on {result.model_name}: step {result.choice.index}, "
               f"{result.chosen.avg_bits:.2f} average weight bits\n"
               f"replay: qrdeploy harden MODEL.onnx -o OUT.onnx --recipe recipe.toml")
    recipe = atomic_write_text(d / "recipe.toml", recipe_to_toml(result.recipe, comment))
    js = atomic_write_text(d / "search.json",  # the measurements first: a plot error loses none
                           json.dumps(result.to_json(), indent=1, sort_keys=True) + "\n")
    png: Path | None = None
    if plot:
        try:
            png = draw_pareto(result, d / "pareto.png")
        except RuntimeMissingError:
            png = None
    text = render_markdown(result, model_out, png.name if png else None)
    if plot and png is None:
        text += "\npareto.png not drawn: matplotlib is missing; pip install 'qrdeploy[plots]'.\n"
    report = atomic_write_text(d / "report.md", text)
    return SearchFiles(recipe, js, report, png)
