"""`qrdeploy attack` as one library call: open the ONNX files, run a suite, write the results.

>>> doc = attack_files("hard.onnx", load_dataset("mnist-5k"), AttackOptions(suite="paper"),
...                    out="results.json", source="other.onnx")

The victim's run is resumable: its state lives beside the output (`results.json.state.npz`) until
the results are written. Transfer sets are cached in `.qrdeploy-transfer/` beside the output,
keyed by the source's sha256 and the settings, and reused by every victim evaluated there."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdeploy.data import Dataset
from qrdeploy.errors import ConfigError
from qrdeploy.evaluate import Labels, RunConfig, Subject, evaluate
from qrdeploy.graph import get_metadata, load_model
from qrdeploy.io import sha256_file
from qrdeploy.results import build_results, write_results
from qrdeploy.runtime import SessionConfig
from qrdeploy.suites import Family, Mode, Suite, SuiteName, build_suite, family_of, without_mode

HARDEN_KEY = "qrdeploy.harden"
TRANSFER_DIR = ".qrdeploy-transfer"


@dataclass(frozen=True)
class AttackOptions:
    """What to run: a named suite narrowed by `attacks`, an eps sweep, the label source."""

    suite: str = SuiteName.PAPER.value
    attacks: str | None = None
    eps: tuple[float, ...] | None = None  # None: the suite's default sweep
    labels: Labels = Labels.TRUE
    family: Family | None = None
    run: RunConfig = field(default_factory=RunConfig)


def harden_recipe(meta: dict[str, str]) -> list[Any] | None:
    """The recipes a hardened model carries in its metadata, one per harden call (validated as a
    JSON list by qrdeploy.graph.load_model); None for a plain model."""
    raw = meta.get(HARDEN_KEY)
    if raw is None:
        return None
    recipe = json.loads(raw)
    return recipe if isinstance(recipe, list) else [recipe]


def open_subject(path: str | Path, session: SessionConfig, batch_size: int) -> Subject:
    """An ONNX classifier file as a Subject run by onnxruntime (OrtModel)."""
    from qrdeploy.ortmodel import OrtModel

    proto = load_model(path)
    model = OrtModel(proto, session, batch_size=batch_size)
    return Subject(Path(path).name, sha256_file(path), model,
                   harden_recipe(get_metadata(proto)), dict(model.info))


def make_suite(opts: AttackOptions, data: Dataset, has_source: bool) -> Suite:
    """The suite of the options; black-box columns are dropped from the default suite when no
    source is given (naming them explicitly without a source is an error)."""
    family = opts.family or family_of(data.name, int(data.x.shape[1]))
    suite = build_suite(opts.suite, family, opts.attacks, opts.eps)
    if suite.by_mode(Mode.BLACK) and not has_source:
        if opts.suite == SuiteName.PAPER and opts.attacks is None:
            return without_mode(suite, Mode.BLACK)
        raise ConfigError("black-box columns need --source SRC.onnx to craft transfer examples "
                          "on; pass one, or choose --suite white|noise")
    return suite


def attack_files(model: str | Path, data: Dataset, opts: AttackOptions, *, out: str | Path,
                 source: str | Path | None = None, reference: str | Path | None = None,
                 session: SessionConfig | None = None,
                 state_path: Path | None = None) -> dict[str, Any]:
    """Run the suite on `model` over `data`, write the validated results JSON to `out`, and
    return it. A state file left by an interrupted run with the same settings is resumed."""
    session = session or SessionConfig()
    out = Path(out)
    bs = opts.run.batch_size
    victim = open_subject(model, session, bs)
    src = open_subject(source, session, bs) if source else None
    ref = open_subject(reference, session, bs) if reference else None
    suite = make_suite(opts, data, src is not None)
    state = state_path or out.with_name(out.name + ".state.npz")
    run = RunConfig(opts.run.seed, bs, state, out.parent / TRANSFER_DIR)
    ev = evaluate(victim, data.x, data.y, suite, source=src, reference=ref, labels=opts.labels,
                  config=run)
    doc = build_results(ev, data_name=data.name, split=data.split, session=session)
    write_results(out, doc)
    state.unlink(missing_ok=True)
    return doc
