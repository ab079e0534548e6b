"""Adversarial sets on disk, and replaying them on the runtime that ships.

`attack --save-adversarials FILE.npz` writes every adversarial input the run found, column by
column, with the clean inputs, labels, sample ids and the attack settings; `qrdeploy replay MODEL
FILE.npz` scores any ONNX classifier on that set: the integer graph the device runs, a model
converted for another runtime and brought back, a later release. What was found on the analysis
graph is then checked where it matters.

The file (format `qrdeploy/adversarials`, version 1) is a plain npz read with
allow_pickle=False and validated before use (it may come from elsewhere):

- `meta` () str: JSON with format, version, the victim's name and sha256, the data's
  name, split and fingerprint, the label source, the seed, and per column its key, mode, eps
  and attack settings;
- `sample_ids` (N,) int64: positions of the samples in the run's data (the first N of the split);
- `labels` (N,) int64: the labels the run scored against;
- `x` (N, C, H, W) float32: the clean inputs, in [0, 1];
- `clean_correct` (N,) bool: the victim's clean verdict;
- `adv_<i>` (N, C, H, W) float32: column i's adversarial inputs (the clean input where it did
  not run; a restricted adaptive column holds, for each sample the cascade skipped, the example
  of the cheaper column that fooled it);
- `fooled_<i>` (N,) bool: whether column i fooled the victim.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qrdeploy.core.fileio import atomic_write
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import Proportion
from qrdeploy.data.datasets import Dataset
from qrdeploy.errors import DataError
from qrdeploy.evaluation.guard import enforce, input_guard
from qrdeploy.evaluation.runner import Evaluation, robust_under
from qrdeploy.evaluation.suites import restricted
from qrdeploy.graphio.graph import load_model, real_inputs
from qrdeploy.graphio.inputspec import DType, InputContract, contracted
from qrdeploy.model.ortmodel import OrtModel

FORMAT, VERSION = "qrdeploy/adversarials", 1


def save_adversarials(path: str | Path, ev: Evaluation, x: np.ndarray, data_name: str,
                      split: str) -> Path:
    """Write the clean inputs x (N, C, H, W) and the adversarial inputs of every column of a run
    that kept them (RunConfig.keep_adversarials) atomically to `path`."""
    x = np.asarray(x, np.float32)
    columns = [c for c in ev.suite.columns if c.key != "clean"]
    meta = {"format": FORMAT, "version": VERSION,
            "victim": {"name": ev.victim.name, "sha256": ev.victim.sha256},
            "data": {"name": data_name, "split": split, "n": ev.n,
                     "fingerprint": ev.data_fingerprint}, "labels": ev.labels.value,
            "seed": ev.config.seed,
            "columns": [{"key": c.key, "mode": c.mode.value, "eps": c.eps,
                         "attack": None if c.attack is None else c.attack.describe()}
                        for c in columns]}
    arrays: dict[str, Any] = {
        "meta": np.array(json.dumps(meta)), "sample_ids": np.arange(ev.n, dtype=np.int64),
        "labels": np.asarray(ev.y, np.int64), "x": x,
        "clean_correct": np.asarray(ev.clean_correct, bool)}
    cascade = _cascade_examples(ev)
    for i, c in enumerate(columns):
        rec = ev.records[c.key]
        if rec.x_adv is None:
            raise DataError("the run kept no adversarial inputs; run it with "
                            "RunConfig(keep_adversarials=True) (attack --save-adversarials)")
        arrays[f"adv_{i}"] = cascade.get(c.key, rec.x_adv)
        arrays[f"fooled_{i}"] = np.asarray(rec.fooled, bool)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a handle: np.savez would add .npz to a path
            np.savez_compressed(fh, **arrays)

    return atomic_write(path, write)


def _cascade_examples(ev: Evaluation) -> dict[str, np.ndarray]:
    """The inputs of each restricted adaptive column as its flags mean them. The runner attacks
    a restricted entry only on the samples that survived the cheaper columns and the entries
    before it, and records the others as fooled with their clean input; here each of those gets
    the example of the first earlier column that fooled it, so a replay on the same model finds
    every recorded success again (clean errors keep their clean input, which fools already)."""
    order = list(ev.survivor_keys)
    alive = robust_under(ev.records, order)
    out: dict[str, np.ndarray] = {}
    for c in ev.suite.columns:
        rec = ev.records[c.key]
        if not restricted(c) or rec.x_adv is None:
            continue
        xa, filled = rec.x_adv.copy(), alive.copy()
        for k in order:
            src = ev.records[k]
            if src.x_adv is None:
                continue
            take = ~filled & src.fooled & ev.clean_correct
            xa[take] = src.x_adv[take]
            filled |= take
        out[c.key] = xa
        order.append(c.key)
        alive = alive & ~rec.fooled
    return out


@dataclass(frozen=True)
class AdversarialSet:
    """A validated adversarial set (see the module docstring)."""

    meta: dict[str, Any]
    labels: np.ndarray  # (N,)
    x: np.ndarray  # (N, C, H, W)
    clean_correct: np.ndarray  # (N,)
    adv: tuple[np.ndarray, ...]  # per column (N, C, H, W)
    fooled: tuple[np.ndarray, ...]  # per column (N,)

    @property
    def keys(self) -> list[str]:
        return [str(c["key"]) for c in self.meta["columns"]]


def load_adversarials(path: str | Path) -> AdversarialSet:
    """Read and validate a file written by save_adversarials; one-line DataErrors otherwise."""
    p = Path(path)
    if p.is_dir() or not p.exists():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise DataError(f"adversarial set {p} {what}; pass the .npz that attack "
                        "--save-adversarials wrote")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{p} is not a readable npz file ({type(exc).__name__}); write it with "
                        "qrdeploy attack --save-adversarials") from None
    bad = f"{p} is not a qrdeploy adversarial set"
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError):
        raise DataError(f"{bad} (no readable 'meta'); write it with qrdeploy attack "
                        "--save-adversarials") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{bad} (format {meta.get('format') if isinstance(meta, dict) else '?'})")
    if meta.get("version") != VERSION:
        raise DataError(f"{p} has adversarial-set version {meta.get('version')!r}; this qrdeploy "
                        f"reads version {VERSION}: rerun attack --save-adversarials")
    columns = meta.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, dict) and "key" in c
                                                for c in columns):
        raise DataError(f"{bad} (its 'columns' are malformed)")
    x = _array(arrays, "x", p, np.float32, 4)
    n = len(x)
    labels = _array(arrays, "labels", p, np.int64, 1, n)
    clean = _array(arrays, "clean_correct", p, np.bool_, 1, n)
    adv, fooled = [], []
    for i in range(len(columns)):
        a = _array(arrays, f"adv_{i}", p, np.float32, 4, n)
        if a.shape != x.shape:
            raise DataError(f"{bad}: adv_{i} has shape {a.shape}, the clean inputs {x.shape}")
        adv.append(a)
        fooled.append(_array(arrays, f"fooled_{i}", p, np.bool_, 1, n))
    for name, a in [("x", x), *((f"adv_{i}", a) for i, a in enumerate(adv))]:
        if not (np.isfinite(a).all() and a.min(initial=0.0) >= 0.0 and a.max(initial=0.0) <= 1.0):
            raise DataError(f"{bad}: {name} holds values outside [0, 1] or not finite")
    return AdversarialSet(meta, labels, x, clean, tuple(adv), tuple(fooled))


def _array(arrays: dict[str, np.ndarray], name: str, p: Path, dtype: Any, ndim: int,
           n: int | None = None) -> np.ndarray:
    a = arrays.get(name)
    if a is None or a.dtype != dtype or a.ndim != ndim or (n is not None and len(a) != n):
        got = "missing" if a is None else f"{a.dtype} of shape {a.shape}"
        raise DataError(f"{p} is not a qrdeploy adversarial set: {name} is {got}, expected "
                        f"{np.dtype(dtype).name} of rank {ndim}" + ("" if n is None else
                                                                   f" and length {n}"))
    return a


@dataclass(frozen=True)
class ReplayRow:
    """One column replayed: robust accuracy on the new model, what the set recorded on the
    analysis graph, and how many of the recorded successes still fool the new model."""

    key: str
    robust: Proportion  # correct on the clean input and on the adversarial one, new model
    recorded: Proportion  # the same on the analysis graph
    still_fooled: Proportion  # of the recorded successes (on clean-correct samples)


@dataclass(frozen=True)
class ReplayResult:
    model: str
    source: dict[str, Any]  # the set's victim
    clean: Proportion
    recorded_clean: Proportion
    rows: tuple[ReplayRow, ...]

    def lines(self) -> list[str]:
        out = [f"{self.model} on the adversarial set of {self.source.get('name')} "
               f"({self.clean.n} samples; 95% intervals)",
               f"  {'clean':<22} {self.clean} (recorded {self.recorded_clean})"]
        for r in self.rows:
            out.append(f"  {r.key:<22} robust {r.robust} (recorded {r.recorded}); "
                       f"{r.still_fooled.k} of {r.still_fooled.n} recorded successes still fool")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "clean": self.clean.to_json(),
                "recorded_clean": self.recorded_clean.to_json(),
                "columns": [{"key": r.key, "robust": r.robust.to_json(),
                             "recorded": r.recorded.to_json(),
                             "still_fooled": r.still_fooled.to_json()} for r in self.rows]}


def _prop(flags: np.ndarray) -> Proportion:
    return Proportion(int(np.asarray(flags, bool).sum()), int(np.asarray(flags).size))


def _static_body(model: onnx.ModelProto, name: str | None) -> tuple[int, ...] | None:
    """The static dims after the batch of the model's image input (`name`, else its first);
    None where any is unknown."""
    inputs = real_inputs(model.graph)
    if not inputs:
        return None
    x = next((i for i in inputs if i.name == name), inputs[0])
    dims = x.type.tensor_type.shape.dim[1:]
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def replay(model: str | Path, path: str | Path, contract: InputContract | None = None,
           session: SessionConfig | None = None, batch_size: int = 256,
           guard: bool = True) -> ReplayResult:
    """Score `model` (an ONNX file, with its input contract) on a saved adversarial set. First
    the input guard checks the contract on the set's clean inputs and labels, as `eval` does
    (`guard=False` skips it; a mismatch raises InputContractError naming the --input-spec that
    fits). With `dtype=uint8` every input is rounded to 8 bits (k/255), what the model's uint8
    input gets on the device."""
    s = load_adversarials(path)
    raw = load_model(model)

    def wrong(shape: tuple[int, ...]) -> DataError:
        return DataError(f"{Path(model).name} takes inputs of shape {shape}, the set holds "
                         f"{tuple(s.x.shape[1:])}; replay on a model of the same task")

    # from the file: its input type need not fit the contract yet
    body = _static_body(raw, contract.input_name if contract is not None else None)
    if body is not None and math.prod(body) != math.prod(s.x.shape[1:]):
        raise wrong(body)  # another task: not a layout the guard could name
    if guard:  # the same pixels in another layout, range or type: the guard names the
        # --input-spec that fits, before the model is opened under the declared one
        data = Dataset(f"adversarial set {Path(path).name}", "test", s.x, s.labels,
                       int(s.labels.max()) + 1)
        found = input_guard(raw, data, contract, session, batch_size, name=str(model))
        enforce(found)
    proto, bs = contracted(raw, contract, batch_size)
    m = OrtModel(proto, session, batch_size=bs, gradients=False)
    if m.input_shape != tuple(s.x.shape[1:]):
        raise wrong(m.input_shape)
    bits8 = contract is not None and contract.spec.dtype is DType.UINT8

    def inputs(x: np.ndarray) -> np.ndarray:
        return x if not bits8 else (np.round(x * 255) / 255).astype(np.float32)

    clean = m.predict(inputs(s.x)) == s.labels
    rows = []
    for key, adv, fooled in zip(s.keys, s.adv, s.fooled, strict=True):
        robust = clean & (m.predict(inputs(adv)) == s.labels)
        found = s.clean_correct & fooled
        rows.append(ReplayRow(key, _prop(robust), _prop(s.clean_correct & ~fooled),
                              _prop(~robust[found])))
    return ReplayResult(Path(model).name, dict(s.meta["victim"]), _prop(clean),
                        _prop(s.clean_correct), tuple(rows))
