"""ruff and mypy (strict, configured in pyproject.toml) over the package, in CI: a type error or
a lint finding fails the build like a failing test (mypy takes about a minute cold)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; pip install -e '.[dev]'")
    return [found]


def test_ruff_is_clean() -> None:
    proc = subprocess.run([*_tool("ruff"), "check", "qrdeploy", "tests", "tools"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_mypy_strict_is_clean() -> None:
    proc = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Success" in proc.stdout
