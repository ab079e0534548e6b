"""Benchmark: two small choices of the gradient machinery, each measured against its alternative
in one run, calls interleaved (medians in ms).

1. Forward runs and lanes. Gradient batches are split over lanes (qrdeploy.core.runtime.lane_plan:
   on 2 threads, two lanes of one thread each, in one shared session); forward runs (`logits`,
   Square's queries) are not. Times a forward run of MODEL at several batch sizes in one session
   of `--threads` threads (as qrdeploy runs it) against the same batch split in two halves run at
   once in a one-thread session (as a lane split would run it).
2. LeakyRelu's slope in the gradient graph: `Max(Cast(x > 0), alpha)` (qrdeploy's rule) against
   `Where(x > 0, 1, alpha)`, the same values, on an activation of shape (256, 32, 28, 28).

Usage: python tools/bench_ops.py [--model models/mnist-standard.onnx] [--threads 2] [--repeats 50]
Prints a markdown section."""

from __future__ import annotations

import argparse
import os
import platform
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from onnx import TensorProto, helper
from timing import interleaved

from qrdeploy.core.runtime import SessionConfig, make_session


def forward_rows(model: str, threads: int, repeats: int) -> list[str]:
    data = onnx.load(model).SerializeToString()
    whole = make_session(data, SessionConfig("cpu", threads))
    lane = make_session(data, SessionConfig("cpu", 1))
    name = whole.get_inputs()[0].name
    shape = [d.dim_value or 1 for d in onnx.load(model).graph.input[0].type.tensor_type.shape.dim]
    pool = ThreadPoolExecutor(1)
    rows = []
    for b in (1, 7, 20, 100):
        x = np.random.default_rng(0).random((b, *shape[1:]), dtype=np.float32)
        h = max(b // 2, 1)

        def split(x: np.ndarray = x, h: int = h) -> None:
            if len(x) < 2:
                lane.run(None, {name: x})
                return
            other = pool.submit(lane.run, None, {name: x[h:]})
            lane.run(None, {name: x[:h]})
            other.result()

        ms = interleaved({"one": lambda x=x: whole.run(None, {name: x}), "lanes": split},
                         max(repeats * 20 // b, 10))
        ratio = ms["lanes"] / ms["one"]
        rows.append(f"| {b} | {ms['one']:.3f} | {ms['lanes']:.3f} | {ratio:.2f} |")
    return rows


def slope_graph(form: str) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, 28, 28])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    alpha = helper.make_tensor("alpha", TensorProto.FLOAT, [], [0.01])
    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"])]
    if form == "max":
        nodes += [helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
                  helper.make_node("Max", ["posf", "alpha"], ["y"])]
    else:
        nodes += [helper.make_node("Where", ["pos", "one", "alpha"], ["y"])]
    graph = helper.make_graph(nodes, form, [x], [y], [zero, one, alpha])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def slope_row(threads: int, repeats: int) -> str:
    cfg = SessionConfig("cpu", threads)
    s_max, s_where = make_session(slope_graph("max"), cfg), make_session(slope_graph("where"), cfg)
    x = np.random.default_rng(0).standard_normal((256, 32, 28, 28), dtype=np.float32)
    a, b = s_max.run(None, {"x": x})[0], s_where.run(None, {"x": x})[0]
    assert np.array_equal(a, b), "the two forms differ"
    ms = interleaved({"max": lambda: s_max.run(None, {"x": x}),
                      "where": lambda: s_where.run(None, {"x": x})}, repeats)
    return f"| {ms['max']:.2f} | {ms['where']:.2f} | {ms['where'] / ms['max']:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/mnist-standard.onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"threads {args.threads}, load average {load:.2f} before\n")
    print(f"Forward run of {args.model} (ms): one session of {args.threads} threads against the "
          "batch halved over two one-thread lanes at once\n")
    print("| batch | one session | two lanes | lanes / one |\n|---|---|---|---|")
    print("\n".join(forward_rows(args.model, args.threads, args.repeats)))
    print("\nLeakyRelu slope on (256, 32, 28, 28) (ms; identical outputs checked)\n")
    print("| Max(Cast(x > 0), alpha) | Where(x > 0, 1, alpha) | Where / Max |\n|---|---|---|")
    print(slope_row(args.threads, args.repeats))
    print(f"\nload average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
