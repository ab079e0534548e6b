"""Train, export and card the reference models in models/ (fixed recipes and seeds).

    python tools/make_models.py [--only NAME ...] [--work runs/make_models]

Each model: a resumable training run (checkpoint under --work), an ONNX export (parity-checked)
to models/<name>.onnx, and a card models/<name>.json with the recipe, seed, qrdeploy commit, clean
accuracy on val and test (onnxruntime, 95% Wilson intervals), clean test accuracy after 3-bit
post-training quantization (the paper's (Q) form), PGD-40 robust accuracy at eps 0.3 (step 0.01,
random start) on the 1,000 test digits, and the file's sha256. The F.L. card also holds the
per-class margin criteria (`qrdeploy margins`, 200 test digits) of the standard model and of the
F.L. model, measured on the same digits and directions.
tests/regression/test_reference_models.py re-measures every card."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from qrdeploy.core.fileio import atomic_write_text, sha256_file
from qrdeploy.data.datasets import load_dataset
from qrdeploy.evaluation.clean import evaluate_onnx
from qrdeploy.train import TrainConfig, recipes, train
from qrdeploy.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CARD_PGD = {"eps": 0.3, "step": 0.01, "steps": 40, "restarts": 1, "seed": 0}
MARGINS_N = 200

# models/mnist-<name>.onnx from qrdeploy.train.recipes (one place for tools and `reproduce
# --retrain`)
WORK = "runs/make_models"
RECIPES: dict[str, TrainConfig] = {
    f"mnist-{k}": recipes.for_profile(k, {}, {}, f"{WORK}/mnist-standard.safetensors")
    for k in recipes.ORDER}


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                         capture_output=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "qrdeploy"], cwd=ROOT, text=True,
                           capture_output=True).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def pgd40(model_path: Path) -> dict[str, object]:
    """PGD-40 robust accuracy on the 1,000 test digits through onnxruntime (OrtModel)."""
    from qrdeploy.attacks import PGD
    from qrdeploy.core.stats import Proportion
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.model.ortmodel import OrtModel

    test = load_dataset("mnist-5k", "test")
    victim = OrtModel(load_model(model_path))
    attack = PGD(eps=CARD_PGD["eps"], step=CARD_PGD["step"], steps=int(CARD_PGD["steps"]))
    robust = 0
    for i in range(0, len(test), 250):
        x, y = test.x[i:i + 250], test.y[i:i + 250]  # type: ignore[index]
        res = attack(victim, x, y, seed=int(CARD_PGD["seed"]), indices=np.arange(i, i + len(x)))
        robust += int((~res.fooled).sum())
    return {"attack": repr(attack), "seed": CARD_PGD["seed"],
            **Proportion(robust, len(test)).to_json(), "path": "onnxruntime (OrtModel)"}


def q3_clean(model_path: Path) -> dict[str, object]:
    """Clean test accuracy of the (Q) form: 3-bit per-tensor weights (qrdeploy reproduce's)."""
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.hardening.passes import WeightQuant, harden

    hardened, _ = harden(load_model(model_path), [WeightQuant(3)], "float")
    acc = evaluate_onnx(hardened, load_dataset("mnist-5k", "test")).accuracy
    assert acc is not None
    return {"passes": "WeightQuant(3), per tensor, max scale, narrow", **acc.to_json()}


def margins_of(paths: dict[str, Path]) -> dict[str, object]:
    """`qrdeploy margins` criteria per class on the first MARGINS_N test digits, seed 0."""
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.margins.criteria import margin_criteria
    from qrdeploy.model.ortmodel import OrtModel

    test = load_dataset("mnist-5k", "test", n=MARGINS_N)
    return {name: margin_criteria(OrtModel(load_model(p)), test, seed=0).to_json()
            for name, p in paths.items()}


def make(name: str, work: Path) -> dict[str, object]:
    from qrdeploy.train.export import export_onnx

    config = RECIPES[name]
    ckpt = work / f"{name}.safetensors"
    t0 = time.time()
    if not ckpt.exists():
        train(config, ckpt)
    onnx_path = ROOT / "models" / f"{name}.onnx"
    result = export_onnx(ckpt, onnx_path)
    card: dict[str, object] = {
        "name": name, "recipe": config.to_json(), "seed": config.seed,
        "qrdeploy_commit": commit(), "onnx": onnx_path.name,
        "sha256": sha256_file(onnx_path), "parity": str(result.parity),
    }
    for split in ("val", "test"):
        acc = evaluate_onnx(onnx_path, load_dataset("mnist-5k", split)).accuracy
        assert acc is not None
        card[f"clean_{split}"] = acc.to_json()
    card["q3_clean_test"] = q3_clean(onnx_path)
    card["pgd40_test"] = pgd40(onnx_path)
    if config.method.value == "feedback":
        ck = load_checkpoint(ckpt)
        card["feedback_rounds"] = ck.meta["rounds"]
        card["source_val_accuracy"] = ck.meta["source"]["val_accuracy"]
        card["margins_test"] = margins_of({"mnist-standard": ROOT / "models/mnist-standard.onnx",
                                           name: onnx_path})
    card["machine"] = "2-core CPU sandbox (no GPU)"
    card["wall_seconds"] = round(time.time() - t0, 1)
    atomic_write_text(ROOT / "models" / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=sorted(RECIPES), default=sorted(RECIPES))
    p.add_argument("--work", type=Path, default=ROOT / WORK)
    args = p.parse_args(argv)
    for name in args.only:
        card = make(name, args.work)
        print(name, card["clean_test"], card["pgd40_test"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
