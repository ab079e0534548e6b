"""What a lent GPU machine can run, measured in one short script (at most about 5 minutes).

Those machines carry torch with CUDA but (usually) not onnxruntime-gpu and no package registry, so
the script measures only what is there and says what it skipped:

1. torch: training steps of the MNIST network (and wrn-32-1) at batch 128 on the GPU against the
   CPU, with the same seed: steps per second and the ratio.
2. onnxruntime: if its CUDA provider is available, one PGD step through qrdeploy's gradient graph
   on CUDA against CPU for models/mnist-standard.onnx (200 digits), and the parity of PGD-10
   robust accuracy between the two providers (within 0.5 points asked).

Prints one JSON object; docs/benchmarks.md records runs with their commit and machine.

    python tools/device_check.py --seconds 240
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def torch_steps(device: str, net: str, shape: tuple[int, ...], seconds: float) -> dict[str, Any]:
    import torch

    from qrdeploy.train.nets import build_net

    torch.manual_seed(0)
    model = build_net(net, num_classes=10).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand((128, *shape), device=device)
    y = torch.randint(0, 10, (128,), device=device)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if device == "cuda":
            torch.cuda.synchronize()
    return {"device": device, "net": net, "steps_per_s": steps / (time.perf_counter() - t0)}


def ort_check(seconds: float) -> dict[str, Any]:
    import numpy as np

    from qrdeploy.attacks import PGD
    from qrdeploy.core.losses import Loss
    from qrdeploy.core.runtime import SessionConfig, ort
    from qrdeploy.data.datasets import load_dataset
    from qrdeploy.model.ortmodel import OrtModel

    if "CUDAExecutionProvider" not in ort().get_available_providers():
        return {"skipped": "onnxruntime here has no CUDA provider (onnxruntime-gpu missing)"}
    data = load_dataset("mnist-5k", "test", n=200)
    assert data.y is not None
    out: dict[str, Any] = {}
    robust = {}
    for provider in ("cpu", "cuda"):
        m = OrtModel(ROOT / "models" / "mnist-standard.onnx", SessionConfig(provider),
                     batch_size=200)
        m.loss_and_grad(data.x, data.y, Loss.CE)  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            m.loss_and_grad(data.x, data.y, Loss.CE)
            n += 1
        out[f"{provider}_step_ms"] = 1000 * (time.perf_counter() - t0) / n
        res = PGD(eps=0.1, step=0.01, steps=10)(m, data.x, data.y, seed=0)
        robust[provider] = float(np.mean(~res.fooled))
    out["pgd10_robust"] = robust
    out["parity_points"] = 100 * abs(robust["cpu"] - robust["cuda"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=240.0, help="total budget")
    args = p.parse_args()
    each = args.seconds / 8
    report: dict[str, Any] = {"host": platform.node(), "python": platform.python_version()}
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
        rows = []
        for net, shape in (("mnist-cnn", (1, 28, 28)), ("wrn-32-1", (3, 32, 32))):
            cpu = torch_steps("cpu", net, shape, each)
            rows.append(cpu)
            if torch.cuda.is_available():
                gpu = torch_steps("cuda", net, shape, each)
                gpu["speedup_vs_cpu"] = gpu["steps_per_s"] / cpu["steps_per_s"]
                rows.append(gpu)
        report["torch_training"] = rows
    except ImportError:
        report["torch_training"] = {"skipped": "torch is not installed"}
    try:
        report["onnxruntime"] = ort_check(each)
    except Exception as exc:  # report what failed, never hide it
        report["onnxruntime"] = {"failed": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
