"""The one markdown-table writer: escaped cells keep a table's shape whatever a name contains."""

from __future__ import annotations

import pytest

from qrdeploy.core.markdown import cell, table


def _cells(line: str) -> list[str]:
    """Split a table line on unescaped pipes, as a markdown renderer does."""
    out, cur, i = [], "", 1
    while i < len(line) - 1:
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            cur += line[i:i + 2]
            i += 2
            continue
        if ch == "|":
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    return [*out, cur.strip()]


def test_pipes_and_newlines_do_not_break_rows() -> None:
    lines = table(["model", "recipe"], [["a|b.onnx", "mulaw | quant\nint4"], ["c", "d"]])
    assert lines[1] == "|---|---|"
    assert [len(_cells(ln)) for ln in lines if ln != lines[1]] == [2, 2, 2]
    assert _cells(lines[2]) == ["a\\|b.onnx", "mulaw \\| quant int4"]


def test_cell_escapes_backslashes_first() -> None:
    assert cell("a\\|b") == "a\\\\\\|b"


def test_ragged_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="3 cells, the header 2"):
        table(["a", "b"], [["1", "2", "3"]])
