"""Train, export and card the reference models in models/ (fixed recipes and seeds).

    python tools/make_models.py [--only NAME ...] [--work runs/make_models]

Each model: a resumable training run (checkpoint under --work), an ONNX export (parity-checked)
to models/<name>.onnx, and a card models/<name>.json with the recipe, seed, qrdeploy commit, clean
accuracy on val and test (onnxruntime, 95% Wilson intervals), clean test accuracy after 3-bit
post-training quantization (the paper's (Q) form), robust accuracy on the whole test split, the
file's sha256, the training time and the load average around it. MNIST (mnist-5k, 1,000 test
digits): PGD-40 at eps 0.3 (step 0.01, random start). CIFAR-10 (cifar10-10k, 1,245 test images):
PGD-20 at 8/255 (step 2/255) and at 4/255 (step 1/255, the tables' eps), and FGSM at 8/255, whose
accuracy far above PGD's would show a catastrophic overfit. The F.L. card also holds the per-class
margin criteria (`qrdeploy margins`, 200 test samples) of the standard model and of the F.L.
model, measured on the same samples and directions, and the paired non-inferiority of its test
accuracy against the standard model's. tests/regression/test_reference_models.py re-measures
every card."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CardAttack:
    """A robust-accuracy entry of a card: key, attack kind and its settings."""

    key: str
    kind: str  # pgd | fgsm
    eps: float
    step: float = 0.0
    steps: int = 1


#: The data set and the card attacks of each model prefix.
DATA = {"mnist": "mnist-5k", "cifar10": "cifar10-10k"}
CARD_ATTACKS = {
    "mnist": (CardAttack("pgd40_test", "pgd", 0.3, 0.01, 40),),
    "cifar10": (CardAttack("pgd20_eps8_test", "pgd", 8 / 255, 2 / 255, 20),
                CardAttack("pgd20_eps4_test", "pgd", 4 / 255, 1 / 255, 20),
                CardAttack("fgsm_eps8_test", "fgsm", 8 / 255)),
}

# models/<prefix>-<name>.onnx from qrdeploy.train.recipes (one place for tools and `reproduce
# --retrain`)
WORK = "runs/make_models"
RECIPES: dict[str, TrainConfig] = {
    f"{prefix}-{k}": recipes.for_profile(k, {}, {}, f"{WORK}/{prefix}-standard.safetensors",
                                         prefix=prefix)
    for prefix in recipes.BY_PREFIX for k in recipes.ALL[prefix]}
# a fine-tuning starts from the stronger adversarial model built before it
STRONG = f"{WORK}/mnist-adversarial-strong.safetensors"
# and the CIFAR-10 QAT fine-tuning from the committed standard model
STARTS = {recipes.FROM_STRONG: STRONG,
          recipes.FROM_CIFAR_STANDARD: "models/cifar10-standard.onnx"}
RECIPES = {k: (dataclasses.replace(c, from_checkpoint=STARTS[c.from_checkpoint])
               if c.from_checkpoint in STARTS else c) for k, c in RECIPES.items()}
#: The cards made before the training time, the per-sample adaptive flags and the CI subset
#: became card entries (they keep their format until they are rebuilt).
LEGACY_MNIST = {f"mnist-{k}" for k in recipes.ORDER}
#: The adaptive entry's first-N subset that tests/regression re-measures on every CI run for the
#: cards that record per-sample flags (the whole N-image cascade takes minutes per robust model).
CI_SUBSET = 100


def prefix_of(name: str) -> str:
    return name.split("-", 1)[0]


@functools.cache
def commit() -> str:
    """The commit this process started at (read once: a run takes an hour, and the checkout may
    move on meanwhile while the code in memory stays the one it started with)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                         capture_output=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "qrdeploy"], cwd=ROOT, text=True,
                           capture_output=True).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def robust(model_path: Path, data: str, spec: CardAttack) -> dict[str, object]:
    """Robust accuracy under a card attack on the whole test split through onnxruntime
    (OrtModel), seed 0."""
    from qrdeploy.attacks import FGSM, PGD
    from qrdeploy.core.stats import Proportion
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.model.ortmodel import OrtModel

    test = load_dataset(data, "test")
    victim = OrtModel(load_model(model_path))
    attack = (PGD(eps=spec.eps, step=spec.step, steps=spec.steps) if spec.kind == "pgd"
              else FGSM(eps=spec.eps))
    seed = int(CARD_PGD["seed"])
    kept = []
    for i in range(0, len(test), 250):
        x, y = test.x[i:i + 250], test.y[i:i + 250]  # type: ignore[index]
        res = attack(victim, x, y, seed=seed, indices=np.arange(i, i + len(x)))
        kept.append(int((~res.fooled).sum()))
    out: dict[str, object] = {"attack": repr(attack), "seed": seed,
                              **Proportion(sum(kept), len(test)).to_json(),
                              "path": "onnxruntime (OrtModel)"}
    if data != "mnist-5k":  # the MNIST cards predate this entry
        out["k_first_250"] = kept[0]  # what the regression test re-measures
    return out


