"""Named attack suites: the paper's columns (docs/method.md section 5) as frozen, typed configs.

A suite is a tuple of `Column`s. Each column names one cell of the paper's tables (white-box
`clean, cw-l2, fgsm-w, fgsm-s, pgd, bim, mim`; black-box `cw-l2, fgsm-w, fgsm-m, fgsm-s`; noise
`normal, uniform`) and carries the attack config that fills it plus `origin`, which says where its
settings come from:
- `cleverhans`: cleverhans v3's defaults, which the paper most likely used (CW-L2, MIM decay);
- `default`: qrdeploy's own choice where the paper is silent (docs/method.md [DEFAULT]: every eps,
  step count and noise scale);
- `user`: overridden on the command line (`--attacks pgd=0.2`).

Per-dataset [DEFAULT]s (docs/method.md section 5), in [0, 1] pixel units:

| family  | FGSM w / m / s      | PGD, BIM, MIM eps / step / steps | noise sigma = bound | draws |
|---------|---------------------|----------------------------------|---------------------|-------|
| mnist   | 0.1 / 0.2 / 0.3     | 0.1 / 0.01 / 20                  | 0.3                 | 10    |
| cifar10 | 2/255, 8/255, 16/255| 4/255 / 1/255 / 10               | 0.1                 | 10    |

`build_suite` also takes an eps sweep: every L-inf white-box kind of the suite (fgsm, pgd, bim,
mim) is run at every listed eps, with the step scaled by eps / table eps ([DEFAULT]). Without an
explicit list the paper suite sweeps FGSM and PGD over `Params.sweep_eps` ([DEFAULT]: up to eps 1
on MNIST, 64/255 on CIFAR, where accuracy must reach 0, docs/method.md section 5).

CW-L2's budget: cleverhans v3's 5 binary-search steps x 1,000 Adam iterations (`--cw-budget
paper`, origin `cleverhans`) cannot finish 10 MNIST digits in 300 s on a 2-core CPU, so
`qrdeploy attack` (campaign.AttackOptions) defaults to qrdeploy's own `quick` budget,
`Params.cw_quick` ([DEFAULT], origin `default`; docs/evaluation.md has the measurement).
`build_suite` itself keeps cleverhans' budget unless given `cw_budget="quick"`, so library callers
that set their own CW iterations keep cleverhans' learning rate.

The `adaptive` suite (docs/masking.md) has one `Mode.ADAPTIVE` column per entry of
`qrdeploy.attacks.adaptive.ADAPTIVE[family]` (pgd-cw, apgd-ce, apgd-dlr, apgd-t-dlr, pgd-ce-t10,
pgd-ce-t100, pgd-njs, pgd-f64, square, transfer), at the family's iterative eps. Suites combine
as a comma list (`paper,adaptive`); a suite with adaptive columns also carries `unbounded`, the
PGD at eps = 1 of the masking check `unbounded-below-100`.

>>> suite = build_suite("white", Family.MNIST, attacks="pgd=0.2,fgsm-s")
>>> [c.key for c in suite.columns]
['white/fgsm-s', 'white/pgd']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeAlias

from qrdeploy.attacks import BIM, CWL2, FGSM, L2PGD, MIM, PGD, GaussianNoise, UniformNoise
from qrdeploy.attacks.adaptive import ADAPTIVE, AdaptiveAttack, Role, adaptive_suite
from qrdeploy.errors import ConfigError

Attack: TypeAlias = FGSM | BIM | PGD | MIM | L2PGD | CWL2 | GaussianNoise | UniformNoise
#: What a column runs: a paper attack config or an entry of the adaptive suite.
ColumnAttack: TypeAlias = Attack | AdaptiveAttack


class Family(StrEnum):
    """Which per-dataset parameters apply."""

    MNIST = "mnist"
    CIFAR10 = "cifar10"


class Mode(StrEnum):
    """How a column's examples are made: none (clean), on the victim, on a source, or noise."""

    CLEAN = "clean"
    WHITE = "white"
    BLACK = "black"
    NOISE = "noise"
    ADAPTIVE = "adaptive"


