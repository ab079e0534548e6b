"""Clean accuracy of any ONNX classifier run by onnxruntime, and top-1 agreement with a
reference model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qrdeploy.core.runtime import SessionConfig, make_session, run_session
from qrdeploy.core.stats import Proportion
from qrdeploy.data.datasets import Dataset, check_labels, validate_dataset
from qrdeploy.errors import DataError, GraphError
from qrdeploy.graphio.graph import load_model, model_to_bytes

ModelLike = onnx.ModelProto | bytes | str | Path


def model_bytes(model: ModelLike) -> bytes:
    """Serialized model; files are loaded and validated by qrdeploy.graphio.graph."""
    if isinstance(model, bytes):
        return model
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    return model_to_bytes(load_model(model))


class Predictor:
    """One onnxruntime session of a single-input classifier, run in batches."""

    def __init__(self, model: ModelLike, config: SessionConfig | None = None) -> None:
        self.config = config or SessionConfig()
        self.session = make_session(model_bytes(model), self.config)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise GraphError(f"the model has {len(inputs)} inputs; qrdeploy needs one image input")
        self.input = inputs[0]
        self.output = self.session.get_outputs()[0]

    @property
    def chw(self) -> tuple[Any, ...]:
        return tuple(self.input.shape[1:])

    def check_input(self, x: np.ndarray) -> None:
        want = self.chw
        fixed = all(isinstance(d, int) for d in want)
        if x.ndim != 4 or (fixed and tuple(x.shape[1:]) != want):
            raise DataError(f"the model expects images of shape {want}, "
                            f"the data has {tuple(x.shape[1:])}")

    def logits(self, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
        self.check_input(x)
        outs = [self._run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(run_session(self.session, [self.output.name], {self.input.name: x})[0])
        if out.ndim != 2 or out.shape[0] != len(x):
            raise GraphError(f"the model's output {self.output.name!r} has shape {out.shape} "
                             f"for {len(x)} inputs; expected ({len(x)}, classes) logits")
        return out.astype(np.float32, copy=False)


def predict_logits(model: ModelLike, x: np.ndarray, config: SessionConfig | None = None,
                   batch_size: int = 500) -> np.ndarray:
    """Logits (N, K) of a model on x (N, C, H, W) float32."""
    return Predictor(model, config).logits(np.ascontiguousarray(x, dtype=np.float32), batch_size)


@dataclass(frozen=True)
class EvalResult:
    """Clean accuracy (when labelled) and agreement with a reference (when given)."""

    n: int
    accuracy: Proportion | None
    agreement: Proportion | None
    providers: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"samples: {self.n}"]
        if self.accuracy is not None:
            out.append(f"accuracy: {self.accuracy} (95% Wilson interval)")
        if self.agreement is not None:
            out.append(f"top-1 agreement with reference: {self.agreement}")
        return out

    def to_json(self) -> dict[str, Any]:
        def cell(p: Proportion | None) -> dict[str, Any] | None:
            return None if p is None else p.to_json()

        return {"n": self.n, "accuracy": cell(self.accuracy),
                "agreement": cell(self.agreement), "providers": self.providers}


def evaluate_onnx(model: ModelLike, dataset: Dataset, reference: ModelLike | None = None,
                  config: SessionConfig | None = None, batch_size: int = 500) -> EvalResult:
    """Accuracy of `model` on a data set; with `reference`, also top-1 agreement with it."""
    validate_dataset(dataset)
    pred = Predictor(model, config)
    pred_y = pred.logits(dataset.x, batch_size).argmax(1)
    accuracy = None
    if dataset.y is not None:
        check_labels(dataset, int(pred.logits(dataset.x[:1]).shape[1]))
        accuracy = Proportion(int((pred_y == dataset.y).sum()), len(dataset))
    agreement = None
    if reference is not None:
        ref_y = Predictor(reference, config).logits(dataset.x, batch_size).argmax(1)
        agreement = Proportion(int((pred_y == ref_y).sum()), len(dataset))
    if accuracy is None and agreement is None:
        raise DataError(f"{dataset.name} has no labels; pass --reference REF.onnx to measure "
                        "top-1 agreement instead")
    return EvalResult(len(dataset), accuracy, agreement, list(pred.session.get_providers()))