def q3_clean(model_path: Path, data: str) -> dict[str, object]:
    """Clean test accuracy of the (Q) form: 3-bit per-tensor weights (qrdeploy reproduce's)."""
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.hardening.passes import WeightQuant, harden

    hardened, _ = harden(load_model(model_path), [WeightQuant(3)], "float")
    acc = evaluate_onnx(hardened, load_dataset(data, "test")).accuracy
    assert acc is not None
    return {"passes": "WeightQuant(3), per tensor, max scale, narrow", **acc.to_json()}


def deployed_clean(model_path: Path, data: str, config: TrainConfig, source: Path
                   ) -> dict[str, object]:
    """A quantization-aware model's card entry for the graph that ships: `qrdeploy harden` at
    its training bits and granularity (int8 activations, calibrated min-max on 500 training
    images, when it trained through them), its clean test accuracy, its file size against the
    float source and the paired difference to the source on the same images."""
    import tempfile

    from qrdeploy.graphio.graph import load_model, save_model
    from qrdeploy.hardening.integer import IntegerActivations
    from qrdeploy.hardening.passes import WeightQuant, harden

    int8 = config.quant_activations == "int8"
    wq = WeightQuant(config.quant_aware, config.quant_granularity)
    act = IntegerActivations(500, "minmax", f"{data}:train") if int8 else None
    calib = load_dataset(data, "train", n=500).x if int8 else None
    hardened, _ = harden(load_model(model_path), [wq], "qdq", activations=act,
                         calibration=calib)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "deployed.onnx"
        save_model(hardened, path)
        acc = evaluate_onnx(path, load_dataset(data, "test")).accuracy
        assert acc is not None
        size = path.stat().st_size
        vs = paired_test(path, source, data)
    flags = (f"--bits {config.quant_aware} --granularity {config.quant_granularity} --encoding qdq"
             + (f" --activations int8 --calibrate 500 --calibration-data {data}" if int8 else ""))
    return {"harden": f"qrdeploy harden {model_path.name} -o OUT.onnx {flags}", **acc.to_json(),
            "bytes": size, "size_vs_source": size / source.stat().st_size,
            "source": source.name, "vs_source": vs}


def margins_of(paths: dict[str, Path], data: str) -> dict[str, object]:
    """`qrdeploy margins` criteria per class on the first MARGINS_N test samples, seed 0."""
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.margins.criteria import margin_criteria
    from qrdeploy.model.ortmodel import OrtModel

    test = load_dataset(data, "test", n=MARGINS_N)
    return {name: margin_criteria(OrtModel(load_model(p)), test, seed=0).to_json()
            for name, p in paths.items()}


