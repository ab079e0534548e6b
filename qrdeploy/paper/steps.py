"""The steps of `qrdeploy reproduce`, each a `Step` (qrdeploy.paper.cache) built from a
profile, and the one adapter to the attack runner (`run_suite`), so that a change in
qrdeploy.evaluation.runner / results touches this file only.

| step             | output                     | what                                          |
|------------------|----------------------------|-----------------------------------------------|
| train.R          | model.onnx, .safetensors   | --retrain: regime R's reference recipe        |
| harden.R.F       | model.onnx                 | form F of regime R (μ-law, 3-bit, both)       |
| attack.R.F       | results.json               | the paper's 13 columns, eps sweep and the     |
|                  |                            | adaptive suite (cascade), with the verdict;   |
|                  |                            | hardening rows: clean and the adaptive suite  |
| lipschitz.R      | q.json, mu-q.json          | ‖ΔW‖₂ per layer and amplification             |
| bits.R           | bits.json                  | clean accuracy at 1–8 bits                    |
| ablation.R       | ablation.json              | μ sweep, last layer, fp32 and (Q)             |
| sufficiency.R.F  | budget.json, doubled.json  | 2x iterations and restarts on a few samples   |
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

from qrdeploy.attacks import BIM, CWL2, MIM, PGD, GaussianNoise, UniformNoise
from qrdeploy.attacks.adaptive import AdaptiveAttack, adaptive_suite
from qrdeploy.core.fileio import atomic_write_text
from qrdeploy.core.progress import sublabel
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import Proportion
from qrdeploy.data.datasets import Dataset, data_label, load_dataset
from qrdeploy.errors import ConfigError
from qrdeploy.evaluation.build import build_results
from qrdeploy.evaluation.clean import evaluate_onnx
from qrdeploy.evaluation.metrics import adaptive_worst_case, robust_flags
from qrdeploy.evaluation.results import Results, flags, write_results
from qrdeploy.evaluation.runner import RunConfig, Subject, evaluate
from qrdeploy.evaluation.shard import Parallel, run_evaluation
from qrdeploy.evaluation.subjects import open_subject
from qrdeploy.evaluation.suites import (
    DEFAULT_SWEEP_KINDS,
    INTEGER_ENTRIES,
    PARAMS,
    Column,
    Family,
    Mode,
    Origin,
    Suite,
    SuiteName,
    build_suite,
    without_mode,
)
from qrdeploy.graphio.graph import load_model, save_model
from qrdeploy.hardening.integer import Calibration, IntegerActivations
from qrdeploy.hardening.passes import MuLawMap, WeightQuant, bits_sweep, harden, load_recipe
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.paper.cache import Step
from qrdeploy.paper.profiles import Budget, Profile
from qrdeploy.spectral.analysis import LipschitzConfig, lipschitz_report
from qrdeploy.train.recipes import for_profile

#: Cheaper adaptive attacks first: each later one only sees the samples that survived.
ADAPTIVE_ORDER = ("pgd-cw", "pgd-ce-t10", "pgd-ce-t100", "pgd-f64", "transfer", "apgd-ce",
                  "apgd-dlr", "pgd-njs", "apgd-t-dlr", "square", "square-twin")
#: The paper's iterative white-box columns, at the eps of the adaptive suite.
ITERATIVE = ("white/pgd", "white/bim", "white/mim")
AttackT = TypeVar("AttackT")


def _write_json(path: Path, doc: Any) -> None:
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------- the runner adapter


def run_suite(victim: Path, data: Dataset, suite: Suite, out: Path, *, source: Path | None,
              seed: int, batch: int, state: Path, transfer_dir: Path,
              adaptive_source: Path | None = None, parallel: Parallel | None = None) -> Results:
    """Run `suite` on the victim file with the attack runner (sharded by `parallel`, with the
    same results); write and return the results."""
    session = SessionConfig()
    vic = open_subject(victim, session, batch)
    src = open_subject(source, session, batch) if source is not None else None
    ada = open_subject(adaptive_source, session, batch) if adaptive_source is not None else None
    ev = run_evaluation(parallel, vic, data.x, data.y, suite, source=src,
                        config=RunConfig(seed, batch, state, transfer_dir), adaptive_source=ada)
    results = build_results(ev, data_name=data.name, split=data.split, session=session)
    write_results(out, results)
    return results


def ort_model(model: Any, batch: int) -> Any:
    """An onnxruntime Differentiable of a file or ModelProto."""
    proto = load_model(model) if isinstance(model, (str, Path)) else model
    return OrtModel(proto, SessionConfig(), batch_size=batch)


# ---------------------------------------------------------------------------- suites and budgets


def budget_attack(a: AttackT, b: Budget, steps: int | None) -> AttackT:
    """The attack at the profile's budget; cut step counts keep steps × step constant."""
    if isinstance(a, CWL2):
        return replace(a, binary_search_steps=b.cw_binary_steps, max_iterations=b.cw_iterations)
    out: Any = a
    if isinstance(out, (PGD, BIM, MIM)) and steps is not None and steps != out.steps:
        out = replace(out, steps=steps, step=out.step * out.steps / steps)
    if isinstance(out, PGD):
        out = replace(out, restarts=b.pgd_restarts)
    if isinstance(out, (GaussianNoise, UniformNoise)) and b.noise_draws is not None:
        out = replace(out, draws=b.noise_draws)
    return cast(AttackT, out)


