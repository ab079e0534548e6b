"""`qrdeploy reproduce`: the paper's experiment as a cached, resumable pipeline.

>>> result = reproduce("quick", "runs/quick")       # report in runs/quick/report.md
>>> [e.status.value for e in result.events]         # ran / reused / forced / rerun-corrupt

For every regime whose model file exists (Orig. = <prefix>-standard, Adv. = -adversarial,
F.L. = -feedback in the models folder, or given with `models={"fl": path}`) the pipeline builds
the four forms (plain, (Q), +mu, +mu (Q)), runs the paper's columns on each (white-box, black-box
transferred from <prefix>-standard-seed1, noise, eps sweep), the adaptive suite on the samples
that survive the paper's iterative attacks, the ‖ΔW‖₂ analysis, the bits sweep and the μ
ablation; the second standard model (plain and (Q), no black-box columns) is the seed-variance
floor. Profiles with `hardening_regimes` add qrdeploy's own rows (not the paper's): the stronger
adversarial model (<prefix>-adversarial-strong, plain and post-training (Q)) and its 3-bit QAT
fine-tuning (<prefix>-adversarial-strong-qat3, hardened at 3 and 2 bits), each scored by clean
accuracy and the adaptive suite alone. A missing model or data folder leaves its cells
"not run (...)"; nothing crashes.
With `retrain=True` the four models are first trained from qrdeploy.train.recipes (the profile's
overrides applied) as cached `train.*` steps, and those replace the committed files.

Steps and their cache: qrdeploy.paper.cache; step bodies: qrdeploy.paper.steps;
profiles: qrdeploy.paper.profiles; the claims: qrdeploy.paper.claims; the report:
qrdeploy.paper.report.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from qrdeploy.core.plotting import require
from qrdeploy.data.datasets import Dataset, load_dataset
from qrdeploy.errors import ConfigError, DataError, UsageError
from qrdeploy.evaluation.results import load_results
from qrdeploy.evaluation.runner import fingerprint
from qrdeploy.evaluation.shard import Parallel
from qrdeploy.paper import steps
from qrdeploy.paper.cache import Step, StepCache, StepEvent, check_force
from qrdeploy.paper.collected import Collected
from qrdeploy.paper.plots import NO_PLOTS
from qrdeploy.paper.profiles import Profile, get_profile
from qrdeploy.paper.report import write_report
from qrdeploy.train.recipes import ORDER

REGIME_FILES = {"orig": "standard", "adv": "adversarial", "fl": "feedback",
                "orig-seed1": "standard-seed1"}
FORMS = ("plain", "q", "mu", "mu-q")
FLOOR_FORMS = ("plain", "q")
INT8_FORMS = ("q-int8",)  # the (Q) weights with int8 activations: the integer graph that ships
#: qrdeploy's hardening rows (Profile.hardening_regimes): model file stem and forms
HARDENING_FILES = {"adv-strong": "adversarial-strong", "adv-qat": "adversarial-strong-qat3"}
HARDENING_FORMS = {"adv-strong": ("plain", "q", "searched"), "adv-qat": ("q", "q2")}
#: the "searched" form replays the recipe that `qrdeploy harden --search` chose for the model,
#: a TOML file next to it (<model stem>.searched.toml): the search itself takes far longer than
#: a profile's budget (docs/search.md), so reproduce scores its result
SEARCHED_SUFFIX = ".searched.toml"
TRANSFER = ".transfer"


@dataclass(frozen=True)
class ReproduceResult:
    out: Path
    report: Path
    files: tuple[Path, ...]
    events: tuple[StepEvent, ...]
    wall_seconds: float


def resolve_models(p: Profile, models_dir: Path, overrides: Mapping[str, Path]
                   ) -> tuple[dict[str, Path | None], dict[str, str]]:
    """Model file per regime (None when absent) and the reason for each absent one: the paper's
    regimes, then the profile's hardening regimes."""
    unknown = sorted(set(p.hardening_regimes) - set(HARDENING_FILES))
    if unknown:
        raise ConfigError(f"profile {p.name} names unknown hardening regime(s) "
                          f"{', '.join(unknown)}; use {', '.join(HARDENING_FILES)}")
    files = REGIME_FILES | {r: HARDENING_FILES[r] for r in p.hardening_regimes}
    bad = set(overrides) - set(files)
    if bad:
        raise UsageError(f"--model names unknown regime(s) {', '.join(sorted(bad))}; use "
                         f"{', '.join(files)} (e.g. --model fl=models/fl.onnx)")
    for regime, path in sorted(overrides.items()):
        if not Path(path).is_file():
            raise ConfigError(f"--model {regime}={path}: no such file; give the path of an "
                              ".onnx model (or leave the regime to --models)")
    found: dict[str, Path | None] = {}
    missing = {}
    for regime, stem in files.items():
        path = Path(overrides.get(regime, models_dir / f"{p.model_prefix}-{stem}.onnx"))
        found[regime] = path if path.is_file() else None
        if found[regime] is None:
            missing[regime] = f"not run (model missing: {path})"
    return found, missing


