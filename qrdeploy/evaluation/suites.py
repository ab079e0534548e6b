"""Named attack suites: the paper's columns (method.md section 5) as frozen, typed configs.

A suite is a tuple of `Column`s. Each column names one cell of the paper's tables (white-box
`clean, cw-l2, fgsm-w, fgsm-s, pgd, bim, mim`; black-box `cw-l2, fgsm-w, fgsm-m, fgsm-s`; noise
`normal, uniform`) and carries the attack config that fills it plus `origin`, which says where its
settings come from:
- `cleverhans`: cleverhans v3's defaults, which the paper most likely used (CW-L2, MIM decay);
- `default`: qrdeploy's own choice where the paper is silent (method.md [DEFAULT]: every eps,
  step count and noise scale);
- `user`: overridden on the command line (`--attacks pgd=0.2`).

Per-dataset [DEFAULT]s (method.md section 5), in [0, 1] pixel units:

| family  | FGSM w / m / s      | PGD, BIM, MIM eps / step / steps | noise sigma = bound | draws |
|---------|---------------------|----------------------------------|---------------------|-------|
| mnist   | 0.1 / 0.2 / 0.3     | 0.1 / 0.01 / 20                  | 0.3                 | 10    |
| cifar10 | 2/255, 8/255, 16/255| 4/255 / 1/255 / 10               | 0.1                 | 10    |

`build_suite` also takes an eps sweep: every L-inf white-box kind of the suite (fgsm, pgd, bim,
mim) is run at every listed eps, with the step scaled by eps / table eps ([DEFAULT]). Without an
explicit list the paper suite sweeps FGSM and PGD over `Params.sweep_eps` ([DEFAULT]: up to eps 1
on MNIST, 64/255 on CIFAR, where accuracy must reach 0, method.md section 10).

CW-L2's budget: cleverhans v3's 5 binary-search steps x 1,000 Adam iterations (`--cw-budget
paper`, origin `cleverhans`) cannot finish 10 MNIST digits in 300 s on a 2-core CPU, so
`qrdeploy attack` (campaign.AttackOptions) defaults to qrdeploy's own `quick` budget,
`Params.cw_quick` ([DEFAULT], origin `default`; docs/evaluation.md has the measurement).
`build_suite` itself keeps cleverhans' budget unless given `cw_budget="quick"`, so library callers
that set their own CW iterations keep cleverhans' learning rate.

The `adaptive` suite (issue 11, docs/masking.md) has one `Mode.ADAPTIVE` column per entry of
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
    entry = next(e for e in adaptive_suite(eps) if e.name == name)
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


def _parse_item(item: str) -> tuple[str | None, str, float | None]:
    """'[mode/]name[=value]' -> (mode or None, name, value or None)."""
    spec, _, raw = item.strip().partition("=")
    mode, _, name = spec.rpartition("/")
    value = None
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"--attacks item {item!r}: the value after '=' must be a number; e.g. pgd=0.2"
            ) from None
    return (mode or None), name, value


def _select(columns: tuple[Column, ...], attacks: str, p: Params) -> tuple[Column, ...]:
    """The columns named in `attacks`, in suite order, with their values overridden. A bare name
    picks the column of the first mode that has it (white before black before noise); write
    `black/fgsm-s` for the transfer column of the paper suite."""
    chosen: dict[str, Column] = {}
    for item in filter(None, (s.strip() for s in attacks.split(","))):
        mode, name, value = _parse_item(item)
        # columns are in mode order, so a bare name finds the first mode that has it
        c = next((c for c in columns
                  if c.name == name and (mode is None or c.mode.value == mode)), None)
        if c is None:
            known = ", ".join(c.key for c in columns)
            raise ConfigError(f"--attacks: {item!r} is not a column of this suite ({known})")
        chosen[c.key] = _make(c.name, c.mode, p, value) if value is not None else c
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
        num, _, den = item.partition("/")
        try:
            value = float(num) / (float(den) if den else 1.0)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"--eps: {item!r} is not a number; e.g. --eps 0.05,0.1,8/255"
            ) from None
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


def without_mode(suite: Suite, mode: Mode) -> Suite:
    """The suite less the columns of one mode (black-box columns when no source is given)."""
    return replace(suite, columns=tuple(c for c in suite.columns if c.mode is not mode))
