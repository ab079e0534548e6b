"""The policy of `qrdeploy check`: a TOML file of thresholds, parsed (tomllib) into frozen, typed,
validated dataclasses. Unknown keys, wrong types and out-of-range values are ConfigErrors with a
one-line message naming the key; docs/check.md describes every key, examples/qrdeploy.toml shows
them all.

>>> policy = load_policy("qrdeploy.toml")
>>> policy.clean.min_accuracy
0.95
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from qrdeploy.errors import ConfigError
from qrdeploy.evaluation.suites import parse_number

POLICY_VERSION = 1


class Bound(StrEnum):
    """What a threshold compares: the conservative end of the 95% interval, or the estimate."""

    LOWER = "lower"  # lower bound of an accuracy, upper bound of a drop (the pessimistic end)
    POINT = "point"


class RobustKind(StrEnum):
    """The attack of a robust-accuracy threshold: a paper-suite L-inf attack, or the per-sample
    worst case of the adaptive suite (qrdeploy.attacks.adaptive)."""

    FGSM = "fgsm"
    PGD = "pgd"
    BIM = "bim"
    MIM = "mim"
    ADAPTIVE = "adaptive"


ADAPTIVE_MEMBERS = ("pgd-cw", "apgd-ce", "apgd-dlr", "apgd-t-dlr", "pgd-ce-t10", "pgd-ce-t100",
                    "pgd-njs", "pgd-f64", "square", "transfer")


# ------------------------------------------------------------------------------- validation


def _err(where: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"policy {where}: {key} {problem}")


def _fraction(where: str, key: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise _err(where, key, f"must be a number in [0, 1] (a fraction, 0.95 = 95%), got {v!r}")
    return float(v)


def _eps(where: str, key: str, v: object) -> float:
    """An L-inf budget in pixel units of [0, 1] images: a number, or a fraction as a string
    ("8/255"), as the command line takes it."""
    value = v
    if isinstance(v, str):
        try:
            value = parse_number(v, f"{where} {key}")
        except ConfigError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise _err(where, key, f"must be an L-inf budget in [0, 1] pixel units, e.g. 0.1 or "
                               f"\"8/255\", got {v!r}")
    return float(value)


def _positive(where: str, key: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (v > 0 and math.isfinite(v)):
        raise _err(where, key, f"must be a finite number > 0, got {v!r}")
    return float(v)


def _count(where: str, key: str, v: object, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise _err(where, key, f"must be an integer >= {low}, got {v!r}")
    return v


def _optional(f: Any, where: str, key: str, v: object) -> Any:
    return None if v is None else f(where, key, v)


def _keys(where: str, table: object, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    """The table as a mapping, after rejecting any key not in `allowed`."""
    if not isinstance(table, dict):
        raise ConfigError(f"policy {where}: expected a table, got {type(table).__name__} "
                          f"{table!r}; see examples/qrdeploy.toml")
    for k in table:
        if k not in allowed:
            raise ConfigError(f"policy {where}: unknown key {k!r}; allowed keys: "
                              f"{', '.join(allowed)}")
    return table


# --------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class CleanPolicy:
    """Thresholds on the clean test set (all samples of --data)."""

    min_accuracy: float | None = None
    max_drop: float | None = None  # reference accuracy - model accuracy, paired, same samples
    min_agreement: float | None = None  # top-1 agreement with the reference

    KEYS = ("min_accuracy", "max_drop", "min_agreement")

    @classmethod
    def parse(cls, t: object) -> CleanPolicy:
        d = _keys("[clean]", t, cls.KEYS)
        return cls(*(_optional(_fraction, "[clean]", k, d.get(k)) for k in cls.KEYS))


@dataclass(frozen=True)
class RobustThreshold:
    """Minimum robust accuracy (correct on the clean input and under the attack) at eps."""

    attack: RobustKind
    eps: float
    min_accuracy: float
    steps: int | None = None  # None: the suite's [DEFAULT]; else step = 2.5 eps / steps
    queries: int | None = None  # adaptive Square's query budget (None: 5,000)
    members: tuple[str, ...] | None = None  # adaptive members (None: all of them)

    KEYS = ("attack", "eps", "min_accuracy", "steps", "queries", "members")

    @property
    def metric(self) -> str:
        return f"robust.{self.attack.value}@{self.eps:g}"

    @classmethod
    def parse(cls, t: object, i: int) -> RobustThreshold:
        where = f"[[robust.threshold]] #{i + 1}"
        d = _keys(where, t, cls.KEYS)
        for k in ("attack", "eps", "min_accuracy"):
            if k not in d:
                raise _err(where, k, "is required; e.g. attack = \"pgd\", eps = 0.1, "
                                     "min_accuracy = 0.2")
        try:
            kind = RobustKind(d["attack"])
        except ValueError:
            raise _err(where, "attack", f"must be one of {', '.join(RobustKind)}, "
                                        f"got {d['attack']!r}") from None
        if kind is RobustKind.FGSM and "steps" in d:
            raise _err(where, "steps", "does not apply to attack = \"fgsm\" (one step); drop it "
                                       "or use pgd, bim or mim")
        if kind is not RobustKind.ADAPTIVE and "queries" in d:
            raise _err(where, "queries", "is Square's query budget and applies to attack = "
                                         "\"adaptive\" only; drop it")
        members = _members(where, kind, d.get("members"))
        if members is not None:  # settings no chosen member reads would be ignored
            square = [m for m in members if m.startswith("square")]
            if "queries" in d and not square:
                raise _err(where, "queries", "is Square's query budget, and members has no "
                                             "square; drop it or add 'square' to members")
            if "steps" in d and len(square) == len(members):
                raise _err(where, "steps", "applies to the gradient and transfer members, and "
                                           "members has only Square (which takes queries); "
                                           "drop it")
        return cls(kind, _eps(where, "eps", d["eps"]),
                   _fraction(where, "min_accuracy", d["min_accuracy"]),
                   _optional(_count, where, "steps", d.get("steps")),
                   _optional(_count, where, "queries", d.get("queries")), members)


def _members(where: str, kind: RobustKind, v: object) -> tuple[str, ...] | None:
    if v is None:
        return None
    if kind is not RobustKind.ADAPTIVE:
        raise _err(where, "members", "applies to attack = \"adaptive\" only")
    if not isinstance(v, list) or not v or not all(isinstance(m, str) for m in v):
        raise _err(where, "members", f"must be a non-empty list of names, got {v!r}")
    bad = [m for m in v if m not in ADAPTIVE_MEMBERS]
    if bad:
        raise _err(where, "members", f"has unknown name {bad[0]!r}; known: "
                                     f"{', '.join(ADAPTIVE_MEMBERS)}")
    return tuple(dict.fromkeys(v))


@dataclass(frozen=True)
class RobustPolicy:
    """Robust-accuracy thresholds, measured on the first `n` samples (None: all)."""

    n: int | None = None
    thresholds: tuple[RobustThreshold, ...] = ()

    KEYS = ("n", "threshold")

    @classmethod
    def parse(cls, t: object) -> RobustPolicy:
        d = _keys("[robust]", t, cls.KEYS)
        items = d.get("threshold", [])
        if not isinstance(items, list):
            raise _err("[robust]", "threshold", "must be an array of tables "
                                                "([[robust.threshold]])")
        ths = tuple(RobustThreshold.parse(x, i) for i, x in enumerate(items))
        metrics = [t.metric for t in ths]
        dup = next((m for m in metrics if metrics.count(m) > 1), None)
        if dup is not None:
            raise _err("[robust]", "threshold", f"names {dup} twice; keep one per attack and eps")
        return cls(_optional(_count, "[robust]", "n", d.get("n")), ths)


@dataclass(frozen=True)
class MaskingPolicy:
    """The masking verdict: the suite `qrdeploy attack --suite SUITE` would run (through the same
    runner, with the reference as transfer source and as the model before hardening) on the
    robust samples; `fail_if_suspected` fails the check when a masking check fires."""

    fail_if_suspected: bool = False
    suite: str = "paper,adaptive"  # [DEFAULT]: every check can run
    cw_budget: str = "quick"  # as `qrdeploy attack`'s default

    KEYS = ("fail_if_suspected", "suite", "cw_budget")

    @classmethod
    def parse(cls, t: object) -> MaskingPolicy:
        w = "[masking]"
        d = _keys(w, t, cls.KEYS)
        v = d.get("fail_if_suspected", False)
        if not isinstance(v, bool):
            raise _err(w, "fail_if_suspected", f"must be true or false, got {v!r}")
        suite = d.get("suite", cls.suite)
        names = suite.split(",") if isinstance(suite, str) else []
        if not names or not set(names) <= {"white", "black", "noise", "paper", "adaptive"} \
                or "adaptive" not in names:
            raise _err(w, "suite", "must be a comma list of suites that includes adaptive (the "
                                   f"verdict needs it), e.g. \"paper,adaptive\", got {suite!r}")
        budget = d.get("cw_budget", cls.cw_budget)
        if budget not in ("quick", "paper"):
            raise _err(w, "cw_budget", f"must be \"quick\" or \"paper\", got {budget!r}")
        return cls(v, suite, budget)


@dataclass(frozen=True)
class SizePolicy:
    max_mb: float | None = None  # the .onnx file plus its external data, in MB (10^6 bytes)

    KEYS = ("max_mb",)

    @classmethod
    def parse(cls, t: object) -> SizePolicy:
        d = _keys("[size]", t, cls.KEYS)
        return cls(_optional(_positive, "[size]", "max_mb", d.get("max_mb")))


@dataclass(frozen=True)
class LatencyPolicy:
    """Latency of model vs reference on onnxruntime, measured in the same run (always, for the
    summary); `max_ratio` bounds the median of the paired ratios t(model) / t(reference) at every
    batch size (qrdeploy.gate.measure.LatencyRow)."""

    max_ratio: float | None = None
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup: int = 3
    repeats: int = 20
    given: bool = field(default=False, compare=False)  # the policy file has a [latency] section

    KEYS = ("max_ratio", "batch_sizes", "warmup", "repeats")

    @classmethod
    def parse(cls, t: object) -> LatencyPolicy:
        w = "[latency]"
        d = _keys(w, t, cls.KEYS)
        sizes = d.get("batch_sizes", list(cls.batch_sizes))
        if not isinstance(sizes, list) or not sizes:
            raise _err(w, "batch_sizes", f"must be a non-empty list of integers, got {sizes!r}")
        return cls(_optional(_positive, w, "max_ratio", d.get("max_ratio")),
                   tuple(sorted({_count(w, "batch_sizes", b) for b in sizes})),
                   _count(w, "warmup", d.get("warmup", cls.warmup), 0),
                   _count(w, "repeats", d.get("repeats", cls.repeats), 2), given=True)


def _reachable_through_bounds(policy: Policy) -> None:
    """A minimum of 1 compared through the lower bound of a 95% interval can never pass: that
    bound stays below 1 at every n. Refused when the policy is read, not after the work."""
    c = policy.clean
    places = [("[clean]", "min_accuracy", c.min_accuracy),
              ("[clean]", "min_agreement", c.min_agreement)]
    places += [(f"[[robust.threshold]] #{i + 1}", "min_accuracy", r.min_accuracy)
               for i, r in enumerate(policy.robust.thresholds)]
    for where, key, value in places:
        if value is not None and value >= 1:
            raise _err(where, key, "= 1 can never pass with use_bound = \"lower\" (a 95% lower "
                                   "bound stays below 1 at every n); use a threshold below 1, "
                                   "or use_bound = \"point\"")


@dataclass(frozen=True)
class Policy:
    """Every threshold of a check; a section left out of the file sets no threshold."""

    use_bound: Bound = Bound.LOWER
    clean: CleanPolicy = field(default_factory=CleanPolicy)
    robust: RobustPolicy = field(default_factory=RobustPolicy)
    masking: MaskingPolicy = field(default_factory=MaskingPolicy)
    size: SizePolicy = field(default_factory=SizePolicy)
    latency: LatencyPolicy = field(default_factory=LatencyPolicy)
    version: int = POLICY_VERSION

    KEYS = ("version", "use_bound", "clean", "robust", "masking", "size", "latency")

    @property
    def empty(self) -> bool:
        """True when no section sets a threshold or asks for anything (a [latency] section
        without max_ratio still asks for the latency table): a check of it would pass without
        measuring."""
        c = self.clean
        return (c.min_accuracy is None and c.max_drop is None and c.min_agreement is None
                and not self.robust.thresholds and not self.masking.fail_if_suspected
                and self.size.max_mb is None and self.latency.max_ratio is None
                and not self.latency.given)

    @classmethod
    def from_dict(cls, d: object) -> Policy:
        t = _keys("file", d, cls.KEYS)
        version = t.get("version", POLICY_VERSION)
        if type(version) is not int or version != POLICY_VERSION:
            raise _err("file", "version", f"must be {POLICY_VERSION}, got {version!r}")
        try:
            bound = Bound(t.get("use_bound", Bound.LOWER.value))
        except ValueError:
            raise _err("file", "use_bound", f"must be \"lower\" or \"point\", got "
                                            f"{t['use_bound']!r}") from None
        policy = cls(bound, CleanPolicy.parse(t.get("clean", {})),
                     RobustPolicy.parse(t.get("robust", {})),
                     MaskingPolicy.parse(t.get("masking", {})),
                     SizePolicy.parse(t.get("size", {})),
                     LatencyPolicy.parse(t["latency"]) if "latency" in t else LatencyPolicy())
        if bound is Bound.LOWER:
            _reachable_through_bounds(policy)
        return policy

    @classmethod
    def from_toml(cls, text: str, name: str = "policy") -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{name} is not valid TOML: {exc}; see examples/qrdeploy.toml"
                              ) from None
        return cls.from_dict(data)

    def to_json(self) -> dict[str, Any]:
        """The policy as JSON (every key, defaults filled in), for the summary."""
        r = self.robust
        return {
            "version": self.version, "use_bound": self.use_bound.value,
            "clean": {k: getattr(self.clean, k) for k in CleanPolicy.KEYS},
            "robust": {"n": r.n, "threshold": [
                {"attack": t.attack.value, "eps": t.eps, "min_accuracy": t.min_accuracy,
                 "steps": t.steps, "queries": t.queries,
                 "members": None if t.members is None else list(t.members)}
                for t in r.thresholds]},
            "masking": {"fail_if_suspected": self.masking.fail_if_suspected,
                        "suite": self.masking.suite, "cw_budget": self.masking.cw_budget},
            "size": {"max_mb": self.size.max_mb},
            "latency": {"max_ratio": self.latency.max_ratio,
                        "batch_sizes": list(self.latency.batch_sizes),
                        "warmup": self.latency.warmup, "repeats": self.latency.repeats},
        }


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy TOML file."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"policy file {str(p)!r} does not exist; pass --policy "
                          "qrdeploy.toml (an example is examples/qrdeploy.toml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read policy file {str(p)!r}: {exc}") from None
    return Policy.from_toml(text, f"policy file {p.name}")