def _load_data(p: Profile, data_root: Path | None) -> tuple[Dataset | None, str | None]:
    try:
        return load_dataset(p.data, p.split, p.n_test, data_root), None
    except DataError as exc:
        folder = {"mnist": "MNIST", "cifar10": "CIFAR-10"}.get(p.data, p.data)
        return None, f"not run (no {folder} folder: {exc})"


def _one(cache: StepCache, step: Step, name: str) -> Path:
    return cache.run(step) / name


def searched_recipe(model: Path) -> Path:
    """Where the "searched" form's recipe for `model` lies: beside it, <stem>.searched.toml."""
    return model.with_name(model.stem + SEARCHED_SUFFIX)


def _row_steps(cache: StepCache, c: Collected, regime: str, data: Dataset, fp: str,
               tdir: Path, parallel: Parallel | None) -> dict[str, Path]:
    """Harden and attack steps of one regime (the attack step runs the adaptive suite too, except
    on the seed-variance floor); the ONNX path of every form."""
    p, src = c.profile, c.models[regime]
    assert src is not None
    floor = regime == "orig-seed1"
    source = None if floor else c.models["orig-seed1"]
    paths = {"plain": src}
    forms = FLOOR_FORMS if floor else FORMS + (INT8_FORMS if regime in p.int8_regimes else ())
    for form in forms:
        if form != "plain":
            paths[form] = _one(cache, steps.harden_step(f"harden.{regime}.{form}", p, src, form),
                               "model.onnx")
        row = f"{regime}:{form}"
        res = _one(cache, steps.attack_step(f"attack.{regime}.{form}", p, paths[form], source,
                                            data, fp, c.seed, tdir, None if floor else src,
                                            parallel, integer=form in INT8_FORMS),
                   "results.json")
        c.results[row] = load_results(res)
    return paths


def _hardening_steps(cache: StepCache, c: Collected, regime: str, data: Dataset, fp: str,
                     tdir: Path, parallel: Parallel | None) -> None:
    """The forms of one hardening regime, each scored by clean accuracy and the adaptive suite;
    the suite's transfer entry crafts on Orig. seed 1 (as the reference cards' entries), or on
    the regime's own model when that is missing."""
    p, src = c.profile, c.models[regime]
    assert src is not None
    transfer = c.models["orig-seed1"] or src
    for form in HARDENING_FORMS[regime]:
        recipe = searched_recipe(src) if form == "searched" else None
        if recipe is not None and not recipe.is_file():
            c.missing[f"{regime}:{form}"] = (f"not run (no searched recipe: {recipe}; write one "
                                              "with qrdeploy harden MODEL --search)")
            continue
        path = src if form == "plain" else _one(
            cache, steps.harden_step(f"harden.{regime}.{form}", p, src, form, recipe),
            "model.onnx")
        res = _one(cache, steps.hardening_step(f"attack.{regime}.{form}", p, path, transfer, data,
                                               fp, c.seed, tdir, parallel), "results.json")
        c.results[f"{regime}:{form}"] = load_results(res)


def _regime_steps(cache: StepCache, c: Collected, regime: str, paths: dict[str, Path],
                  data: Dataset, fp: str) -> None:
    """‖ΔW‖₂, bits sweep and μ ablation of one regime."""
    p = c.profile
    forms: dict[str, Path] = {f: paths[f] for f in ("q", "mu-q") if f in paths}
    lip = cache.run(steps.lipschitz_step(f"lipschitz.{regime}", p, paths["plain"], forms, data))
    c.lipschitz[regime] = {f: json.loads((lip / f"{f}.json").read_text("utf-8")) for f in forms}
    if regime == "orig-seed1":
        return
    bits = _one(cache, steps.bits_step(f"bits.{regime}", p, paths["plain"], data, fp),
                "bits.json")
    c.bits[regime] = json.loads(bits.read_text("utf-8"))
    abl = _one(cache, steps.ablation_step(f"ablation.{regime}", p, paths["plain"], data, fp,
                                          c.seed), "ablation.json")
    c.ablation[regime] = json.loads(abl.read_text("utf-8"))


