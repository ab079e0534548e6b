"""Determinism of attacks on one machine: PGD-40 (eps 0.3, step 0.01, seed 0) on a reference
model's 1,000 mnist-5k test digits through onnxruntime at 1 and at 2 intra-op threads, against the
robust count on the model's card (written in an earlier session, possibly on another machine).

    python tools/determinism.py [--model models/mnist-adversarial.onnx]

Prints the robust count per thread setting, the card's count and how many digits' outcomes differ
between the two thread settings (docs/reliability.md section 6)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from qrdeploy.attacks import PGD
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.data.datasets import load_dataset
from qrdeploy.graphio.graph import load_model
from qrdeploy.model.ortmodel import OrtModel


def fooled(model: Path, threads: int) -> np.ndarray:
    test = load_dataset("mnist-5k", "test")
    assert test.y is not None
    victim = OrtModel(load_model(model), SessionConfig("cpu", threads=threads))
    attack = PGD(eps=0.3, step=0.01, steps=40)
    out = [attack(victim, test.x[i:i + 250], test.y[i:i + 250], seed=0,
                  indices=np.arange(i, i + 250)).fooled for i in range(0, len(test), 250)]
    return np.concatenate(out).astype(bool)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/mnist-adversarial.onnx"))
    args = p.parse_args(argv)
    card = json.loads(args.model.with_suffix(".json").read_text())
    runs = {t: fooled(args.model, t) for t in (1, 2)}
    for t, f in runs.items():
        print(f"threads {t}: {int((~f).sum())} of {len(f)} robust")
    print(f"card: {card['pgd40_test']['k']} of {card['pgd40_test']['n']} robust "
          f"(commit {card['qrdeploy_commit']})")
    print(f"digits whose outcome differs between 1 and 2 threads: "
          f"{int((runs[1] != runs[2]).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