class Origin(StrEnum):
    """Where a column's settings come from (reports label qrdeploy's own choices)."""

    PAPER = "paper"
    CLEVERHANS = "cleverhans"
    DEFAULT = "default"
    USER = "user"


class SuiteName(StrEnum):
    WHITE = "white"
    BLACK = "black"
    NOISE = "noise"
    PAPER = "paper"
    ADAPTIVE = "adaptive"


class CWBudget(StrEnum):
    """CW-L2's budget: qrdeploy's quick [DEFAULT] or cleverhans v3's (the paper's likely one)."""

    QUICK = "quick"
    PAPER = "paper"


#: qrdeploy [DEFAULT] CW-L2 budget: 5 binary-search steps x 100 Adam iterations at lr 0.1, the
#: rest as cleverhans v3 (5 x 1,000 at lr 5e-3); measured in docs/evaluation.md (at lr 0.01 the
#: 100 iterations found only 9 of 20 examples).
CW_QUICK = CWL2(learning_rate=0.1, binary_search_steps=5, max_iterations=100)


@dataclass(frozen=True)
class Params:
    """The per-dataset parameters of the paper's columns (all [DEFAULT] but CW-L2's paper
    budget, which is cleverhans v3's)."""

    fgsm_eps: tuple[float, float, float]  # w, m, s
    iter_eps: float
    iter_step: float
    iter_steps: int
    noise_scale: float
    noise_draws: int
    cw_radii: tuple[float, ...]  # report accuracy at L2 <= r for each r
    sweep_eps: tuple[float, ...]  # the paper suite's default sweep, up to where accuracy is 0
    cw_quick: CWL2 = field(default=CW_QUICK)  # the quick CW-L2 budget ([DEFAULT])


PARAMS = {
    Family.MNIST: Params(
        (0.1, 0.2, 0.3), 0.1, 0.01, 20, 0.3, 10, (0.5, 1.0, 1.5, 2.0),
        (0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
    ),
    Family.CIFAR10: Params(
        (2 / 255, 8 / 255, 16 / 255), 4 / 255, 1 / 255, 10, 0.1, 10, (0.1, 0.25, 0.5, 1.0),
        tuple(e / 255 for e in (1, 2, 4, 8, 16, 32, 64)),
    ),
}
#: The kinds the paper suite sweeps by default (an explicit --eps sweeps every L-inf kind).
DEFAULT_SWEEP_KINDS = ("fgsm", "pgd")


@dataclass(frozen=True)
class Column:
    """One cell kind of the tables: `key` is `mode/name` ('clean' for the clean column)."""

    name: str
    mode: Mode
    attack: ColumnAttack | None
    eps: float | None  # the L-inf budget; None for clean, CW-L2 (unbounded) and noise
    origin: Origin

    @property
    def key(self) -> str:
        return "clean" if self.mode is Mode.CLEAN else f"{self.mode.value}/{self.name}"

    @property
    def bounded(self) -> bool:
        """An L-inf attack column: part of the per-sample worst case."""
        return self.eps is not None and self.mode in (Mode.WHITE, Mode.BLACK)


@dataclass(frozen=True)
class SweepPoint:
    """One point of an accuracy-vs-eps curve: a white-box L-inf attack kind at one eps."""

    kind: str
    eps: float
    attack: Attack

    @property
    def key(self) -> str:
        return f"sweep/{self.kind}@{self.eps:.6g}"


@dataclass(frozen=True)
class Suite:
    name: str
    family: Family
    columns: tuple[Column, ...]
    sweep: tuple[SweepPoint, ...]
    cw_radii: tuple[float, ...]
    cw_budget: CWBudget = CWBudget.PAPER  # what build_suite gave the CW-L2 columns
    unbounded: Column | None = None  # PGD at eps = 1 for the masking checks (adaptive suites)

    def by_mode(self, mode: Mode) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.mode is mode)

    @property
    def adaptive_eps(self) -> float | None:
        """The L-inf budget of the adaptive columns (None: no adaptive column)."""
        eps = [c.eps for c in self.by_mode(Mode.ADAPTIVE) if c.eps is not None]
        return max(eps) if eps else None

    @property
    def checks(self) -> bool:
        """Masking checks and a verdict come with the adaptive suite."""
        return bool(self.by_mode(Mode.ADAPTIVE))


