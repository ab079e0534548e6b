"""docs/api.md's examples run as written, in order, in a fresh folder holding the repository's
models/ (they write their files there). A block fenced `python script` is a whole script of its
own (one that spawns worker processes, which import it again) and runs on its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def examples() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(r"```python\n(.+?)\n```", text, re.S)


def scripts() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(r"```python script\n(.+?)\n```", text, re.S)


def test_the_whole_scripts_run(tmp_path: Path) -> None:
    """The sharded example, with its main guard: two spawned workers import it again and run
    only their shards."""
    found = scripts()
    assert found and all('if __name__ == "__main__":' in code for code in found)
    (tmp_path / "models").symlink_to(ROOT / "models")
    for i, code in enumerate(found):
        script = tmp_path / f"script{i}.py"
        script.write_text(code + "\n")
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "QRDEPLOY_QUIET": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "sharded.json").exists()


def test_every_public_function_has_an_example() -> None:
    code = "\n".join(examples())
    for name in ("harden", "inspect", "evaluate", "attack", "write_report", "check", "lipschitz",
                 "reproduce", "load_dataset"):
        assert f"qrdeploy.{name}(" in code, name


def test_the_examples_run(tmp_path: Path) -> None:
    (tmp_path / "models").symlink_to(ROOT / "models")
    script = tmp_path / "examples.py"
    script.write_text("\n\n".join(examples()) + "\n")
    env = {**os.environ, "QRDEPLOY_QUIET": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^\d+ tensors rewritten, \d+ bytes$", out, re.M)
    assert "check passed" in out or "check FAILED" in out
    assert (tmp_path / "results.json").exists() and (tmp_path / "smoke-run" / "report.md").exists()
    assert (tmp_path / "report.md").exists() and re.search(r"^float \d+ \[3, 3, 3, 3\]$", out, re.M)
