"""Benchmark of qrdeploy.spectral.norms on every weight layer of WRN-32-10 (46 M parameters, random
weights), against a dense-SVD / plain power-iteration baseline measured in the same run.

Layers (docs/method.md section 6, Madry's w32-10): conv 3x3 3->16 at 32x32, then 3 stages x 5
pre-activation units of two 3x3 convs, widths 160/320/640 at 32/16/8 (the first conv of stages 2
and 3 has stride 2, TF 'SAME' padding), then FC 640->10. He-normal conv weights, uniform FC.

Ours: reshaped-kernel norms by the Gram eigenvalue, conv operator norms by Lanczos (float32) at
--tol. Baseline: full SVD of the reshaped kernels, power iteration on the convolutions at the
same --tol. The power baseline and a tight reference (Lanczos, tol 1e-7) run on one layer of
each distinct shape (--baseline types) or on every layer (--baseline all).

    python tools/bench_lipschitz.py                      # prints the markdown section
    python tools/bench_lipschitz.py --write docs/benchmarks-lipschitz.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# One BLAS thread: on this shared 2-core sandbox a 2-thread GEMM often waits a whole scheduler
# slice for its descheduled second thread (measured: median conv 25 ms with 1 thread, 120-220 ms
# with 2 at load average 8). Set OPENBLAS_NUM_THREADS yourself to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from qrdeploy import spectral  # noqa: E402
from qrdeploy.core.fileio import atomic_write_text  # noqa: E402
from qrdeploy.spectral.norms import ConvGeometry, SpectralResult  # noqa: E402

T = TypeVar("T")


@dataclass(frozen=True)
class Layer:
    name: str
    weight: np.ndarray  # conv (C_out, C_in, 3, 3) or FC (10, 640)
    geometry: ConvGeometry | None  # None for the FC layer

    @property
    def kind(self) -> str:
        if self.geometry is None:
            return f"fc {self.weight.shape[1]}->{self.weight.shape[0]}"
        s = self.geometry.strides[0]
        return (f"conv {self.weight.shape[1]}->{self.weight.shape[0]} "
                f"@{self.geometry.in_spatial[0]} s{s}")


def wrn_32_10(seed: int) -> list[Layer]:
    rng = np.random.default_rng(seed)

    def conv(name: str, c_in: int, c_out: int, size: int, stride: int) -> Layer:
        w = rng.standard_normal((c_out, c_in, 3, 3)) * math.sqrt(2.0 / (9 * c_out))
        pads = (1, 1, 1, 1) if stride == 1 else (0, 0, 1, 1)  # TF SAME for even sizes
        g = ConvGeometry((size, size), (stride, stride), pads, (1, 1))
        return Layer(name, w.astype(np.float32), g)

    layers = [conv("init_conv", 3, 16, 32, 1)]
    c_in, size = 16, 32
    for stage, (width, stride) in enumerate(((160, 1), (320, 2), (640, 2)), 1):
        for unit in range(5):
            s = stride if unit == 0 else 1
            layers.append(conv(f"unit_{stage}_{unit}/conv1", c_in, width, size, s))
            size //= s
            layers.append(conv(f"unit_{stage}_{unit}/conv2", width, width, size, 1))
            c_in = width
    bound = math.sqrt(3.0 / 640)  # unit-scaling uniform
    fc = rng.uniform(-bound, bound, (10, 640)).astype(np.float32)
    return [*layers, Layer("logit", fc, None)]


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def ours(layers: list[Layer], tol: float, max_iter: int
         ) -> tuple[dict[str, SpectralResult], float, float]:
    """All norms; returns (results, seconds for reshaped norms, seconds for operator norms)."""
    results: dict[str, SpectralResult] = {}
    start = time.perf_counter()
    for lyr in layers:
        results[lyr.name + ":matrix"] = spectral.reshaped_kernel_norm(lyr.weight, "gram")
    t_gram = time.perf_counter() - start
    for lyr in layers:
        if lyr.geometry is not None:
            r, t = timed(lambda lyr=lyr: spectral.conv_operator_norm(  # type: ignore[misc]
                lyr.weight, lyr.geometry, tol=tol, max_iter=max_iter))
            results[lyr.name + ":op"] = r
            _log(f"{lyr.name:22} {lyr.kind:24} {r.value:.5f} {r.iterations:4d} it {t:6.2f} s")
    return results, t_gram, time.perf_counter() - start - t_gram


def svd_baseline(layers: list[Layer]) -> float:
    """Seconds for the full-SVD reshaped-kernel norms of every layer."""
    start = time.perf_counter()
    for lyr in layers:
        spectral.reshaped_kernel_norm(lyr.weight, "svd")
    return time.perf_counter() - start


def representatives(layers: list[Layer], every: bool) -> list[Layer]:
    convs = [lyr for lyr in layers if lyr.geometry is not None]
    if every:
        return convs
    seen: dict[str, Layer] = {}
    for lyr in convs:
        seen.setdefault(lyr.kind, lyr)
    return list(seen.values())


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
            f"(shared sandbox, 1-min load average {load:.1f} at the end of the run), "
            f"numpy {np.__version__}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no commit yet)"
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    return out + (" (dirty tree)" if dirty.stdout.strip() else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--power-max-iter", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", choices=["types", "all", "none"], default="types")
    p.add_argument("--fft", action="store_true", help="also time the FFT bound per layer type")
    p.add_argument("--write", metavar="DOC.md", help="replace the '## lipschitz' section there")
    args = p.parse_args()

    layers = wrn_32_10(args.seed)
    n_params = sum(lyr.weight.size for lyr in layers)
    cpu = time.process_time()
    results, t_gram, t_op = ours(layers, args.tol, args.max_iter)
    _CPU["ours"] = time.process_time() - cpu
    t_svd = svd_baseline(layers)
    lines = _header(args, layers, n_params, results, (t_gram, t_op, t_svd))
    if args.baseline != "none":
        lines += _baseline_rows(layers, results, args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        _write_section(Path(args.write), text)


def _header(  # noqa: C901 -- one table, built line by line
    args: argparse.Namespace, layers: list[Layer], n_params: int,
    results: dict[str, SpectralResult], times: tuple[float, float, float],
) -> list[str]:
    t_gram, t_op, t_svd = times
    ops = [r for k, r in results.items() if k.endswith(":op")]
    worst_gram = max(
        abs(results[lyr.name + ":matrix"].value
            - np.linalg.norm(lyr.weight.reshape(lyr.weight.shape[0], -1).astype(np.float64), 2))
        / results[lyr.name + ":matrix"].value for lyr in layers[-3:])
    cmd = "python tools/bench_lipschitz.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("tol", args.tol), ("seed", args.seed),
                                                    ("baseline", args.baseline)))
    return [
        "## lipschitz",
        "",
        f"Command: `{cmd}{' --fft' if args.fft else ''}`; commit {_commit()}; machine: "
        f"{_machine()}.",
        "",
        f"WRN-32-10, random weights: {len(layers)} weight layers, {n_params / 1e6:.1f} M "
        "parameters.",
        "",
        "| what | ours | baseline | speed-up |",
        "|---|---|---|---|",
        f"| reshaped-kernel norms, all {len(layers)} layers | {_s(t_gram)} (Gram eigenvalue) | "
        f"{_s(t_svd)} (full SVD) | {t_svd / max(t_gram, 1e-9):.0f}x |",
        f"| {len(ops)} conv operator norms at their input shapes (Lanczos, float32, tol "
        f"{args.tol:g}) | {_s(t_op)} | per layer below | |",
        f"| **every layer, all norms** | **{_s(t_gram + t_op)}** wall, "
        f"{_s(_CPU['ours'])} CPU | | |",
        "",
        f"Lanczos iterations per conv: min {min(r.iterations for r in ops)}, median "
        f"{int(np.median([r.iterations for r in ops]))}, max {max(r.iterations for r in ops)}; "
        f"all converged: {all(r.converged for r in ops)}. Gram vs SVD on the last 3 layers: "
        f"worst relative difference {worst_gram:.1e}.",
        "",
    ]


_CPU: dict[str, float] = {}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def _baseline_rows(layers: list[Layer], results: dict[str, SpectralResult],
                   args: argparse.Namespace) -> list[str]:
    reps = representatives(layers, args.baseline == "all")
    lines = [
        "Conv operator norms, one layer per distinct shape: Lanczos (ours, float32, tol "
        f"{args.tol:g}) against plain power iteration (float32, same tol, at most "
        f"{args.power_max_iter} iterations) and a tight reference (Lanczos float32, tol 1e-7, at "
        "most 400 iterations). Times are wall clock.",
        "",
        "| layer | shape | ours: value, iters, time | power: iters, time | reference "
        "| ours rel. err | power rel. err |" + (" FFT bound, time |" if args.fft else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if args.fft else ""),
    ]
    for lyr in reps:
        assert lyr.geometry is not None
        mine, t_mine = timed(lambda lyr=lyr: spectral.conv_operator_norm(  # type: ignore[misc]
            lyr.weight, lyr.geometry, tol=args.tol, max_iter=args.max_iter))
        power, t_pow = timed(lambda lyr=lyr: spectral.conv_operator_norm(  # type: ignore[misc]
            lyr.weight, lyr.geometry, "power", tol=args.tol, max_iter=args.power_max_iter))
        ref = spectral.conv_operator_norm(lyr.weight, lyr.geometry, tol=1e-7, max_iter=400)
        row = (f"| {lyr.name} | {lyr.kind} | {mine.value:.5f}, {mine.iterations}, {_s(t_mine)} | "
               f"{power.iterations}{'' if power.converged else ' (cap)'}, {_s(t_pow)} | "
               f"{ref.value:.5f} ({ref.iterations} it) | "
               f"{(ref.value - mine.value) / ref.value:.1e} | "
               f"{(ref.value - power.value) / ref.value:.1e} |")
        if args.fft:
            bound, t_fft = timed(lambda lyr=lyr: spectral.conv_fft_bound(  # type: ignore[misc]
                lyr.weight, lyr.geometry))
            row += f" {bound:.5f}, {_s(t_fft)} |"
        _log(row)
        lines.append(row)
    return [*lines, ""]


def _write_section(path: Path, section: str) -> None:
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks: lipschitz\n\n"
    pattern = re.compile(r"^## lipschitz\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(section, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, new)


if __name__ == "__main__":
    main()
