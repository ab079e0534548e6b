"""The README's main command, run literally: it installs into .venv, hardens a reference model,
attacks it and writes the report (about 1.5 minutes on an idle 2-core machine)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.unit.test_readme import ROOT, readme_command


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
