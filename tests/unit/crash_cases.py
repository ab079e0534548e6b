"""SIGKILL trials of `python -m qrdeploy harden`, shared by tests/integration/test_crash_safety.py
(a few trials, CI) and tools/kill_trials.py (>= 20, recorded in docs/reliability.md).

A trial starts the command, kills it (SIGKILL, no chance to clean up) after a delay drawn from
the length of an uninterrupted run, and checks: the input is byte-for-byte unchanged; the output
path is absent or byte-identical to the uninterrupted run's output (never partial); leftover
temporary files of the atomic write are counted; rerunning completes with identical bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qrdeploy.core.fileio import sha256_file

REPO = Path(__file__).resolve().parents[2]
HARDEN_ARGS = ("--mulaw", "255", "--mulaw-layers", "last:2", "--bits", "3",
               "--granularity", "channel", "--encoding", "qdq", "--quiet")


def make_input(folder: Path) -> Path:
    """The paper's MNIST CNN shape (3.3 M parameters, 13 MB): harden takes a fraction of a
    second."""
    from qrdeploy.graphio import graph
    from tests.unit.onnx_builders import mnist_cnn

    return graph.save_model(mnist_cnn(0), folder / "in.onnx")


def harden_cmd(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "qrdeploy", "harden", str(src), "-o", str(dst), *HARDEN_ARGS]


def child_env(hash_seed: str = "0") -> dict[str, str]:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_harden(src: Path, dst: Path, hash_seed: str = "0") -> float:
    """Run to completion; returns the wall time in seconds."""
    start = time.monotonic()
    done = subprocess.run(harden_cmd(src, dst), env=child_env(hash_seed), capture_output=True,
                          timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"harden failed: {done.stderr.decode()[-400:]}")
    return time.monotonic() - start


@dataclass(frozen=True)
class Trial:
    delay_s: float
    finished_before_kill: bool
    output_state: str  # absent | identical | PARTIAL-OR-DIFFERENT
    input_unchanged: bool
    leftover_tmp: int
    rerun_identical: bool

    @property
    def ok(self) -> bool:
        return (self.output_state != "PARTIAL-OR-DIFFERENT" and self.input_unchanged
                and self.rerun_identical)


def kill_trial(src: Path, out_dir: Path, reference: bytes, delay_s: float) -> Trial:
    """One SIGKILL at `delay_s` after start; out_dir must be empty."""
    dst = out_dir / "out.onnx"
    before = sha256_file(src)
    proc = subprocess.Popen(harden_cmd(src, dst), env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay_s)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)  # our own child, by pid
    proc.wait()
    state = "absent" if not dst.exists() else (
        "identical" if dst.read_bytes() == reference else "PARTIAL-OR-DIFFERENT")
    leftovers = len([p for p in out_dir.iterdir() if p.name.endswith(".tmp")])
    unchanged = sha256_file(src) == before
    run_harden(src, dst)
    return Trial(delay_s, finished, state, unchanged, leftovers, dst.read_bytes() == reference)
