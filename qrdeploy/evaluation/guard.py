"""The input-contract guard: does the model take the pixels the way the user declared?

A model that expects 0-255 values, normalised inputs or BGR channels still runs on [0, 1] RGB
pixels; it just answers nonsense, and every robustness number after that is noise. Before
`eval`, `attack` and `check` spend any time, the guard scores the declared contract
(`--input-spec`, default float32 NCHW RGB in [0, 1]) and a small set of common alternatives on
the first `GuardConfig.n` images of the run's data:

- the layout first, statically: when the model's input shape fits the images only in the other
  layout (NHWC for NCHW), that layout is the finding, without running anything;
- then every combination of range (0-1, 0-255), normalisation (none, MNIST's mean/std for one
  channel; CIFAR-10's and ImageNet's mean/std and ImageNet's mean alone (Caffe-style) for three;
  mean 0.5 / std 0.5) and, for 3 channels, channel order (RGB, BGR), each run through the same
  input wrapper the attacks use.

Score: clean accuracy when the data has labels; without labels, the diversity of the
predictions, H(predicted classes) / log K (a wrong contract usually collapses the predictions
onto one or two classes).

Verdict (qrdeploy's [DEFAULT] thresholds; the paper has no such check):
- MISMATCH (labelled data only) when an alternative beats the declared accuracy by at least
  `margin` (0.15), is itself at least `floor` (0.5), and the paired exact McNemar test on the
  same images gives p < `alpha` (0.001). `eval` and `attack` stop with one line naming the
  `--input-spec` that fits; `--no-input-guard` goes on anyway. `check` reports it as a failed
  gate (exit 3).
- SUSPECT when the declared contract scores near chance (the upper end of its 95% Wilson
  interval below 2 / K) and no alternative does clearly better: a warning, and the run goes on
  (a badly quantized model at chance is a result). Without labels the guard never stops a
  run: diversity shows a collapse but cannot tell which alternative is right (measured: a
  model expecting MNIST mean/std looks most diverse under range=0-255). It warns (SUSPECT)
  when the declared diversity is below 0.5 and an alternative reaches 0.8.
- OK otherwise.
`reproduce` never runs the guard: its models are qrdeploy's own and a 2-bit model at chance
accuracy is one of the paper's findings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import onnx

from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import Proportion, mcnemar_exact
from qrdeploy.data.datasets import Dataset
from qrdeploy.errors import (
    ConfigError,
    DataError,
    GraphError,
    InputContractError,
    QrdeployError,
    first_line,
)
from qrdeploy.graphio.graph import real_inputs
from qrdeploy.graphio.inputspec import (
    Channels,
    InputContract,
    InputSpec,
    Layout,
    Range,
    contracted,
    describe,
    dtype_fit,
    fitting_spec,
)
from qrdeploy.model.ortmodel import OrtModel

log = logging.getLogger(__name__)

#: Per-channel normalisations tried by the guard, by channel count (means and stds in [0, 1]
#: units; a 0-255 candidate scales them by 255). Sources: torchvision's MNIST and ImageNet
#: examples, the CIFAR-10 training-set statistics, and the common [-1, 1] scaling.
NORMS: dict[int, tuple[tuple[str, tuple[float, ...], tuple[float, ...] | None], ...]] = {
    1: (("mnist", (0.1307,), (0.3081,)), ("symmetric", (0.5,), (0.5,))),
    3: (("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("caffe", (0.485, 0.456, 0.406), None),  # mean subtraction only (Caffe-style)
        ("symmetric", (0.5,), (0.5,))),
}


class Verdict(StrEnum):
    OK = "ok"
    SUSPECT = "suspect"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class GuardConfig:
    n: int = 200
    margin: float = 0.15
    floor: float = 0.5
    alpha: float = 1e-3


@dataclass(frozen=True)
class Candidate:
    spec: InputSpec
    score: float  # accuracy, or prediction diversity without labels
    correct: np.ndarray | None = None  # (n,) bool, with labels


@dataclass(frozen=True)
class GuardResult:
    """The guard's finding. `best` is the alternative that fits better (MISMATCH), or the best
    one near chance (SUSPECT: better than the declared input, not enough for a mismatch)."""

    verdict: Verdict
    declared: InputSpec
    measure: str  # "accuracy" or "prediction diversity"
    n: int
    declared_score: float | None
    best: InputSpec | None = None
    best_score: float | None = None
    p_value: float | None = None
    reason: str = ""
    #: the model the guard ran on, as errors name it (None: the one model of the command)
    subject: str | None = None
    #: the option that sets the contract the guard judged
    option: str = "--input-spec"

    def message(self) -> str:
        """One line: what was measured and what to do."""
        if self.verdict is Verdict.MISMATCH and self.best is not None:
            flag = self.best.cli() or "range=0-1"
            measured = "" if self.declared_score is None else (
                f"the model's {self.measure} on {self.n} images is "
                f"{100 * self.declared_score:.1f}% with the declared input "
                f"({self.declared.cli() or 'range=0-1'}) and "
                f"{100 * (self.best_score or 0):.1f}% with {flag}; ")
            on = f" on {self.subject}" if self.subject else ""
            return (f"input contract mismatch{on}: {measured or self.reason + '; '}pass "
                    f"{self.option} {flag} (or --no-input-guard to go on as declared)")
        if self.verdict is Verdict.SUSPECT and self.best is not None and \
                self.measure == "accuracy":
            return (f"input guard: the model's accuracy on {self.n} images is "
                    f"{100 * (self.declared_score or 0):.1f}% with the declared input, near "
                    f"chance; the best common alternative, {self.best.cli()}, gives "
                    f"{100 * (self.best_score or 0):.1f}%, too little to call the declared "
                    "input wrong; check --input-spec")
        if self.verdict is Verdict.SUSPECT and self.best is not None:
            return (f"input guard: the model's predictions on {self.n} unlabelled images "
                    f"collapse onto few classes with the declared input (diversity "
                    f"{self.declared_score:.2f}) and spread with {self.best.cli()} "
                    f"({self.best_score:.2f}); without labels qrdeploy cannot tell which input "
                    "the model expects: check --input-spec")
        if self.verdict is Verdict.SUSPECT:
            return (f"input guard: the model's {self.measure} on {self.n} images is "
                    f"{100 * (self.declared_score or 0):.1f}% with the declared input, near "
                    "chance, and no common input contract does better; check --input-spec")
        return (f"input guard: the declared input fits ({self.measure} "
                f"{100 * (self.declared_score or 0):.1f}% on {self.n} images)")

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict.value, "declared": str(self.declared),
                "measure": self.measure, "n": self.n, "declared_score": self.declared_score,
                "best": None if self.best is None else str(self.best),
                "best_score": self.best_score, "p_value": self.p_value,
                "message": self.message()}


def _input(model: onnx.ModelProto, contract: InputContract) -> onnx.ValueInfoProto | None:
    """The image input the contract reads (its --input-name, else the first real input)."""
    inputs = real_inputs(model.graph)
    return next((i for i in inputs if i.name == contract.input_name), inputs[0]) if inputs \
        else None


def _input_dims(model: onnx.ModelProto, contract: InputContract) -> list[int | None]:
    chosen = _input(model, contract)
    if chosen is None:
        return []
    return [d.dim_value if d.HasField("dim_value") else None
            for d in chosen.type.tensor_type.shape.dim]


def layout_finding(model: onnx.ModelProto, contract: InputContract,
                   image: tuple[int, ...]) -> Layout | None:
    """The other layout when only it fits the model's static input shape to the images
    (C, H, W); None when the declared layout fits or the shape says nothing."""
    dims = _input_dims(model, contract)
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        return None
    body = tuple(int(d or 0) for d in dims[1:])
    as_declared = body if contract.spec.layout is Layout.NCHW else (body[2], body[0], body[1])
    other = Layout.NHWC if contract.spec.layout is Layout.NCHW else Layout.NCHW
    as_other = body if other is Layout.NCHW else (body[2], body[0], body[1])
    if as_declared != tuple(image) and as_other == tuple(image):
        return other
    return None


def candidates(declared: InputSpec, channels: int) -> list[InputSpec]:
    """The alternatives tried besides the declared spec (same layout and dtype)."""
    norms: list[tuple[tuple[float, ...] | None, tuple[float, ...] | None]] = [(None, None)]
    norms += [(m, s) for _, m, s in NORMS.get(channels, ())]
    orders = [Channels.RGB, Channels.BGR] if channels == 3 else [Channels.RGB]
    out = []
    for rng, (mean, std), order in itertools.product(Range, norms, orders):
        if declared.dtype.value == "uint8" and (rng is Range.UNIT or mean is not None):
            continue  # a uint8 input holds raw 0-255 pixels
        scale = 255.0 if rng is Range.BYTE else 1.0
        # the statistics are RGB-ordered; a spec's mean/std follow the model's channel order
        step = -1 if order is Channels.BGR else 1
        spec = dataclasses.replace(
            declared, range=rng, channels=order,
            mean=None if mean is None else tuple(scale * m for m in mean)[::step],
            std=None if std is None else tuple(scale * s for s in std)[::step])
        if spec != declared:
            out.append(spec)
    return out


def _diversity(pred: np.ndarray, k: int) -> float:
    counts = np.bincount(pred, minlength=k).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(k)) if k > 1 else 1.0


def _predict(model: onnx.ModelProto, contract: InputContract, spec: InputSpec, data: Dataset,
             session: SessionConfig, batch_size: int, name: str | None = None) -> np.ndarray:
    wrapped, bs = contracted(model, dataclasses.replace(contract, spec=spec), batch_size)
    return OrtModel(wrapped, session, batch_size=bs, gradients=False, name=name).predict(data.x)


def _score(model: onnx.ModelProto, contract: InputContract, spec: InputSpec, data: Dataset,
           session: SessionConfig, batch_size: int, strict: bool = False,
           name: str | None = None) -> Candidate | None:
    """The candidate's score; None when the model cannot take it at all (strict: raise, the
    error naming the model as `name`)."""
    try:
        pred = _predict(model, contract, spec, data, session, batch_size, name)
    except QrdeployError:
        if strict:
            raise
        return None
    if data.y is not None:
        correct = pred == data.y
        return Candidate(spec, float(correct.mean()), correct)
    return Candidate(spec, _diversity(pred, max(int(pred.max()) + 1, data.num_classes)))


def layout_guard(model: onnx.ModelProto, image: tuple[int, ...],
                 contract: InputContract | None = None, name: str | None = None,
                 option: str = "--input-spec") -> GuardResult | None:
    """The guard's static first step alone (nothing is run): a mismatch when the model's input
    shape fits the images (C, H, W) only in the other layout, advising a contract that fits
    the input's element type too (one run, not two); None otherwise. `attack` runs it on the
    models beside the victim that the full guard does not score (the transfer source, the
    reference)."""
    contract = contract or InputContract()
    other = layout_finding(model, contract, image)
    if other is None:
        return None
    x = _input(model, contract)
    fits = dtype_fit(dataclasses.replace(contract.spec, layout=other),
                     x.type.tensor_type.elem_type if x is not None else 0)
    return GuardResult(Verdict.MISMATCH, contract.spec, "accuracy", 0, None, fits, None,
                       reason=f"the model's input shape fits the images only as "
                              f"{other.value.upper()}", subject=name, option=option)


def input_guard(model: onnx.ModelProto, data: Dataset, contract: InputContract | None = None,
                session: SessionConfig | None = None, batch_size: int = 256,
                config: GuardConfig | None = None, name: str | None = None,
                option: str = "--input-spec") -> GuardResult:
    """Score the declared contract and the alternatives (module docstring); never raises for
    a mismatch: see `enforce`. `name`: how errors name the model (its path, `--reference
    PATH`)."""
    contract = contract or InputContract()
    session = session or SessionConfig()
    cfg = config or GuardConfig()
    probe = data.take(min(cfg.n, len(data)))
    measure = "accuracy" if probe.y is not None else "prediction diversity"
    n = len(probe)
    relaid = layout_guard(model, tuple(probe.x.shape[1:]), contract, name, option)
    if relaid is not None:
        return dataclasses.replace(relaid, measure=measure, n=n)
    # the declared contract failing outright raises its own error (shape, dtype, outputs)
    declared = _score(model, contract, contract.spec, probe, session, batch_size, strict=True,
                      name=name)
    assert declared is not None
    tried = [c for s in candidates(contract.spec, int(probe.x.shape[1]))
             if (c := _score(model, contract, s, probe, session, batch_size)) is not None]
    best = max(tried, key=lambda c: c.score, default=None)
    result = GuardResult(Verdict.OK, contract.spec, measure, n, declared.score, subject=name,
                         option=option)
    if declared.correct is None:  # label-free: warn at most
        if best is not None and declared.score < 0.5 and best.score >= 0.8:
            return dataclasses.replace(result, verdict=Verdict.SUSPECT, best=best.spec,
                                       best_score=best.score)
        return result
    if best is not None and best.correct is not None and \
            best.score >= declared.score + cfg.margin and best.score >= cfg.floor:
        gained = int((best.correct & ~declared.correct).sum())
        lost = int((~best.correct & declared.correct).sum())
        p = mcnemar_exact(gained, lost)
        if p < cfg.alpha:
            return dataclasses.replace(result, verdict=Verdict.MISMATCH, best=best.spec,
                                       best_score=best.score, p_value=p)
    k = max(data.num_classes, 2)
    near_chance = Proportion(int(declared.correct.sum()), n).interval[1] < 2.0 / k
    if not near_chance:
        return result
    better = best is not None and best.score > declared.score
    return dataclasses.replace(result, verdict=Verdict.SUSPECT,
                               best=best.spec if better and best else None,
                               best_score=best.score if better and best else None)


def enforce(result: GuardResult) -> None:
    """Raise InputContractError on a mismatch (eval, attack and replay stop there); log a
    suspicion as a warning (the run goes on)."""
    if result.verdict is Verdict.MISMATCH:
        raise InputContractError(result.message())
    if result.verdict is Verdict.SUSPECT:
        log.warning("%s", result.message())


def _role(option: str) -> str:
    """'--source-input-spec' -> 'source': the model an input-contract option is for."""
    role = option.removesuffix("-input-spec").removeprefix("--")
    return "model before hardening" if role == "unhardened" else role


def _fix(option: str, example: InputSpec | None = None) -> str:
    """The advice for a model beside the main one that takes another input: its own contract,
    with an example that fits its input (`example`; default float32 NCHW in [0, 1])."""
    example = example or InputSpec()
    return (f"give the {_role(option)} its own input contract with {option} (e.g. "
            f"{example.cli() or 'range=0-1'} for {describe(example)})")


def _option_text(text: str, option: str) -> str:
    """An error's advice about --input-spec, about the contract `option` sets instead."""
    return re.sub(r"(?<![\w-])--input-spec\b", option, text)