def kind_of(name: str) -> str:
    """The attack kind of a paper column name: 'fgsm' for fgsm-w/m/s, else the name itself."""
    return "fgsm" if name in _FGSM_SIZES else name


def restricted(column: Column) -> bool:
    """An adaptive column run only on the samples that survive the cheaper attacks: the gradient
    entries. Square and transfer run on every sample, since the masking checks compare them with
    the paper's columns sample by sample."""
    return isinstance(column.attack, AdaptiveAttack) and column.attack.role is Role.WHITE


def family_of(data_name: str, channels: int | None = None) -> Family:
    """The family of a data set name; npz files go by their channel count (1: mnist, 3: cifar)."""
    if data_name in ("mnist", "mnist-5k"):
        return Family.MNIST
    if data_name in ("cifar10", "cifar10-10k"):
        return Family.CIFAR10
    if channels is not None:
        return Family.CIFAR10 if channels == 3 else Family.MNIST
    raise ConfigError(
        f"no attack parameters for data set {data_name!r}; pass --family mnist or cifar10"
    )


def _linf(kind: str, p: Params, eps: float) -> Attack:
    """The white/black L-inf attack of a kind at eps; iterative steps scale with eps/table eps."""
    if kind == "fgsm":
        return FGSM(eps=eps)
    step = p.iter_step * eps / p.iter_eps if eps > 0 else p.iter_step
    if kind == "pgd":
        return PGD(eps=eps, step=step, steps=p.iter_steps)
    if kind == "bim":
        return BIM(eps=eps, step=step, steps=p.iter_steps)
    return MIM(eps=eps, step=step, steps=p.iter_steps)


_FGSM_SIZES = {"fgsm-w": 0, "fgsm-m": 1, "fgsm-s": 2}


def _bounded(name: str, mode: Mode, p: Params, eps: float | None = None) -> Column:
    kind = "fgsm" if name in _FGSM_SIZES else name
    table = p.fgsm_eps[_FGSM_SIZES[name]] if kind == "fgsm" else p.iter_eps
    origin = Origin.DEFAULT if eps is None else Origin.USER
    e = table if eps is None else eps
    return Column(name, mode, _linf(kind, p, e), e, origin)


def _noise(name: str, p: Params, scale: float | None = None) -> Column:
    s = p.noise_scale if scale is None else scale
    origin = Origin.DEFAULT if scale is None else Origin.USER
    attack: Attack = (
        GaussianNoise(sigma=s, draws=p.noise_draws)
        if name == "normal"
        else UniformNoise(bound=s, draws=p.noise_draws)
    )
    return Column(name, Mode.NOISE, attack, None, origin)


def _make(name: str, mode: Mode, p: Params, value: float | None) -> Column:
    """The column `name` of `mode`, with its eps (or noise scale) overridden by `value`."""
    if name == "clean":
        if value is not None:
            raise ConfigError("the clean column takes no value; write 'clean', not 'clean=...'")
        return Column("clean", Mode.CLEAN, None, None, Origin.PAPER)
    if name == "cw-l2":
        if value is not None:
            raise ConfigError("cw-l2 is unbounded and takes no eps; write 'cw-l2', not 'cw-l2=...'")
        return Column("cw-l2", mode, CWL2(), None, Origin.CLEVERHANS)
    if mode is Mode.NOISE:
        return _noise(name, p, value)
    if mode is Mode.ADAPTIVE and value is not None:
        return _adaptive(name, value)
    return _bounded(name, mode, p, value)