def paper_suite(p: Profile, black: bool, budget: Budget | None = None) -> Suite:
    """The paper's 13 columns (less black-box when `black` is False) at the profile's budget,
    with the FGSM and PGD eps sweep."""
    b = budget or p.budget
    suite = build_suite(SuiteName.PAPER, p.family, None, b.sweep_eps)
    suite = suite if black else without_mode(suite, Mode.BLACK)
    cols = tuple(c if c.attack is None else replace(c, attack=budget_attack(c.attack, b,
                                                                               b.iter_steps))
                 for c in suite.columns)
    sweep = tuple(replace(s, attack=budget_attack(s.attack, b, b.sweep_steps or b.iter_steps))
                  for s in suite.sweep if s.kind in DEFAULT_SWEEP_KINDS)
    return replace(suite, columns=cols, sweep=sweep)


def sufficiency_suite(p: Profile, budget: Budget) -> Suite:
    """The budget-sensitive white-box columns (CW-L2, PGD, BIM, MIM), no sweep."""
    suite = paper_suite(p, False, replace(budget, sweep_eps=()))
    keep = ("clean", "white/cw-l2", *ITERATIVE)
    return replace(suite, columns=tuple(c for c in suite.columns if c.key in keep), sweep=())


def with_adaptive(suite: Suite, p: Profile, eps: float | None = None,
                  integer: bool = False) -> Suite:
    """The suite plus the adaptive columns (cheap first: the gradient entries cascade) at `eps`
    (default: the family's iterative eps), and PGD at eps = 1 for the masking checks; on an
    integer graph (`integer`) with the entries `qrdeploy attack` adds there."""
    attacks = adaptive_attacks(p, eps=eps, integer=integer)
    cols = tuple(Column(a.name, Mode.ADAPTIVE, a, a.eps, Origin.DEFAULT) for a in attacks)
    unbounded = build_suite(SuiteName.ADAPTIVE, p.family).unbounded  # the suite's PGD at eps 1
    assert unbounded is not None and unbounded.attack is not None
    unbounded = replace(unbounded, attack=budget_attack(unbounded.attack, p.budget,
                                                        p.budget.iter_steps))
    return replace(suite, columns=suite.columns + cols, unbounded=unbounded)


