"""Benchmark: qrdeploy harden against onnxruntime.quantization on one synthetic ONNX model.

Builds a model with about 100 M float parameters (Conv layers, then fully connected layers as
MatMul + Add), saved with external data, and times in fresh subprocesses, side by side:
  - qrdeploy: load_model -> harden(μ-law 255 on the last layer + 3-bit per-channel, qdq) -> save;
  - onnxruntime.quantization.quantize_dynamic(per_channel=True, QInt8): onnxruntime's only
    quantizer that covers both Conv and MatMul weights without calibration data (its 4-bit
    MatMulNBitsQuantizer covers MatMul only, its QDQ quantizer needs calibration data and also
    quantizes activations). The FC layers are MatMul rather than Gemm because quantize_dynamic
    skips Gemm, which would let it do less work than qrdeploy.
Each subprocess reports its own wall time (load to save) and peak RSS (VmHWM from /proc; not
ru_maxrss, which on Linux inherits the parent's high-water mark across fork + exec).

Usage: python tools/bench_harden.py [--params 100e6] [--workdir DIR] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QRDEPLOY = """
import json, sys, time
from qrdeploy.graphio import graph
from qrdeploy.hardening.passes import MuLawMap, WeightQuant, harden
t0 = time.perf_counter()
m = graph.load_model(sys.argv[1])
h, _ = harden(m, [MuLawMap(255.0, layers="last:1"), WeightQuant(3, "channel")], "qdq")
del m
graph.save_model(h, sys.argv[2])
dt = time.perf_counter() - t0
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": dt, "peak_rss": int(hwm)}))
"""

ORT = """
import json, sys, time, logging
logging.disable(logging.WARNING)
from onnxruntime.quantization import QuantType, quantize_dynamic
t0 = time.perf_counter()
quantize_dynamic(sys.argv[1], sys.argv[2], per_channel=True, weight_type=QuantType.QInt8,
                 use_external_data_format=True)
dt = time.perf_counter() - t0
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": dt, "peak_rss": int(hwm)}))
"""


def build(params: float, seed: int = 0) -> onnx.ModelProto:
    """Conv stack (3x3, 512 channels, 8x8 input) then square FC layers of width 4096."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    ch, hw, width = 512, 8, 4096
    n_conv = 8
    fc_params = params - n_conv * ch * ch * 9
    n_fc = max(1, round(fc_params / (width * width)))

    def weight(name: str, shape: tuple[int, ...]) -> str:
        std = np.float32(1 / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1))
        w = rng.standard_normal(shape, dtype=np.float32) * std
        inits.append(numpy_helper.from_array(w, name))
        return name

    x = "input"
    for i in range(n_conv):
        y = f"conv{i}"
        nodes.append(helper.make_node("Conv", [x, weight(f"{y}.weight", (ch, ch, 3, 3))],
                                      [y], name=y, pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [y], [f"{y}_relu"]))
        x = f"{y}_relu"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    nodes.append(helper.make_node("MatMul", ["flat", weight("proj.weight", (ch, width))],
                                  ["h0"], name="proj"))
    x = "h0"
    for i in range(n_fc):
        y = f"fc{i}"
        nodes.append(helper.make_node("MatMul", [x, weight(f"{y}.weight", (width, width))],
                                      [f"{y}_mm"], name=y))
        nodes.append(helper.make_node("Add", [f"{y}_mm", weight(f"{y}.bias", (width,))],
                                      [f"{y}_add"]))
        nodes.append(helper.make_node("Relu", [f"{y}_add"], [f"{y}_relu"]))
        x = f"{y}_relu"
    nodes.append(helper.make_node("MatMul", [x, weight("head.weight", (width, 10))], ["logits"],
                                  name="head"))
    g = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", ch, hw, hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def run(code: str, src: Path, dst: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], check=True,
                         capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = result.pop("peak_rss") / 1024  # Linux reports KiB
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=100e6)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_harden."))
    work.mkdir(parents=True, exist_ok=True)
    from qrdeploy.graphio import graph

    model = build(args.params)
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    src = graph.save_model(model, work / "model.onnx", external_data=True)
    del model
    size_mb = (src.stat().st_size + (work / "model.onnx.data").stat().st_size) / 2**20
    rows = []
    for _ in range(args.repeat):
        ours = run(QRDEPLOY, src, work / "qrdeploy.onnx")
        theirs = run(ORT, src, work / "ort.onnx")
        rows.append({"qrdeploy": ours, "onnxruntime": theirs,
                     "time_ratio": ours["seconds"] / theirs["seconds"]})
    print(json.dumps({"params": n, "model_mb": size_mb, "runs": rows,
                      "qrdeploy_out_mb": (work / "qrdeploy.onnx").stat().st_size / 2**20},
                     indent=2))


if __name__ == "__main__":
    main()
