"""The README's two commands cannot rot: CI runs the test command verbatim, and the main command is
run here literally (it installs into .venv, hardens a reference model, attacks it and writes the
report; about 3 minutes)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

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


@pytest.mark.readme
def test_readme_main_command(tmp_path: Path) -> None:
    """The main command from the README, literally. What must hold on any machine: the 3-bit
    mu-law model keeps its clean accuracy (the card: about 97 % on 1,000 digits), white-box
    attacks still fool nearly every digit of this standard (not adversarially trained) model,
    and the verdict, the JSON and the report say the same thing."""
    cmd = readme_command("main")
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from qrdeploy.evaluation.results import load_results  # validates against the shipped schema

    r = load_results(ROOT / "runs" / "demo" / "results.json")
    assert r.clean.n == 100 and r.clean.value >= 0.90, r.clean
    assert r.adaptive is not None and r.masking is not None
    paper, adaptive = r.worst_case.robust.value, r.adaptive.worst_case.robust.value
    assert paper <= 0.25 and adaptive <= 0.25, (paper, adaptive)
    assert paper <= adaptive  # the worst case covers the adaptive columns too
    assert r.masking.suspected == bool(r.masking.fired)
    assert r.masking.verdict.startswith("masking suspected" if r.masking.fired else
                                        "no masking signs detected")
    assert f"verdict: {r.masking.verdict}" in proc.stdout
    report = (ROOT / "runs" / "demo" / "report.md").read_text()
    assert f"{100 * r.clean.value:.2f}" in report and r.masking.verdict in report