def adaptive_attacks(p: Profile, budget: Budget | None = None, eps: float | None = None,
                     integer: bool = False) -> tuple[AdaptiveAttack, ...]:
    """The adaptive suite at `eps` (default: the family's iterative eps) and the profile's
    budget, cheap first; `integer` (a graph that quantizes activations) adds INTEGER_ENTRIES
    whatever the budget's names, as `qrdeploy attack` does."""
    b = budget or p.budget
    eps = PARAMS[Family(p.family)].iter_eps if eps is None else eps
    suite = adaptive_suite(eps, steps=b.adaptive_steps, queries=b.adaptive_queries,
                           integer=integer)
    chosen = [a for a in suite if b.adaptive_names is None or a.name in b.adaptive_names
              or (integer and a.name in INTEGER_ENTRIES)]
    return tuple(sorted(chosen, key=lambda a: ADAPTIVE_ORDER.index(a.name)
                        if a.name in ADAPTIVE_ORDER else len(ADAPTIVE_ORDER)))


# ---------------------------------------------------------------------------- harden


def form_passes(p: Profile, form: str, mu: float | None = None, layers: str | None = None
                ) -> list[Any]:
    """The passes of a form: μ-law first, then quantization (docs/method.md section 2)."""
    m = p.mu if mu is None else mu
    out: list[Any] = []
    if form in ("mu", "mu-q") and m > 0:
        out.append(MuLawMap(m, True, layers or p.mu_layers))
    if form in ("q", "mu-q", "q-int8"):
        out.append(WeightQuant(p.bits))  # per tensor, max scale, narrow: 7 levels at 3 bits
    if form == "q2":  # the hardening rows' 2-bit form (ours): 3 levels
        out.append(WeightQuant(2))
    return out


def harden_step(name: str, p: Profile, src: Path, form: str, recipe: Path | None = None
                ) -> Step:
    """The form's passes on the plain model; "q-int8" is the (Q) form as a full-integer graph
    (int8 activations calibrated on the profile's training images, min-max); "searched" is the
    passes of `recipe` (a recipe `harden --search` wrote; float storage like every form)."""
    if form == "searched":
        if recipe is None:
            raise ConfigError("the searched form needs its recipe file")
        chosen = load_recipe(recipe)
        if chosen.activations is not None:
            raise ConfigError(f"recipe {recipe} quantizes activations; the searched form replays "
                              "weight passes only: search with float activations")
        passes: list[Any] = list(chosen.passes)
    else:
        passes = form_passes(p, form)
    act = IntegerActivations(p.calibrate, Calibration.MINMAX, data_label(p.data, "train")) \
        if form == "q-int8" else None

    def body(out: Path, work: Path) -> None:
        calib = None if act is None else load_dataset(p.data, "train", n=p.calibrate).x
        hardened, _ = harden(load_model(src), passes, "float", activations=act,
                             calibration=calib)
        save_model(hardened, out / "model.onnx")

    settings: dict[str, Any] = {"passes": [repr(x) for x in passes], "encoding": "float"}
    if act is not None:
        settings |= {"encoding": "qdq", "activations": repr(act)}
    inputs = {"model": src} if recipe is None else {"model": src, "recipe": recipe}
    return Step(name, settings, inputs, body)


# ---------------------------------------------------------------------------- train


def train_step(name: str, p: Profile, recipe: str, data_root: Path | None,
               standard: Path | None = None) -> Step:
    """Train one reference recipe (qrdeploy.train.recipes, with the profile's overrides) and export
    it; the training resumes from the step's work folder after a kill."""
    config = for_profile(recipe, p.retrain, p.retrain_feedback,
                         None if standard is None else str(standard), prefix=p.model_prefix)
    config = replace(config, data_root=None if data_root is None else str(data_root))

    def body(out: Path, work: Path) -> None:
        from qrdeploy.train import train
        from qrdeploy.train.export import export_onnx

        ckpt = work / "model.safetensors"
        if not ckpt.exists():
            train(config, ckpt, log=lambda s: None)
        export_onnx(ckpt, out / "model.onnx", data_root=config.data_root)
        shutil.copyfile(ckpt, out / "model.safetensors")

    inputs = {} if standard is None else {"standard": standard}
    return Step(name, {"recipe": config.to_json()}, inputs, body)


