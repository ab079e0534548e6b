"""One F.L. ranking, then one fine-tuning round per variant of (max_ratio, lr, epochs): the
validation accuracy each variant leaves, against the starting model's, on the same images.

    python tools/fl_sweep.py --prefix cifar10 \
        --source runs/make_models/cifar10-standard.safetensors 0.1:0.001:5 0.25:0.001:5

Uses the reference F.L. recipe of the prefix (qrdeploy.train.recipes) with each variant's
settings, the validation split only (never test). Prints one line per variant: generated
examples, validation accuracy, gains and losses against the starting model, seconds."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from qrdeploy.data.datasets import load_dataset
from qrdeploy.margins import search as mg
from qrdeploy.train import recipes
from qrdeploy.train.feedback import deployed, fine_tune, generate, load_source, rank
from qrdeploy.train.loop import correct


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", default="cifar10")
    p.add_argument("--source", required=True, help="the standard checkpoint (.safetensors)")
    p.add_argument("variants", nargs="+", metavar="RATIO:LR:EPOCHS")
    args = p.parse_args(argv)
    base = recipes.for_profile("feedback", {}, {}, args.source, prefix=args.prefix)
    torch.set_num_threads(base.threads or torch.get_num_threads())
    module, _ = load_source(base)
    train = load_dataset(base.data, "train")
    val = load_dataset(base.data, "val")
    base_ok = correct(module, val)
    start = {k: v.detach().clone() for k, v in module.state_dict().items()}
    t0 = time.time()
    victim = deployed(module, base, train)
    ranking = rank(victim, train, base, 0)
    print(f"starting val accuracy {base_ok.mean():.4f}; ranking {time.time() - t0:.0f} s",
          flush=True)
    for variant in args.variants:
        ratio, lr, epochs = variant.split(":")
        fl = dataclasses.replace(base.feedback, max_ratio=float(ratio), lr=float(lr),
                                 epochs=int(epochs))
        config = dataclasses.replace(base, feedback=fl)
        counts = mg.seed_counts(ranking.levels, len(train), fl.seeds, fl.reference_size, fl.top,
                                fl.max_ratio)
        gen = generate(victim, train, config, 0, dataclasses.replace(ranking, counts=counts))
        module.load_state_dict(start)
        t0 = time.time()
        fine_tune(module, train, gen, config, 0)
        ok = correct(module, val)
        print(f"max_ratio {ratio} lr {lr} epochs {epochs}: {len(gen.y)} generated, val "
              f"{ok.mean():.4f} ({int((ok & ~base_ok).sum())} gained, "
              f"{int((~ok & base_ok).sum())} lost), {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