def _adaptive(name: str, eps: float) -> Column:
    """The adaptive entry `name` rebuilt at another eps (set by the user)."""
    entry = next(e for e in adaptive_suite(eps, integer=True) if e.name == name)
    return Column(name, Mode.ADAPTIVE, entry, eps, Origin.USER)


def _adaptive_columns(family: Family) -> tuple[Column, ...]:
    return tuple(Column(e.name, Mode.ADAPTIVE, e, e.eps, Origin.DEFAULT)
                 for e in ADAPTIVE[family.value])


def _with_cw_budget(columns: tuple[Column, ...], p: Params, budget: CWBudget
                    ) -> tuple[Column, ...]:
    """CW-L2 columns at the chosen budget: cleverhans v3's (paper) or qrdeploy's quick one."""
    if budget is CWBudget.PAPER:
        return columns
    return tuple(replace(c, attack=p.cw_quick, origin=Origin.DEFAULT) if c.name == "cw-l2"
                 else c for c in columns)


_NAMES: dict[Mode, tuple[str, ...]] = {
    Mode.WHITE: ("clean", "cw-l2", "fgsm-w", "fgsm-s", "pgd", "bim", "mim"),
    Mode.BLACK: ("cw-l2", "fgsm-w", "fgsm-m", "fgsm-s"),
    Mode.NOISE: ("normal", "uniform"),
}


def _columns(modes: Sequence[Mode]) -> Callable[[Params, Family], tuple[Column, ...]]:
    def build(p: Params, family: Family) -> tuple[Column, ...]:
        return tuple(_make(n, m, p, None) for m in modes for n in _NAMES[m])

    return build


_BUILDERS: dict[SuiteName, Callable[[Params, Family], tuple[Column, ...]]] = {
    SuiteName.WHITE: _columns([Mode.WHITE]),
    SuiteName.BLACK: _columns([Mode.BLACK]),
    SuiteName.NOISE: _columns([Mode.NOISE]),
    SuiteName.PAPER: _columns([Mode.WHITE, Mode.BLACK, Mode.NOISE]),
    SuiteName.ADAPTIVE: lambda p, family: _adaptive_columns(family),
}


def parse_number(text: str, what: str) -> float:
    """'0.1', '8/255' -> a float; a one-line ConfigError naming `what` otherwise."""
    num, _, den = text.strip().partition("/")
    try:
        value = float(num) / (float(den) if den else 1.0)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{what}: {text!r} is not a number; write e.g. 0.1 or 8/255") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{what}: {text!r} is not a finite number")
    return value


#: The per-attack settings `--attacks name:key=value,...` accepts, with the config field each
#: sets (None: a setting handled by the parser itself).
SETTINGS = {"eps": "eps", "step": "step", "steps": "steps", "restarts": "restarts",
            "loss": "loss", "temperature": "temperature", "decay": "decay", "norm": None,
            "sigma": "sigma", "bound": "bound", "draws": "draws", "confidence": "confidence",
            "lr": "learning_rate", "binary_steps": "binary_search_steps",
            "iterations": "max_iterations", "queries": "queries",
            "random_start": "random_start", "targeted": "targeted"}


#: Settings that may stand alone as flags: `pgd:steps=100,targeted`.
FLAGS = ("targeted", "random_start")


@dataclass(frozen=True)
class Item:
    """One `--attacks` item: '[mode/]name[=value][:key=value,...]'."""

    mode: str | None
    name: str
    value: float | None
    settings: tuple[tuple[str, str], ...] = ()


