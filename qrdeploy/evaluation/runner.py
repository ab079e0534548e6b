"""The attack runner: a suite (qrdeploy.evaluation.suites) run on a victim, batch by batch,
resumable.

Per sample and per column it records whether the victim was fooled and the perturbation's L-inf and
L2 norms (noise: the verdict of every draw). The runner decides success (docs/design.md, convention
2): white-box attacks are scored by the attack's final forward pass on the victim, transfer examples
by the victim's own forward pass. After every batch the arrays are saved to a state file keyed by
the victim's sha256 and every setting (qrdeploy.evaluation.runstate), so a killed run re-run
finishes with the same numbers: per-sample randomness is counter-based (qrdeploy.core.rng), keyed by
(seed, attack, sample index), and so independent of the batch and of the resume point.

Transfer (black-box) examples are crafted once on the source model with the labels of the run and
cached per column under a key of the source's sha256 and the settings, then reused for every
victim. The numbers computed from the recorded flags are in qrdeploy.evaluation.metrics; see
docs/evaluation.md.

Adaptive columns (Mode.ADAPTIVE) run after every paper column and sweep point. The
gradient entries run as a cascade, in suite order: each only on the samples that survive the
cheaper attacks of at most their eps (`survivors`) and the gradient entries before it. A sample
already fooled is recorded as fooled without running the entry, which is exact for a per-sample
worst case and saves most of the cost (AutoAttack runs its attacks the same way); an entry's
column is therefore robust accuracy under it and everything before it. Square and transfer run
on every sample, since the masking checks compare them with the paper columns. With adaptive
columns the runner also keeps a `Probe` of the clean points (logits, CE input gradients) for the
checks of qrdeploy.evaluation.masking (assembled in qrdeploy.evaluation.verdict)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import numpy as np

from qrdeploy.attacks import NoiseResult
from qrdeploy.attacks.adaptive import AdaptiveAttack, Role
from qrdeploy.core import cache
from qrdeploy.core.arrays import to_numpy
from qrdeploy.core.losses import Loss
from qrdeploy.core.progress import RunProgress, Stage, listening
from qrdeploy.errors import ConfigError, DataError
from qrdeploy.evaluation.runstate import Layout, StateFile, settings_key
from qrdeploy.evaluation.suites import Column, ColumnAttack, Mode, Suite, restricted
from qrdeploy.graphio.twin import is_bpda
from qrdeploy.model.protocol import Classifier, Differentiable, Twinned

STATE_FORMAT = 1
log = logging.getLogger(__name__)


class Labels(StrEnum):
    """Where the labels come from: the data set, or a reference model's predictions."""

    TRUE = "true"
    REFERENCE = "reference"


@dataclass(frozen=True)
class Subject:
    """A model in a run: display name, sha256 of its file, the model, its harden recipe."""

    name: str
    sha256: str
    model: Classifier
    harden: list[Any] | None = None  # the recipes of `qrdeploy harden`, one per call
    info: dict[str, Any] = field(default_factory=dict)
    ref: Any = None  # a picklable way to open the model again (qrdeploy.evaluation.subjects)
    #: what besides the file decides the function the model computes on the run's images: its
    #: input contract's repr ('' for none; qrdeploy.evaluation.subjects.contract_variant)
    variant: str = ""

    @property
    def key(self) -> str:
        """The model in state and cache keys: the file's sha256, joined by its variant when it
        has one, so a run under another input contract never resumes this one's work."""
        if not self.variant:
            return self.sha256
        return hashlib.sha256(f"{self.sha256}|{self.variant}".encode()).hexdigest()

    @property
    def bpda(self) -> bool:
        """An integer graph: activations quantized at run time, so its white-box gradient is
        BPDA (the straight-through estimator of its dequantized twin)."""
        info = self.info or getattr(self.model, "info", None) or {}
        return is_bpda(info.get("gradient_form"))

    @property
    def twin(self) -> bool:
        """The model quantizes activations and has a float-activation twin (the `square-twin`
        entry's surrogate; OrtModel.activation_twin)."""
        return isinstance(self.model, Twinned) and self.model.activation_twin() is not None


