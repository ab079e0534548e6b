"""PGD-40 through onnxruntime (OrtModel: the deployed graph's own gradient graph) against the same
attack in torch (TorchModel on the same weights), on the mnist-5k test digits, side by side.

    python tools/attack_parity.py [-n 1000] [--write docs/benchmarks.md]

The torch module is rebuilt from the ONNX file's initializers (the exporter keeps parameter
names), so both paths attack exactly the same weights."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = (("mnist-adversarial", 0.3), ("mnist-standard", 0.05))


def torch_twin(path: Path):  # type: ignore[no-untyped-def]
    """The mnist-cnn nn.Module with the ONNX file's weights."""
    import torch
    from onnx import numpy_helper

    from qrdeploy.graphio.graph import load_model
    from qrdeploy.train.nets import build_net

    net = build_net("mnist-cnn")
    inits = {t.name: numpy_helper.to_array(t) for t in load_model(path).graph.initializer}
    net.load_state_dict({k: torch.from_numpy(inits[k].copy()) for k in net.state_dict()})
    return net.eval()


def robust(victim, x: np.ndarray, y: np.ndarray, eps: float, to) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    from qrdeploy.attacks import PGD

    attack = PGD(eps=eps, step=0.01, steps=40)
    t0, kept = time.perf_counter(), 0
    for i in range(0, len(x), 250):
        res = attack(victim, to(x[i:i + 250]), to(y[i:i + 250]), seed=0,
                     indices=np.arange(i, i + min(250, len(x) - i)))
        kept += int((~res.fooled).sum())
    return kept, time.perf_counter() - t0


def measure(name: str, eps: float, n: int) -> dict[str, float]:
    import torch

    from qrdeploy.data.datasets import load_dataset
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.model.ortmodel import OrtModel
    from qrdeploy.model.torchmodel import TorchModel

    path = ROOT / "models" / f"{name}.onnx"
    test = load_dataset("mnist-5k", "test", n=n)
    assert test.y is not None
    k_ort, t_ort = robust(OrtModel(load_model(path)), test.x, test.y, eps, lambda a: a)
    k_pt, t_pt = robust(TorchModel(torch_twin(path), 10), test.x, test.y, eps, torch.from_numpy)
    return {"n": n, "ort": k_ort / n, "torch": k_pt / n, "t_ort": t_ort, "t_torch": t_pt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--write", type=Path, default=None, help="append a section to this file")
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()
    lines = ["", "## PGD-40 parity: onnxruntime vs torch", "",
             f"Command: `python tools/attack_parity.py -n {args.n} --write {args.write}`; "
             f"commit {commit}; machine: 2-core CPU sandbox shared with other jobs (timings are "
             "indicative only). PGD eps as listed, step 0.01, 40 steps, random start, seed 0.", "",
             "| model | eps | robust acc. onnxruntime | robust acc. torch | difference (points) "
             "| time ort (s) | time torch (s) | torch / ort |", "|---|---|---|---|---|---|---|---|"]
    for name, eps in CASES:
        r = measure(name, eps, args.n)
        lines.append(f"| {name} | {eps} | {100 * r['ort']:.1f}% | {100 * r['torch']:.1f}% | "
                     f"{100 * (r['ort'] - r['torch']):+.1f} | {r['t_ort']:.1f} | "
                     f"{r['t_torch']:.1f} | {r['t_torch'] / r['t_ort']:.2f} |")
        print(lines[-1], flush=True)
    if args.write:
        with open(args.write, "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
