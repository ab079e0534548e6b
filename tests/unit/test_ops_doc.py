"""docs/ops.md is what tools/gen_ops_doc.py generates from the rule registry, and lists it all."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from qrdeploy.gradients.builder import supported_ops

ROOT = Path(__file__).parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_ops_doc", ROOT / "tools" / "gen_ops_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_doc_matches_generator() -> None:
    assert (ROOT / "docs" / "ops.md").read_text() == _generator().render(), \
        "docs/ops.md is stale: run python tools/gen_ops_doc.py"


@pytest.mark.parametrize("op", ["ConvTranspose", "Erf", "ReduceMax", "Slice", "Conv"],
                         ids=lambda o: o)
def test_doc_rows_name_registered_ops(op: str) -> None:
    rows = [ln.split("|")[1].strip() for ln in _generator().render().splitlines()
            if ln.startswith("| ") and not ln.startswith("| op ")]
    assert rows == supported_ops() and op in rows


def test_check_flag_reports_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert _generator().main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