def parse_attacks(text: str) -> tuple[Item, ...]:
    """'clean,pgd:eps=8/255,steps=100,black/fgsm-s=0.1' -> items. Commas separate items and the
    settings of the item before them: a token 'key=value' whose key is a setting name belongs
    to the item before it (no column is named like a setting)."""
    items: list[Item] = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        key, sep, raw_value = token.partition("=")
        if items and sep and key in SETTINGS and ":" not in token:
            last = items[-1]
            items[-1] = replace(last, settings=(*last.settings, (key, raw_value)))
            continue
        if items and not sep and token in FLAGS:  # a bare flag: 'targeted' = 'targeted=true'
            last = items[-1]
            items[-1] = replace(last, settings=(*last.settings, (token, "true")))
            continue
        if not sep and token in SETTINGS:
            raise ConfigError(f"--attacks: {token!r} needs a value, e.g. {token}=...")
        spec, _, rest = token.partition(":")
        head, _, raw = spec.partition("=")
        mode, _, name = head.rpartition("/")
        settings: tuple[tuple[str, str], ...] = ()
        if rest:
            k, sep2, v = rest.partition("=")
            if not sep2 and k.strip() in FLAGS:
                sep2, v = "=", "true"
            if not sep2:
                raise ConfigError(f"--attacks item {token!r}: write settings as key=value, "
                                  "e.g. pgd:steps=100")
            settings = ((k.strip(), v.strip()),)
        value = parse_number(raw, f"--attacks item {token!r}") if raw else None
        items.append(Item(mode or None, name.strip(), value, settings))
    return tuple(items)


def with_settings(column: Column, settings: Sequence[tuple[str, str]]) -> Column:
    """The column with its attack's settings overridden (`pgd:steps=100,norm=l2`)."""
    if not settings:
        return column
    attack: object = column.attack
    if attack is None:
        raise ConfigError(f"--attacks: {column.key} takes no settings")
    target = attack.attack if isinstance(attack, AdaptiveAttack) else attack
    norms = [raw.lower() for key, raw in settings if key == "norm"]
    if norms and norms[-1] != "linf":
        if norms[-1] != "l2" or not isinstance(target, PGD):
            raise ConfigError(f"--attacks {column.key}: norm must be linf, or l2 for pgd; "
                              f"got {norms[-1]!r}")
        # an L2 PGD starts from its own defaults: an L-inf radius means nothing in L2
        target = L2PGD(restarts=target.restarts, loss=target.loss,
                       temperature=target.temperature, random_start=target.random_start,
                       targeted=target.targeted)
    fields = set(getattr(target, "__dataclass_fields__", {}))
    changes: dict[str, object] = {}
    for key, raw in settings:
        if key not in SETTINGS:
            raise ConfigError(f"--attacks {column.key}: unknown setting {key!r}; settings: "
                              f"{', '.join(sorted(SETTINGS))}")
        name = SETTINGS[key]
        if name is None:
            continue
        if name not in fields:
            allowed = sorted(k for k, f in SETTINGS.items() if f in fields or k == "norm")
            raise ConfigError(f"--attacks {column.key}: {type(target).__name__} has no setting "
                              f"{key!r}; its settings: {', '.join(allowed)}")
        current = getattr(target, name)
        if isinstance(current, bool):
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ConfigError(f"--attacks {column.key}:{key}: {raw!r} is not true or false")
            changes[name] = raw.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            changes[name] = int(parse_number(raw, f"--attacks {column.key}:{key}"))
        elif isinstance(current, float):
            changes[name] = parse_number(raw, f"--attacks {column.key}:{key}")
        else:
            try:
                changes[name] = type(current)(raw)
            except ValueError:
                raise ConfigError(f"--attacks {column.key}:{key}: {raw!r} is not a valid "
                                  f"{key}") from None
    if isinstance(target, L2PGD) and "step" not in changes:
        radius = float(changes.get("eps", target.eps))  # type: ignore[arg-type]
        changes["step"] = 2 * radius / int(changes.get("steps", target.steps))  # type: ignore[call-overload]
    try:
        target = replace(target, **changes)  # type: ignore[type-var]
    except ValueError as exc:
        raise ConfigError(f"--attacks {column.key}: {exc}") from None
    new: object = (replace(attack, attack=target)  # type: ignore[arg-type]
                   if isinstance(attack, AdaptiveAttack) else target)
    # an L2 attack has no L-inf budget: it leaves the L-inf worst case
    bounded = not isinstance(target, L2PGD) and column.eps is not None
    eps = float(getattr(target, "eps")) if bounded else None  # noqa: B009
    return replace(column, attack=new, eps=eps, origin=Origin.USER)  # type: ignore[arg-type]


