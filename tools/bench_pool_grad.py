"""MaxPool's backward in onnxruntime: the kernel qrdeploy's gradient rule uses against the other
exact formulations that stock ONNX operators allow, and torch's for reference.

    python tools/bench_pool_grad.py [--batch 256] [--threads 2] [--rounds 21]

The shapes are the two poolings of mnist-cnn (2x2 windows, stride 2, after a ReLU). Each
candidate computes the pooled forward and the input gradient of one cotangent, routing each
window's gradient to its first maximum in row-major order, as torch's max-pool backward does:
- `indices+unpool`: MaxPool with its Indices output, then MaxUnpool (qrdeploy's rule);
- `indices+scatter`: the same Indices, then ScatterElements(add) (qrdeploy's rule for windows
  that overlap);
- `s2d+argmax`: SpaceToDepth, ArgMax over the window (first index), a one-hot mask times the
  cotangent, DepthToSpace back;
- `split+first`: the window's four pixels as slices of a 6-D view, first-maximum masks from
  Equal/And/Not, four products, Concat back;
- `rank6d`: a 6-D view, Equal against the pooled value, times a rank (4, 3, 2, 1) per window
  position, ReduceMax, Equal, the mask times the cotangent.
`maxpool only` (the forward without indices, no gradient) is the floor no formulation can beat.
Inputs are ReLU outputs with tied regions (constant rows and columns, where several pixels
share a window's maximum): every candidate must give the identical gradient to the first
(checked, printed). Times are medians of interleaved rounds. Prints a markdown block with the
command, commit and load average."""

from __future__ import annotations

import argparse
import functools
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

Node = onnx.NodeProto
F = TensorProto.FLOAT