def _sufficiency(cache: StepCache, c: Collected, all_paths: dict[str, dict[str, Path]],
                 data: Dataset, fp: str, parallel: Parallel | None) -> None:
    p = c.profile
    for row in p.sufficiency_rows if p.sufficiency_n > 0 else ():
        regime, form = row.split(":")
        if form not in all_paths.get(regime, {}):
            continue
        folder = cache.run(steps.sufficiency_step(f"sufficiency.{regime}.{form}", p,
                                                  all_paths[regime][form], data, fp, c.seed,
                                                  parallel))
        c.sufficiency[row] = {k: load_results(folder / f"{k}.json")
                              for k in ("budget", "doubled")}


def retrain_models(cache: StepCache, p: Profile, data_root: Path | None) -> dict[str, Path | None]:
    """Train the four reference recipes (F.L. from the fresh standard checkpoint)."""
    folders: dict[str, Path] = {}
    for recipe in ORDER:
        standard = folders["standard"] / "model.safetensors" if recipe == "feedback" else None
        folders[recipe] = cache.run(steps.train_step(f"train.{_regime(recipe)}", p, recipe,
                                                     data_root, standard))
    return {_regime(k): f / "model.onnx" for k, f in folders.items()}


def _regime(recipe: str) -> str:
    return next(r for r, stem in REGIME_FILES.items() if stem == recipe)


def run_pipeline(c: Collected, out: Path, data_root: Path | None, force: Sequence[str],
                 retrain: bool = False, parallel: Parallel | None = None) -> None:
    """Every step of the profile, in order; fills `c`. `parallel` shards the attack steps."""
    cache = StepCache(out, force)
    if retrain:  # the paper's four are trained; hardening models stay the files on disk
        c.models = {**c.models, **retrain_models(cache, c.profile, data_root)}
        c.missing = {r: why for r, why in c.missing.items() if r in HARDENING_FILES}
        c.retrained = True
    data, c.data_note = _load_data(c.profile, data_root)
    if data is not None:
        assert data.y is not None
        c.n, fp = len(data), fingerprint(data.x, data.y)
        tdir = cache.steps / TRANSFER
        all_paths = {}
        order = ("orig", "adv", "fl", "orig-seed1")
        for regime in (r for r in order if c.models[r] is not None):
            all_paths[regime] = _row_steps(cache, c, regime, data, fp, tdir, parallel)
            _regime_steps(cache, c, regime, all_paths[regime], data, fp)
        for regime in (r for r in c.profile.hardening_regimes if c.models.get(r) is not None):
            _hardening_steps(cache, c, regime, data, fp, tdir, parallel)
        _sufficiency(cache, c, all_paths, data, fp, parallel)
    c.events = cache.events


def reproduce(profile: str | Profile, out: str | Path, *, models_dir: str | Path = "models",
              models: Mapping[str, str | Path] | None = None,
              data_root: str | Path | None = None, force: Sequence[str] = (),
              seed: int = 0, retrain: bool = False, plots: bool = True,
              parallel: Parallel | None = None) -> ReproduceResult:
    """Run (or reuse) every step of `profile` and write the report into `out`; `retrain`
    trains the models from qrdeploy.train.recipes instead of reading the committed files; `plots`
    False leaves out the PNG figures (no matplotlib needed; without it and with `plots`, a
    one-line RuntimeMissingError before any step runs); `parallel` shards the attack steps over
    local workers or a Ray cluster (the same results, so cached steps are reused either way)."""
    if plots:
        require(NO_PLOTS)
    t0 = time.perf_counter()
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    force = check_force(force)
    out = Path(out)
    if retrain and models:
        raise UsageError("--retrain trains every model; drop --model (or --retrain)")
    if not retrain and not Path(models_dir).is_dir():
        raise ConfigError(f"--models {models_dir}: no such folder; give the folder of the "
                          "reference models (default: models) or pass --retrain")
    found, missing = resolve_models(p, Path(models_dir),
                                    {k: Path(v) for k, v in (models or {}).items()})
    c = Collected(p, seed, found, missing)
    run_pipeline(c, out, Path(data_root) if data_root else None, force, retrain, parallel)
    for pattern in force:
        if not any(fnmatch.fnmatch(e.name, pattern) for e in c.events):
            logging.getLogger("qrdeploy").warning("--force %r matched no step of this run "
                                                  "(nothing was recomputed for it)", pattern)
    c.wall_seconds = time.perf_counter() - t0
    files = write_report(c, out, plots)
    return ReproduceResult(out, out / "report.md", files, tuple(c.events), c.wall_seconds)
