"""SIGKILL trials of `qrdeploy train`, `attack` and `reproduce` : kill each
command at a random moment of an uninterrupted run's duration, check that no output file exists
unless it is complete (identical to the uninterrupted run's), that no temporary file of a dead
writer is left after the rerun, and that rerunning the same command finishes with the same result
(train: the same sha256; attack: the same results JSON apart from timings; reproduce, smoke
profile: every finished step folder matches its manifest after the kill, and the rerun's
results.json equals the uninterrupted run's apart from step timings and wall time).

Usage: python tools/kill_trials_runs.py [--trials 20] [--seed 0] [--only train|attack|reproduce]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QRD = [sys.executable, "-m", "qrdeploy"]
COMMANDS = {
    "train": ["train", "--n-train", "96", "--batch-size", "32", "--epochs", "3",
              "--threads", "1", "--seed", "3", "-q", "-o"],
    "attack": ["attack", str(ROOT / "models" / "mnist-standard.onnx"), "--data", "mnist-5k",
               "-n", "40", "--batch-size", "8", "--suite", "white", "--eps", "none", "-q", "-o"],
    # a private copy of models/ (set in main): a model written there meanwhile changes nothing
    "reproduce": ["reproduce", "--profile", "smoke", "--models", "MODELS", "-o"],
}
VOLATILE = {"attack": ("timings",), "reproduce": ("steps", "wall_seconds")}


def result_of(kind: str, path: Path) -> object:
    if kind == "train":
        return path.read_bytes()
    doc = json.loads((path / "results.json" if kind == "reproduce" else path).read_text())
    for key in VOLATILE[kind]:
        doc.pop(key, None)
    return doc


def output_state(kind: str, out: Path, reference: object) -> str:
    """'absent', 'identical' or 'PARTIAL-OR-DIFFERENT' for the output after a kill."""
    if kind != "reproduce":
        if not out.exists():
            return "absent"
        return "identical" if result_of(kind, out) == reference else "PARTIAL-OR-DIFFERENT"
    from qrdeploy.paper.cache import verify

    steps = out / "steps"
    folders = [f for f in steps.iterdir() if not f.name.startswith(".")] if steps.is_dir() else []
    if any(verify(f) != "ok" for f in folders):
        return "PARTIAL-OR-DIFFERENT"
    if not (out / "results.json").exists():
        return f"{len(folders)} complete steps" if folders else "absent"
    return "identical" if result_of(kind, out) == reference else "PARTIAL-OR-DIFFERENT"


def leftovers(out: Path) -> list[str]:
    """Temporary files and unfinished step folders still there after the rerun."""
    root = out if out.is_dir() else out.parent
    return sorted(p.name for p in root.rglob("*")
                  if p.name.endswith(".tmp") or p.name.startswith(".tmp-"))


def command(kind: str, out: Path, models: Path) -> list[str]:
    return QRD + [str(models) if a == "MODELS" else a for a in COMMANDS[kind]] + [str(out)]


def run(kind: str, out: Path, models: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(command(kind, out, models), check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def trial(kind: str, out: Path, reference: object, delay: float, models: Path
          ) -> dict[str, object]:
    proc = subprocess.Popen(command(kind, out, models), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.kill()
    proc.wait()
    state = output_state(kind, out, reference)
    run(kind, out, models)
    tmp_left = leftovers(out)
    rerun_ok = result_of(kind, out) == reference
    ok = state != "PARTIAL-OR-DIFFERENT" and rerun_ok and not tmp_left
    return {"delay_s": round(delay, 2), "finished_before_kill": finished, "output": state,
            "tmp_left": tmp_left, "rerun_identical": rerun_ok, "ok": ok}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=sorted(COMMANDS), default=None)
    args = p.parse_args()
    rng, summary = random.Random(args.seed), {}
    for kind in [args.only] if args.only else sorted(COMMANDS):
        with tempfile.TemporaryDirectory() as tmp:
            models = Path(tmp) / "models"
            models.mkdir()
            for m in (ROOT / "models").glob("*.onnx"):
                shutil.copy(m, models)
            ref_path = Path(tmp) / "reference" / "out"
            ref_path.parent.mkdir()
            seconds = run(kind, ref_path, models)
            reference = result_of(kind, ref_path)
            trials = []
            for i in range(args.trials):
                out = Path(tmp) / f"t{i}" / "out"
                out.parent.mkdir()
                t = trial(kind, out, reference, rng.uniform(0.2, seconds * 1.05), models)
                trials.append(t)
                print(kind, i, json.dumps(t), flush=True)
            summary[kind] = {"trials": len(trials), "uninterrupted_s": round(seconds, 1),
                             "killed": sum(not t["finished_before_kill"] for t in trials),
                             "ok": sum(bool(t["ok"]) for t in trials)}
    print(json.dumps(summary, indent=2))
    return 0 if all(s["ok"] == s["trials"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