@dataclass(frozen=True)
class RunConfig:
    """seed keys every attack's randomness; batch_size is the unit of work and of saving."""

    seed: int = 0
    batch_size: int = 100
    state_path: Path | None = None  # per-batch state of the victim's run (None: not resumable)
    transfer_dir: Path | None = None  # cache of transfer sets (None: crafted in memory only)
    keep_adversarials: bool = False  # records keep every adversarial input (x_adv)
    index_offset: int = 0  # global position of x[0]: a shard keys its rng by global positions

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}; e.g. --seed 0")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1, got {self.batch_size!r}; "
                              "e.g. --batch-size 100")


@dataclass
class Record:
    """Per-sample outcome of one job: fooled, L-inf and L2 norms of x_adv - x, done; noise draws."""

    fooled: np.ndarray  # (N,) bool
    linf: np.ndarray  # (N,) float32
    l2: np.ndarray  # (N,) float32
    done: np.ndarray  # (N,) bool
    draws: np.ndarray | None = None  # (D, N) bool, noise only
    x_adv: np.ndarray | None = None  # (N, C, H, W) float32, when the run keeps adversarials
    #: () float64: seconds spent on the job so far, an interrupted run's included
    seconds: np.ndarray = field(default_factory=lambda: np.zeros((), np.float64))

    @classmethod
    def empty(cls, n: int, draws: int | None, image: tuple[int, ...] | None = None) -> Record:
        """An empty record; with `image` (C, H, W) it also keeps every adversarial input."""
        d = None if draws is None else np.zeros((draws, n), bool)
        adv = None if image is None else np.zeros((n, *image), np.float32)
        return cls(np.zeros(n, bool), np.zeros(n, np.float32), np.zeros(n, np.float32),
                   np.zeros(n, bool), d, adv)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}.{k}": getattr(self, k)
               for k in ("fooled", "linf", "l2", "done", "seconds")}
        for k in ("draws", "x_adv"):
            if getattr(self, k) is not None:
                out[f"{prefix}.{k}"] = getattr(self, k)
        return out

    def restore(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        for name in ("fooled", "linf", "l2", "done", "seconds", "draws", "x_adv"):
            if f"{prefix}.{name}" in arrays:
                setattr(self, name, arrays[f"{prefix}.{name}"].copy())

    def put(self, sl: slice, fooled: np.ndarray, delta: np.ndarray,
            x_adv: np.ndarray | None = None) -> None:
        """Store verdicts (B,) and norms of delta (B, C, H, W) for the samples of `sl`, and the
        adversarial inputs (B, C, H, W) when the record keeps them."""
        flat = delta.reshape(len(delta), -1).astype(np.float64)  # (B, D)
        self.fooled[sl] = fooled
        self.linf[sl] = np.abs(flat).max(axis=1, initial=0.0)
        self.l2[sl] = np.sqrt((flat * flat).sum(axis=1))
        if self.x_adv is not None and x_adv is not None:
            self.x_adv[sl] = x_adv
        self.done[sl] = True


@dataclass(frozen=True)
class Job:
    """One unit of per-sample work; columns and sweep points with equal attacks share a job."""

    id: str
    mode: Mode
    attack: ColumnAttack | None

    @property
    def draws(self) -> int | None:
        return getattr(self.attack, "draws", None) if self.mode is Mode.NOISE else None


@dataclass(frozen=True)
class Transfer:
    """Examples crafted on the source per black column, and the source's own verdicts."""

    source: Subject
    x_adv: dict[str, np.ndarray]  # column key -> (N, C, H, W)
    records: dict[str, Record]  # column key -> the source's own verdicts (white-box on it)
    source_correct: np.ndarray  # (N,) bool


@dataclass(frozen=True)
class Probe:
    """The victim at the clean points, for the masking checks: logits (N, K) and the CE input
    gradients (N, C, H, W) (None when the victim gives no gradients)."""

    logits: np.ndarray
    grads: np.ndarray | None


@dataclass(frozen=True)
class Evaluation:
    """Everything a run measured; results.py turns it into the results JSON."""

    suite: Suite
    victim: Subject
    labels: Labels
    y: np.ndarray  # (N,) the labels used
    data_fingerprint: str
    config: RunConfig
    records: dict[str, Record]  # "clean", column keys and sweep keys
    transfer: Transfer | None
    reference: Subject | None
    timings: dict[str, float]
    probe: Probe | None = None  # with adaptive columns: the clean points, for the checks
    adaptive_source: Subject | None = None  # what the adaptive `transfer` column crafts on
    survivor_keys: tuple[str, ...] = ()  # the cheaper columns that restricted ones ran after

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def clean_correct(self) -> np.ndarray:
        return ~self.records["clean"].fooled  # (N,)


# ------------------------------------------------------------------------------------ running


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the samples and labels a run used."""
    h = hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes())
    h.update(np.ascontiguousarray(y, np.int64).tobytes())
    return h.hexdigest()


def predict(model: Classifier, x: np.ndarray, batch: int) -> np.ndarray:
    """argmax of the model's logits (N,), in batches."""
    parts = [to_numpy(model.logits(x[i:i + batch])).argmax(axis=1) for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.int64)


def job_id(mode: Mode, attack: ColumnAttack | None) -> str:
    return "clean" if attack is None else f"{mode.value}:{attack!r}"


def plan(suite: Suite) -> tuple[list[Job], dict[str, str]]:
    """The distinct jobs of a suite (clean first, adaptive columns last, after everything they
    may be restricted by) and the job id of every column, sweep and check key."""
    jobs: dict[str, Job] = {"clean": Job("clean", Mode.CLEAN, None)}
    of: dict[str, str] = {"clean": "clean"}
    entries: list[tuple[str, Mode, ColumnAttack | None]] = [
        (c.key, c.mode, c.attack) for c in suite.columns if c.mode is not Mode.ADAPTIVE]
    entries += [(p.key, Mode.WHITE, p.attack) for p in suite.sweep]
    if suite.unbounded is not None:
        entries.append((suite.unbounded.key, Mode.WHITE, suite.unbounded.attack))
    entries += [(c.key, c.mode, c.attack) for c in suite.by_mode(Mode.ADAPTIVE)]
    for key, mode, attack in entries:
        jid = job_id(mode, attack)
        jobs.setdefault(jid, Job(jid, mode, attack))
        of[key] = jid
    return list(jobs.values()), of


def job_cost(job: Job) -> float:
    """Model evaluations per sample of a job at most (progress estimates only)."""
    if job.attack is None or job.mode is Mode.BLACK:
        return 0.5  # one forward pass
    return float(job.attack.cost())


def _loop(record: Record, n: int, cfg: RunConfig, desc: str,
          step: Callable[[slice], None], save: Callable[[], None], bar: RunProgress) -> None:
    """Run `step` on every batch from the first sample not yet done, saving after each batch
    (batches are done in order, so what is done is a prefix). The attacks' `report` calls move
    the progress line inside a batch."""
    start = int(np.argmin(record.done)) if not record.done.all() else n
    bar.start(desc, start)
    for s in range(start, n, cfg.batch_size):
        e = min(s + cfg.batch_size, n)
        def at(f: float, s: int = s, e: int = e) -> None:
            bar.at(s + f * (e - s))

        with listening(at):
            step(slice(s, e))
        save()
        bar.at(e)


def _attack_batch(job: Job, model: Classifier, x: np.ndarray, y: np.ndarray, sl: slice,
                  seed: int, offset: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(fooled (B,), x_adv (B, C, H, W), draws (D, B) or None) of one job on one batch; the
    samples' global positions (the rng keys) are `offset` + their positions in x."""
    xb, yb = x[sl], y[sl]
    if job.attack is None:
        return predict(model, xb, len(xb)) != yb, xb, None
    if job.mode is Mode.WHITE and not isinstance(model, Differentiable):
        raise ConfigError(f"{job.id} needs input gradients, and {type(model).__name__} gives none;"
                          " evaluate an OrtModel or drop the white-box columns with --attacks")
    idx = np.arange(sl.start, sl.stop, dtype=np.int64) + offset
    res = job.attack(model, xb, yb, seed=seed, indices=idx)  # type: ignore[arg-type]
    draws = res.fooled_draws if isinstance(res, NoiseResult) else None
    return np.asarray(res.fooled, bool), to_numpy(res.x_adv), draws


def _labels(of: dict[str, str]) -> dict[str, str]:
    """A job is named by its first key."""
    return {jid: k for k, jid in reversed(of.items())}


def _run_victim(victim: Subject, x: np.ndarray, y: np.ndarray, jobs: list[Job],
                transfer: Transfer | None, of: dict[str, str], cfg: RunConfig,
                settings: dict[str, Any], timings: dict[str, float], bar: RunProgress,
                suite: Suite | None = None, adaptive_source: Subject | None = None
                ) -> dict[str, Record]:
    n = len(y)
    image = tuple(x.shape[1:]) if cfg.keep_adversarials else None
    records = {j.id: Record.empty(n, j.draws, image) for j in jobs}
    state = StateFile(cfg.state_path, settings)
    saved = state.load(_layout(records))
    for i, j in enumerate(jobs):
        records[j.id].restore(saved, str(i))
    if saved:
        complete = sum(bool(records[j.id].done.all()) for j in jobs)
        log.warning("resuming the interrupted run saved in %s: %d of %d columns on this model "
                    "complete (the progress bar also counts the transfer crafting)",
                    state.path, complete, len(jobs))

    clock: dict[str, Any] = {"rec": None}  # the running job's record, start and earlier time

    def save() -> None:
        if clock["rec"] is not None:
            clock["rec"].seconds[...] = clock["base"] + time.perf_counter() - clock["t0"]
        state.save({k: v for i, j in enumerate(jobs)
                    for k, v in records[j.id].arrays(str(i)).items()})

    black = {of[k]: k for k in (transfer.x_adv if transfer else {})}
    label = _labels(of)
    source_model = None if adaptive_source is None else adaptive_source.model
    alive: np.ndarray | None = None
    for j in jobs:
        rec, t0 = records[j.id], time.perf_counter()
        clock.update(rec=rec, t0=t0, base=float(rec.seconds))
        restricted_job = suite is not None and _is_restricted(suite, label[j.id])
        if restricted_job and alive is None and suite is not None:
            # every job an adaptive one can be restricted by is complete here (plan order)
            alive = survivors(suite, {k: records[jid] for k, jid in of.items()})
        keep = alive if restricted_job else None

        def step(sl: slice, j: Job = j, rec: Record = rec, keep: np.ndarray | None = keep
                 ) -> None:
            if j.mode is Mode.BLACK and transfer is not None:
                xa = transfer.x_adv[black[j.id]][sl]
                fooled, draws = predict(victim.model, xa, len(xa)) != y[sl], None
            elif isinstance(j.attack, AdaptiveAttack):
                (fooled, xa), draws = _adaptive_batch(j.attack, victim.model, source_model,
                                                      x, y, sl, cfg.seed, keep,
                                                      cfg.index_offset), None
            else:
                fooled, xa, draws = _attack_batch(j, victim.model, x, y, sl, cfg.seed,
                                                  cfg.index_offset)
            rec.put(sl, fooled, xa - x[sl], xa)
            if draws is not None and rec.draws is not None:
                rec.draws[:, sl] = draws

        try:
            _loop(rec, n, cfg, label[j.id], step, save, bar)
        except KeyboardInterrupt:
            done = int(rec.done.sum())
            if state.path is None:  # a run without a state file (check): nothing to resume
                log.warning("interrupted in %s at %d of %d samples; nothing is saved: rerun "
                            "the command to start again", label[j.id], done, n)
            else:
                log.warning("interrupted in %s at %d of %d samples; what is done is saved in "
                            "%s: rerun the same command to resume", label[j.id], done, n,
                            state.path)
            raise
        if restricted_job and alive is not None:
            alive = alive & ~rec.fooled  # the cascade: the next entry runs on what is left
        rec.seconds[...] = float(clock["base"]) + time.perf_counter() - t0
        clock["rec"] = None
        timings[label[j.id]] = float(rec.seconds)  # a resumed job: with its earlier time
    return records


def _is_restricted(suite: Suite, key: str) -> bool:
    return any(c.key == key and restricted(c) for c in suite.by_mode(Mode.ADAPTIVE))


def survivor_keys(suite: Suite) -> tuple[str, ...]:
    """The cheaper white-box columns and sweep points (L-inf, eps at most the adaptive eps)
    whose survivors the restricted adaptive columns run on; () without adaptive columns.
    Black-box columns are left out: the restricted entries' flags (theirs and these columns')
    are the gradient worst case that black-box-stronger and square-stronger hold transfer and
    Square against, so a transfer success among them would shield the very column the check
    must compare."""
    eps = suite.adaptive_eps
    if eps is None:
        return ()
    keys = [c.key for c in suite.columns if c.bounded and c.mode is Mode.WHITE
            and c.eps is not None and c.eps <= eps + 1e-12]
    return tuple(keys + [p.key for p in suite.sweep if p.eps <= eps + 1e-12])


def robust_under(records: dict[str, Record], keys: Sequence[str]) -> np.ndarray:
    """The per-sample worst case (N,) bool: correct on the clean input and fooled by none of the
    columns `keys`. The one place qrdeploy computes a worst case."""
    alive = ~records["clean"].fooled
    for k in keys:
        alive = alive & ~records[k].fooled
    return alive


def survivors(suite: Suite, records: dict[str, Record]) -> np.ndarray:
    """(N,) bool: correct on the clean input and not fooled by any of `survivor_keys`."""
    return robust_under(records, survivor_keys(suite))


def _adaptive_batch(entry: AdaptiveAttack, model: Classifier, source: Classifier | None,
                    x: np.ndarray, y: np.ndarray, sl: slice, seed: int,
                    keep: np.ndarray | None, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fooled (B,), x_adv (B, C, H, W)) of an adaptive entry on one batch. With `keep` (N,) the
    entry runs only on the kept samples; the others are recorded as fooled (by a cheaper attack)
    with their clean input."""
    xb, yb = x[sl], y[sl]
    run = np.ones(len(yb), bool) if keep is None else keep[sl]  # (B,)
    fooled, xa = ~run, xb.copy()
    if entry.role is Role.WHITE and not isinstance(model, Differentiable):
        raise ConfigError(f"adaptive/{entry.name} needs input gradients, and "
                          f"{type(model).__name__} gives none; evaluate an OrtModel")
    if run.any():
        idx = (np.arange(sl.start, sl.stop, dtype=np.int64) + offset)[run]
        res = entry(model, xb[run], yb[run], seed=seed, indices=idx, source=source)
        fooled[run] = np.asarray(res.fooled, bool)
        xa[run] = to_numpy(res.x_adv)
    return fooled, xa


def gradient_blocker(model: Classifier) -> str | None:
    """Why `model` gives no input gradients, in one line; None when it does."""
    if not isinstance(model, Differentiable):
        return f"{type(model).__name__} gives no input gradients"
    why = getattr(model, "gradient_blocker", None)
    return None if why is None else cast(str | None, why())


def probe(model: Classifier, x: np.ndarray, y: np.ndarray, batch: int) -> Probe:
    """Logits and CE input gradients of the victim at the clean points, in batches (no
    gradients for a model that gives none: zero-gradient is then not checked)."""
    logits, grads = [], []
    differentiable = gradient_blocker(model) is None
    for s in range(0, len(x), batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        if differentiable and isinstance(model, Differentiable):
            z, _, g = model.loss_and_grad(xb, yb, Loss.CE)
            grads.append(to_numpy(g))
        else:
            z = model.logits(xb)
        logits.append(to_numpy(z).astype(np.float32))
    return Probe(np.concatenate(logits), np.concatenate(grads) if grads else None)


def _layout(records: dict[str, Record]) -> Layout:
    """The arrays a state file of these records must hold (names by job position)."""
    out = {}
    for i, rec in enumerate(records.values()):
        for name, a in rec.arrays(str(i)).items():
            out[name] = (a.shape, a.dtype)
    return out


# ----------------------------------------------------------------------------------- transfer


def craft_label(col: Column) -> str:
    return f"craft {col.key} on source"


def craft_transfer(source: Subject, x: np.ndarray, y: np.ndarray, columns: tuple[Column, ...],
                   cfg: RunConfig, data_fp: str, bar: RunProgress | None = None) -> Transfer:
    """Examples of every black column crafted on the source with labels y, each cached (per
    batch, resumable) under a key of the source's sha256, the data, the attack and the seed,
    in `cfg.transfer_dir` (trimmed to the user cache's size limit, qrdeploy.core.cache)."""
    bar = bar or RunProgress([Stage(craft_label(c), len(y), job_cost(Job("", Mode.WHITE,
                                                                          c.attack)))
                              for c in columns])
    correct = predict(source.model, x, cfg.batch_size) == y
    x_adv, records = {}, {}
    for col in columns:
        settings = {"format": STATE_FORMAT, "source": source.key, "source_name": source.name,
                    "data": data_fp, "attack": repr(col.attack), "seed": cfg.seed}
        if cfg.index_offset:  # a shard: its rng keys start elsewhere
            settings["offset"] = cfg.index_offset
        name = f"transfer-{settings_key(settings)[:20]}.npz"
        path = None if cfg.transfer_dir is None else cfg.transfer_dir / name
        if path is not None and path.exists():
            log.info("%s: transfer set from the cache %s", col.key, path)
        x_adv[col.key], records[col.key] = _craft_column(source, x, y, col, cfg,
                                                          StateFile(path, settings), bar)
        if path is not None and path.exists():
            cache.touch(path)
            cache.trim(path.parent, keep=path)
    return Transfer(source, x_adv, records, correct)


def _craft_column(source: Subject, x: np.ndarray, y: np.ndarray, col: Column, cfg: RunConfig,
                  state: StateFile, bar: RunProgress) -> tuple[np.ndarray, Record]:
    n, rec, xa = len(y), Record.empty(len(y), None), x.astype(np.float32).copy()
    saved = state.load({**_layout({"r": rec}), "x_adv": (xa.shape, xa.dtype)})
    if saved:
        rec.restore(saved, "0")
        xa = saved["x_adv"].copy()
    job = Job(job_id(Mode.WHITE, col.attack), Mode.WHITE, col.attack)

    def step(sl: slice) -> None:
        fooled, adv, _ = _attack_batch(job, source.model, x, y, sl, cfg.seed, cfg.index_offset)
        xa[sl] = adv
        rec.put(sl, fooled, adv - x[sl])

    try:
        _loop(rec, n, cfg, craft_label(col),
              step, lambda: state.save({**rec.arrays("0"), "x_adv": xa}), bar)
    except KeyboardInterrupt:
        done = int(rec.done.sum())
        where = (f"what is done is saved in the transfer cache {state.path}: rerun the same "
                 "command to resume" if state.path is not None
                 else "nothing is saved: rerun the command to start again")
        log.warning("interrupted in %s at %d of %d samples; %s", craft_label(col), done, n,
                    where)
        raise
    return xa, rec


# ------------------------------------------------------------------------------------- driver


def resolve_labels(x: np.ndarray, y: np.ndarray | None, labels: Labels,
                   reference: Subject | None, victim: Subject, batch: int
                   ) -> tuple[np.ndarray, Labels, Subject | None]:
    """The labels of a run: the data's, or (no labels) the reference's predictions; without a
    reference the victim itself is the reference (cleverhans' convention), so clean = 100 %."""
    if labels is Labels.TRUE and y is not None:
        return np.asarray(y, np.int64), Labels.TRUE, None
    ref = reference or victim
    return predict(ref.model, x, batch), Labels.REFERENCE, ref


def run_stages(suite: Suite, n: int, crafted: bool) -> list[Stage]:
    """The progress stages of a run of `suite` on n samples: crafting each black-box column's
    transfer set (when `crafted`: a source model is given), then each job, weighed by cost."""
    jobs, of = plan(suite)
    crafts = suite.by_mode(Mode.BLACK) if crafted else ()
    return ([Stage(craft_label(c), n, job_cost(Job("", Mode.WHITE, c.attack))) for c in crafts]
            + [Stage(_labels(of)[j.id], n, job_cost(j)) for j in jobs])


def evaluate(victim: Subject, x: np.ndarray, y: np.ndarray | None, suite: Suite, *,
             source: Subject | None = None, reference: Subject | None = None,
             labels: Labels = Labels.TRUE, config: RunConfig | None = None,
             adaptive_source: Subject | None = None) -> Evaluation:
    """Run `suite` on `victim` over x (N, C, H, W) float32 in [0, 1]; see the module docstring.
    `adaptive_source` is the model the adaptive `transfer` column crafts on (the model before
    hardening); that column needs one."""
    cfg = config or RunConfig()
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"expected a non-empty (N, C, H, W) image batch, got shape {x.shape}")
    yy, mode, ref = resolve_labels(x, y, Labels(labels), reference, victim, cfg.batch_size)
    black = suite.by_mode(Mode.BLACK)
    if black and source is None:
        raise ConfigError("black-box columns need a source model to craft transfer examples on; "
                          "pass --source SRC.onnx or choose --suite white|noise")
    data_fp = fingerprint(x, yy)
    timings: dict[str, float] = {}
    jobs, of = plan(suite)
    crafts = black if source is not None else ()
    bar = RunProgress(run_stages(suite, len(yy), crafted=bool(crafts)))
    t0 = time.perf_counter()
    transfer = (craft_transfer(source, x, yy, black, cfg, data_fp, bar)
                if crafts and source is not None else None)
    timings["transfer"] = time.perf_counter() - t0
    settings = {"format": STATE_FORMAT, "victim": victim.key, "data": data_fp,
                "seed": cfg.seed, "jobs": [j.id for j in jobs],
                "source": source.key if source else None}
    if cfg.index_offset:
        settings["offset"] = cfg.index_offset
    if suite.checks:
        _check_adaptive_source(suite, adaptive_source)
        settings["adaptive_source"] = adaptive_source.key if adaptive_source else None
    try:
        by_job = _run_victim(victim, x, yy, jobs, transfer, of, cfg, settings, timings, bar,
                             suite, adaptive_source)
    finally:
        bar.finish()
    records = {k: by_job[jid] for k, jid in of.items()}
    t0 = time.perf_counter()
    pr = probe(victim.model, x, yy, cfg.batch_size) if suite.checks else None
    if pr is not None:
        timings["masking probe"] = time.perf_counter() - t0
    return Evaluation(suite, victim, mode, yy, data_fp, cfg, records, transfer, ref, timings,
                      pr, adaptive_source, survivor_keys(suite))


def _check_adaptive_source(suite: Suite, adaptive_source: Subject | None) -> None:
    needs = [c.key for c in suite.by_mode(Mode.ADAPTIVE)
             if isinstance(c.attack, AdaptiveAttack) and c.attack.role is Role.TRANSFER]
    if needs and adaptive_source is None:
        raise ConfigError(f"{needs[0]} crafts on the model before hardening and none was given; "
                          "pass --unhardened MODEL.onnx (or --source), or drop it with --attacks")
