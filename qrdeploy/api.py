"""The public API: what the CLI does, one call each. docs/api.md shows an example of every
function (tests/unit/test_api_doc.py runs them).

>>> import qrdeploy
>>> hard = qrdeploy.harden("models/mnist-standard.onnx", "hard.onnx", bits=3)
>>> qrdeploy.evaluate("hard.onnx", "mnist-5k").accuracy
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from qrdeploy.bitsearch.render import SearchFiles, write_search
from qrdeploy.bitsearch.search import SearchConfig, SearchResult, search_file, search_folder
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.data.datasets import Dataset, data_label, load_dataset
from qrdeploy.errors import ConfigError, UsageError, first_line
from qrdeploy.evaluation.campaign import AttackOptions, attack_files
from qrdeploy.evaluation.clean import EvalResult, Tolerance, evaluate_files
from qrdeploy.evaluation.replay import ReplayResult
from qrdeploy.evaluation.replay import replay as _replay
from qrdeploy.evaluation.results import Results
from qrdeploy.evaluation.runner import Labels, RunConfig
from qrdeploy.evaluation.shard import Parallel
from qrdeploy.evaluation.suites import CWBudget, Family
from qrdeploy.gate.policy import Policy
from qrdeploy.gate.run import CheckResult
from qrdeploy.gate.run import check as _check
from qrdeploy.graphio.inputspec import InputContract
from qrdeploy.hardening.encodings import Encoding
from qrdeploy.hardening.integer import (
    Calibration,
    IntegerActivations,
    calibration_images,
    same_images,
)
from qrdeploy.hardening.passes import (
    GraphPass,
    HardenResult,
    MuLawMap,
    Recipe,
    WeightQuant,
    harden_file,
    load_recipe,
)
from qrdeploy.hardening.quant import Granularity
from qrdeploy.model.inspection import inspect_model
from qrdeploy.paper.pipeline import ReproduceResult
from qrdeploy.paper.pipeline import reproduce as _reproduce
from qrdeploy.report.render import ReportFiles
from qrdeploy.report.render import write_report as _write_report
from qrdeploy.spectral.analysis import LipschitzConfig, LipschitzReport, lipschitz_report

__all__ = ["harden", "search_recipe", "inspect", "evaluate", "attack", "check", "replay",
           "write_report", "lipschitz", "reproduce", "load_dataset"]

PathLike = str | Path


def harden(model: PathLike, out: PathLike, *, bits: int | None = None,
           mulaw: float | None = None, mulaw_layers: str | None = None,
           granularity: str | None = None, encoding: str | None = None,
           recipe: PathLike | Recipe | None = None, in_place: bool = False,
           activations: str | None = None, calibrate: int | None = None,
           calibration_data: str | Dataset | None = None,
           calibration_method: str | None = None, input_spec: str | None = None
           ) -> HardenResult:
    """Harden an ONNX classifier's weights and write the hardened model to `out`.

    The paper's way: `mulaw=255` (μ-law on the `mulaw_layers`, default 'last:1'), then `bits=3`
    post-training quantization (per 'tensor' [default] or 'channel'), stored as `encoding`
    'float' [default], 'qdq', 'int4' or 'nbits' (float activations, for analysis). Or a `recipe`
    (a TOML file or a Recipe, e.g. `recipes_of(model)[0]`) with any sequence of passes; it sets
    the passes and the encoding itself. `activations='int8'` writes the full-integer model
    instead, calibrated on the first `calibrate` (500) images of `calibration_data` (mnist-5k;
    a name as `load_dataset` takes it, train split, or a Dataset) with `calibration_method`
    (minmax [default], percentile, entropy), the pixels converted to the model's `input_spec`
    first (as `--input-spec`, e.g. "dtype=uint8,range=0-255"; None: float32 NCHW in [0, 1]).
    A recipe that records int8 activations is calibrated as it records unless these say
    otherwise (`activations='float'` drops them). An option that would be ignored (a pass
    option beside a recipe, `granularity` without `bits`, calibration options with float
    activations) raises UsageError, as the command line refuses it. Returns the per-tensor
    records, the file sizes and notes."""
    if activations not in (None, "float", "int8"):
        raise ConfigError(f"activations must be 'float' or 'int8', got {activations!r}")
    if recipe is not None:
        if bits is not None or mulaw is not None:
            raise UsageError("give either recipe or bits / mulaw, not both")
        _refuse_unused("a recipe sets the passes and the encoding itself",
                       mulaw_layers=mulaw_layers, granularity=granularity, encoding=encoding)
        rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    else:
        if mulaw is None:
            _refuse_unused("mulaw_layers applies to mulaw only", mulaw_layers=mulaw_layers)
        if bits is None:
            _refuse_unused("granularity applies to bits only", granularity=granularity)
        rec = Recipe(_passes(bits, mulaw, mulaw_layers or "last:1", granularity or "tensor"),
                     _choice(Encoding, encoding or "float", "encoding"))
    recorded = rec.activations if activations is None else None
    if activations != "int8" and recorded is None:
        _refuse_unused("the calibration options apply to activations='int8' only",
                       calibrate=calibrate, calibration_data=calibration_data,
                       calibration_method=calibration_method, input_spec=input_spec)
        return harden_file(model, out, Recipe(rec.passes, rec.encoding), in_place=in_place)
    base = recorded or IntegerActivations()
    if calibration_data is None:
        name = base.data
    elif isinstance(calibration_data, Dataset):  # its own split, as the provenance records
        name = data_label(calibration_data.name, calibration_data.split)
    else:
        name = data_label(calibration_data, "train")
    acts = same_images(IntegerActivations(
        base.samples if calibrate is None else calibrate,
        base.method if calibration_method is None else _choice(Calibration, calibration_method,
                                                               "calibration method"),
        name, base.input_spec if input_spec is None else input_spec), recorded)
    given = calibration_data
    # loaded once the model and the recipe are found hardenable
    images = (lambda: given.x[:acts.samples]) if isinstance(given, Dataset) \
        else functools.partial(calibration_images, acts)
    return harden_file(model, out, Recipe(rec.passes, rec.encoding, acts), in_place=in_place,
                       calibration=images)


def _refuse_unused(why: str, **given: object) -> None:
    """UsageError naming the arguments among `given` that are set (not None)."""
    names = [name for name, value in given.items() if value is not None]
    if names:
        raise UsageError(f"{why}; drop {', '.join(f'{n}=' for n in names)}")


def search_recipe(model: PathLike, out: PathLike, config: SearchConfig | None = None, *,
                  calibration_data: str = "mnist-5k", calibrate: int = 500,
                  report_dir: PathLike | None = None, plot: bool = True
                  ) -> tuple[SearchResult, SearchFiles]:
    """`qrdeploy harden --search`: choose per-layer bits under the budgets of `config`
    (qrdeploy.bitsearch.search.SearchConfig: avg_bits / max_bytes, max_drop, candidate bits,
    confirmation), write the chosen graph to `out` and recipe.toml, search.json, report.md and
    pareto.png into `report_dir` (default: `out` without .onnx + '.search')."""
    cfg = config or SearchConfig()
    folder = Path(report_dir) if report_dir is not None else search_folder(out)
    result = search_file(model, out, cfg, calibration_data=calibration_data,
                         calibrate=calibrate, state_dir=folder)
    return result, write_search(result, folder, str(out), plot=plot)


E = TypeVar("E", bound=StrEnum)


def _choice(enum: type[E], value: str, what: str) -> E:
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"{what} must be one of {', '.join(e.value for e in enum)}, got "
                          f"{value!r}") from None


def _passes(bits: int | None, mulaw: float | None, mulaw_layers: str,
            granularity: str = "tensor") -> tuple[GraphPass, ...]:
    """The paper's hardening: μ-law on `mulaw_layers`, then `bits`-bit weights."""
    if bits is None and mulaw is None:
        raise ConfigError("nothing to do: give bits (e.g. bits=3) and/or mulaw (e.g. mulaw=255), "
                          "or a recipe")
    passes: list[GraphPass] = []
    if mulaw is not None:
        passes.append(MuLawMap(mu=mulaw, layers=mulaw_layers))
    if bits is not None:
        passes.append(WeightQuant(bits=bits,
                                  granularity=_choice(Granularity, granularity, "granularity")))
    return tuple(passes)


