"""Time SGD training steps of the paper's networks on random data, to size a CPU recipe.

    python tools/bench_train_step.py [--nets wrn-32-1 wrn-32-2] [--threads 1 2] [--steps 10]

Per net and torch thread count: the mean seconds of one forward-backward-SGD step at batch 128
(after 3 warm-up steps), the parameter count, and the epoch time it implies over the 7,949
cifar10-10k training images (63 steps). Prints one markdown row per case with the load average
(os.getloadavg) before and after, since the machine may be shared."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from qrdeploy.train.nets import build_net, input_shape

TRAIN_IMAGES = 7949


def step_seconds(net_name: str, threads: int, steps: int, batch: int) -> tuple[float, int]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_net(net_name).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(batch, *input_shape(net_name))
    y = torch.randint(0, 10, (batch,))
    for i in range(3 + steps):
        if i == 3:
            t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = sum(p.numel() for p in net.parameters())
    return (time.perf_counter() - t0) / steps, params


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=["wrn-32-1", "wrn-32-2"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    print("| net | params | threads | s/step | s/epoch (7,949 images) | load before | load after |")
    print("|---|---|---|---|---|---|---|")
    for net in args.nets:
        for threads in args.threads:
            before = os.getloadavg()[0]
            sec, params = step_seconds(net, threads, args.steps, args.batch)
            epoch = sec * math.ceil(TRAIN_IMAGES / args.batch)
            print(f"| {net} | {params / 1e6:.2f} M | {threads} | {sec:.3f} | {epoch:.0f} | "
                  f"{before:.2f} | {os.getloadavg()[0]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
