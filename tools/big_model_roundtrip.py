"""A model above protobuf's 2 GB limit saves and loads (not in CI: it needs
about 3x the model size in memory and 1x on disk).

Builds Flatten -> MatMul chain whose float32 weights total --gib GiB (default 2.2), saves it with
qrdeploy.graphio.graph.save_model (external data, automatic above 2 GB), loads it back with
load_model (pre-validation, checker by path), checks every weight byte for byte, and times each
step. Peak RSS is VmHWM from /proc.

Usage: python tools/big_model_roundtrip.py [--gib 2.2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qrdeploy import graph  # noqa: E402
from qrdeploy.graphio.prevalidate import prevalidate_file  # noqa: E402

SIDE = 8192  # each weight is (SIDE, SIDE) float32 = 256 MiB


def build(gib: float) -> onnx.ModelProto:
    n = max(1, int(np.ceil(gib * 2**30 / (SIDE * SIDE * 4))))
    rng = np.random.default_rng(0)
    inits, nodes, h = [], [], "flat"
    nodes.append(helper.make_node("Flatten", ["input"], ["flat"]))
    for i in range(n):
        w = (rng.standard_normal((SIDE, SIDE), dtype=np.float32) * 0.01)  # (K, N)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        del w
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        h = f"h{i}"
    nodes.append(helper.make_node("Identity", [h], ["logits"]))
    g = helper.make_graph(nodes, "big",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 2, 64, 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                         ["N", SIDE])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.2)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    times: dict[str, float] = {}
    t = time.monotonic()
    model = build(args.gib)
    times["build_s"] = time.monotonic() - t
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "big.onnx"
        t = time.monotonic()
        graph.save_model(model, path)
        times["save_s"] = time.monotonic() - t
        sizes = {f.name: f.stat().st_size for f in Path(tmp).iterdir()}
        t = time.monotonic()
        prevalidate_file(path)
        times["prevalidate_s"] = time.monotonic() - t
        t = time.monotonic()
        back = graph.load_model(path)
        times["load_s"] = time.monotonic() - t
        want = graph.initializer_map(model)
        same = all(t.raw_data == want[t.name].raw_data for t in back.graph.initializer)
    print(json.dumps({"gib": args.gib, "files": sizes, "weights_identical": same,
                      **{k: round(v, 2) for k, v in times.items()},
                      "peak_rss_mib": round(peak_rss_mib())}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