def paired_test(model: Path, standard: Path, data: str) -> dict[str, object]:
    """Clean test accuracy of `model` (an F.L. model, a deployed graph) minus the standard
    model's on the same samples, with Newcombe's paired 95 % interval (qrdeploy.core.stats)."""
    from qrdeploy.core.stats import PairedCounts, newcombe_paired_interval
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.margins import search as mg
    from qrdeploy.model.ortmodel import OrtModel

    test = load_dataset(data, "test")
    ok = {k: mg.predict(OrtModel(load_model(p)), test.x) == test.y
          for k, p in (("fl", model), ("standard", standard))}
    counts = PairedCounts.from_flags(ok["fl"], ok["standard"])
    return {"difference": counts.difference, "ci95": list(newcombe_paired_interval(counts)),
            "gains": counts.gains, "losses": counts.losses, "n": counts.n,
            "method": "newcombe-hybrid-score"}


class LoadSampler:
    """The 1-minute load average every `every` seconds while a block runs (a daemon thread)."""

    def __init__(self, every: float = 30.0) -> None:
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, object]:
        s = self.samples
        return {"mean": round(sum(s) / len(s), 2), "min": min(s), "max": max(s),
                "samples": len(s), "every_seconds": self.every}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_timed(config: TrainConfig, ckpt: Path) -> dict[str, object]:
    """Train (unless the checkpoint exists) and return the time and the load averages around
    it, kept beside the checkpoint (<name>.timing.json) for cards rebuilt later."""
    timing = ckpt.with_suffix(".timing.json")
    if ckpt.exists():
        if timing.exists():
            return dict(json.loads(timing.read_text()))
        return {"note": f"trained earlier; {ckpt.name} reused, time not recorded"}
    before, t0, cpu0 = os.getloadavg(), time.time(), _cpu_seconds()
    with LoadSampler() as load:
        train(config, ckpt)
    out = {"train_seconds": round(time.time() - t0, 1),
           # CPU time of this process (all its threads): about the wall time on an idle machine
           # for a one-thread recipe, whatever else shares the cores
           "train_cpu_seconds": round(_cpu_seconds() - cpu0, 1),
           "loadavg_before": [round(v, 2) for v in before],
           "loadavg_after": [round(v, 2) for v in os.getloadavg()],
           "loadavg_1min_during": load.summary(), "commit": commit()}
    atomic_write_text(timing, json.dumps(out) + "\n")
    return out


#: The adaptive card entry: the adaptive cascade (docs/masking.md) at the family's training eps
#: on the first N test images; the regression test re-measures it on the same images.
ADAPTIVE_CARD = {"mnist": (0.3, 200, "mnist-standard-seed1"),
                 "cifar10": (8 / 255, 250, "cifar10-standard-seed1")}
ADAPTIVE_NAMES = ("pgd-cw", "apgd-ce", "apgd-dlr", "apgd-t-dlr", "pgd-ce-t10", "pgd-ce-t100",
                  "pgd-njs", "pgd-f64", "square", "transfer")


def adaptive_card(model_path: Path, prefix: str) -> dict[str, object]:
    """Robustness by the adaptive worst case (every adaptive column at the family's training eps,
    transfer crafted on the seed-1 standard model), seed 0, with the per-column accuracies and
    the masking verdict; the paper-style PGD entry of the card stands beside it."""
    import tempfile

    from qrdeploy.api import attack

    eps, n, source = ADAPTIVE_CARD[prefix]
    spec = ",".join(f"adaptive/{a}={eps:.10g}" for a in ADAPTIVE_NAMES)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        res = attack(model_path, DATA[prefix], out=Path(tmp) / "r.json", suite="adaptive",
                     attacks=spec, n=n, unhardened=ROOT / "models" / f"{source}.onnx",
                     baseline=False, threads=1, seed=0)
    assert res.adaptive is not None
    return {"eps": eps, "n": n, "seed": 0, "transfer_source": f"{source}.onnx",
            "columns": list(ADAPTIVE_NAMES), **res.adaptive.worst_case.robust.to_json(),
            # which images no column fooled ('1' robust), and the count on the first CI_SUBSET
            # of them, which the regression test re-measures on every CI run
            "robust_flags": res.adaptive.per_sample_worst_case,
            "ci_subset": {"n": min(CI_SUBSET, n),
                          "k": res.adaptive.per_sample_worst_case[:CI_SUBSET].count("1")},
            # robust count per column; the restricted ones ran on the earlier columns' survivors
            "per_column_k": {c.key: c.robust.k for c in res.columns
                             if c.key.startswith("adaptive/")},
            "restricted": list(res.adaptive.restricted),
            "verdict": None if res.masking is None else res.masking.verdict,
            "masking_suspected": None if res.masking is None else res.masking.suspected,
            "command": f"python tools/make_models.py --adaptive-only {model_path.stem}",
            "seconds": round(time.time() - t0, 1), "qrdeploy_commit": commit(),
            "loadavg": [round(v, 2) for v in os.getloadavg()]}


