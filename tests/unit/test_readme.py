"""The README's two commands cannot rot: CI runs the test command verbatim (checked here), and
tests/integration/test_readme_main.py runs the main command literally."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- readme:{marker} -->\s*```bash\n(.+?)\n```", text, re.S)
    assert m, f"README has no readme:{marker} block"
    return m.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    assert commands[-1] == readme_command("test")


def test_readme_commands_are_single_lines() -> None:
    for marker in ("main", "test"):
        assert "\n" not in readme_command(marker)