def _select(columns: tuple[Column, ...], attacks: str, p: Params) -> tuple[Column, ...]:
    """The columns named in `attacks`, in suite order, with their values and settings
    overridden. A bare name picks the column of the first mode that has it (white before black
    before noise); write `black/fgsm-s` for the transfer column of the paper suite."""
    chosen: dict[str, Column] = {}
    for item in parse_attacks(attacks):
        # columns are in mode order, so a bare name finds the first mode that has it
        c = next((c for c in columns
                  if c.name == item.name and (item.mode is None or c.mode.value == item.mode)),
                 None)
        if c is None:
            known = ", ".join(c.key for c in columns)
            named = item.name if item.mode is None else f"{item.mode}/{item.name}"
            raise ConfigError(f"--attacks: {named!r} is not a column of this suite "
                              f"({known})")
        col = _make(c.name, c.mode, p, item.value) if item.value is not None else c
        chosen[c.key] = with_settings(col, item.settings)
    if not chosen:
        raise ConfigError(f"--attacks {attacks!r} names no column; e.g. --attacks fgsm-s,pgd")
    return tuple(chosen[c.key] for c in columns if c.key in chosen)


def _sweep(columns: tuple[Column, ...], eps: Sequence[float], p: Params,
           only: Sequence[str] | None = None) -> tuple[SweepPoint, ...]:
    kinds = []
    for c in columns:
        kind = "fgsm" if c.name in _FGSM_SIZES else c.name
        if c.mode is Mode.WHITE and c.bounded and kind not in kinds:
            kinds.append(kind)
    kinds = [k for k in kinds if only is None or k in only]
    if eps and not kinds:
        raise ConfigError("--eps sweeps the white-box L-inf attacks, and this suite has none; "
                          "use --suite white or --attacks pgd")
    return tuple(SweepPoint(k, e, _linf(k, p, e)) for k in kinds for e in sorted(set(eps)))


