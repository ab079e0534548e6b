"""`qrdeploy train`: train one of the paper's networks (resumable; see qrdeploy.train)."""

from __future__ import annotations

import argparse
import logging

from qrdeploy.train.config import Acceptance, FeedbackConfig, Method, Optim, TrainConfig

HELP = "train mnist-cnn or wrn-32-K (standard, PGD adversarial or feedback learning)"
_D = TrainConfig()
_F = FeedbackConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", default=_D.net, help="mnist-cnn or wrn-32-K (default: %(default)s)")
    p.add_argument("--data", default=_D.data,
                   help="mnist-5k, cifar10-10k, mnist or cifar10 (default: %(default)s)")
    p.add_argument("--data-root", default=None, help="folder with torchvision-format data sets")
    p.add_argument("--method", choices=[m.value for m in Method], default=_D.method.value)
    p.add_argument("-o", "--output", required=True, help="checkpoint path (.safetensors)")
    p.add_argument("--fresh", action="store_true", help="ignore an unfinished run's resume file")
    g = p.add_argument_group("recipe (defaults are qrdeploy's own; see docs/training.md)")
    g.add_argument("--epochs", type=int, default=_D.epochs)
    g.add_argument("--batch-size", type=int, default=_D.batch_size)
    g.add_argument("--optimizer", choices=[o.value for o in Optim], default=_D.optimizer.value)
    g.add_argument("--lr", type=float, default=_D.lr)
    g.add_argument("--weight-decay", type=float, default=_D.weight_decay)
    g.add_argument("--shift", type=int, default=_D.shift, help="max random shift in pixels")
    g.add_argument("--flip", action="store_true", help="random horizontal flips")
    g.add_argument("--eps", type=float, default=_D.eps, help="adversarial training eps")
    g.add_argument("--attack-steps", type=int, default=_D.attack_steps)
    g.add_argument("--attack-step-size", type=float, default=_D.attack_step_size)
    g.add_argument("--eps-warmup", type=int, default=_D.eps_warmup,
                   help="epochs over which eps ramps up linearly")
    g.add_argument("--val-attack-steps", type=int, default=_D.val_attack_steps,
                   help="PGD steps of the validation attack that selects the epoch "
                   "(0: the training attack)")
    g.add_argument("--n-train", type=int, default=None, help="use the first N training samples")
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    _add_feedback(p)


def _add_feedback(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("feedback learning (--method feedback; see docs/feedback.md)")
    g.add_argument("--from", dest="from_checkpoint", metavar="CKPT",
                   help="the trained (standard) checkpoint that feedback learning starts from")
    g.add_argument("--fl-rounds", type=int, default=_F.rounds)
    g.add_argument("--fl-directions", type=int, default=_F.directions,
                   help="random directions per sample (default: %(default)s)")
    g.add_argument("--fl-top", type=int, default=_F.top, help="paper: 40 smallest margins")
    g.add_argument("--fl-rank-per-class", type=int, default=_F.rank_per_class,
                   help="samples per class used for ranking (default: %(default)s)")
    g.add_argument("--fl-seeds", type=int, nargs=3, default=list(_F.seeds),
                   metavar=("HIGH", "MEDIUM", "LOW"), help="paper: 20 100 150 for 60,000 digits")
    g.add_argument("--fl-reference-size", type=int, default=_F.reference_size)
    g.add_argument("--fl-max-ratio", type=float, default=_F.max_ratio,
                   help="most generated examples per real one (default: %(default)s)")
    g.add_argument("--fl-alpha", type=float, nargs=2, default=list(_F.alpha), metavar=("LO", "HI"))
    g.add_argument("--fl-t0", type=float, default=_F.t0)
    g.add_argument("--fl-t-max", type=float, default=_F.t_max)
    g.add_argument("--fl-bisect-steps", type=int, default=_F.bisect_steps)
    g.add_argument("--fl-epochs", type=int, default=_F.epochs)
    g.add_argument("--fl-lr", type=float, default=_F.lr)
    g.add_argument("--fl-acceptance", choices=[a.value for a in Acceptance],
                   default=_F.acceptance.value,
                   help="noninferiority: keep a round when its val accuracy is non-inferior to "
                        "the starting model's (paired, one-sided bound > -margin); drop: the old "
                        "point-estimate rule with --fl-max-drop (default: %(default)s)")
    g.add_argument("--fl-margin", type=float, default=_F.margin,
                   help="non-inferiority margin, a fraction (default: %(default)s = 2 points)")
    g.add_argument("--fl-confidence", type=float, default=_F.confidence,
                   help="one-sided confidence of the non-inferiority bound (default: %(default)s)")
    g.add_argument("--fl-max-drop", type=float, default=_F.max_drop,
                   help="with --fl-acceptance drop: the largest val accuracy drop kept "
                        "(default: %(default)s)")
    g.add_argument("--fl-diag-samples", type=int, default=_F.diag_samples)
    g.add_argument("--fl-no-augment", dest="fl_augment_real", action="store_false",
                   help="fine-tune the real digits without the recipe's shifts / flips")


def feedback_from_args(args: argparse.Namespace) -> FeedbackConfig:
    return FeedbackConfig(
        rounds=args.fl_rounds, directions=args.fl_directions, top=args.fl_top,
        rank_per_class=args.fl_rank_per_class, seeds=tuple(args.fl_seeds),
        reference_size=args.fl_reference_size, max_ratio=args.fl_max_ratio,
        alpha=tuple(args.fl_alpha), t0=args.fl_t0, t_max=args.fl_t_max,
        bisect_steps=args.fl_bisect_steps, epochs=args.fl_epochs, lr=args.fl_lr,
        acceptance=Acceptance(args.fl_acceptance), margin=args.fl_margin,
        confidence=args.fl_confidence, max_drop=args.fl_max_drop,
        diag_samples=args.fl_diag_samples,
        augment_real=args.fl_augment_real,
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        net=args.net, data=args.data, method=Method(args.method), seed=args.seed,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=Optim(args.optimizer),
        lr=args.lr, weight_decay=args.weight_decay, shift=args.shift, flip=args.flip,
        eps=args.eps, attack_steps=args.attack_steps, attack_step_size=args.attack_step_size,
        eps_warmup=args.eps_warmup, val_attack_steps=args.val_attack_steps,
        n_train=args.n_train, threads=args.threads,
        data_root=args.data_root, from_checkpoint=args.from_checkpoint,
        feedback=feedback_from_args(args),
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
    print(f"wrote {args.output}: best epoch {ck.meta['best_epoch']}, "
          f"val accuracy {ck.meta['val_accuracy']:.4f}")
    return 0
