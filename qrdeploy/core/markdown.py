"""Markdown tables, written in one place: every cell escaped (`|` would end the cell, a newline
the row), so a model name or a recipe with a pipe in it cannot break a report."""

from __future__ import annotations

from collections.abc import Sequence


def cell(value: object) -> str:
    """A table cell's text: `|` escaped, newlines folded into spaces."""
    text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a markdown table (header, separator, one line per row)."""
    width = len(header)
    bad = next((r for r in rows if len(r) != width), None)
    if bad is not None:
        raise ValueError(f"a table row has {len(bad)} cells, the header {width}")
    return ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * width,
            *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows)]