#: float inputs, one kind for the comparison (--upcast-fp16 serves a float16 one)
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
           onnx.TensorProto.DOUBLE)


def _input_of(model: onnx.ModelProto, contract: InputContract | None
              ) -> tuple[int, tuple[Any, ...]]:
    """(element type, dims after the batch; None where symbolic) of the input a contract reads."""
    inputs = real_inputs(model.graph)
    name = contract.input_name if contract is not None else None
    x = next((i for i in inputs if i.name == name), inputs[0] if inputs else None)
    if x is None:
        return 0, ()
    dims = tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in x.type.tensor_type.shape.dim[1:])
    elem = int(x.type.tensor_type.elem_type)
    return (onnx.TensorProto.FLOAT if elem in _FLOATS else elem), dims


def check_same_input(model: onnx.ModelProto, reference: onnx.ModelProto, ref_name: str,
                     contract: InputContract | None,
                     option: str = "--reference-input-spec") -> None:
    """ConfigError when the reference's input differs from the model's in element type or in
    layout (the same static dims in another order), so one contract cannot serve both (the fix:
    its own contract, given by `option`). Other shape differences are the data's to report.
    `reference` is any model given beside the main one (attack's --unhardened and --source
    too)."""
    (mt, md), (rt, rd) = _input_of(model, contract), _input_of(reference, contract)
    static = None not in md and None not in rd
    relaid = static and md != rd and sorted(md) == sorted(rd)
    if mt != rt or relaid:
        def text(t: int, d: tuple[Any, ...]) -> str:
            shape = "(N, " + ", ".join("?" if v is None else str(v) for v in d) + ")"
            return f"{onnx.TensorProto.DataType.Name(t)} {shape}"

        given = contract or InputContract()
        own, mine = _input(reference, given), _input(model, given)
        spec = contract.spec if contract is not None else InputSpec()
        fits = fitting_spec(mine, spec) if mine is not None else spec
        also = "" if fits == spec else (  # the model's own contract is wrong too: one run
            f"; and for the model itself pass --input-spec {fits.cli() or 'range=0-1'}")
        raise ConfigError(f"{ref_name}: its input is {text(rt, rd)} and the model's "
                          f"{text(mt, md)}, so one input contract cannot serve both; "
                          f"{_fix(option, fitting_spec(own) if own is not None else None)}"
                          f"{also}")


@contextlib.contextmanager
def reference_contract_hint(ref_name: str, reference_contract: InputContract | None,
                            option: str = "--reference-input-spec") -> Iterator[None]:
    """An error of applying the model's contract to the reference (the model's own contract
    reused) names the reference and the option that gives it its own contract (`option`:
    --reference-input-spec, or attack's --unhardened-input-spec / --source-input-spec)."""
    try:
        yield
    except (ConfigError, GraphError, InputContractError, DataError) as exc:
        text = first_line(exc, None)
        named = f"{'' if ref_name in text else ref_name + ': '}"
        if reference_contract is not None:  # its own contract failed: its option is the fix
            raise type(exc)(f"{named}{_option_text(text, option)}") from exc
        raise type(exc)(f"{named}{text}; when the {_role(option)} takes another input than "
                        f"the model, {_fix(option)}") from exc
