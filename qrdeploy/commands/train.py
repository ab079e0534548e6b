"""`qrdeploy train`: train one of the paper's networks (resumable; see qrdeploy.train)."""

from __future__ import annotations

import argparse
import logging

from qrdeploy.train.config import Method, Optim, TrainConfig

HELP = "train mnist-cnn or wrn-32-K (standard or PGD adversarial training)"
_D = TrainConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", default=_D.net, help="mnist-cnn or wrn-32-K (default: %(default)s)")
    p.add_argument("--data", default=_D.data,
                   help="mnist-5k, mnist or cifar10 (default: %(default)s)")
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
    g.add_argument("--n-train", type=int, default=None, help="use the first N training samples")
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        net=args.net, data=args.data, method=Method(args.method), seed=args.seed,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=Optim(args.optimizer),
        lr=args.lr, weight_decay=args.weight_decay, shift=args.shift, flip=args.flip,
        eps=args.eps, attack_steps=args.attack_steps, attack_step_size=args.attack_step_size,
        eps_warmup=args.eps_warmup, n_train=args.n_train, threads=args.threads,
        data_root=args.data_root,
    )


def run(args: argparse.Namespace) -> int:
    from qrdeploy.train import train

    log = logging.getLogger("qrdeploy.train").info
    ck = train(config_from_args(args), args.output, fresh=args.fresh, log=log)
    print(f"wrote {args.output}: best epoch {ck.meta['best_epoch']}, "
          f"val accuracy {ck.meta['val_accuracy']:.4f}")
    return 0
