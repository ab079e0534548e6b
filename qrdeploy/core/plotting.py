"""The one matplotlib entry point of qrdeploy: the Agg backend (no display needed), one error when
matplotlib is missing, and atomic PNG saves without a Software tag (the same figure gives the same
bytes). Every figure of every command goes through `pyplot` and `save_png`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qrdeploy.core.fileio import atomic_write
from qrdeploy.errors import RuntimeMissingError

MISSING = ("plots need matplotlib, which is not installed; pip install 'qrdeploy[plots]' "
           "(or run without plots: {skip})")


def require(skip: str = "leave out --plot") -> None:
    """Raise the one-line RuntimeMissingError naming the `plots` extra when matplotlib is not
    importable. Commands call it before any work, so a missing extra costs no compute."""
    _matplotlib(skip)


def _matplotlib(skip: str) -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeMissingError(MISSING.format(skip=skip)) from exc
    return matplotlib


def pyplot(skip: str = "leave out --plot") -> Any:
    """matplotlib.pyplot on the Agg backend."""
    _matplotlib(skip).use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Markers and line styles that, with the colours, keep every series of a plot distinct.
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "<", ">", "p")
LINESTYLES = ("-", "--", ":", "-.")


def series_styles(n: int) -> list[dict[str, Any]]:
    """Keyword arguments for `ax.plot` of n series, each distinct in colour, marker and (beyond
    ten series) line style: tab10 colours up to 10 series, tab20 beyond."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    size = 10 if n <= 10 else 20
    return [{"color": cmap(i % size), "marker": MARKERS[i % len(MARKERS)],
             "linestyle": LINESTYLES[(i // size) % len(LINESTYLES)] if n > 10 else "-"}
            for i in range(n)]


def legend_outside(ax: Any, fontsize: int = 7) -> None:
    """The legend to the right of the axes, never over the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0, frameon=False)


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write the figure atomically as PNG (labels kept inside the canvas) and close it."""
    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                    metadata={"Software": None})

    try:
        return atomic_write(path, save)
    finally:
        pyplot().close(fig)
