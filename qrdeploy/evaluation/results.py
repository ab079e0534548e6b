"""The results of `qrdeploy attack` (and of every run of the attack runner) as typed, frozen
records, and their file format: the versioned JSON schema shipped as
qrdeploy/schemas/results.schema.json, validated on write and on read.

`Results.to_json()` gives the document, `Results.from_json(doc)` reads one back (validated
first); renderers and `reproduce` read attributes, never string keys. Everything but `timings`
is a deterministic function of the inputs, the settings and the seed: a run killed and resumed
writes the same file as an uninterrupted one, apart from `timings`. Accuracies are fractions;
every cell is a Proportion ({k, n, value, ci95} in the file, a 95 % Wilson interval). Per-sample
flags are '0'/'1' strings in the file (`flags`, `unflag`).

Schema versions (the compatibility policy, CHANGELOG.md): a change that only adds an optional
key keeps the version; renaming, removing or re-meaning a key raises it. A file of another version
is refused with the command that rewrites it. Version 2 added the adaptive columns, `adaptive`,
`masking`, `settings.cw_budget`, `source.origin` and `notes`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from qrdeploy.core.fileio import atomic_write_text
from qrdeploy.core.schema import errors, load_schema
from qrdeploy.core.stats import Proportion
from qrdeploy.errors import DataError

SCHEMA_NAME = "results.schema.json"
SCHEMA_VERSION = 2
JSON = dict[str, Any]


def flags(a: np.ndarray) -> str:
    """Bool flags (N,) as a '0'/'1' string."""
    return "".join(np.where(np.asarray(a, bool).reshape(-1), "1", "0").tolist())


def unflag(s: str) -> np.ndarray:
    """The inverse of `flags`: a '0'/'1' string as bool flags (N,)."""
    return np.asarray(np.frombuffer(s.encode("ascii"), np.uint8) == ord("1"))


def _prop(d: Mapping[str, Any]) -> Proportion:
    return Proportion(int(d["k"]), int(d["n"]))


def _opt(d: Mapping[str, Any] | None, make: Any) -> Any:
    return None if d is None else make(d)


# ------------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class ModelEntry:
    """A model of a run: file name, sha256, the harden recipes it carries, class count."""

    name: str
    sha256: str
    harden: list[Any] | None
    num_classes: int

    def to_json(self) -> JSON:
        return {"name": self.name, "sha256": self.sha256, "harden": self.harden,
                "num_classes": self.num_classes}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelEntry:
        return cls(d["name"], d["sha256"], d["harden"], int(d["num_classes"]))


@dataclass(frozen=True)
class SourceEntry:
    """The transfer source: the model, its clean accuracy and its own white-box verdicts on the
    examples crafted on it, and who chose it ('user' or 'default')."""

    model: ModelEntry
    clean: Proportion
    columns: dict[str, Proportion]
    origin: str

    def to_json(self) -> JSON:
        return {**self.model.to_json(), "clean": self.clean.to_json(),
                "columns": {k: p.to_json() for k, p in self.columns.items()},
                "origin": self.origin}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SourceEntry:
        return cls(ModelEntry.from_json(d), _prop(d["clean"]),
                   {k: _prop(v) for k, v in d["columns"].items()}, d["origin"])


# ------------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class CWResult:
    """CW-L2: median L2 of the examples found, how many, and accuracy at L2 <= r."""

    median_l2: float | None
    found: int
    at_radius: tuple[tuple[float, Proportion], ...]

    def to_json(self) -> JSON:
        return {"median_l2": self.median_l2, "found": self.found,
                "at_radius": [{"r": r, "robust": p.to_json()} for r, p in self.at_radius]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CWResult:
        return cls(d["median_l2"], int(d["found"]),
                   tuple((float(x["r"]), _prop(x["robust"])) for x in d["at_radius"]))


@dataclass(frozen=True)
class NoiseResult:
    """Noise: the paper's mean over draws (bootstrap interval), the mean on the noisy inputs,
    qrdeploy's worst of k draws, and every draw's verdicts."""

    draws: int
    mean: float
    mean_ci95: tuple[float, float]
    mean_attacked: float
    worst: Proportion
    fooled_draws: tuple[str, ...]

    def to_json(self) -> JSON:
        return {"draws": self.draws, "mean": self.mean, "mean_ci95": list(self.mean_ci95),
                "mean_attacked": self.mean_attacked, "worst": self.worst.to_json(),
                "fooled_draws": list(self.fooled_draws)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NoiseResult:
        lo, hi = d["mean_ci95"]
        return cls(int(d["draws"]), float(d["mean"]), (float(lo), float(hi)),
                   float(d["mean_attacked"]), _prop(d["worst"]), tuple(d["fooled_draws"]))


@dataclass(frozen=True)
class PerSample:
    """A column's per-sample outcome: fooled flags and the perturbations' L-inf and L2 norms."""

    fooled: str
    linf: tuple[float, ...]
    l2: tuple[float, ...]

    def to_json(self) -> JSON:
        return {"fooled": self.fooled, "linf": list(self.linf), "l2": list(self.l2)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PerSample:
        return cls(d["fooled"], tuple(d["linf"]), tuple(d["l2"]))


@dataclass(frozen=True)
class ColumnResult:
    """One column of a run. `robust`: correct on the clean input and under the attack (a clean
    error counts as a failure); `attacked`: the paper-style accuracy on the attacked inputs;
    `restricted`: an adaptive gradient entry run on the survivors of the cheaper attacks."""

    key: str
    name: str
    mode: str
    eps: float | None
    origin: str
    attack: str | None
    robust: Proportion
    attacked: Proportion
    cw: CWResult | None
    noise: NoiseResult | None
    restricted: bool
    per_sample: PerSample

    def fooled(self) -> np.ndarray:
        """Per-sample fooled flags (N,) bool."""
        return unflag(self.per_sample.fooled)

    def to_json(self) -> JSON:
        return {"key": self.key, "name": self.name, "mode": self.mode, "eps": self.eps,
                "origin": self.origin, "attack": self.attack, "robust": self.robust.to_json(),
                "attacked": self.attacked.to_json(),
                "cw": None if self.cw is None else self.cw.to_json(),
                "noise": None if self.noise is None else self.noise.to_json(),
                "restricted": self.restricted, "per_sample": self.per_sample.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ColumnResult:
        return cls(d["key"], d["name"], d["mode"], d["eps"], d["origin"], d["attack"],
                   _prop(d["robust"]), _prop(d["attacked"]), _opt(d["cw"], CWResult.from_json),
                   _opt(d["noise"], NoiseResult.from_json), bool(d["restricted"]),
                   PerSample.from_json(d["per_sample"]))


@dataclass(frozen=True)
class WorstCase:
    """The per-sample worst case over `columns`."""

    columns: tuple[str, ...]
    robust: Proportion

    def to_json(self) -> JSON:
        return {"columns": list(self.columns), "robust": self.robust.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WorstCase:
        return cls(tuple(d["columns"]), _prop(d["robust"]))


@dataclass(frozen=True)
class AdaptiveResult:
    """The adaptive suite's eps, what its transfer entry crafted on (`source_role`), the cheaper
    columns the restricted entries ran after, and the adaptive per-sample worst case."""

    eps: float
    source: ModelEntry | None
    source_role: str | None
    survivor_columns: tuple[str, ...]
    restricted: tuple[str, ...]
    worst_case: WorstCase
    per_sample_worst_case: str

    def worst_flags(self) -> np.ndarray:
        return unflag(self.per_sample_worst_case)

    def to_json(self) -> JSON:
        src = None if self.source is None else {**self.source.to_json(),
                                                "role": self.source_role}
        return {"eps": self.eps, "source": src, "survivor_columns": list(self.survivor_columns),
                "restricted": list(self.restricted), "worst_case": self.worst_case.to_json(),
                "per_sample_worst_case": self.per_sample_worst_case}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AdaptiveResult:
        src = d["source"]
        return cls(float(d["eps"]), _opt(src, ModelEntry.from_json),
                   None if src is None else src["role"], tuple(d["survivor_columns"]),
                   tuple(d["restricted"]), WorstCase.from_json(d["worst_case"]),
                   d["per_sample_worst_case"])


# ------------------------------------------------------------------------------- masking


@dataclass(frozen=True)
class CheckEntry:
    """One masking check as written: statistic and threshold None when it did not run."""

    name: str
    fired: bool
    ran: bool
    statistic: float | None
    threshold: float | None
    detail: str
    doc: str

    def to_json(self) -> JSON:
        return {"name": self.name, "fired": self.fired, "ran": self.ran,
                "statistic": self.statistic, "threshold": self.threshold,
                "detail": self.detail, "doc": self.doc}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckEntry:
        return cls(d["name"], bool(d["fired"]), bool(d["ran"]), d["statistic"], d["threshold"],
                   d["detail"], d["doc"])


@dataclass(frozen=True)
class MaskingResult:
    """The verdict, every check and the clean top-1 − top-2 logit-gap histogram."""

    verdict: str
    suspected: bool
    worst_case: float | None
    checks: tuple[CheckEntry, ...]
    gap_edges: tuple[float | None, ...]
    gap_counts: tuple[int, ...]

    @property
    def fired(self) -> tuple[CheckEntry, ...]:
        return tuple(c for c in self.checks if c.fired)

    def to_json(self) -> JSON:
        return {"verdict": self.verdict, "suspected": self.suspected,
                "worst_case": self.worst_case, "checks": [c.to_json() for c in self.checks],
                "gap_histogram": {"edges": list(self.gap_edges),
                                  "counts": list(self.gap_counts)}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MaskingResult:
        h = d["gap_histogram"]
        return cls(d["verdict"], bool(d["suspected"]), d["worst_case"],
                   tuple(CheckEntry.from_json(c) for c in d["checks"]), tuple(h["edges"]),
                   tuple(int(c) for c in h["counts"]))


# ------------------------------------------------------------------------------- the rest


@dataclass(frozen=True)
class SweepPointResult:
    """One eps of a sweep: robust accuracy, the worst case over every eps' <= eps, flags."""

    eps: float
    attack: str
    robust: Proportion
    worst: Proportion
    fooled: str

    def to_json(self) -> JSON:
        return {"eps": self.eps, "attack": self.attack, "robust": self.robust.to_json(),
                "worst": self.worst.to_json(), "fooled": self.fooled}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SweepPointResult:
        return cls(float(d["eps"]), d["attack"], _prop(d["robust"]), _prop(d["worst"]),
                   d["fooled"])


