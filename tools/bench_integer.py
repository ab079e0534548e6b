"""Full-integer deployment benchmark: qrdeploy's int8-activation hardened model against the float
original and onnxruntime's own quantize_static QDQ model of the same net, side by side in one run.

Measures (onnxruntime CPU, `--threads` intra-op threads):
- latency at batch 1 and batch 256: rounds interleave the models (float, ort-qdq, ort-qdq-pre
  (onnxruntime's quant_pre_process, then quantize_static), qrdeploy-int8,
  and the float-activation qdq and nbits encodings for reference) in an order rotated every
  round, sessions without spin-waiting (see `_session`), median per model, ratios as the median
  over rounds of the within-round ratio;
- file sizes;
- clean accuracy on the test split of `--data` (mnist-5k: 1,000 digits) with the paired
  difference to the float model and its Newcombe interval (qrdeploy.core.stats);
- the cost of one attack step (loss_and_grad, CE, batch `--step-batch`) through the int8 QDQ graph
  (BPDA: integer forward + gradient of the dequantized twin) against the float graph, interleaved,
  as qrdeploy runs it (gradient batches split over lanes) and in one lane.

With `--trained QAT.onnx` (the float export of a quantization-aware fine-tuning of `--model`,
`qrdeploy train --quant-aware B --from MODEL`), qrdeploy's three encodings are hardened from that
model instead: the rows are what an edge team ships after QAT, each still compared with the
float original, and the attack step runs through its int8 graph.

Usage: python tools/bench_integer.py [--model models/mnist-standard.onnx] [--rounds 30]
       python tools/bench_integer.py --model models/cifar10-standard.onnx --data cifar10-10k
       python tools/bench_integer.py --model models/cifar10-standard.onnx --data cifar10-10k \
           --trained wrn-qat3.onnx
Prints a markdown block for docs/benchmarks.md (command, commit, machine, load average)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qrdeploy.core.losses import Loss
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import PairedCounts, Proportion, newcombe_paired_interval
from qrdeploy.data.datasets import load_dataset
from qrdeploy.graphio.graph import load_model, save_model
from qrdeploy.hardening.integer import IntegerActivations
from qrdeploy.hardening.passes import WeightQuant, harden
from qrdeploy.hardening.quant import Granularity
from qrdeploy.model.ortmodel import OrtModel


def _ort_qdq(src: Path, dst: Path, calib: np.ndarray) -> None:
    """onnxruntime's own quantize_static: QDQ, uint8 activations, int8 per-channel weights."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _ort_qdq_pre(src: Path, dst: Path, calib: np.ndarray) -> None:
    """onnxruntime's recommended flow: `quant_pre_process` (shape inference and its graph
    optimizer, which folds BatchNormalization into convolutions), then the same quantize_static."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre))
    _ort_qdq(pre, dst, calib)
    pre.unlink()


def _session(path: Path, threads: int) -> Any:
    """qrdeploy's session options (qrdeploy.core.runtime.make_session) without spin-waiting: the
    intra-op threads of the model that ran before would otherwise keep spinning on the 2 cores
    while the next model runs, and whichever model comes second is measured slower."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path.read_bytes(), opts, providers=["CPUExecutionProvider"])


def _latency(paths: dict[str, Path], batch: int, rounds: int, threads: int,
             shape: tuple[int, ...]) -> dict[str, list[float]]:
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    times: dict[str, list[float]] = {k: [] for k in paths}
    for s in sessions.values():  # warm up
        for _ in range(3):
            s.run(None, {s.get_inputs()[0].name: x})
    keys = list(sessions)
    for r in range(rounds):
        # interleaved: each round runs every model once, the order rotated round by round (the
        # model that runs right after another one is measured slower on a loaded machine)
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            s = sessions[k]
            feed = {s.get_inputs()[0].name: x}
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t0)
    return times


def _ratio(times: dict[str, list[float]], k: str, base: str) -> float:
    """Median over rounds of the within-round ratio: load that drifts between rounds cancels."""
    return float(np.median(np.asarray(times[k]) / np.asarray(times[base])))


