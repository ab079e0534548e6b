"""Clean accuracy of any ONNX classifier (its deployed graph, run by onnxruntime through
OrtModel), and top-1 agreement with a reference model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import Proportion
from qrdeploy.data.datasets import Dataset, check_labels, validate_dataset
from qrdeploy.errors import DataError
from qrdeploy.model.ortmodel import ModelLike, OrtModel


def predict_logits(model: ModelLike, x: np.ndarray, config: SessionConfig | None = None,
                   batch_size: int = 500) -> np.ndarray:
    """Logits (N, K) of the deployed graph on x (N, C, H, W) float32."""
    ort = OrtModel(model, config, batch_size=batch_size, gradients=False)
    return ort.logits(np.ascontiguousarray(x, dtype=np.float32))


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
    pred = OrtModel(model, config, batch_size=batch_size, gradients=False)
    pred_y = pred.predict(dataset.x)
    accuracy = None
    if dataset.y is not None:
        check_labels(dataset, pred.num_classes)
        accuracy = Proportion(int((pred_y == dataset.y).sum()), len(dataset))
    agreement = None
    if reference is not None:
        ref = OrtModel(reference, config, batch_size=batch_size, gradients=False)
        agreement = Proportion(int((pred_y == ref.predict(dataset.x)).sum()), len(dataset))
    if accuracy is None and agreement is None:
        raise DataError(f"{dataset.name} has no labels; pass --reference REF.onnx to measure "
                        "top-1 agreement instead")
    return EvalResult(len(dataset), accuracy, agreement, pred.providers)

