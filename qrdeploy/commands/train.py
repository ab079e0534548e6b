"""`qrdeploy train`: train one of the paper's networks (resumable; see qrdeploy.train)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from qrdeploy.commands._options import (
    data_name,
    non_negative_int,
    positive_float,
    positive_int,
    top_within,
)
from qrdeploy.train.config import INITS, Acceptance, FeedbackConfig, Method, Optim, TrainConfig
from qrdeploy.train.recipes import BY_PREFIX

HELP = "train mnist-cnn or wrn-32-K (standard, PGD adversarial or feedback learning)"
_D = TrainConfig()
#: options that are files this command writes (checked before it runs)
OUTPUT_FILES = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", default=_D.net, help="mnist-cnn or wrn-32-K (default: %(default)s)")
    p.add_argument("--data", type=data_name, default=None,
                   help="mnist-5k, cifar10-10k, mnist or cifar10 (default: the net's reference "
                        "data: mnist-5k for mnist-cnn, cifar10-10k for wrn-32-K)")
    p.add_argument("--data-root", default=None, help="folder with torchvision-format data sets")
    p.add_argument("--method", choices=[m.value for m in Method], default=_D.method.value)
    p.add_argument("-o", "--output", required=True, help="checkpoint path (.safetensors)")
    p.add_argument("--fresh", action="store_true", help="ignore an unfinished run's resume file")
    g = p.add_argument_group(
        "recipe (every default: the reference model's recipe for --net and --method, "
        "qrdeploy's own; docs/training.md)")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="default: the reference recipe's (MNIST: standard 20, adversarial 12; "
                        "wrn-32-1: standard 60, adversarial 30)")
    g.add_argument("--batch-size", type=positive_int, default=None)
    g.add_argument("--optimizer", choices=[o.value for o in Optim], default=None,
                   help="default: adam for mnist-cnn, sgd for wrn-32-K")
    g.add_argument("--lr", type=positive_float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    g.add_argument("--shift", type=int, default=None, help="max random shift in pixels")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for CIFAR-10)")
    g.add_argument("--eps", type=float, default=None,
                   help="adversarial training eps (default: 0.3 MNIST, 8/255 CIFAR-10)")
    g.add_argument("--attack-steps", type=int, default=None,
                   help="attack steps in training (default: the adversarial recipe's: MNIST "
                        "PGD-7, wrn-32-1 1, i.e. FGSM with a random start)")
    g.add_argument("--attack-step-size", type=float, default=None,
                   help="attack step (default: the adversarial recipe's: 0.05 MNIST, 10/255 "
                        "wrn-32-1)")
    g.add_argument("--eps-warmup", type=int, default=None,
                   help="epochs over which eps ramps up linearly (default: the adversarial "
                        "recipe's: 6 MNIST, 5 wrn-32-1)")
    g.add_argument("--val-attack-steps", type=int, default=None,
                   help="PGD steps of the validation attack that selects the epoch (0: the "
                        "training attack; default: the recipe's, 5 for wrn-32-1's one-step "
                        "training attack)")
    g.add_argument("--init", choices=list(INITS), default=None,
                   help="initialisation: madry (truncated normal 0.1, the paper's network) or "
                        "torch (PyTorch's defaults); default: the recipe's (MNIST adversarial: "
                        "torch, with which the short PGD schedule learns; madry collapses to "
                        "chance)")
    g.add_argument("--n-train", type=positive_int, default=None,
                   help="use the first N training samples")
    g.add_argument("--threads", type=non_negative_int, default=0,
                   help="torch threads (0: torch's default)")
    q = p.add_argument_group("hardening-aware training (docs/training.md)")
    q.add_argument("--quant-aware", type=int, default=_D.quant_aware, metavar="BITS",
                   help="train through the harden pass's B-bit weight quantizer (straight-"
                        "through gradient); the checkpoint holds the quantized weights, so "
                        "harden --bits B leaves them unchanged (default: off)")
    q.add_argument("--quant-granularity", choices=["tensor", "channel"],
                   default=_D.quant_granularity, help="as harden --granularity")
    q.add_argument("--quant-activations", choices=["float", "int8"],
                   default=_D.quant_activations,
                   help="int8: also train through the uint8 activation quantizers of the graph "
                        "harden --activations int8 writes, ranges calibrated as that pass does "
                        "(default: %(default)s)")
    q.add_argument("--lipschitz-reg", type=float, default=_D.lipschitz_reg, metavar="BETA",
                   help="Parseval orthogonality penalty BETA * sum ||W W^T - I||^2 (default: "
                        "off)")
    _add_feedback(p)


def _add_feedback(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "feedback learning (--method feedback; every default: the F.L. recipe of --net's family; "
        "docs/feedback.md)")
    g.add_argument("--from", dest="from_checkpoint", metavar="CKPT",
                   help="the trained checkpoint to start from: feedback learning's standard "
                        "model, or for standard/adversarial training a fine-tuning start; a "
                        "float .onnx that qrdeploy export wrote works too")
    g.add_argument("--fl-rounds", type=int, default=None)
    g.add_argument("--fl-directions", type=positive_int, default=None,
                   help="random directions per sample")
    g.add_argument("--fl-top", type=positive_int, default=None, help="paper: 40 smallest margins")
    g.add_argument("--fl-rank-per-class", type=int, default=None,
                   help="samples per class used for ranking")
    g.add_argument("--fl-seeds", type=int, nargs=3, default=None,
                   metavar=("HIGH", "MEDIUM", "LOW"), help="paper: 20 100 150 for 60,000 digits")
    g.add_argument("--fl-reference-size", type=int, default=None)
    g.add_argument("--fl-max-ratio", type=float, default=None,
                   help="most generated examples per real one")
    g.add_argument("--fl-alpha", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    g.add_argument("--fl-t0", type=float, default=None)
    g.add_argument("--fl-t-max", type=float, default=None)
    g.add_argument("--fl-bisect-steps", type=int, default=None)
    g.add_argument("--fl-epochs", type=int, default=None)
    g.add_argument("--fl-lr", type=float, default=None)
    g.add_argument("--fl-acceptance", choices=[a.value for a in Acceptance],
                   default=None,
                   help="noninferiority: keep a round when its val accuracy is non-inferior to "
                        "the starting model's (paired, one-sided bound > -margin); drop: the old "
                        "point-estimate rule with --fl-max-drop")
    g.add_argument("--fl-margin", type=float, default=None,
                   help="non-inferiority margin, a fraction (the recipes: 0.02 = 2 points)")
    g.add_argument("--fl-confidence", type=float, default=None,
                   help="one-sided confidence of the non-inferiority bound")
    g.add_argument("--fl-max-drop", type=float, default=None,
                   help="with --fl-acceptance drop: the largest val accuracy drop kept")
    g.add_argument("--fl-diag-samples", type=int, default=None)
    g.add_argument("--fl-no-augment", dest="fl_augment_real", action="store_false", default=None,
                   help="fine-tune the real digits without the recipe's shifts / flips")


def feedback_from_args(args: argparse.Namespace,
                       base: FeedbackConfig | None = None) -> FeedbackConfig:
    """The F.L. settings: each --fl-* option given, else `base`'s (the recipe's)."""
    base = base or FeedbackConfig()
    given: dict[str, Any] = {}
    for field in dataclasses.fields(FeedbackConfig):
        value = getattr(args, f"fl_{field.name}", None)
        if value is not None:
            given[field.name] = tuple(value) if isinstance(value, list) else value
    if "acceptance" in given:
        given["acceptance"] = Acceptance(given["acceptance"])
    top_within("--fl-top", given.get("top", base.top), "--fl-directions",
               given.get("directions", base.directions))
    return dataclasses.replace(base, **given)


def reference_recipe(method: Method, net: str) -> TrainConfig:
    """The recipe the reference model of `method` on `net`'s family was trained with
    (qrdeploy.train.recipes: mnist-cnn -> the mnist recipes, wrn-32-K -> the cifar10 ones), the
    base the CLI's defaults come from; F.L.'s start checkpoint is the user's --from."""
    recipes = BY_PREFIX["cifar10" if net.startswith("wrn-") else "mnist"]
    base = recipes[method.value] if method.value in recipes else recipes["standard"]
    return dataclasses.replace(base, net=net, method=method, threads=0)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = reference_recipe(Method(args.method), args.net)

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return getattr(base, name) if value is None else value

    optimizer = pick("optimizer")
    return TrainConfig(
        net=args.net, data=pick("data"), method=Method(args.method), seed=args.seed,
        epochs=pick("epochs"), batch_size=pick("batch_size"), optimizer=Optim(optimizer),
        lr=pick("lr"), weight_decay=pick("weight_decay"), momentum=pick("momentum"),
        shift=pick("shift"), flip=pick("flip"), eps=pick("eps"),
        attack_steps=pick("attack_steps"), attack_step_size=pick("attack_step_size"),
        eps_warmup=pick("eps_warmup"), val_attack_steps=pick("val_attack_steps"),
        init=pick("init"), n_train=args.n_train, threads=args.threads,
        quant_aware=args.quant_aware, quant_granularity=args.quant_granularity,
        quant_activations=args.quant_activations,
        lipschitz_reg=args.lipschitz_reg,
        data_root=args.data_root, from_checkpoint=args.from_checkpoint,
        feedback=feedback_from_args(args, base.feedback),
    )


def run(args: argparse.Namespace) -> int:
    from qrdeploy.train import train

    log = logging.getLogger("qrdeploy.train").info
    config = config_from_args(args)
    ck = train(config, args.output, fresh=args.fresh, log=log)
    if config.method is Method.FEEDBACK:
        print(f"wrote {args.output}: {ck.meta['accepted_rounds']} of {len(ck.meta['rounds'])} "
              f"rounds accepted, val accuracy {ck.meta['source']['val_accuracy']:.4f} -> "
              f"{ck.meta['val_accuracy']:.4f}")
        return 0
    by = ck.meta.get("selected_by", "clean accuracy")
    robust = "" if by == "clean accuracy" else f" (val {by} {ck.meta['val_score']:.4f})"
    print(f"wrote {args.output}: epoch {ck.meta['best_epoch']} selected by val {by}{robust}; "
          f"val clean accuracy {ck.meta['val_accuracy']:.4f}")
    return 0