@dataclass(frozen=True)
class SweepResult:
    kind: str
    points: tuple[SweepPointResult, ...]

    def to_json(self) -> JSON:
        return {"kind": self.kind, "points": [p.to_json() for p in self.points]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SweepResult:
        return cls(d["kind"], tuple(SweepPointResult.from_json(p) for p in d["points"]))


@dataclass(frozen=True)
class Comparison:
    """a vs b on the same samples: accuracies, difference a − b with its 95 % interval,
    discordant counts and McNemar's exact p-value."""

    a: str
    b: str
    n: int
    acc_a: float
    acc_b: float
    diff: float
    ci95: tuple[float, float]
    a_only: int
    b_only: int
    p_value: float
    significant: bool

    def to_json(self) -> JSON:
        return {"a": self.a, "b": self.b, "n": self.n, "acc_a": self.acc_a,
                "acc_b": self.acc_b, "diff": self.diff, "ci95": list(self.ci95),
                "a_only": self.a_only, "b_only": self.b_only, "p_value": self.p_value,
                "significant": self.significant}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Comparison:
        lo, hi = d["ci95"]
        return cls(d["a"], d["b"], int(d["n"]), float(d["acc_a"]), float(d["acc_b"]),
                   float(d["diff"]), (float(lo), float(hi)), int(d["a_only"]),
                   int(d["b_only"]), float(d["p_value"]), bool(d["significant"]))


@dataclass(frozen=True)
class DataInfo:
    name: str
    split: str
    n: int
    fingerprint: str
    labels: str  # 'true' or 'reference'
    family: str

    def to_json(self) -> JSON:
        return {"name": self.name, "split": self.split, "n": self.n,
                "fingerprint": self.fingerprint, "labels": self.labels, "family": self.family}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DataInfo:
        return cls(d["name"], d["split"], int(d["n"]), d["fingerprint"], d["labels"],
                   d["family"])


@dataclass(frozen=True)
class AttackSetting:
    key: str
    attack: str | None
    eps: float | None
    origin: str

    def to_json(self) -> JSON:
        return {"key": self.key, "attack": self.attack, "eps": self.eps, "origin": self.origin}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AttackSetting:
        return cls(d["key"], d["attack"], d["eps"], d["origin"])


@dataclass(frozen=True)
class Settings:
    suite: str
    seed: int
    batch_size: int
    cw_budget: str
    attacks: tuple[AttackSetting, ...]
    sweep_eps: tuple[float, ...]
    cw_radii: tuple[float, ...]
    alpha: float
    bootstrap_resamples: int

    def to_json(self) -> JSON:
        return {"suite": self.suite, "seed": self.seed, "batch_size": self.batch_size,
                "cw_budget": self.cw_budget, "attacks": [a.to_json() for a in self.attacks],
                "sweep_eps": list(self.sweep_eps), "cw_radii": list(self.cw_radii),
                "alpha": self.alpha, "bootstrap_resamples": self.bootstrap_resamples}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Settings:
        return cls(d["suite"], int(d["seed"]), int(d["batch_size"]), d["cw_budget"],
                   tuple(AttackSetting.from_json(a) for a in d["attacks"]),
                   tuple(d["sweep_eps"]), tuple(d["cw_radii"]), float(d["alpha"]),
                   int(d["bootstrap_resamples"]))


@dataclass(frozen=True)
class RuntimeInfo:
    """Where it ran: provider, threads, the session details and the package versions."""

    provider: str
    threads: int
    info: dict[str, Any]
    packages: dict[str, str | None]

    def to_json(self) -> JSON:
        return {"provider": self.provider, "threads": self.threads, "info": self.info,
                "packages": self.packages}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RuntimeInfo:
        return cls(d["provider"], int(d["threads"]), dict(d["info"]), dict(d["packages"]))


@dataclass(frozen=True)
class PerSampleSummary:
    labels: tuple[int, ...]
    clean_correct: str
    worst_case: str

    def to_json(self) -> JSON:
        return {"labels": list(self.labels), "clean_correct": self.clean_correct,
                "worst_case": self.worst_case}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PerSampleSummary:
        return cls(tuple(int(v) for v in d["labels"]), d["clean_correct"], d["worst_case"])


@dataclass(frozen=True)
class Baseline:
    """The model before hardening (`attack --unhardened`), run on the same suite and samples
    (without the adaptive transfer column, which would craft on the model itself, and without
    the L2 columns, which enter none of these figures): its clean
    accuracy, the paper's worst case (its L-inf columns), the adaptive worst case and the
    verdict, with per-sample flags for the paired tests of the report's before/after."""

    model: ModelEntry
    clean: Proportion
    worst_case: WorstCase
    adaptive_worst_case: WorstCase | None
    verdict: str | None
    clean_correct: str
    worst_flags: str
    adaptive_flags: str | None

    def to_json(self) -> JSON:
        return {"model": self.model.to_json(), "clean": self.clean.to_json(),
                "worst_case": self.worst_case.to_json(),
                "adaptive_worst_case": None if self.adaptive_worst_case is None
                else self.adaptive_worst_case.to_json(),
                "verdict": self.verdict,
                "per_sample": {"clean_correct": self.clean_correct,
                               "worst_case": self.worst_flags,
                               "adaptive_worst_case": self.adaptive_flags}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Baseline:
        ps = d["per_sample"]
        return cls(ModelEntry.from_json(d["model"]), _prop(d["clean"]),
                   WorstCase.from_json(d["worst_case"]),
                   _opt(d["adaptive_worst_case"], WorstCase.from_json), d["verdict"],
                   ps["clean_correct"], ps["worst_case"], ps["adaptive_worst_case"])


# ------------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Results:
    """Everything one run of the attack runner measured (the results file, typed)."""

    qrdeploy_version: str
    victim: ModelEntry
    source: SourceEntry | None
    reference: ModelEntry | None
    data: DataInfo
    settings: Settings
    runtime: RuntimeInfo
    clean: Proportion
    columns: tuple[ColumnResult, ...]
    worst_case: WorstCase
    adaptive: AdaptiveResult | None
    masking: MaskingResult | None
    notes: tuple[str, ...]
    sweeps: tuple[SweepResult, ...]
    comparisons: tuple[Comparison, ...]
    per_sample: PerSampleSummary
    timings: dict[str, float] = field(default_factory=dict)
    baseline: Baseline | None = None

    def column(self, key: str) -> ColumnResult | None:
        """The column `key` ('white/pgd', ...), None when the run has none."""
        return next((c for c in self.columns if c.key == key), None)

    def clean_flags(self) -> np.ndarray:
        return unflag(self.per_sample.clean_correct)

    def paper_worst(self) -> tuple[tuple[str, ...], np.ndarray]:
        """The per-sample worst case over the paper's L-inf columns (white-box and black-box at
        their own eps), as qrdeploy.evaluation.metrics.paper_worst_case computes it."""
        keys = tuple(c.key for c in self.columns
                     if c.mode in ("white", "black") and c.eps is not None)
        alive = self.clean_flags()
        for k in keys:
            alive = alive & ~self.columns[[c.key for c in self.columns].index(k)].fooled()
        return keys, np.asarray(alive)

    def robust_flags(self, key: str) -> np.ndarray:
        """Correct on the clean input and not fooled by column `key` (N,)."""
        col = self.column(key)
        if col is None:
            raise DataError(f"the results have no column {key!r}; rerun with it in --attacks")
        return np.asarray(self.clean_flags() & ~col.fooled())

    @property
    def measure(self) -> str:
        """'accuracy', or 'top-1 agreement with REF' when labels came from a reference."""
        if self.data.labels == "reference":
            ref = self.reference.name if self.reference else "the model itself"
            return f"top-1 agreement with {ref}"
        return "accuracy"

    def to_json(self) -> JSON:
        """The document of the file format (validated by `write_results`)."""
        return {
            "schema": "qrdeploy/results", "schema_version": SCHEMA_VERSION,
            "qrdeploy_version": self.qrdeploy_version, "victim": self.victim.to_json(),
            "source": None if self.source is None else self.source.to_json(),
            "reference": None if self.reference is None else self.reference.to_json(),
            "data": self.data.to_json(), "settings": self.settings.to_json(),
            "runtime": self.runtime.to_json(), "clean": self.clean.to_json(),
            "columns": [c.to_json() for c in self.columns],
            "worst_case": self.worst_case.to_json(),
            "adaptive": None if self.adaptive is None else self.adaptive.to_json(),
            "masking": None if self.masking is None else self.masking.to_json(),
            "notes": list(self.notes), "sweeps": [s.to_json() for s in self.sweeps],
            "comparisons": [c.to_json() for c in self.comparisons],
            "per_sample": self.per_sample.to_json(),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "baseline": None if self.baseline is None else self.baseline.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Any, where: str = "results") -> Results:
        """A document validated against the schema, as typed results."""
        validate_results(doc, where)
        d = cast(dict[str, Any], doc)
        return cls(
            d["qrdeploy_version"], ModelEntry.from_json(d["victim"]),
            _opt(d["source"], SourceEntry.from_json), _opt(d["reference"], ModelEntry.from_json),
            DataInfo.from_json(d["data"]), Settings.from_json(d["settings"]),
            RuntimeInfo.from_json(d["runtime"]), _prop(d["clean"]),
            tuple(ColumnResult.from_json(c) for c in d["columns"]),
            WorstCase.from_json(d["worst_case"]), _opt(d["adaptive"], AdaptiveResult.from_json),
            _opt(d["masking"], MaskingResult.from_json), tuple(d["notes"]),
            tuple(SweepResult.from_json(s) for s in d["sweeps"]),
            tuple(Comparison.from_json(c) for c in d["comparisons"]),
            PerSampleSummary.from_json(d["per_sample"]),
            {k: float(v) for k, v in d["timings"].items()},
            _opt(d.get("baseline"), Baseline.from_json))


# ------------------------------------------------------------------------------- files


def validate_results(doc: Any, where: str = "results") -> None:
    """DataError naming the first problems when `doc` does not match the shipped schema."""
    if isinstance(doc, dict) and doc.get("schema_version") not in (None, SCHEMA_VERSION):
        raise DataError(f"{where} has schema_version {doc.get('schema_version')!r}; this qrdeploy "
                        f"reads version {SCHEMA_VERSION}: rerun qrdeploy attack to rewrite it")
    schema = load_schema(SCHEMA_NAME)
    problems = errors(doc, schema, schema)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataError(f"{where} does not match the results schema: "
                        f"{'; '.join(problems[:3])}{more}; rerun qrdeploy attack to rewrite it")


def dumps(results: Results) -> str:
    return json.dumps(results.to_json(), indent=1, sort_keys=False, allow_nan=False) + "\n"


def write_results(path: str | Path, results: Results) -> Path:
    """Validate and write atomically."""
    validate_results(results.to_json())
    return atomic_write_text(path, dumps(results))


def load_results(path: str | Path) -> Results:
    """A results file, parsed, validated and typed."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(f"results file {p} does not exist; write it with qrdeploy attack") from None
    except IsADirectoryError:
        raise DataError(f"{p} is a folder, not a results file; pass the .json file that "
                        "qrdeploy attack -o wrote") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p} is not JSON ({exc}); pass a file written by qrdeploy attack"
                        ) from None
    if isinstance(doc, dict) and doc.get("schema") == "qrdeploy/check-summary":
        raise DataError(f"{p} is the summary of qrdeploy check, not a results file; report the "
                        "results JSON that qrdeploy attack -o wrote")
    if isinstance(doc, dict) and doc.get("schema") == "qrdeploy/reproduce":
        raise DataError(f"{p} is the summary of qrdeploy reproduce, whose report.md is beside "
                        f"it; qrdeploy report reads attack results, such as "
                        f"{p.parent / 'steps'}/attack.*/results.json")
    return Results.from_json(doc, str(p))


def load_many(paths: Sequence[str | Path]) -> list[Results]:
    return [load_results(p) for p in paths]