def _step_cost(float_path: Path, int8_path: Path, batch: int, rounds: int, threads: int,
               shape: tuple[int, ...]) -> dict[str, float]:
    """Median seconds of one step through each model, as qrdeploy runs it (gradient batches
    split over lanes) and in one lane ("/1"), the four interleaved in rotating order."""
    cfg = SessionConfig("cpu", threads=threads)
    one = SessionConfig("cpu", threads=threads, lanes=1)
    models = {"float": OrtModel(float_path, cfg), "int8": OrtModel(int8_path, cfg),
              "float/1": OrtModel(float_path, one), "int8/1": OrtModel(int8_path, one)}
    x = np.random.default_rng(1).random((batch, *shape), dtype=np.float32)
    y = np.arange(batch) % 10
    times: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        m.loss_and_grad(x, y, Loss.CE)
    order = list(models)
    for r in range(rounds):
        for k in order[r % 4:] + order[:r % 4]:
            m = models[k]
            t0 = time.perf_counter()
            m.loss_and_grad(x, y, Loss.CE)
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/mnist-standard.onnx")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--calibrate", type=int, default=500)
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--step-batch", type=int, default=100)
    ap.add_argument("--data", default="mnist-5k",
                    help="embedded data set of the model (cifar10-10k for models/cifar10-*)")
    ap.add_argument("--trained", default=None,
                    help="harden this quantization-aware fine-tuning of --model instead")
    args = ap.parse_args()
    load_before = os.getloadavg()
    test = load_dataset(args.data, "test")
    shape = tuple(int(v) for v in test.x.shape[1:])
    calib = load_dataset(args.data, "train", n=args.calibrate).x
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = Path(args.model)
        model = load_model(src)
        paths = {"float": src, "ort-qdq": d / "ort-qdq.onnx",
                 "ort-qdq-pre": d / "ort-qdq-pre.onnx", "qrdeploy-int8": d / "int8.onnx",
                 "qrdeploy-qdq-float-act": d / "qdq.onnx",
                 "qrdeploy-nbits-float-act": d / "nbits.onnx"}
        _ort_qdq(src, paths["ort-qdq"], load_dataset(args.data, "train", n=100).x)
        _ort_qdq_pre(src, paths["ort-qdq-pre"], load_dataset(args.data, "train", n=100).x)
        wq = WeightQuant(args.bits, Granularity.CHANNEL)
        base = model if args.trained is None else load_model(args.trained)
        hard, _ = harden(base, [wq], activations=IntegerActivations(
            args.calibrate, args.method, f"{args.data}:train"), calibration=calib)
        save_model(hard, paths["qrdeploy-int8"])
        save_model(harden(base, [wq], "qdq")[0], paths["qrdeploy-qdq-float-act"])
        save_model(harden(base, [wq], "nbits")[0], paths["qrdeploy-nbits-float-act"])
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        lat1 = _latency(paths, 1, args.rounds * 25, args.threads, shape)
        lat256 = _latency(paths, 256, args.rounds, args.threads, shape)
        cfg = SessionConfig("cpu", threads=args.threads)
        preds = {k: OrtModel(p, cfg, gradients=False).predict(test.x) for k, p in paths.items()}
        step = _step_cost(src, paths["qrdeploy-int8"], args.step_batch, args.rounds, args.threads,
                          shape)
    assert test.y is not None
    ok = {k: v == test.y for k, v in preds.items()}
    counts = PairedCounts.from_flags(ok["qrdeploy-int8"], ok["float"])
    lo, hi = newcombe_paired_interval(counts)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    import onnxruntime

    trained = "" if args.trained is None else f" --trained {args.trained}"
    print(f"command: python tools/bench_integer.py --model {args.model} --data {args.data} "
          f"--rounds {args.rounds} --threads {args.threads}{trained} (bits {args.bits} per "
          "channel, "
          f"--calibrate {args.calibrate} {args.method})")
    print(f"commit {commit}; onnxruntime {onnxruntime.__version__}; {platform.processor() or ''} "
          f"{os.cpu_count()} cores; load average before {load_before[0]:.2f}, after "
          f"{os.getloadavg()[0]:.2f}")
    print()
    print("| model | bytes | size / float | batch 1 ms | / float | / ort-qdq | batch 256 ms "
          "| / float | / ort-qdq | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in paths:
        acc = Proportion(int(ok[k].sum()), len(ok[k]))
        print(f"| {k} | {sizes[k]:,} | {sizes[k] / sizes['float']:.3f} | "
              f"{np.median(lat1[k]) * 1e3:.3f} | {_ratio(lat1, k, 'float'):.2f} | "
              f"{_ratio(lat1, k, 'ort-qdq'):.2f} | {np.median(lat256[k]) * 1e3:.2f} | "
              f"{_ratio(lat256, k, 'float'):.2f} | {_ratio(lat256, k, 'ort-qdq'):.2f} | "
              f"{100 * acc.k / acc.n:.1f}% |")
    print()
    print("ratios: median over rounds of the within-round ratio; ms: median per model; "
          "ort-qdq-pre: quant_pre_process first (onnxruntime's recommended flow)")
    print(f"qrdeploy-int8 / ort-qdq-pre: batch 1 {_ratio(lat1, 'qrdeploy-int8', 'ort-qdq-pre'):.2f}"
          f", batch 256 {_ratio(lat256, 'qrdeploy-int8', 'ort-qdq-pre'):.2f}")
    print()
    print(f"int8 - float accuracy: {100 * counts.difference:+.1f} points, paired 95% interval "
          f"[{100 * lo:+.2f}, {100 * hi:+.2f}] (Newcombe; {counts.gains} gained, "
          f"{counts.losses} lost, n={counts.n})")
    print(f"attack step (loss_and_grad CE, batch {args.step_batch}): float "
          f"{step['float'] * 1e3:.1f} ms, int8 QDQ (BPDA) {step['int8'] * 1e3:.1f} ms, ratio "
          f"{step['int8'] / step['float']:.2f}; in one lane: float {step['float/1'] * 1e3:.1f} ms, "
          f"int8 {step['int8/1'] * 1e3:.1f} ms, ratio {step['int8/1'] / step['float/1']:.2f}")
    _ = onnx  # the float model is read by path


if __name__ == "__main__":
    main()
