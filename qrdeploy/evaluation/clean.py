"""Clean accuracy of any ONNX classifier (its deployed graph, run by onnxruntime through
OrtModel); against a reference model, top-1 agreement, polygraphy-style logit differences
(max / mean absolute, max relative, the share of samples within atol + rtol) and the paired
accuracy drop (Newcombe interval, McNemar test)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import (
    PairedCounts,
    Proportion,
    mcnemar_exact,
    newcombe_paired_interval,
)
from qrdeploy.data.datasets import Dataset, check_labels, validate_dataset
from qrdeploy.errors import ConfigError, DataError
from qrdeploy.evaluation.guard import (
    GuardResult,
    Verdict,
    check_same_input,
    enforce,
    input_guard,
    reference_contract_hint,
)
from qrdeploy.graphio.graph import load_model
from qrdeploy.graphio.inputspec import InputContract, contracted
from qrdeploy.model.ortmodel import ModelLike, OrtModel


def predict_logits(model: ModelLike, x: np.ndarray, config: SessionConfig | None = None,
                   batch_size: int = 500) -> np.ndarray:
    """Logits (N, K) of the deployed graph on x (N, C, H, W) float32."""
    ort = OrtModel(model, config, batch_size=batch_size, gradients=False)
    return ort.logits(np.ascontiguousarray(x, dtype=np.float32))


@dataclass(frozen=True)
class Tolerance:
    """polygraphy-style closeness of two logit vectors: every logit within atol + rtol * |ref|
    (numpy.isclose). The defaults (1e-5, 1e-5) are polygraphy's; a hardened model needs
    looser ones, e.g. atol=0.5."""

    atol: float = 1e-5
    rtol: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v >= 0 and np.isfinite(v)):
                raise ConfigError(f"--{name} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class LogitDiff:
    """How far the model's logits are from the reference's on the same images."""

    max_abs: float
    mean_abs: float
    max_rel: float  # max |z - z_ref| / max(|z_ref|, 1e-12)
    tolerance: Tolerance
    passed: Proportion  # samples whose every logit is within tolerance

    @classmethod
    def of(cls, z: np.ndarray, z_ref: np.ndarray, tol: Tolerance) -> LogitDiff:
        if z.shape != z_ref.shape:
            raise DataError(f"the model gives logits of shape {z.shape[1:]} and the reference "
                            f"{z_ref.shape[1:]}; compare models with the same classes")
        d = np.abs(z.astype(np.float64) - z_ref.astype(np.float64))  # (N, K)
        rel = d / np.maximum(np.abs(z_ref.astype(np.float64)), 1e-12)
        ok = np.isclose(z, z_ref, atol=tol.atol, rtol=tol.rtol).all(axis=1)
        return cls(float(d.max()), float(d.mean()), float(rel.max()), tol,
                   Proportion(int(ok.sum()), len(ok)))

    def to_json(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "mean_abs": self.mean_abs, "max_rel": self.max_rel,
                "atol": self.tolerance.atol, "rtol": self.tolerance.rtol,
                "pass_rate": self.passed.to_json()}


@dataclass(frozen=True)
class AccuracyDrop:
    """Reference accuracy minus model accuracy on the same images: the paired difference with
    its 95% Newcombe hybrid score interval, and McNemar's exact test of the discordant pairs.
    The interval and the test are two different procedures, named as such; they can disagree
    near the 5% level."""

    difference: float  # fraction, reference - model
    interval: tuple[float, float]
    gains: int  # right only with the model
    losses: int  # right only with the reference
    p_value: float

    @classmethod
    def of(cls, model_ok: np.ndarray, ref_ok: np.ndarray) -> AccuracyDrop:
        c = PairedCounts.from_flags(model_ok, ref_ok)
        lo, hi = newcombe_paired_interval(c)
        # + 0.0: no difference is 0, not the -0.00 points that negating it printed
        return cls(-c.difference + 0.0, (-hi + 0.0, -lo + 0.0), c.gains, c.losses,
                   mcnemar_exact(c.gains, c.losses))

    def line(self) -> str:
        lo, hi = self.interval
        return (f"accuracy drop vs reference: {100 * self.difference:+.2f} points, 95% Newcombe "
                f"interval [{100 * lo:+.2f}, {100 * hi:+.2f}]; McNemar exact p = "
                f"{self.p_value:.3g} ({self.losses} right only with the reference, {self.gains} "
                "only with the model)")

    def to_json(self) -> dict[str, Any]:
        return {"difference": self.difference, "ci95_newcombe": list(self.interval),
                "gains": self.gains, "losses": self.losses, "mcnemar_p": self.p_value}


@dataclass(frozen=True)
class EvalResult:
    """Clean accuracy (when labelled), and with a reference: top-1 agreement, the logit
    differences and the paired accuracy drop; the input guard's finding when it ran."""

    n: int
    accuracy: Proportion | None
    agreement: Proportion | None
    providers: list[str] = field(default_factory=list)
    reference_accuracy: Proportion | None = None
    logits: LogitDiff | None = None
    drop: AccuracyDrop | None = None
    guard: GuardResult | None = None

    def lines(self) -> list[str]:
        out = [f"samples: {self.n}"]
        if self.accuracy is not None:
            out.append(f"accuracy: {self.accuracy} (95% Wilson interval)")
        if self.reference_accuracy is not None:
            out.append(f"reference accuracy: {self.reference_accuracy} (95% Wilson interval)")
        if self.drop is not None:
            out.append(self.drop.line())
        if self.agreement is not None:
            out.append(f"top-1 agreement with reference: {self.agreement}")
        if self.logits is not None:
            d, t = self.logits, self.logits.tolerance
            out.append(f"logits vs reference: max |diff| {d.max_abs:.4g}, mean |diff| "
                       f"{d.mean_abs:.4g}, max rel diff {d.max_rel:.4g}; within atol {t.atol:g} "
                       f"+ rtol {t.rtol:g}: {d.passed} of samples")
        if self.guard is not None and self.guard.verdict is Verdict.SUSPECT:
            out.append(f"warning: {self.guard.message()}")
        return out

    def to_json(self) -> dict[str, Any]:
        def cell(p: Proportion | None) -> dict[str, Any] | None:
            return None if p is None else p.to_json()

        return {"schema": "qrdeploy/eval", "schema_version": 1,
                "n": self.n, "accuracy": cell(self.accuracy),
                "agreement": cell(self.agreement), "providers": self.providers,
                "reference_accuracy": cell(self.reference_accuracy),
                "logits": None if self.logits is None else self.logits.to_json(),
                "drop": None if self.drop is None else self.drop.to_json(),
                "input_guard": None if self.guard is None else self.guard.to_json()}


