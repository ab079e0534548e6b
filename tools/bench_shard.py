"""Sharded runs against the one-process run, side by side in one run (interleaved rounds; the
machine's load average is printed with every round).

Rows, each the wall time of a whole `qrdeploy attack` process on models/mnist-standard.onnx:
- the query-only and transfer attacks (adaptive/square and adaptive/transfer at eps 0.1, whose
  batches are small for onnxruntime's own threading) on N digits: the default single process,
  `--workers 1 --threads 1`, and `--workers 2`;
- PGD-40 on N digits: `--workers 2` against `--ray --shards 2` (the Ray shard overhead:
  scheduling and object transfer on a local 2-worker cluster).

    python tools/bench_shard.py --n 200 --rounds 3

Prints the medians and the ratios; docs/benchmarks.md records runs with their commit and load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mnist-standard.onnx"
SOURCE = ROOT / "models" / "mnist-standard-seed1.onnx"


def attack(out: Path, n: int, attacks: str, suite: str, *extra: str) -> float:
    cmd = [sys.executable, "-m", "qrdeploy", "attack", str(MODEL), "--data", "mnist-5k", "-n",
           str(n), "--suite", suite, "--attacks", attacks, "--unhardened", str(SOURCE),
           "--no-baseline", "--no-input-guard", "-q", "-o", str(out), *extra]
    env = {**os.environ, "QRDEPLOY_CACHE": "off"}  # craft every time: the work is the point
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    free = ("square,transfer", "adaptive")
    pgd = ("pgd:steps=40,step=0.01", "white")
    rows = {
        "square+transfer, one process (default threads)": (*free, ()),
        "square+transfer, --workers 1 --threads 1": (*free, ("--workers", "1", "--threads", "1")),
        "square+transfer, --workers 2": (*free, ("--workers", "2")),
        "PGD-40, --workers 2": (*pgd, ("--workers", "2")),
        "PGD-40, --ray --shards 2": (*pgd, ("--ray", "--shards", "2")),
    }
    times: dict[str, list[float]] = {k: [] for k in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, (attacks, suite, extra) in rows.items():
                times[name].append(attack(Path(tmp) / "r.json", args.n, attacks, suite, *extra))
            print(f"round {r + 1}: load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<50} {v:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[k])})")
    one = med["square+transfer, --workers 1 --threads 1"]
    two = med["square+transfer, --workers 2"]
    default = med["square+transfer, one process (default threads)"]
    ray, local = med["PGD-40, --ray --shards 2"], med["PGD-40, --workers 2"]
    print(f"--workers 2 vs --workers 1 --threads 1: {one / two:.2f}x")
    print(f"--workers 2 vs the default single process: {default / two:.2f}x")
    print(f"Ray overhead vs --workers 2 (PGD-40): {100 * (ray / local - 1):+.1f}%")


if __name__ == "__main__":
    main()
