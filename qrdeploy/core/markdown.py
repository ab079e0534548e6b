"""Markdown tables, written in one place: every cell escaped (`|` would end the cell, a newline
the row), so a model name or a recipe with a pipe in it cannot break a report; and the text of
an eps as a reader writes it (`eps_text`)."""

from __future__ import annotations

from collections.abc import Sequence


def cell(value: object) -> str:
    """A table cell's text: `|` escaped, newlines folded into spaces."""
    text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def eps_text(eps: float, digits: int = 4) -> str:
    """An L-inf radius (or step) as people write it: a whole number of 255ths below 0.2 as
    'k/255' (8/255, the CIFAR-10 convention), anything else as a decimal of at most `digits`
    significant digits (0.3, 0.0314)."""
    k = eps * 255
    if eps < 0.2 and round(k) >= 1 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.{digits}g}"


def table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a markdown table (header, separator, one line per row)."""
    width = len(header)
    bad = next((r for r in rows if len(r) != width), None)
    if bad is not None:
        raise ValueError(f"a table row has {len(bad)} cells, the header {width}")
    return ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * width,
            *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows)]
