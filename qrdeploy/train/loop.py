"""The one training loop for every method. A method only decides what the network is trained on
(clean inputs, or adversarial examples of them) through a `Perturb` hook.

Resumable and bit-reproducible: each epoch's randomness (shuffle, shifts, attack starts) is drawn
from generators keyed by (seed, epoch), the learning rate is a function of the step, and after
every epoch the weights, optimizer state, best weights and history go to `<out>.resume`
atomically. A killed run restarted with the same recipe continues from the last finished epoch and
ends with the same bytes as an uninterrupted run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qrdeploy.core.progress import Bar
from qrdeploy.core.progress import bar as progress_bar
from qrdeploy.core.version import __version__
from qrdeploy.data.datasets import Dataset, load_dataset
from qrdeploy.errors import CheckpointError, ConfigError
from qrdeploy.train.checkpoint import (
    Checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from qrdeploy.train.config import Method, Optim, TrainConfig
from qrdeploy.train.load import check_net_data, load_source
from qrdeploy.train.nets import build_net
from qrdeploy.train.quantaware import (
    CALIBRATION_IMAGES,
    attach,
    attach_activations,
    bake,
    calibrate,
    detach_activations,
    orthogonality,
)

#: (model, x, y, epoch, sample indices) -> the inputs to train on
Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]
#: (model, dataset) -> the validation score used for model selection
Score = Callable[[nn.Module, Dataset], float]


@dataclass
class State:
    model: nn.Module
    opt: torch.optim.Optimizer
    epoch: int = 0
    best: dict[str, torch.Tensor] | None = None
    best_score: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, float]] | None = None


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    key = int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(key)


def lr_at(config: TrainConfig, step: int, total: int) -> float:
    """Cosine decay from lr to 0 over the run (ours)."""
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))


def augment(x: torch.Tensor, config: TrainConfig, gen: torch.Generator,
            keep: torch.Tensor | None = None) -> torch.Tensor:
    """Random shifts of up to config.shift pixels (zero padding) and optional flips; samples
    where `keep` is True are left as they are (the random draws are the same either way)."""
    n, _, h, w = x.shape
    if config.shift:
        s = config.shift
        padded = F.pad(x, (s, s, s, s))  # (N, C, H+2s, W+2s)
        off = torch.randint(0, 2 * s + 1, (n, 2), generator=gen)
        if keep is not None:
            off[keep] = s  # the centred crop: the sample itself
        x = torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(off.tolist())])
    if config.flip:
        mask = torch.rand(n, generator=gen) < 0.5
        if keep is not None:
            mask &= ~keep
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def correct(model: nn.Module, ds: Dataset, batch_size: int = 500) -> np.ndarray:
    """Per-sample correctness (N,) bool of the model in eval mode."""
    model.eval()
    assert ds.y is not None, "training data sets are labelled"
    pred = [model(torch.from_numpy(ds.x[i:i + batch_size])).argmax(1).numpy()
            for i in range(0, len(ds), batch_size)]
    return np.asarray(np.concatenate(pred) == ds.y)


def accuracy(model: nn.Module, ds: Dataset, batch_size: int = 500) -> float:
    return float(correct(model, ds, batch_size).mean())


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer is Optim.ADAM:
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=False)


def run_epoch(st: State, train: Dataset, config: TrainConfig, perturb: Perturb,
              fixed: np.ndarray | None = None) -> dict[str, float]:
    """One epoch; `fixed` (a boolean mask over `train`) marks samples never augmented."""
    keep_all = None if fixed is None else torch.from_numpy(np.asarray(fixed, dtype=bool))
    gen = epoch_generator(config.seed, st.epoch)
    order = torch.randperm(len(train), generator=gen)
    steps = math.ceil(len(train) / config.batch_size)
    assert train.y is not None, "training data sets are labelled"
    x_all, y_all = torch.from_numpy(train.x), torch.from_numpy(train.y)
    total_loss, correct = 0.0, 0
    bar = _bar(steps, f"epoch {st.epoch + 1}/{config.epochs}")
    for b in range(steps):
        idx = order[b * config.batch_size:(b + 1) * config.batch_size]
        keep = None if keep_all is None else keep_all[idx]
        x, y = augment(x_all[idx], config, gen, keep), y_all[idx]
        x = perturb(st.model, x, y, st.epoch, idx)
        for g in st.opt.param_groups:
            g["lr"] = lr_at(config, st.epoch * steps + b, config.epochs * steps)
        st.model.train()
        logits = st.model(x)
        loss = F.cross_entropy(logits, y)
        if config.lipschitz_reg:
            loss = loss + config.lipschitz_reg * orthogonality(st.model)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch types backward loosely
        st.opt.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        if bar is not None:
            seen = min(len(train), (b + 1) * config.batch_size)
            # the epoch so far, as the epoch's summary line reports it at the end
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"loss": total_loss / len(train), "train_acc": correct / len(train)}


def _bar(total: int, desc: str) -> Bar | None:
    return progress_bar(total, desc)


def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def _save_state(path: Path, st: State, config: TrainConfig) -> None:
    opt_tensors, groups = optimizer_to_tensors(st.opt)
    tensors = {"model": st.model.state_dict(), "optim": opt_tensors}
    if st.best is not None:
        tensors["best"] = st.best
    meta = {"kind": "resume", "config": config.to_json(), "epoch": st.epoch,
            "best_score": st.best_score, "best_epoch": st.best_epoch,
            "history": st.history, "param_groups": groups}
    save_checkpoint(path, Checkpoint(tensors, meta))


def _restore(path: Path, st: State, config: TrainConfig) -> None:
    ck = load_checkpoint(path)
    if ck.meta.get("kind") != "resume" or ck.meta.get("config") != config.to_json():
        raise ConfigError(f"{path} holds an unfinished run of a different recipe; "
                          "delete it or rerun with --fresh")
    try:
        st.model.load_state_dict(ck.tensors["model"])
        optimizer_from_tensors(st.opt, ck.tensors.get("optim", {}), ck.meta["param_groups"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); delete it to start over") from None
    st.best = ck.tensors.get("best")
    st.epoch, st.best_score = int(ck.meta["epoch"]), float(ck.meta["best_score"])
    st.best_epoch, st.history = int(ck.meta["best_epoch"]), list(ck.meta["history"])


def fit(config: TrainConfig, out: str | Path, perturb: Perturb, score: Score,
        fresh: bool = False, log: Callable[[str], None] = print) -> Checkpoint:
    """Train by config, select on the validation split with `score`, write `out` atomically."""
    out = Path(out)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if config.method is Method.ADVERSARIAL and config.eps_warmup > config.epochs:
        log(f"warning: --eps-warmup {config.eps_warmup} is longer than --epochs "
            f"{config.epochs}: training never reaches eps {config.eps:g} (the last epoch trains "
            f"at {config.eps * config.epochs / config.eps_warmup:.3g}); lower --eps-warmup")
    train = load_dataset(config.data, "train", n=config.n_train, data_root=config.data_root)
    check_net_data(config.net, tuple(train.x.shape[1:]), config.data)
    val = load_dataset(config.data, "val", data_root=config.data_root)
    torch.manual_seed(config.seed)
    model = build_net(config.net, num_classes=train.num_classes, init=config.init)
    if config.from_checkpoint:  # fine-tuning: start from a trained model's weights
        model.load_state_dict(load_source(config)[0].state_dict())
    if config.quant_aware:
        attach(model, config.quant_aware, config.quant_granularity)
    recalibrate = _activation_quant(model, config, train)
    st = State(model, make_optimizer(model, config), history=[])
    rpath = resume_path(out)
    if rpath.exists() and not fresh:
        _restore(rpath, st, config)
        log(f"resuming from {rpath} after epoch {st.epoch}")
    adversarial = config.method is not Method.STANDARD
    try:
        _epochs(st, train, val, config, perturb, score, recalibrate, rpath, log, adversarial)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say what a rerun starts from
        kept = (f"{st.epoch} finished epoch{'s are' if st.epoch > 1 else ' is'} saved in "
                f"{rpath}" if st.epoch else "no epoch had finished, nothing is saved")
        log(f"interrupted in epoch {st.epoch + 1} of {config.epochs}; {kept}: rerun the same "
            "command to resume")
        raise
    return _finish(out, rpath, st, config, val)


def _epochs(st: State, train: Dataset, val: Dataset, config: TrainConfig,
            perturb: Perturb, score: Score, recalibrate: Callable[[nn.Module], None], rpath: Path,
            log: Callable[[str], None], adversarial: bool) -> None:
    """The epochs left, each saved to `rpath` when it ends."""
    while st.epoch < config.epochs:
        recalibrate(st.model)
        stats = run_epoch(st, train, config, perturb)
        recalibrate(st.model)  # validation sees the ranges harden would calibrate now
        stats["val_score"] = score(st.model, val)
        # the figure that selects the epoch, and for adversarial training the clean one too
        stats["val_clean"] = accuracy(st.model, val) if adversarial else stats["val_score"]
        if stats["val_score"] > st.best_score:
            st.best_score, st.best_epoch = stats["val_score"], st.epoch
            st.best = {k: v.detach().clone() for k, v in st.model.state_dict().items()}
        st.epoch += 1
        st.history.append({"epoch": float(st.epoch), **stats})  # type: ignore[union-attr]
        _save_state(rpath, st, config)
        robust = f", val {SCORE_NAME[adversarial]} {stats['val_score']:.4f}" if adversarial else ""
        log(f"epoch {st.epoch}/{config.epochs}: loss {stats['loss']:.4f}, train "
            f"{'(adversarial) ' if adversarial else ''}accuracy {stats['train_acc']:.4f}, val "
            f"clean accuracy {stats['val_clean']:.4f}{robust}")


def _activation_quant(model: nn.Module, config: TrainConfig, train: Dataset
                      ) -> Callable[[nn.Module], None]:
    """With int8 activation QAT, attach its fake quantizers and return the recalibration the
    loop runs around each epoch (min-max over the first training images, clean, as `harden
    --activations int8 --calibrate 500` does); otherwise a no-op."""
    if config.quant_activations != "int8":
        return lambda m: None
    attach_activations(model)
    images = torch.from_numpy(train.x[:CALIBRATION_IMAGES])
    return lambda m: calibrate(m, images)


#: What the validation score that selects the epoch measures (adversarial training or not).
SCORE_NAME = {False: "clean accuracy", True: "PGD accuracy"}


def _finish(out: Path, rpath: Path, st: State, config: TrainConfig, val: Dataset) -> Checkpoint:
    assert st.best is not None
    st.model.load_state_dict(st.best)
    if config.quant_aware:  # the checkpoint holds the quantized weights the net trained with
        bake(st.model)
    val_accuracy = accuracy(st.model, val)  # of the network as trained (int8 activations too)
    if config.quant_activations == "int8":  # ranges are the deployed graph's to calibrate
        detach_activations(st.model)
    if config.quant_aware or config.quant_activations == "int8":
        st.best = {k: v.detach().clone() for k, v in st.model.state_dict().items()}
    meta = {"kind": "model", "config": config.to_json(), "qrdeploy_version": __version__,
            "num_classes": val.num_classes, "selected_by": SCORE_NAME[
                config.method is not Method.STANDARD],
            "best_epoch": st.best_epoch + 1, "val_score": st.best_score,
            "val_accuracy": val_accuracy, "history": st.history}
    ck = Checkpoint({"model": st.best}, meta)
    save_checkpoint(out, ck)
    rpath.unlink(missing_ok=True)
    return ck