def evaluate(model: PathLike, data: str | Dataset = "mnist-5k", *, split: str = "test",
             n: int | None = None, reference: PathLike | None = None,
             provider: str = "auto", threads: int = 0, input_spec: str | None = None,
             input_guard: bool = True, atol: float = 1e-5, rtol: float = 1e-5,
             batch_size: int = 500, reference_input_spec: str | None = None) -> EvalResult:
    """Clean accuracy (95 % Wilson interval) of an ONNX classifier on a data set (a name as
    `load_dataset` takes it, or a Dataset); with `reference`, also top-1 agreement, the logit
    differences (pass rate under atol/rtol) and the paired accuracy drop. The input guard
    first checks that `input_spec` (default float32 NCHW in [0, 1]) fits the model (the
    reference, when given); `reference_input_spec`: the reference's own, when it differs."""
    if reference_input_spec is not None and reference is None:
        raise UsageError("reference_input_spec needs a reference")
    ds = data if isinstance(data, Dataset) else load_dataset(data, split, n=n)
    contract = None if input_spec is None else InputContract.from_options(input_spec)
    ref_contract = None if reference_input_spec is None else \
        _own_contract("reference_input_spec", reference_input_spec)
    return evaluate_files(model, ds, reference=reference, contract=contract,
                          config=SessionConfig(provider, threads), batch_size=batch_size,
                          tolerance=Tolerance(atol, rtol), guard=input_guard,
                          reference_contract=ref_contract)