# ---------------------------------------------------------------------------- attack


def attack_step(name: str, p: Profile, victim: Path, source: Path | None, data: Dataset,
                data_fp: str, seed: int, transfer_dir: Path, plain: Path | None = None,
                parallel: Parallel | None = None, integer: bool = False) -> Step:
    """The paper's columns and, with `plain` (the model before hardening, which the adaptive
    transfer entry crafts on), the adaptive suite (with the integer-graph entries when the
    victim quantizes activations, `integer`): one run of the attack runner, so the results
    carry the adaptive worst case and the masking verdict exactly as `qrdeploy attack` writes
    them. `parallel` is not part of the step's key: a sharded run's results are the same."""
    suite = paper_suite(p, source is not None)
    if plain is not None and p.budget.adaptive:
        suite = with_adaptive(suite, p, integer=integer)

    def body(out: Path, work: Path) -> None:
        run_suite(victim, data, suite, out / "results.json", source=source, seed=seed,
                  batch=p.batch_size, state=work / "state.npz", transfer_dir=transfer_dir,
                  adaptive_source=plain, parallel=parallel)

    inputs = {"victim": victim, **({"source": source} if source is not None else {}),
              **({"plain": plain} if plain is not None else {})}
    settings = {"suite": repr(suite), "data": data_fp, "seed": seed, "batch": p.batch_size}
    return Step(name, settings, inputs, body)


def hardening_step(name: str, p: Profile, victim: Path, transfer: Path, data: Dataset,
                   data_fp: str, seed: int, transfer_dir: Path,
                   parallel: Parallel | None = None) -> Step:
    """Clean accuracy and the adaptive suite alone (at the profile's budget and
    `p.hardening_eps`, cascade and masking checks as in attack.R.F) on a hardening row: the
    measure its targets are stated in. `transfer` is the model the suite's transfer entry crafts
    on."""
    clean = paper_suite(p, False, replace(p.budget, sweep_eps=()))
    suite = replace(clean, columns=tuple(c for c in clean.columns if c.key == "clean"), sweep=())
    suite = with_adaptive(suite, p, p.hardening_eps)

    def body(out: Path, work: Path) -> None:
        run_suite(victim, data, suite, out / "results.json", source=None, seed=seed,
                  batch=p.batch_size, state=work / "state.npz", transfer_dir=transfer_dir,
                  adaptive_source=transfer, parallel=parallel)

    settings = {"suite": repr(suite), "data": data_fp, "seed": seed, "batch": p.batch_size}
    return Step(name, settings, {"victim": victim, "plain": transfer}, body)


# ---------------------------------------------------------------------------- lipschitz


def lipschitz_step(name: str, p: Profile, plain: Path, forms: dict[str, Path],
                   data: Dataset) -> Step:
    """‖ΔW‖₂ of each hardened form against the plain model (ΔW = Q(W') − W' for +mu)."""
    n = min(p.lipschitz_n, len(data))

    def body(out: Path, work: Path) -> None:
        cfg = LipschitzConfig(operator_norms=p.operator_norms, fft_bound=p.operator_norms)
        for form, path in forms.items():
            rep = lipschitz_report(plain, path, data.x[:n] if n else None, config=cfg,
                                   label=form)
            _write_json(out / f"{form}.json", rep.to_json())

    settings = {"n": n, "operator_norms": p.operator_norms}
    return Step(name, settings, {"plain": plain, **forms}, body)


# ---------------------------------------------------------------------------- bits sweep


def bits_step(name: str, p: Profile, plain: Path, data: Dataset, data_fp: str) -> Step:
    n = min(p.bits_n or len(data), len(data))

    def body(out: Path, work: Path) -> None:
        sub = data.take(n)

        def accuracy(model: Any) -> float:
            acc = evaluate_onnx(model, sub).accuracy
            return math.nan if acc is None else acc.value

        points = []
        for bits, value in bits_sweep(load_model(plain), p.bit_widths, evaluate=accuracy):
            points.append({"bits": bits, **Proportion(round(value * n), n).to_json()})
        _write_json(out / "bits.json", {"n": n, "points": points,
                                        "scheme": "per tensor, max scale, narrow"})

    return Step(name, {"bits": list(p.bit_widths), "n": n, "data": data_fp}, {"plain": plain},
                body)


