"""Where an attack step's time goes: onnxruntime's own per-operator profile of the gradient
graph that `OrtModel.loss_and_grad` runs (CE loss, one batch of random inputs in [0, 1]).

    python tools/profile_step.py MODEL [MODEL ...] [--batch 256] [--threads 2] [--runs 5]

For each model: the total kernel time per run and the operators that take it, with their count
per run, from onnxruntime's profiler (`SessionOptions.enable_profiling`) on the same session
settings as an attack (no spin-waiting, no QDQ rewrites of the gradient graph). Kernel times
are summed over the runs after one warm-up, so they add up to a little less than the wall time
of a step; the step's wall time (median) is printed beside them. For an integer graph the
attack step also runs the deployed graph's forward to score it, which is not in this profile.
Prints a markdown block with
the command, the commit and the load average."""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

Row = tuple[str, float, int]


def profile(path: Path, batch: int, threads: int, runs: int) -> tuple[float, float, list[Row]]:
    """(median wall ms per step, kernel ms per run, [(op, ms per run, count per run)])."""
    from qrdeploy.core.runtime import SessionConfig, make_session
    from qrdeploy.model.ortmodel import OrtModel

    config = SessionConfig("cpu", threads=threads)
    m = OrtModel(path, config)
    gm, _ = m._session("ce")
    with tempfile.TemporaryDirectory() as tmp:
        # the attack's own session settings (qrdeploy.model.ortmodel), with the profiler on
        sess = make_session(gm.model.SerializeToString(), m.config, qdq_transforms=False,
                            profile_prefix=str(Path(tmp) / "step"))
        names = [i.name for i in sess.get_inputs()]
        rng = np.random.default_rng(0)
        feeds = {names[0]: rng.random((batch, *m.input_shape), dtype=np.float32),
                 names[1]: (np.arange(batch) % m.num_classes).astype(np.int64)}
        sess.run(None, feeds)
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            walls.append(time.perf_counter() - t0)
        events = json.loads(Path(sess.end_profiling()).read_text())
    kernel: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            op = ev["args"]["op_name"]
            kernel[op] += ev["dur"]
            count[op] += 1
    done = runs + 1  # the warm-up run is in the profile too
    rows = [(op, us / done / 1e3, count[op] // done) for op, us in kernel.most_common()]
    return float(np.median(walls)) * 1e3, sum(kernel.values()) / done / 1e3, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    load = os.getloadavg()
    print("```")
    print(f"command: python tools/profile_step.py {' '.join(map(str, args.models))} "
          f"--batch {args.batch} --threads {args.threads} --runs {args.runs}")
    print(f"commit {commit}; {platform.machine()}, {os.cpu_count()} cores; load average before "
          f"{load[0]:.2f}")
    for path in args.models:
        wall, total, rows = profile(path, args.batch, args.threads, args.runs)
        print(f"\n{path}: step {wall:.1f} ms (median wall), kernels {total:.1f} ms per run")
        for op, ms, n in rows[:args.top]:
            print(f"  {op:24s} {ms:8.1f} ms {100 * ms / total:5.1f} %  x{n}")
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    print("```")


if __name__ == "__main__":
    main()
