"""`qrdeploy reproduce`: the paper's experiment as a cached, resumable pipeline with its report.

    qrdeploy reproduce --profile smoke -o runs/smoke
    qrdeploy reproduce --profile quick -o runs/quick            # about 20 min on 2 CPU cores
    qrdeploy reproduce --profile quick-cifar -o runs/quick-cifar  # the CIFAR-10 half
    qrdeploy reproduce --profile quick -o runs/quick --force 'attack.orig.*'
    qrdeploy reproduce --profile quick -o runs/quick-retrain --retrain   # train the models too

Profiles and their budgets: qrdeploy/paper/profiles.py and docs/reproduce.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qrdeploy.commands._options import add_parallel, parallel
from qrdeploy.errors import UsageError
from qrdeploy.paper.pipeline import HARDENING_FILES, REGIME_FILES, reproduce
from qrdeploy.paper.profiles import ProfileName

HELP = "re-run the paper's experiment (cached, resumable) and write its report"
#: options that are folders this command writes into (checked before it runs)
OUTPUT_DIRS = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=[n.value for n in ProfileName], default="smoke",
                   help="budget profile (default: %(default)s; see docs/reproduce.md)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="run folder: report.md, results.json, CSVs, PNGs and steps/")
    p.add_argument("--models", default="models", metavar="DIR",
                   help="folder of <prefix>-standard/-adversarial/-feedback/-standard-seed1.onnx "
                        "(and -adversarial-strong/-adversarial-strong-qat3.onnx for the "
                        "hardening rows; default: %(default)s)")
    p.add_argument("--model", action="append", default=[], metavar="REGIME=PATH",
                   help="a model file for one regime "
                        f"({', '.join(REGIME_FILES | HARDENING_FILES)}); repeatable")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder with torchvision-format MNIST / CIFAR-10 (paper profiles)")
    p.add_argument("--force", action="append", default=[], metavar="STEP",
                   help="rerun the steps matching this name or pattern (e.g. attack.orig.q, "
                        "'ablation.*'); repeatable")
    p.add_argument("--retrain", action="store_true",
                   help="train the four models from the reference recipes of the profile's "
                        "model prefix (qrdeploy/train/recipes.py) as cached steps instead of "
                        "reading --models")
    p.add_argument("--no-plots", action="store_true",
                   help="leave out the PNG figures (no matplotlib needed)")
    add_parallel(p)


def parse_models(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        regime, sep, path = item.partition("=")
        if not sep or not path:
            raise UsageError(f"--model expects REGIME=PATH, got {item!r}; e.g. "
                              "--model fl=models/mnist-feedback.onnx")
        out[regime] = Path(path)
    return out


def run(args: argparse.Namespace) -> int:
    result = reproduce(args.profile, args.output, models_dir=args.models,
                       models=parse_models(args.model), data_root=args.data_root,
                       force=args.force, seed=args.seed, retrain=args.retrain,
                       plots=not args.no_plots, parallel=parallel(args))
    counts: dict[str, int] = {}
    for e in result.events:
        counts[e.status.value] = counts.get(e.status.value, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no steps"
    print(f"steps: {summary}; wall time {result.wall_seconds:.1f} s")
    print(f"report: {result.report}")
    return 0