def _graph(nodes: list[Node], shape: tuple[int, int, int, int], inits: dict[str, np.ndarray],
           grad: bool = True) -> onnx.ModelProto:
    n, c, h, w = shape
    inputs = [helper.make_tensor_value_info("x", F, list(shape))]
    outputs = [helper.make_tensor_value_info("y", F, None)]
    if grad:
        inputs.append(helper.make_tensor_value_info("g", F, [n, c, h // 2, w // 2]))
        outputs.append(helper.make_tensor_value_info("gx", F, None))
    g = helper.make_graph(nodes, "pool", inputs, outputs,
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _pool(*outs: str) -> Node:
    return helper.make_node("MaxPool", ["x"], list(outs), kernel_shape=[2, 2], strides=[2, 2])


def _views(shape: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    n, c, h, w = shape
    return {"s6": np.array([n, c, h // 2, 2, w // 2, 2], np.int64),
            "s6y": np.array([n, c, h // 2, 1, w // 2, 1], np.int64),
            "s4": np.array(shape, np.int64)}


def indices_unpool(shape: tuple[int, int, int, int]) -> onnx.ModelProto:
    nodes = [_pool("y", "i"), helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("MaxUnpool", ["g", "i", "s"], ["gx"], kernel_shape=[2, 2],
                              strides=[2, 2])]
    return _graph(nodes, shape, {})


def indices_scatter(shape: tuple[int, int, int, int]) -> onnx.ModelProto:
    flat = {"flat": np.array([-1], np.int64), "s4": np.array(shape, np.int64)}
    mk = helper.make_node
    nodes = [_pool("y", "i"),
             mk("Size", ["x"], ["size"]), mk("Reshape", ["size", "flat"], ["size1"]),
             mk("ConstantOfShape", ["size1"], ["zeros"],
                value=numpy_helper.from_array(np.zeros(1, np.float32))),
             mk("Reshape", ["i", "flat"], ["i1"]), mk("Reshape", ["g", "flat"], ["g1"]),
             mk("ScatterElements", ["zeros", "i1", "g1"], ["sum1"], axis=0, reduction="add"),
             mk("Reshape", ["sum1", "s4"], ["gx"])]
    return _graph(nodes, shape, flat)


def s2d_argmax(shape: tuple[int, int, int, int]) -> onnx.ModelProto:
    n, c, h, w = shape
    inits = {"s5": np.array([n, 4, c, h // 2, w // 2], np.int64),
             "s4b": np.array([n, 4 * c, h // 2, w // 2], np.int64),
             "k": np.arange(4, dtype=np.int64).reshape(1, 4, 1, 1, 1),
             "one": np.array([1], np.int64)}
    mk = helper.make_node
    nodes = [_pool("y"), mk("SpaceToDepth", ["x"], ["sd"], blocksize=2),
             mk("Reshape", ["sd", "s5"], ["sd5"]),
             mk("ArgMax", ["sd5"], ["am"], axis=1, keepdims=1),  # first index of the maximum
             mk("Equal", ["am", "k"], ["hot"]), mk("Cast", ["hot"], ["hotf"], to=F),
             mk("Unsqueeze", ["g", "one"], ["g5"]), mk("Mul", ["hotf", "g5"], ["m5"]),
             mk("Reshape", ["m5", "s4b"], ["m4"]),
             mk("DepthToSpace", ["m4"], ["gx"], blocksize=2, mode="DCR")]
    return _graph(nodes, shape, inits)


def split_first(shape: tuple[int, int, int, int]) -> onnx.ModelProto:
    mk = helper.make_node
    nodes = [_pool("y"), mk("Reshape", ["x", "s6"], ["x6"]), mk("Reshape", ["y", "s6y"], ["y6"]),
             mk("Reshape", ["g", "s6y"], ["g6"]),
             mk("Split", ["x6"], ["top", "bottom"], axis=3),
             mk("Split", ["top"], ["p0", "p1"], axis=5),
             mk("Split", ["bottom"], ["p2", "p3"], axis=5)]
    for k in range(3):
        nodes.append(mk("Equal", [f"p{k}", "y6"], [f"e{k}"]))
    nodes += [mk("Not", ["e0"], ["n0"]), mk("And", ["e1", "n0"], ["f1"]),
              mk("Or", ["e0", "e1"], ["o1"]), mk("Not", ["o1"], ["n1"]),
              mk("And", ["e2", "n1"], ["f2"]), mk("Or", ["o1", "e2"], ["o2"]),
              mk("Not", ["o2"], ["f3"])]  # the fourth pixel is the first maximum otherwise
    for k, m in enumerate(("e0", "f1", "f2", "f3")):
        nodes += [mk("Cast", [m], [f"c{k}"], to=F), mk("Mul", [f"c{k}", "g6"], [f"q{k}"])]
    nodes += [mk("Concat", ["q0", "q1"], ["qt"], axis=5),
              mk("Concat", ["q2", "q3"], ["qb"], axis=5),
              mk("Concat", ["qt", "qb"], ["q6"], axis=3), mk("Reshape", ["q6", "s4"], ["gx"])]
    return _graph(nodes, shape, _views(shape))


def rank6d(shape: tuple[int, int, int, int]) -> onnx.ModelProto:
    inits = _views(shape)
    inits["rank"] = np.array([4, 3, 2, 1], np.float32).reshape(1, 1, 1, 2, 1, 2)
    mk = helper.make_node
    nodes = [_pool("y"), mk("Reshape", ["x", "s6"], ["x6"]), mk("Reshape", ["y", "s6y"], ["y6"]),
             mk("Equal", ["x6", "y6"], ["eq"]), mk("Cast", ["eq"], ["eqf"], to=F),
             mk("Mul", ["eqf", "rank"], ["v"]),
             mk("ReduceMax", ["v"], ["vm"], axes=[3, 5], keepdims=1),
             mk("Equal", ["v", "vm"], ["first"]), mk("Cast", ["first"], ["mf"], to=F),
             mk("Reshape", ["g", "s6y"], ["g6"]), mk("Mul", ["mf", "g6"], ["q6"]),
             mk("Reshape", ["q6", "s4"], ["gx"])]
    return _graph(nodes, shape, inits)


def maxpool_only(shape: tuple[int, int, int, int]) -> onnx.ModelProto:
    return _graph([_pool("y")], shape, {}, grad=False)


CANDIDATES: dict[str, Callable[[tuple[int, int, int, int]], onnx.ModelProto]] = {
    "indices+unpool": indices_unpool, "indices+scatter": indices_scatter,
    "s2d+argmax": s2d_argmax, "split+first": split_first, "rank6d": rank6d,
    "maxpool only": maxpool_only,
}


def tied_relu(shape: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """ReLU outputs with regions where several pixels of a window share its maximum."""
    x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    x[:, :, : shape[2] // 3] = 0.5  # constant rows: four-way ties
    x[:, :, shape[2] // 2:, ::3] = 0.7  # constant columns: two-way ties
    return x


def torch_pool(x: torch.Tensor, g: torch.Tensor) -> np.ndarray:
    """torch's max-pool forward and input gradient (the reference routing)."""
    xr = x.clone().requires_grad_(True)
    y = torch.nn.functional.max_pool2d(xr, 2, 2)
    (gx,) = torch.autograd.grad(y, xr, g)
    return np.asarray(gx.numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=21)
    a = ap.parse_args()

    import onnxruntime as ort

    from qrdeploy.core.runtime import SessionConfig, make_session

    torch.set_num_threads(a.threads)
    config = SessionConfig("cpu", threads=a.threads)
    load = os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print("```")
    print("command: python " + " ".join(sys.argv))
    print(f"commit {commit}; {platform.machine()}, {os.cpu_count()} cores; onnxruntime "
          f"{ort.__version__}, torch {torch.__version__}; load average before {load:.2f}")
    rng = np.random.default_rng(0)
    for shape in ((a.batch, 32, 28, 28), (a.batch, 64, 14, 14)):
        x = tied_relu(shape, rng)
        g = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)
                                ).astype(np.float32)
        runs: dict[str, Callable[[], object]] = {}
        ref: np.ndarray | None = None
        same: dict[str, str] = {}
        for name, build in CANDIDATES.items():
            sess = make_session(build(shape).SerializeToString(), config)
            feed = {"x": x} if name == "maxpool only" else {"x": x, "g": g}
            out = sess.run(None, feed)
            if name != "maxpool only":
                ref = out[1] if ref is None else ref
                same[name] = "yes" if np.array_equal(out[1], ref) else "NO"
            runs[name] = functools.partial(sess.run, None, feed)
        assert ref is not None
        torch_run = functools.partial(torch_pool, torch.from_numpy(x), torch.from_numpy(g))
        same["torch"] = "yes" if np.array_equal(torch_run(), ref) else "NO"
        runs["torch"] = torch_run
        times: dict[str, list[float]] = {k: [] for k in runs}
        for f in runs.values():
            f()
        for _ in range(a.rounds):
            for k, f in runs.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        base = float(np.median(times["indices+unpool"]))
        print(f"\ninput {shape}: forward + input gradient, median of {a.rounds} rounds")
        for k, ts in times.items():
            ms = float(np.median(ts))
            print(f"  {k:18s} {ms * 1e3:8.2f} ms  {ms / base:5.2f}x  "
                  f"same gradient: {same.get(k, '-')}")
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    print("```")


if __name__ == "__main__":
    main()