# ---------------------------------------------------------------------------- μ ablation


def ablation_suite(p: Profile) -> Suite:
    """The μ ablation's two attacks: the paper's PGD (CE) and the adaptive PGD on the CW margin,
    at the family's iterative eps."""
    pgd = next(c for c in paper_suite(p, False).columns if c.key == "white/pgd")
    cw = next(a for a in adaptive_suite(PARAMS[Family(p.family)].iter_eps,
                                        steps=p.budget.adaptive_steps) if a.name == "pgd-cw")
    cols = (pgd, Column(cw.name, Mode.ADAPTIVE, cw, cw.eps, Origin.DEFAULT))
    return Suite("ablation", Family(p.family), cols, (), ())


def _ablation_point(p: Profile, proto: Any, sub: Dataset, seed: int) -> dict[str, str]:
    """Per-sample robust flags of one μ point through the attack runner: clean; paper: the
    paper's PGD (CE); adaptive: the per-sample worst case of it and PGD on the CW margin."""
    model = ort_model(proto, p.batch_size)
    ev = evaluate(Subject("ablation", "0" * 64, model), sub.x, sub.y, ablation_suite(p),
                  config=RunConfig(seed, p.batch_size))
    return {"clean": flags(ev.clean_correct), "paper": flags(robust_flags(ev, "white/pgd")),
            "adaptive": flags(adaptive_worst_case(ev)[1])}


def ablation_step(name: str, p: Profile, plain: Path, data: Dataset, data_fp: str,
                  seed: int) -> Step:
    n = min(p.ablation_n, len(data))

    def body(out: Path, work: Path) -> None:
        sub, base = data.take(n), load_model(plain)
        partial = work / "partial.json"
        points = json.loads(partial.read_text("utf-8")) if partial.exists() else []
        todo = [(mu, q) for mu in p.ablation_mu for q in (False, True)]
        for mu, q in todo[len(points):]:
            passes = form_passes(p, "mu-q" if q else "mu", mu, "last:1")
            proto = harden(base, passes, "float")[0] if passes else base
            with sublabel(f"μ {mu:g}{', quantized' if q else ''}"):
                point = _ablation_point(p, proto, sub, seed)
            points.append({"mu": mu, "quant": q, **point})
            _write_json(partial, points)
        _write_json(out / "ablation.json", {"n": n, "layers": "last:1", "points": points})

    settings = {"mu": list(p.ablation_mu), "n": n, "data": data_fp, "seed": seed,
                "bits": p.bits, "budget": repr(p.budget)}
    return Step(name, settings, {"plain": plain}, body)


# ---------------------------------------------------------------------------- sufficiency


def sufficiency_step(name: str, p: Profile, victim: Path, data: Dataset, data_fp: str,
                     seed: int, parallel: Parallel | None = None) -> Step:
    """The budget-sensitive columns at the profile's budget and at twice it, on a few samples."""
    n = min(p.sufficiency_n, len(data))
    suites = {"budget": sufficiency_suite(p, p.budget),
              "doubled": sufficiency_suite(p, p.budget.doubled())}

    def body(out: Path, work: Path) -> None:
        sub = data.take(n)
        for label, suite in suites.items():
            with sublabel(f"{label} budget" if label == "doubled" else "the profile's budget"):
                run_suite(victim, sub, suite, out / f"{label}.json", source=None, seed=seed,
                          batch=p.batch_size, state=work / f"{label}.npz",
                          transfer_dir=work / "transfer", parallel=parallel)

    settings = {k: repr(s) for k, s in suites.items()} | {"n": n, "data": data_fp, "seed": seed}
    return Step(name, settings, {"victim": victim}, body)
