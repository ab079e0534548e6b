"""The models of a run as Subjects (qrdeploy.evaluation.runner): an ONNX file opened through the
validating loader, its input contract applied, run by onnxruntime (OrtModel). Each Subject keeps a
picklable `ModelRef`, so a worker process or a Ray task opens the same model again
(qrdeploy.evaluation.shard)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qrdeploy.core.fileio import sha256_file
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.evaluation.runner import Subject
from qrdeploy.graphio.graph import get_metadata, load_model
from qrdeploy.graphio.inputspec import InputContract, contracted
from qrdeploy.model.ortmodel import OrtModel

HARDEN_KEY = "qrdeploy.harden"


def harden_recipe(meta: dict[str, str]) -> list[Any] | None:
    """The recipes a hardened model carries in its metadata, one per harden call (validated as a
    JSON list by qrdeploy.graphio.graph.load_model); None for a plain model."""
    raw = meta.get(HARDEN_KEY)
    if raw is None:
        return None
    recipe = json.loads(raw)
    return recipe if isinstance(recipe, list) else [recipe]


@dataclass(frozen=True)
class ModelRef:
    """How to open a model again in another process: its file, session settings, batch size and
    input contract (all picklable)."""

    path: str
    session: SessionConfig
    batch_size: int
    contract: InputContract | None = None

    def open(self, session: SessionConfig | None = None) -> Subject:
        return open_subject(self.path, session or self.session, self.batch_size, self.contract)


def open_subject(path: str | Path, session: SessionConfig, batch_size: int,
                 contract: InputContract | None = None,
                 proto: onnx.ModelProto | None = None) -> Subject:
    """An ONNX classifier file as a Subject run by onnxruntime (OrtModel); with a contract the
    model first gets its input conversion (a kept batch of 1 runs samples one at a time).
    `proto`: the file already loaded by the validating loader (not loaded again)."""
    if proto is None:
        proto = load_model(path)
    meta = get_metadata(proto)
    wrapped, bs = contracted(proto, contract, batch_size)
    model = OrtModel(wrapped, session, batch_size=bs, name=str(path))
    return Subject(Path(path).name, sha256_file(path), model, harden_recipe(meta),
                   dict(model.info), ModelRef(str(path), session, batch_size, contract),
                   contract_variant(contract))


def contract_variant(contract: InputContract | None) -> str:
    """A Subject's `variant` for a model run under `contract`: '' without one or with the
    default one written out (float32 NCHW in [0, 1]: the same function)."""
    return "" if contract is None or contract == InputContract() else repr(contract)


def check_fits(subjects: Sequence[Subject | None], x: np.ndarray) -> None:
    """Run each model on one image of `x` before any attack: a model that cannot take the data
    (another input shape, a broken graph) fails in seconds, its error naming its file, instead
    of after the attacks on the models before it."""
    for subject in subjects:
        if subject is not None:
            subject.model.logits(x[:1])
