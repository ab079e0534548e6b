"""Feedback learning (F.L., Song, Wang, Li, ICTAI 2019; docs/method.md section 1): boundary-based
retraining of a trained model, in rounds. Each round (docs/feedback.md):

1. ranks the classes by robustness: for at most `rank_per_class` correctly classified training
   samples per class, the margins along `directions` random unit directions
   (qrdeploy.margins.search); a sample's score is the mean of its `top` smallest margins, a class's
   the mean of its samples';
2. picks per class the seeds with the smallest scores, as many as the class's level asks (paper
   20 / 100 / 150 for 60,000 digits, scaled to the training set and capped at 1 : 1, ours);
3. generates, along each seed's `top` smallest finite-margin directions, x + alpha * m * d with
   alpha ~ U[alpha] (paper 1.5-2.0), labelled with the true class; an example the model does not
   misclassify is discarded and counted;
4. fine-tunes on the training set plus the generated examples with the project's training loop
   (qrdeploy.train.loop.run_epoch; Adam 1e-4, 5 epochs; the real digits shifted as in the
   recipe, the generated ones never: ours);
5. accepts the round when it is non-inferior to the starting model on the validation digits
   (a paired decision, qrdeploy.core.stats.non_inferiority: the one-sided 95 % lower bound of the
   accuracy difference above -margin; ours). A rejected round keeps the previous weights and
   ends the run (the early stop). The statistic is recorded with every round.

All randomness is counter-based, keyed by (seed, round), and after every round the state goes
atomically to `<out>.resume`, so a killed run resumes at the last finished round and ends with the
same bytes. Diagnostics per round (cap fraction, margin histograms, random vs gradient-direction
margins) are recorded in the checkpoint's metadata."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qrdeploy.core import rng
from qrdeploy.core.fileio import sha256_file
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import non_inferiority
from qrdeploy.core.version import __version__
from qrdeploy.data.datasets import Dataset, load_dataset
from qrdeploy.errors import CheckpointError, ConfigError, RuntimeMissingError
from qrdeploy.margins import search as mg
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.model.torchmodel import NumpyModel, TorchModel
from qrdeploy.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from qrdeploy.train.config import Acceptance, FeedbackConfig, Method, TrainConfig
from qrdeploy.train.export import export_module
from qrdeploy.train.load import check_net_data, load_source
from qrdeploy.train.loop import State, correct, make_optimizer, resume_path, run_epoch
from qrdeploy.train.methods import clean

RANK_STREAM, ALPHA_STREAM = "fl-rank", "fl-alpha"


@dataclass
class Ranking:
    """One round's measurement on the training set (positions index the training set)."""

    pos: np.ndarray  # (R,) ranked samples
    margins: np.ndarray  # (R, K) margins, inf = not reached
    scores: np.ndarray  # (R,) mean of the top smallest margins
    class_scores: np.ndarray  # (C,)
    levels: list[mg.Level]
    counts: np.ndarray  # (C,) seeds per class


@dataclass
class Progress:
    """What survives between rounds (and in the resume file)."""

    weights: dict[str, torch.Tensor]
    round: int = 0
    stopped: bool = False
    rounds: list[dict[str, Any]] = field(default_factory=list)


def search_config(fl: FeedbackConfig) -> mg.SearchConfig:
    return mg.SearchConfig(t0=fl.t0, t_max=fl.t_max, bisect_steps=fl.bisect_steps)


def round_seed(seed: int, rnd: int) -> int:
    return int(np.random.SeedSequence([seed, rnd, 2]).generate_state(1, np.uint64)[0] >> 1)


def ranked_positions(model: mg.VjpClassifier, train: Dataset, per_class: int) -> np.ndarray:
    """The first `per_class` correctly classified training samples of each class (R,)."""
    assert train.y is not None
    ok = mg.predict(model, train.x) == train.y
    picked = [np.flatnonzero(ok & (train.y == c))[:per_class] for c in range(train.num_classes)]
    return np.concatenate(picked)


def directions_for(config: TrainConfig, rnd: int, pos: np.ndarray, shape: tuple[int, ...]
                   ) -> np.ndarray:
    return mg.random_directions(round_seed(config.seed, rnd), RANK_STREAM, pos,
                                config.feedback.directions, shape)


