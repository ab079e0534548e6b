"""Sharded runs against the one-process run, side by side in one run (interleaved rounds; the
machine's load average is printed with every round).

Rows, each the wall time of a whole `qrdeploy attack` process on models/mnist-standard.onnx:
- the query-only and transfer attacks (adaptive/square and adaptive/transfer at eps 0.1, whose
  batches are small for onnxruntime's own threading) on N digits: the default single process,
  `--workers 1 --threads 1`, and `--workers 2`;
- PGD-40 on --pgd-n digits (1,000 by default): `--workers 2` against `--ray auto --shards 2` on a
  2-CPU local Ray cluster started once before the rounds (`ray start --head`): the Ray shard
  overhead proper, scheduling and object transfer; and against `--ray --shards 2`, which starts
  and stops its own local Ray in every run (the overhead a one-off user sees).

    python tools/bench_shard.py --n 200 --rounds 3 [--pgd-only]

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
    p.add_argument("--pgd-n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pgd-only", action="store_true", help="only the PGD-40 (Ray overhead) rows")
    args = p.parse_args()
    free = ("square,transfer", "adaptive")
    pgd = ("pgd:steps=40,step=0.01", "white")
    rows: dict[str, tuple[int, str, str, tuple[str, ...]]] = {} if args.pgd_only else {
        "square+transfer, one process (default threads)": (args.n, *free, ()),
        "square+transfer, --workers 1 --threads 1":
            (args.n, *free, ("--workers", "1", "--threads", "1")),
        "square+transfer, --workers 2": (args.n, *free, ("--workers", "2")),
    }
    rows |= {
        "PGD-40, --workers 2": (args.pgd_n, *pgd, ("--workers", "2")),
        "PGD-40, --ray auto --shards 2 (running cluster)":
            (args.pgd_n, *pgd, ("--ray", "auto", "--shards", "2")),
        "PGD-40, --ray --shards 2 (own local Ray)": (args.pgd_n, *pgd, ("--ray", "--shards", "2")),
    }
    times: dict[str, list[float]] = {k: [] for k in rows}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "start", "--head", "--num-cpus", "2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, stdout=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for name, (n, attacks, suite, extra) in rows.items():
                    times[name].append(attack(Path(tmp) / "r.json", n, attacks, suite, *extra))
                print(f"round {r + 1}: load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    finally:
        subprocess.run([ray_cli, "stop"], check=False, stdout=subprocess.DEVNULL)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<50} {v:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[k])})")
    if not args.pgd_only:
        one = med["square+transfer, --workers 1 --threads 1"]
        two = med["square+transfer, --workers 2"]
        default = med["square+transfer, one process (default threads)"]
        print(f"--workers 2 vs --workers 1 --threads 1: {one / two:.2f}x")
        print(f"--workers 2 vs the default single process: {default / two:.2f}x")
    local = med["PGD-40, --workers 2"]
    for name in ("PGD-40, --ray auto --shards 2 (running cluster)",
                 "PGD-40, --ray --shards 2 (own local Ray)"):
        print(f"Ray overhead vs --workers 2, {name[8:]}: {100 * (med[name] / local - 1):+.1f}%")


if __name__ == "__main__":
    main()
