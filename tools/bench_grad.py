"""Benchmark: input gradients of mnist-cnn by the ONNX gradient graph (onnxruntime) vs torch.

In one run, same threads and batch on both sides:
1. one step (forward + backward, fused CE, batch 256): onnxruntime OrtModel vs torch autograd with
   frozen parameters (only the input requires grad), medians over interleaved repeats. The
   onnxruntime session runs without spin-waiting: interleaved with torch, its spinning threads
   took the cores from the torch call right after it (measured here: torch 198 ms after a spinning
   session, 125 ms after a non-spinning one, with onnxruntime itself at 107 and 101 ms), which
   inflated the ratio. The OrtModel runs as qrdeploy does by default, its gradient batches split
   over lanes (qrdeploy.core.runtime.lane_plan); the same model in one lane runs beside it;
2. PGD-40 (eps 0.3 and 0.1, step 0.01, no early stop) on the mnist-5k test digits both ways:
   robust accuracy, agreement of the adversarial pixels, time ratio;
3. the step's FLOPs (Conv and Gemm, forward + input backward) against this machine's measured
   float32 matrix-multiply rate (onnxruntime MatMul 2048 x 2048).
The model is a quickly trained mnist-cnn (standard training, a few epochs), not a reference model.
Prints a markdown section. Usage: python tools/bench_grad.py [--threads 2] [--epochs 2]"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np
import onnx
import torch
from timing import interleaved

from qrdeploy.attacks.linf import PGD
from qrdeploy.core.losses import Loss
from qrdeploy.core.runtime import SessionConfig, make_session
from qrdeploy.data.datasets import load_dataset
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.model.torchmodel import TorchModel
from qrdeploy.train.export import export_module
from qrdeploy.train.nets import build_net


def train(epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_net("mnist-cnn")
    ds = load_dataset("mnist-5k", "train")
    x, y = torch.tensor(ds.x), torch.tensor(ds.y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def step_flops(model: onnx.ModelProto) -> float:
    """FLOPs per sample of Conv and Gemm in the forward graph (x2 for the input backward)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0.0
    for node in model.graph.node:
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and w:
            total += 2 * float(np.prod(dims[node.output[0]][1:])) * float(np.prod(w[1:]))
        elif node.op_type == "Gemm" and w:
            total += 2 * float(np.prod(w))
    return 2 * total


def matmul_rate(threads: int) -> float:
    """GFLOP/s of an onnxruntime float32 2048 x 2048 MatMul."""
    from onnx import TensorProto, helper

    n = 2048
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "a"], ["c"])], "mm", [a], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = make_session(model.SerializeToString(), SessionConfig("cpu", threads))
    x = np.random.default_rng(0).random((n, n), dtype=np.float32)
    ms = interleaved({"mm": lambda: sess.run(None, {"a": x})}, 10)["mm"]
    return 2 * n**3 / (ms / 1000) / 1e9


def pgd_both(net: torch.nn.Module, om: OrtModel, om1: OrtModel, eps: float,
             n: int) -> dict[str, float]:
    ds = load_dataset("mnist-5k", "test", n=n)
    attack = PGD(eps=eps, step=0.01, steps=40, early_stop=False)
    tm = TorchModel(net, num_classes=10)
    out: dict[str, Any] = {}
    for side, model, conv in (("torch", tm, torch.tensor), ("ort", om, np.asarray),
                              ("ort1", om1, np.asarray)):
        t0 = time.perf_counter()
        advs, fooled = [], []
        for start in range(0, len(ds), 250):
            sl = slice(start, start + 250)
            res = attack(model, conv(ds.x[sl]), conv(ds.y[sl]),
                         indices=np.arange(sl.start, min(sl.stop, len(ds))))
            advs.append(np.asarray(res.x_adv))
            fooled.append(res.fooled)
        out[f"{side}_s"] = time.perf_counter() - t0
        out[f"{side}_acc"] = 1 - float(np.concatenate(fooled).mean())
        out[f"{side}_adv"] = np.concatenate(advs)
    out["lanes_identical"] = float(np.array_equal(out["ort_adv"], out.pop("ort1_adv")))
    out["same_pixels"] = float(np.mean(np.abs(out.pop("torch_adv") - out.pop("ort_adv")) < 1e-6))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pgd-n", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = train(args.epochs, seed=0)
    model = export_module(net, (1, 28, 28), fold_bn=True)
    om = OrtModel(model, SessionConfig("cpu", args.threads, spinning=False), batch_size=256)
    # the same session in one lane (every thread on the whole batch), side by side
    om1 = OrtModel(model, SessionConfig("cpu", args.threads, spinning=False, lanes=1),
                   batch_size=256)
    rng = np.random.default_rng(0)
    x = rng.random((256, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def torch_step() -> None:
        xg = xt.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(xg), yt, reduction="sum")
        torch.autograd.grad(loss, xg)

    step = interleaved({"ort": lambda: om.loss_and_grad(x, y, Loss.CE),
                        "ort1": lambda: om1.loss_and_grad(x, y, Loss.CE), "torch": torch_step},
                       args.repeats)
    flops = step_flops(om.prepared.model) * 256
    rate = matmul_rate(args.threads)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"onnxruntime {om.info['intra_op_threads']} intra-op threads in {om.lanes} gradient "
          f"lanes of {om.lane_threads or 'default'} threads, {om.info['providers']}")
    print("\n| measure | onnxruntime | onnxruntime, one lane | torch | ratio torch/ort | ratio "
          "torch/ort one lane |\n|---|---|---|---|---|---|")
    print(f"| step, fused CE, batch 256 (ms, median of {args.repeats}) | {step['ort']:.1f} | "
          f"{step['ort1']:.1f} | {step['torch']:.1f} | {step['torch'] / step['ort']:.2f} | "
          f"{step['torch'] / step['ort1']:.2f} |")
    for eps in (0.3, 0.1):
        r = pgd_both(net, om, om1, eps, args.pgd_n)
        print(f"| PGD-40 eps {eps}, {args.pgd_n} digits: time (s) | {r['ort_s']:.1f} | "
              f"{r['ort1_s']:.1f} | {r['torch_s']:.1f} | {r['torch_s'] / r['ort_s']:.2f} | "
              f"{r['torch_s'] / r['ort1_s']:.2f} |")
        print(f"| PGD-40 eps {eps}: robust accuracy | {r['ort_acc']:.3f} | {r['ort1_acc']:.3f} | "
              f"{r['torch_acc']:.3f} | same pixels {r['same_pixels']:.3f} | lanes identical "
              f"{r['lanes_identical']:.0f} |")
    print(f"\nstep FLOPs: {flops / 1e9:.1f} GFLOP; onnxruntime step {flops / step['ort'] / 1e6:.0f}"
          f" GFLOP/s, torch step {flops / step['torch'] / 1e6:.0f} GFLOP/s; "
          f"onnxruntime MatMul 2048^2: {rate:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