def _own_contract(name: str, spec: str) -> InputContract:
    """The contract of a model beside the main one; a malformed spec names its argument."""
    try:
        return InputContract.from_options(spec)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {first_line(exc, None)}") from None


def attack(model: PathLike, data: str | Dataset = "mnist-5k", *, out: PathLike,
           suite: str = "paper", attacks: str | None = None,
           eps: Sequence[float] | None = (), split: str = "test", n: int | None = None,
           source: PathLike | None = None, unhardened: PathLike | None = None,
           reference: PathLike | None = None, labels: str = "true",
           family: str | None = None, cw_budget: str = "quick", seed: int = 0,
           batch_size: int = 100, provider: str = "auto", threads: int = 0,
           input_spec: str | None = None, input_guard: bool = True,
           baseline: bool = True, save_adversarials: PathLike | None = None,
           workers: int = 1, ray: str | None = None, shards: int | None = None,
           unhardened_input_spec: str | None = None, source_input_spec: str | None = None,
           reference_input_spec: str | None = None) -> Results:
    """Run an attack suite ('paper', 'adaptive', 'paper,adaptive', ...) on an ONNX classifier
    through onnxruntime, write the results JSON to `out` and return the typed results. Same
    options as `qrdeploy attack` (docs/attacks.md): `attacks` takes per-attack settings
    ('pgd:eps=8/255,steps=100'); `eps` is an eps sweep, () (default) none, None the paper
    suite's sweep. With `unhardened`, that model runs the same suite too, less its L2 and
    transfer columns (unless `baseline=False`): the results' `baseline`, the report's
    before/after. `workers`, `ray`
    ('local', 'auto' or an address) and `shards` split the samples (docs/evaluation.md); the
    results equal the one-process run's. `unhardened_input_spec`, `source_input_spec` and
    `reference_input_spec`: the own input contract of that model when it differs from the
    victim's `input_spec` (a float original beside its uint8 NHWC conversion)."""
    given = {"unhardened": (unhardened_input_spec, unhardened),
             "source": (source_input_spec, source), "reference": (reference_input_spec, reference)}
    own = {}
    for role, (spec, path) in given.items():
        if spec is not None:
            if path is None:
                raise UsageError(f"{role}_input_spec needs {role}")
            own[role] = _own_contract(f"{role}_input_spec", spec)
    ds = data if isinstance(data, Dataset) else load_dataset(data, split, n=n)
    opts = AttackOptions(suite, attacks, None if eps is None else tuple(eps),
                         Labels.TRUE if labels == "true" else Labels.REFERENCE,
                         Family(family) if family else None,
                         RunConfig(seed=seed, batch_size=batch_size), CWBudget(cw_budget),
                         baseline, None if save_adversarials is None else Path(save_adversarials),
                         Parallel(workers, ray, shards))
    contract = None if input_spec is None else InputContract.from_options(input_spec)
    return attack_files(model, ds, opts, out=out, source=source, reference=reference,
                        session=SessionConfig(provider, threads), unhardened=unhardened,
                        contract=contract, input_guard=input_guard, own_contracts=own)