def parse_eps(text: str) -> tuple[float, ...]:
    """'0.05,0.1,8/255' -> (0.05, 0.1, 0.0313...); fractions a/b are allowed."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        value = parse_number(item, "--eps")
        if not 0 <= value <= 1:
            raise ConfigError(f"--eps: {item!r} lies outside [0, 1]; eps is in [0, 1] pixel units")
        out.append(value)
    if not out:
        raise ConfigError("--eps got no values; e.g. --eps 0.05,0.1,0.2")
    return tuple(out)


def suite_names(name: SuiteName | str) -> tuple[SuiteName, ...]:
    """'paper,adaptive' -> (PAPER, ADAPTIVE): a comma list of suites, duplicates dropped."""
    parts = [s.strip() for s in str(name.value if isinstance(name, SuiteName) else name)
             .split(",")]
    known = {s.value for s in SuiteName}
    bad = next((s for s in parts if s not in known), None)
    if bad is not None:
        raise ConfigError(f"unknown suite {bad!r}; suites: {', '.join(SuiteName)}, comma "
                          "separated, e.g. --suite paper,adaptive")
    return tuple(dict.fromkeys(SuiteName(s) for s in parts))


def _union(names: Sequence[SuiteName], p: Params, fam: Family) -> tuple[Column, ...]:
    """The columns of every named suite, in order, each key once."""
    out: dict[str, Column] = {}
    for n in names:
        for c in _BUILDERS[n](p, fam):
            out.setdefault(c.key, c)
    return tuple(out.values())


def build_suite(
    name: SuiteName | str,
    family: Family | str,
    attacks: str | None = None,
    eps: Sequence[float] | None = (),
    cw_budget: CWBudget | str = CWBudget.PAPER,
) -> Suite:
    """The suite `name` (one name or a comma list, e.g. 'paper,adaptive') for a data-set family,
    narrowed to `attacks` ('[mode/]name[=value]', comma separated; value overrides eps or the
    noise scale) and with an eps sweep over `eps` (None: the paper suite's [DEFAULT] sweep of
    FGSM and PGD, `Params.sweep_eps`; other suites none). CW-L2 runs at `cw_budget`: the
    library keeps cleverhans v3's budget unless asked (callers such as reproduce set their own
    iterations); `qrdeploy attack` and `AttackOptions` default to the quick [DEFAULT]."""
    names = suite_names(name)
    try:
        fam, budget = Family(family), CWBudget(cw_budget)
    except ValueError:
        raise ConfigError(
            f"unknown family {family!r} or CW budget {cw_budget!r}; families: "
            f"{', '.join(Family)}; budgets: {', '.join(CWBudget)}"
        ) from None
    p = PARAMS[fam]
    columns = _union(names, p, fam)
    if attacks is not None:
        columns = _select(columns, attacks, p)
    columns = _with_cw_budget(columns, p, budget)
    if eps is None:
        paper = SuiteName.PAPER in names
        sweep = _sweep(columns, p.sweep_eps, p, DEFAULT_SWEEP_KINDS) if paper else ()
    else:
        sweep = _sweep(columns, eps, p)
    has_adaptive = any(c.mode is Mode.ADAPTIVE for c in columns)
    unbounded = Column("pgd@1", Mode.WHITE, _linf("pgd", p, 1.0), 1.0, Origin.DEFAULT) \
        if has_adaptive else None
    return Suite(",".join(n.value for n in names), fam, columns, sweep, p.cw_radii, budget,
                 unbounded)


#: The adaptive entries every run on an integer graph carries: its white-box gradient is BPDA,
#: so a gradient-free and a transfer column stand beside it (the bpda-weaker check), and Square
#: on its float-activation twin beside Square on its quantized outputs (twin-stronger).
INTEGER_ENTRIES = ("square", "transfer", "square-twin")


def with_integer_columns(suite: Suite, twin: bool = True) -> tuple[Suite, list[str]]:
    """The suite plus the INTEGER_ENTRIES it lacks (and, with them, the masking checks and PGD
    at eps 1); `twin` False leaves out square-twin (a graph without a float-activation twin).
    Returns the added keys."""
    have = {c.name for c in suite.by_mode(Mode.ADAPTIVE)}
    if not twin:
        have.add("square-twin")
    eps = suite.adaptive_eps if suite.adaptive_eps is not None else PARAMS[suite.family].iter_eps
    extra = tuple(Column(e.name, Mode.ADAPTIVE, e, e.eps, Origin.DEFAULT)
                  for e in adaptive_suite(eps, integer=True)
                  if e.name in INTEGER_ENTRIES and e.name not in have)
    if not extra:
        return suite, []
    unbounded = suite.unbounded or Column("pgd@1", Mode.WHITE,
                                          _linf("pgd", PARAMS[suite.family], 1.0), 1.0,
                                          Origin.DEFAULT)
    return replace(suite, columns=suite.columns + extra, unbounded=unbounded), \
        [c.key for c in extra]


def without_mode(suite: Suite, mode: Mode) -> Suite:
    """The suite less the columns of one mode (black-box columns when no source is given)."""
    return replace(suite, columns=tuple(c for c in suite.columns if c.mode is not mode))