def evaluate_onnx(model: ModelLike, dataset: Dataset, reference: ModelLike | None = None,
                  config: SessionConfig | None = None, batch_size: int = 500,
                  tolerance: Tolerance | None = None, reference_batch_size: int | None = None,
                  names: tuple[str, str] = ("the model", "the reference model")) -> EvalResult:
    """Accuracy of `model` on a data set; with `reference`, also top-1 agreement with it, the
    logit differences under `tolerance` and (labelled data) the paired accuracy drop. `names`:
    how errors name the two models (e.g. their files)."""
    validate_dataset(dataset)
    pred = OrtModel(model, config, batch_size=batch_size, gradients=False, name=names[0])
    z = pred.logits(dataset.x)  # (N, K)
    pred_y = z.argmax(axis=1)
    accuracy = None
    if dataset.y is not None:
        check_labels(dataset, pred.num_classes)
        accuracy = Proportion(int((pred_y == dataset.y).sum()), len(dataset))
    if reference is None:
        if accuracy is None:
            raise DataError(f"{dataset.name} has no labels; pass --reference REF.onnx to "
                            "measure top-1 agreement instead")
        return EvalResult(len(dataset), accuracy, None, pred.providers)
    ref = OrtModel(reference, config, batch_size=reference_batch_size or batch_size,
                   gradients=False, name=names[1])
    z_ref = ref.logits(dataset.x)
    ref_y = z_ref.argmax(axis=1)
    agreement = Proportion(int((pred_y == ref_y).sum()), len(dataset))
    logits = LogitDiff.of(z, z_ref, tolerance or Tolerance())
    ref_acc = drop = None
    if dataset.y is not None:
        ref_acc = Proportion(int((ref_y == dataset.y).sum()), len(dataset))
        drop = AccuracyDrop.of(pred_y == dataset.y, ref_y == dataset.y)
    return EvalResult(len(dataset), accuracy, agreement, pred.providers, ref_acc, logits, drop)


def _ref_option(reference_contract: InputContract | None) -> str:
    """The option that sets the reference's contract: its own, or the model's it shares."""
    return "--input-spec" if reference_contract is None else "--reference-input-spec"


def evaluate_files(model: str | Path, dataset: Dataset, *, reference: str | Path | None = None,
                   contract: InputContract | None = None, config: SessionConfig | None = None,
                   batch_size: int = 500, tolerance: Tolerance | None = None,
                   guard: bool = True,
                   reference_contract: InputContract | None = None) -> EvalResult:
    """`qrdeploy eval` as one call: load the model file(s), run the input guard
    (qrdeploy.evaluation.guard; a mismatch raises InputContractError) on the reference when
    there is one, as `check` does (a hardened model near chance is a finding, not a wrong
    contract), else on the model; apply the input contract to both models, and evaluate.
    `reference_contract`: the reference's own input contract when it differs from the model's
    (a float original beside its uint8 NHWC conversion); then both contracts are guarded."""
    proto = load_model(model)
    ref_proto = None if reference is None else load_model(reference)
    ref_name = f"--reference {reference}"
    ref_contract = reference_contract or contract
    if ref_proto is not None and reference_contract is None:
        check_same_input(proto, ref_proto, ref_name, contract)
    found = None
    if guard:
        if ref_proto is not None and reference_contract is not None:  # the model's own first
            enforce(input_guard(proto, dataset, contract, config, batch_size, name=str(model)))
        if ref_proto is None:
            found = input_guard(proto, dataset, contract, config, batch_size)
            enforce(found)
        else:
            with reference_contract_hint(ref_name, reference_contract):
                found = input_guard(ref_proto, dataset, ref_contract, config, batch_size,
                                    name=ref_name, option=_ref_option(reference_contract))
                enforce(found)
    proto, bs = contracted(proto, contract or InputContract(), batch_size)
    ref, ref_bs = None, None
    if ref_proto is not None:
        with reference_contract_hint(ref_name, reference_contract):
            ref, ref_bs = contracted(ref_proto, ref_contract or InputContract(), batch_size)
    result = evaluate_onnx(proto, dataset, ref, config, bs, tolerance, ref_bs,
                           names=(str(model), f"--reference {reference}"))
    return dataclasses.replace(result, guard=found)