def check(model: PathLike, reference: PathLike, data: str | Dataset,
          policy: PathLike | Policy, *, seed: int = 0, batch_size: int = 256,
          provider: str = "auto", threads: int = 0,
          input_spec: str | None = None, input_guard: bool = True, workers: int = 1,
          ray: str | None = None, shards: int | None = None,
          reference_input_spec: str | None = None) -> CheckResult:
    """The pipeline gate: measure every threshold of `policy` (a TOML file or a Policy) on
    `model` against `reference`; read `.passed` and `.exit_code` (0 pass, 3 fail). `workers`,
    `ray` ('local', 'auto' or an address) and `shards` split the attack runs, as `attack`'s;
    `reference_input_spec`: the reference's own input contract when it differs from the
    model's."""
    contract = None if input_spec is None else InputContract.from_options(input_spec)
    ref_contract = None if reference_input_spec is None else \
        _own_contract("reference_input_spec", reference_input_spec)
    return _check(model, reference, data, policy, session=SessionConfig(provider, threads),
                  seed=seed, batch_size=batch_size, contract=contract, input_guard=input_guard,
                  parallel=Parallel(workers, ray, shards), reference_contract=ref_contract)


def inspect(model: PathLike) -> dict[str, Any]:
    """`qrdeploy inspect --json` as a dict: the weight layers (op, shape, dtype, distinct levels,
    bits, encoding, as the file holds them), inputs and outputs, harden's provenance, the
    kernels onnxruntime runs (`kernels["verdict"]`: integer, float or mixed), `file_bytes`, and
    whether white-box gradients are available (`differentiable`)."""
    return inspect_model(model)


def write_report(results: PathLike | Sequence[PathLike], out: PathLike, *, plots: bool = True,
                 fmt: str = "markdown") -> ReportFiles:
    """`qrdeploy report`: the report of one or more results files (from `attack`) at `out`, with
    its CSV table and eps-curve plots (`plots=False`: none); `fmt="github"`: one markdown file
    for a pull-request comment. Returns the paths written."""
    paths = [results] if isinstance(results, str | Path) else list(results)
    return _write_report(paths, out, plots=plots, fmt=fmt)


def replay(model: PathLike, adversarials: PathLike, *, input_spec: str | None = None,
           provider: str = "auto", threads: int = 0, batch_size: int = 256) -> ReplayResult:
    """Score `model` on an adversarial set saved by `attack(save_adversarials=...)`: robust
    accuracy per column on this model, beside what the set recorded on the analysis graph."""
    contract = None if input_spec is None else InputContract.from_options(input_spec)
    return _replay(model, adversarials, contract, SessionConfig(provider, threads), batch_size)


def lipschitz(reference: PathLike, hardened: PathLike | None = None, *,
              data: str | Dataset | None = None, n: int = 100, bits: int | None = None,
              mulaw: float | None = None, mulaw_layers: str = "last:1",
              config: LipschitzConfig | None = None) -> LipschitzReport:
    """Per-layer ‖W‖₂, ‖ΔW‖₂ (the quantization error, from the graphs) and, with `data`, the
    measured amplification of a hardened model against its reference. Instead of a hardened
    file, `bits` / `mulaw` harden in memory the way `harden` would."""
    recipe = None if hardened is not None else Recipe(_passes(bits, mulaw, mulaw_layers))
    x = None
    if data is not None:
        x = (data if isinstance(data, Dataset) else load_dataset(data, "test", n=n)).x[:n]
    return lipschitz_report(reference, hardened, x, recipe=recipe, config=config)


def reproduce(profile: str = "smoke", out: PathLike = "runs/reproduce", *,
              models_dir: PathLike = "models", models: Mapping[str, PathLike] | None = None,
              retrain: bool = False, seed: int = 0, plots: bool = True, workers: int = 1,
              ray: str | None = None, shards: int | None = None) -> ReproduceResult:
    """The paper's experiment as a cached, resumable pipeline (profiles 'smoke', 'quick',
    'quick-cifar', 'paper-mnist', 'paper-cifar'; docs/reproduce.md): every table, the claims, the
    report. `workers` / `ray` / `shards` shard the attack steps (the same results)."""
    return _reproduce(profile, out, models_dir=models_dir, models=models, seed=seed,
                      retrain=retrain, plots=plots, parallel=Parallel(workers, ray, shards))
