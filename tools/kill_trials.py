"""SIGKILL trials of `python -m qrdeploy harden` : at least 20 kills at delays
spread uniformly over an uninterrupted run (imports, load, harden, save), each checked for a
partial output, a changed input, leftover temporary files and a byte-identical rerun
(tests/unit/crash_cases.py). Prints one line per trial and a JSON summary.

Usage: python tools/kill_trials.py [--trials 24] [--seed 0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.crash_cases import kill_trial, make_input, run_harden  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        src = make_input(folder)
        seconds = run_harden(src, folder / "reference.onnx")
        reference = (folder / "reference.onnx").read_bytes()
        rng = random.Random(args.seed)
        trials = []
        for i in range(args.trials):
            out = folder / f"trial{i}"
            out.mkdir()
            t = kill_trial(src, out, reference, rng.uniform(0.05, seconds * 1.1))
            trials.append(t)
            print(f"{i:3d} delay {t.delay_s:5.2f}s finished={t.finished_before_kill!s:5} "
                  f"output={t.output_state:9} input_unchanged={t.input_unchanged} "
                  f"tmp_left={t.leftover_tmp} rerun_identical={t.rerun_identical}", flush=True)
    summary = {
        "trials": len(trials), "uninterrupted_s": round(seconds, 2),
        "ok": sum(t.ok for t in trials),
        "killed": sum(not t.finished_before_kill for t in trials),
        "output_absent": sum(t.output_state == "absent" for t in trials),
        "output_identical": sum(t.output_state == "identical" for t in trials),
        "partial_or_different": sum(t.output_state == "PARTIAL-OR-DIFFERENT" for t in trials),
        "input_changed": sum(not t.input_unchanged for t in trials),
        "trials_with_tmp_left": sum(t.leftover_tmp > 0 for t in trials),
        "rerun_identical": sum(t.rerun_identical for t in trials),
        "failures": [asdict(t) for t in trials if not t.ok],
    }
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