def make(name: str, work: Path) -> dict[str, object]:
    from qrdeploy.train.export import export_onnx

    config, prefix = RECIPES[name], prefix_of(name)
    data = DATA[prefix]
    ckpt = work / f"{name}.safetensors"
    t0 = time.time()
    timing = train_timed(config, ckpt)
    onnx_path = ROOT / "models" / f"{name}.onnx"
    result = export_onnx(ckpt, onnx_path)
    card: dict[str, object] = {
        "name": name, "recipe": config.to_json(), "seed": config.seed,
        "qrdeploy_commit": commit(), "onnx": onnx_path.name,
        "sha256": sha256_file(onnx_path), "parity": str(result.parity),
    }
    for split in ("val", "test"):
        acc = evaluate_onnx(onnx_path, load_dataset(data, split)).accuracy
        assert acc is not None
        card[f"clean_{split}"] = acc.to_json()
    card["q3_clean_test"] = q3_clean(onnx_path, data)
    for spec in CARD_ATTACKS[prefix]:
        card[spec.key] = robust(onnx_path, data, spec)
    if config.method.value == "feedback":
        ck = load_checkpoint(ckpt)
        standard = ROOT / f"models/{prefix}-standard.onnx"
        card["feedback_rounds"] = ck.meta["rounds"]
        card["source_val_accuracy"] = ck.meta["source"]["val_accuracy"]
        card["margins_test"] = margins_of({standard.stem: standard, name: onnx_path}, data)
        if prefix != "mnist":  # the MNIST card predates this entry
            card["test_vs_standard"] = paired_test(onnx_path, standard, data)
    if config.quant_aware and prefix == "cifar10":  # the MNIST QAT card predates this entry
        card["deployed_clean_test"] = deployed_clean(
            onnx_path, data, config, ROOT / f"models/{prefix}-standard.onnx")
    card["adaptive_test"] = adaptive_card(onnx_path, prefix)
    card["machine"] = "2-core CPU sandbox (no GPU)"
    if name not in LEGACY_MNIST:  # the paper's MNIST cards predate these entries
        card["training"] = timing
        card["measured_at_loadavg"] = [round(v, 2) for v in os.getloadavg()]
    card["wall_seconds"] = round(time.time() - t0, 1)
    atomic_write_text(ROOT / "models" / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mnist = [k for k in RECIPES if prefix_of(k) == "mnist"]
    p.add_argument("--only", nargs="*", choices=sorted(RECIPES), default=mnist,
                   help="models to make (default: the MNIST ones)")
    p.add_argument("--work", type=Path, default=ROOT / WORK)
    p.add_argument("--adaptive-only", nargs="+", metavar="NAME", choices=sorted(RECIPES),
                   help="only (re)measure the adaptive entry of these models' cards")
    args = p.parse_args(argv)
    commit()  # before any work
    for name in args.adaptive_only or ():
        card_path = ROOT / "models" / f"{name}.json"
        card = json.loads(card_path.read_text())
        card["adaptive_test"] = adaptive_card(ROOT / "models" / card["onnx"], prefix_of(name))
        atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
        print(name, card["adaptive_test"]["value"], file=sys.stderr)
    if args.adaptive_only:
        return 0
    for name in args.only:
        card = make(name, args.work)
        print(name, card["clean_test"], *(card[a.key] for a in CARD_ATTACKS[prefix_of(name)]),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