def rank(model: mg.VjpClassifier, train: Dataset, config: TrainConfig, rnd: int,
         chunk: int = 64) -> Ranking:
    """Step 1-2: margins of the ranked samples, class levels and seed counts."""
    assert train.y is not None
    fl = config.feedback
    pos = ranked_positions(model, train, fl.rank_per_class)
    m = np.concatenate([
        mg.directional_margins(model, train.x[p], train.y[p],
                               directions_for(config, rnd, p, train.x.shape[1:]),
                               search_config(fl))
        for p in np.array_split(pos, max(1, -(-len(pos) // chunk)))])  # (R, K)
    scores = mg.top_mean(m, fl.top, fl.t_max)
    cls = mg.class_means(scores, train.y[pos], train.num_classes)
    levels = mg.rank_classes(cls)
    counts = mg.seed_counts(levels, len(train), fl.seeds, fl.reference_size, fl.top, fl.max_ratio)
    return Ranking(pos, m, scores, cls, levels, counts)


def generate(model: mg.VjpClassifier, train: Dataset, config: TrainConfig, rnd: int,
             r: Ranking) -> mg.BoundaryExamples:
    """Step 3 on the seeds of the ranking, alpha ~ U[alpha] from the stream (seed, round)."""
    assert train.y is not None
    fl = config.feedback
    rows = mg.pick_seeds(r.scores, train.y[r.pos], r.counts)  # rows of the ranking
    seeds = r.pos[rows]
    d = directions_for(config, rnd, seeds, train.x.shape[1:])  # (S, K, C, H, W)
    u = rng.uniform(round_seed(config.seed, rnd), ALPHA_STREAM, seeds, 0, (fl.top,), 1.0)
    lo, hi = fl.alpha
    alpha = (lo + hi) / 2 + (hi - lo) / 2 * u.astype(np.float64)  # (S, top) U[lo, hi]
    return mg.boundary_examples(model, train.x[seeds], train.y[seeds], d, r.margins[rows], alpha)


# --- diagnostics -------------------------------------------------------------------------------

def _capped_mean(m: np.ndarray, cap: float) -> float:
    return float(np.minimum(m, cap).mean()) if m.size else float("nan")


def gradient_diagnostics(model: mg.VjpClassifier, train: Dataset, config: TrainConfig,
                         r: Ranking) -> dict[str, Any]:
    """Random against gradient-of-logit-difference directions on `diag_samples` ranked samples
    spread over the classes: does the top-k random score track the near-adversarial margin?"""
    assert train.y is not None
    fl = config.feedback
    if fl.diag_samples == 0 or len(r.pos) < 2:
        return {"samples": 0}
    sel = np.unique(np.linspace(0, len(r.pos) - 1, min(fl.diag_samples, len(r.pos))).astype(int))
    x, y = train.x[r.pos[sel]], train.y[r.pos[sel]]
    gm = mg.directional_margins(model, x, y, mg.gradient_directions(model, x, y),
                                search_config(fl))  # (S, C-1)
    g_min = np.minimum(gm, fl.t_max).min(axis=1)  # (S,)
    rand = np.minimum(r.margins[sel], fl.t_max)  # (S, K)
    return {
        "samples": len(sel),
        "gradient_min_mean": float(g_min.mean()),
        "gradient_cap_fraction": float((~np.isfinite(gm)).mean()),
        "random_min_mean": float(rand.min(axis=1).mean()),
        "random_top_mean": float(r.scores[sel].mean()),
        "random_all_mean": float(rand.mean()),
        # spread of a sample's random margins relative to their mean: near 0 would mean the
        # top-k choice is arbitrary (concentration of measure in high dimension)
        "random_relative_spread": float((rand.std(axis=1) / rand.mean(axis=1)).mean()),
        "spearman_top_vs_gradient": mg.rank_correlation(r.scores[sel], g_min),
        "spearman_all_vs_gradient": mg.rank_correlation(rand.mean(axis=1), g_min),
    }


def diagnostics(model: mg.VjpClassifier, train: Dataset, config: TrainConfig, r: Ranking,
                gen: mg.BoundaryExamples) -> dict[str, Any]:
    fl = config.feedback
    return {
        "ranked": len(r.pos),
        "class_scores": [None if np.isnan(v) else round(float(v), 6) for v in r.class_scores],
        "levels": [lv.value for lv in r.levels],
        "seeds": r.counts.tolist(),
        "proposed": gen.proposed,
        "discarded": gen.discarded,
        "generated": len(gen.y),
        "cap_fraction": float((~np.isfinite(r.margins)).mean()),
        "mean_margin_all": _capped_mean(r.margins, fl.t_max),
        "mean_margin_top": float(r.scores.mean()) if len(r.scores) else float("nan"),
        "margin_histogram": mg.histogram(r.margins, fl.t_max),
        "score_histogram": mg.histogram(r.scores, fl.t_max),
        "gradient": gradient_diagnostics(model, train, config, r),
    }


# --- retraining --------------------------------------------------------------------------------

def fine_tune_config(config: TrainConfig, rnd: int) -> TrainConfig:
    """The recipe of one round's fine-tuning, run by the project's epoch function: the recipe's
    shifts / flips apply to the real digits only (`augment_real`, ours), never to a generated
    example, which sits at a measured distance from the boundary (see fine_tune)."""
    fl = config.feedback
    return dataclasses.replace(config, method=Method.STANDARD, from_checkpoint=None,
                               epochs=fl.epochs, lr=fl.lr, seed=round_seed(config.seed, rnd),
                               shift=config.shift if fl.augment_real else 0,
                               flip=config.flip and fl.augment_real)


def fine_tune(module: nn.Module, train: Dataset, gen: mg.BoundaryExamples, config: TrainConfig,
              rnd: int) -> list[dict[str, float]]:
    """Fine-tune on the training set plus the generated examples, shuffled together."""
    assert train.y is not None
    ft = fine_tune_config(config, rnd)
    data = Dataset(train.name, "train+generated", np.concatenate([train.x, gen.x]),
                   np.concatenate([train.y, gen.y]), train.num_classes)
    fixed = np.arange(len(data)) >= len(train)  # the generated examples
    st = State(module, make_optimizer(module, ft))
    history = []
    while st.epoch < ft.epochs:
        history.append(run_epoch(st, data, ft, clean, fixed))
        st.epoch += 1
    return history


def run_round(module: nn.Module, train: Dataset, val: Dataset, config: TrainConfig, rnd: int,
              log: Callable[[str], None], base_ok: np.ndarray) -> dict[str, Any]:
    """One feedback round on `module` (changed in place); returns the round's diagnostics with
    the acceptance decision against the starting model's validation flags `base_ok` (N,)."""
    start = time.perf_counter()
    victim = deployed(module, config, train)
    r = rank(victim, train, config, rnd)
    gen = generate(victim, train, config, rnd, r)
    diag = diagnostics(victim, train, config, r, gen)
    log(f"round {rnd + 1}: ranked {len(r.pos)} samples ({time.perf_counter() - start:.0f} s), "
        f"levels {diag['levels']}, {diag['generated']} generated, {diag['discarded']} discarded")
    diag["fine_tune"] = fine_tune(module, train, gen, config, rnd)
    ok = correct(module, val)
    diag["val_accuracy"] = float(ok.mean())
    diag.update(decide(ok, base_ok, config.feedback))
    log(f"round {rnd + 1}: val accuracy {diag['val_accuracy']:.4f} "
        f"({time.perf_counter() - start:.0f} s); {diag['acceptance']['summary']}")
    return diag


def decide(ok: np.ndarray, base_ok: np.ndarray, fl: FeedbackConfig) -> dict[str, Any]:
    """{"accepted", "acceptance"}: the round's validation flags (N,) against the starting
    model's. The non-inferiority statistic is recorded under either rule."""
    ni = non_inferiority(ok, base_ok, fl.margin, fl.confidence)
    drop = float(base_ok.mean() - ok.mean())
    if fl.acceptance is Acceptance.DROP:
        accepted = drop <= fl.max_drop
        summary = (f"val accuracy drop {100 * drop:+.2f} points "
                   f"{'<=' if accepted else '>'} {100 * fl.max_drop:g} (rule 'drop')")
    else:
        accepted = ni.non_inferior
        summary = f"non-inferiority on the val split: {ni}"
    return {"accepted": bool(accepted),
            "acceptance": {"rule": fl.acceptance.value, **ni.to_json(), "drop": drop,
                           "summary": summary}}


def deployed(module: nn.Module, config: TrainConfig, train: Dataset) -> mg.VjpClassifier:
    """The current weights as the searches see them: exported to ONNX and run by onnxruntime
    (about twice torch's CPU speed here, and the graph that gets deployed), or through torch
    when onnxruntime is missing."""
    module.eval()
    c, h, w = (int(v) for v in train.x.shape[1:])
    try:
        return OrtModel(export_module(module, (c, h, w)),
                        SessionConfig("cpu", threads=config.threads), batch_size=1024)
    except RuntimeMissingError:  # no onnxruntime build installed
        return NumpyModel(TorchModel(module, num_classes=train.num_classes))


# --- the run: source, resume, finish -----------------------------------------------------------

def _clone(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _save(path: Path, prog: Progress, config: TrainConfig, source_sha: str) -> None:
    meta = {"kind": "fl-resume", "config": config.to_json(), "source_sha256": source_sha,
            "round": prog.round, "stopped": prog.stopped, "rounds": prog.rounds}
    save_checkpoint(path, Checkpoint({"model": prog.weights}, meta))


def _restore(path: Path, config: TrainConfig, source_sha: str) -> Progress:
    ck = load_checkpoint(path)
    meta = ck.meta
    if (meta.get("kind") != "fl-resume" or meta.get("config") != config.to_json()
            or meta.get("source_sha256") != source_sha):
        raise ConfigError(f"{path} holds an unfinished run of a different recipe or source "
                          "model; delete it or rerun with --fresh")
    if "model" not in ck.tensors:
        raise CheckpointError(f"{path} is damaged (no weights); delete it to start over")
    return Progress(ck.tensors["model"], int(meta["round"]), bool(meta["stopped"]),
                    list(meta["rounds"]))


def train_feedback(config: TrainConfig, out: str | Path, fresh: bool = False,
                   log: Callable[[str], None] = print) -> Checkpoint:
    """Feedback learning from config.from_checkpoint; writes the final model to `out`."""
    if config.method is not Method.FEEDBACK:
        raise ConfigError(f"train_feedback needs method 'feedback', got {config.method.value!r}")
    out, fl = Path(out), config.feedback
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    module, _ = load_source(config)
    source_sha = sha256_file(str(config.from_checkpoint))
    train = load_dataset(config.data, "train", n=config.n_train, data_root=config.data_root)
    check_net_data(config.net, tuple(train.x.shape[1:]), config.data)
    val = load_dataset(config.data, "val", data_root=config.data_root)
    base_ok = correct(module, val)  # (N,) the starting model's validation flags
    base = float(base_ok.mean())
    prog, rpath = Progress(_clone(module)), resume_path(out)
    if rpath.exists() and not fresh:
        prog = _restore(rpath, config, source_sha)
        log(f"resuming from {rpath} after round {prog.round}")
    while prog.round < fl.rounds and not prog.stopped:
        module.load_state_dict(prog.weights)
        diag = run_round(module, train, val, config, prog.round, log, base_ok)
        if diag["accepted"]:
            prog.weights = _clone(module)
        else:
            prog.stopped = True
            log(f"round {prog.round + 1} rejected ({diag['acceptance']['decision']} against "
                f"the starting model, val {base:.4f}); keeping the previous weights")
        prog.rounds.append(diag)
        prog.round += 1
        _save(rpath, prog, config, source_sha)
    return _finish(out, rpath, module, prog, config, val, base, source_sha)


def _finish(out: Path, rpath: Path, module: nn.Module, prog: Progress, config: TrainConfig,
            val: Dataset, base: float, source_sha: str) -> Checkpoint:
    module.load_state_dict(prog.weights)
    acc = float(correct(module, val).mean())
    meta = {"kind": "model", "config": config.to_json(), "qrdeploy_version": __version__,
            "num_classes": val.num_classes, "val_score": acc, "val_accuracy": acc,
            "source": {"file": Path(str(config.from_checkpoint)).name, "sha256": source_sha,
                       "val_accuracy": base},
            "accepted_rounds": sum(1 for d in prog.rounds if d["accepted"]),
            "rounds": prog.rounds}
    ck = Checkpoint({"model": prog.weights}, meta)
    save_checkpoint(out, ck)
    rpath.unlink(missing_ok=True)
    return ck
