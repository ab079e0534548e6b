"""`qrdeploy attack` as one library call: open the ONNX files, run a suite, write the results.

>>> doc = attack_files("hard.onnx", load_dataset("mnist-5k"), AttackOptions(suite="paper"),
...                    out="results.json", source="other.onnx")

The victim's run is resumable: its state lives beside the output (`results.json.state.npz`) until
the results are written. Transfer sets are cached in the user cache folder (`QRDEPLOY_CACHE`,
default ~/.cache/qrdeploy/transfer; qrdeploy.core.cache), keyed by the source's sha256, the data,
the attack settings and the seed, and reused by every victim and every output folder.

Transfer sources: without `source`, an mnist-family run on 1x28x28
inputs uses the second standard reference model, `models/mnist-standard-seed1.onnx` beside the
package, when it exists (recorded as `source.origin: default` and in `notes`); otherwise the
default suite drops its black-box columns. The adaptive `transfer` column crafts on `unhardened`
(the model before hardening); without it, on the black-box source (noted); without either it is
dropped (noted). An `InputContract` (--input-spec ...) is applied to every model given by the
user; the built-in default source takes float32 NCHW in [0, 1]."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from qrdeploy.attacks.adaptive import AdaptiveAttack, Role
from qrdeploy.core import cache
from qrdeploy.core.progress import Span, spanning
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.data.datasets import EMBEDDED_SHAPES, Dataset
from qrdeploy.errors import ConfigError, OutputError
from qrdeploy.evaluation.build import build_baseline, build_results
from qrdeploy.evaluation.guard import (
    Verdict,
    check_same_input,
    enforce,
    layout_guard,
    reference_contract_hint,
)
from qrdeploy.evaluation.guard import input_guard as guard_input
from qrdeploy.evaluation.replay import save_adversarials
from qrdeploy.evaluation.results import Results, write_results
from qrdeploy.evaluation.runner import (
    Labels,
    RunConfig,
    Subject,
    gradient_blocker,
    run_stages,
)
from qrdeploy.evaluation.shard import Parallel, remove_shard_states, run_evaluation
from qrdeploy.evaluation.subjects import check_fits, open_subject
from qrdeploy.evaluation.suites import (
    CWBudget,
    Family,
    Mode,
    Suite,
    SuiteName,
    build_suite,
    family_of,
    suite_names,
    with_integer_columns,
    without_mode,
)
from qrdeploy.graphio.graph import load_model
from qrdeploy.graphio.inputspec import InputContract

#: the models beside the victim that may take their own input contract (attack_files)
COMPANION_ROLES = ("unhardened", "source", "reference")

log = logging.getLogger(__name__)

#: The default transfer source of each family (its second standard reference model, trained
#: with another seed) and the input shape it takes.
DEFAULT_SOURCES = {Family.MNIST: ("mnist-standard-seed1.onnx", EMBEDDED_SHAPES["mnist-5k"]),
                   Family.CIFAR10: ("cifar10-standard-seed1.onnx",
                                    EMBEDDED_SHAPES["cifar10-10k"])}


@dataclass(frozen=True)
class AttackOptions:
    """What to run: a named suite narrowed by `attacks`, an eps sweep, the label source."""

    suite: str = SuiteName.PAPER.value
    attacks: str | None = None
    eps: tuple[float, ...] | None = ()  # (): no sweep; None: the paper suite's default sweep
    labels: Labels = Labels.TRUE
    family: Family | None = None
    run: RunConfig = field(default_factory=RunConfig)
    cw_budget: CWBudget = CWBudget.QUICK
    baseline: bool = True  # with an unhardened model: run it too, for the before/after
    save_adversarials: Path | None = None  # write every adversarial input here (replay)
    parallel: Parallel = field(default_factory=Parallel)  # --workers / --ray sharding


#: The committed reference models of a checkout (an installed wheel has none).
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def default_source(data: Dataset, family: Family) -> Path | None:
    """The family's second standard reference model (mnist on 1x28x28 inputs, cifar10 on
    3x32x32) when the file is there (the checkout's models/ folder); else None."""
    name, shape = DEFAULT_SOURCES[family]
    path = MODELS_DIR / name
    return path if tuple(data.x.shape[1:]) == shape and path.is_file() else None


def data_family(opts: AttackOptions, data: Dataset) -> Family:
    return opts.family or family_of(data.name, int(data.x.shape[1]))


def make_suite(opts: AttackOptions, data: Dataset, has_source: bool) -> Suite:
    """The suite of the options; black-box columns are dropped from the default suite when no
    source is given (naming them explicitly without a source is an error)."""
    suite = build_suite(opts.suite, data_family(opts, data), opts.attacks, opts.eps,
                        opts.cw_budget)
    if suite.by_mode(Mode.BLACK) and not has_source:
        if SuiteName.PAPER in suite_names(opts.suite) and opts.attacks is None:
            return without_mode(suite, Mode.BLACK)
        raise ConfigError("black-box columns need --source SRC.onnx to craft transfer examples "
                          "on; pass one, or choose --suite white|noise")
    return suite


def _needs_black_columns(opts: AttackOptions, data: Dataset) -> bool:
    """Does the unnarrowed suite have black-box columns?"""
    return bool(build_suite(opts.suite, data_family(opts, data), opts.attacks, opts.eps,
                            opts.cw_budget).by_mode(Mode.BLACK))


def _needs_transfer_source(opts: AttackOptions, data: Dataset) -> bool:
    """Does the unnarrowed suite want a source (black-box or adaptive transfer columns)?"""
    suite = build_suite(opts.suite, data_family(opts, data), opts.attacks, opts.eps,
                        opts.cw_budget)
    return _needs_black_columns(opts, data) or _transfer_keys(suite) != []


def _transfer_keys(suite: Suite) -> list[str]:
    return [c.key for c in suite.by_mode(Mode.ADAPTIVE)
            if isinstance(c.attack, AdaptiveAttack) and c.attack.role is Role.TRANSFER]


def _twin_keys(suite: Suite) -> list[str]:
    """The entries that need an integer graph's float-activation twin (square-twin)."""
    return [c.key for c in suite.by_mode(Mode.ADAPTIVE)
            if isinstance(c.attack, AdaptiveAttack) and c.attack.role is Role.TWIN]


def baseline_suite(suite: Suite, before: Subject) -> Suite:
    """The victim's suite for the model before hardening, less what the baseline block of the
    results would not use: the transfer entry (it crafts on that very model), the L2 columns
    (CW-L2 enters neither worst case nor any masking check, and the block keeps no per-column
    results) and, when it has no float-activation twin (a float model beside an integer
    victim), square-twin."""
    l2 = [c.key for c in suite.columns
          if c.mode in (Mode.WHITE, Mode.BLACK) and not c.bounded]
    drop = _transfer_keys(suite) + l2 + ([] if before.twin else _twin_keys(suite))
    return _drop_keys(suite, drop)


def _drop_keys(suite: Suite, keys: list[str]) -> Suite:
    return replace(suite, columns=tuple(c for c in suite.columns if c.key not in keys))


@dataclass(frozen=True)
class Sources:
    """The models a run crafts transfer examples on, and what the results say about them."""

    black: Subject | None
    adaptive: Subject | None
    black_origin: str = "user"
    adaptive_role: str = "unhardened"
    notes: tuple[str, ...] = ()
    adaptive_note: str | None = None  # noted only when the suite has the adaptive transfer


def resolve_sources(opts: AttackOptions, data: Dataset, source: Subject | None,
                    unhardened: Subject | None, session: SessionConfig,
                    integer: bool = False) -> Sources:
    """The black-box source (the user's, else the mnist default) and the adaptive transfer
    column's source (the unhardened model, else the black-box source). `integer`: the victim is
    an integer graph, to which the adaptive transfer column is always added (it needs a
    source even when the suite asks for none)."""
    notes, origin = [], "user"
    # the default source serves the black-box columns, and the adaptive transfer column only
    # when there is no model before hardening to craft on
    wanted = _needs_black_columns(opts, data) or (
        unhardened is None and (integer or _needs_transfer_source(opts, data)))
    if source is None and wanted:
        path = default_source(data, data_family(opts, data))
        if path is not None:
            source, origin = open_subject(path, session, opts.run.batch_size), "default"
            notes.append(f"transfer source: {path.name} (qrdeploy's default for "
                         f"{data_family(opts, data).value}, the second standard reference "
                         "model; pass --source to choose another)")
    if unhardened is not None:
        return Sources(source, unhardened, origin, "unhardened", tuple(notes))
    note = None if source is None else (
        f"adaptive transfer crafted on the black-box source {source.name}, not on the model "
        "before hardening (pass --unhardened MODEL.onnx)")
    return Sources(source, source, origin, "black-box source", tuple(notes), note)


def _differentiates(suite: Suite, checks: bool = True) -> bool:
    """Does `suite` take the victim's gradient: a white-box column, a sweep, an adaptive
    gradient entry, or (`checks`) the masking checks' PGD at eps = 1?"""
    return bool(suite.by_mode(Mode.WHITE) or suite.sweep or (checks and suite.unbounded)) or any(
        isinstance(c.attack, AdaptiveAttack) and c.attack.role is Role.WHITE
        for c in suite.by_mode(Mode.ADAPTIVE))


def _gradient_free_checks(suite: Suite, victim: Subject, notes: list[str]) -> Suite:
    """A model without input gradients, attacked by gradient-free columns only (Square, the
    transfer and black-box columns, noise): the masking checks that differentiate it, PGD at
    eps = 1 (unbounded-below-100) and the probe's gradient (zero-gradient), are left out with a
    note, instead of refusing the whole run. A gradient column still refuses it
    (`_require_gradients`)."""
    if suite.unbounded is None or _differentiates(suite, checks=False):
        return suite
    why = gradient_blocker(victim.model)
    if why is None:
        return suite
    notes.append("masking checks unbounded-below-100 and zero-gradient not run: the model "
                 f"gives no input gradients ({why})")
    return replace(suite, unbounded=None)


def _require_gradients(suite: Suite, victim: Subject, before: Subject | None, srcs: Sources,
                       black: bool) -> None:
    """Before any attack runs: every model the suite differentiates can be differentiated
    (else one line naming the op and the gradient-free columns to run instead), so that a model
    with an op qrdeploy has no gradient rule for fails at once, not after the transfer crafting
    and the first columns."""
    models = [victim, before] if _differentiates(suite) else []
    models += [srcs.black] if black else []
    models += [srcs.adaptive] if _transfer_keys(suite) else []
    for subject in models:
        check = getattr(subject.model, "require_gradients", None) if subject else None
        if check is not None:
            check()


def attack_files(model: str | Path, data: Dataset, opts: AttackOptions, *, out: str | Path,
                 source: str | Path | None = None, reference: str | Path | None = None,
                 session: SessionConfig | None = None,
                 state_path: Path | None = None, unhardened: str | Path | None = None,
                 contract: InputContract | None = None, input_guard: bool = True,
                 own_contracts: Mapping[str, InputContract] | None = None) -> Results:
    """Run the suite on `model` over `data`, write the validated results JSON to `out`, and
    return the results. A state file left by an interrupted run with the same settings is resumed.
    `unhardened`: the model before hardening, for the adaptive transfer column and (unless
    `opts.baseline` is False) run on the same suite for the report's before/after; `contract`:
    the input contract of the user's models (see the module docstring); `own_contracts`: the
    own contract of a model beside the victim that takes another input, by its role
    ('unhardened', 'source', 'reference'; a float original beside its uint8 NHWC conversion).
    A model beside the victim that shares its contract but not its kind of input (uint8 against
    float, or another layout) is refused in one line naming the option that fixes it.
    `input_guard` first checks that the contract fits the victim, or the `unhardened` model
    when given (a hardened model near chance is a finding, not a wrong contract;
    qrdeploy.evaluation.guard), and the victim's too when the two contracts differ: a mismatch
    raises InputContractError before any attack runs; a suspicion becomes a note."""
    session = session or SessionConfig()
    out = Path(out)
    bs = opts.run.batch_size
    own = dict(own_contracts or {})
    unknown = sorted(set(own) - set(COMPANION_ROLES))
    if unknown:
        raise ConfigError(f"own input contracts are for {', '.join(COMPANION_ROLES)}; "
                          f"got {', '.join(unknown)}")
    paths = {"unhardened": unhardened, "source": source, "reference": reference}
    missing = [r for r in own if paths[r] is None]
    if missing:
        raise ConfigError(f"an own input contract for the {missing[0]} needs that model")
    victim_proto = load_model(model)
    protos = {role: load_model(p) for role, p in paths.items() if p is not None}
    for role, proto in protos.items():
        if role not in own:
            check_same_input(victim_proto, proto, f"--{role} {paths[role]}", contract,
                             option=f"--{role}-input-spec")

    def open_(role: str) -> Subject | None:
        """The model of `role`, opened and run on one image under its contract: an error
        names it and the option that sets that contract."""
        path = paths[role]
        if path is None:
            return None
        used, option = own.get(role, contract), f"--{role}-input-spec"
        if input_guard and role != "unhardened":  # that one had the whole guard above
            relaid = layout_guard(protos[role], tuple(data.x.shape[1:]), used,
                                  f"--{role} {path}", option if role in own else "--input-spec")
            if relaid is not None:
                with reference_contract_hint(f"--{role} {path}", own.get(role), option=option):
                    enforce(relaid)
        with reference_contract_hint(f"--{role} {path}", own.get(role), option=option):
            subject = open_subject(path, session, bs, used, proto=protos[role])
            check_fits([subject], data.x)
            return subject

    guard_notes = []
    if input_guard:  # on the model before hardening when there is one, as check does; on the
        # victim too when that model has its own contract
        guarded: list[tuple[str, onnx.ModelProto, InputContract | None, str | None]] = []
        if unhardened is None or "unhardened" in own:
            guarded.append((str(model), victim_proto, contract, None))
        if unhardened is not None:
            guarded.append((f"--unhardened {unhardened}", protos["unhardened"],
                            own.get("unhardened", contract), "--unhardened-input-spec"))
        for name, proto, used, hint in guarded:
            option = hint if hint and "unhardened" in own else "--input-spec"
            with (reference_contract_hint(name, own.get("unhardened"), option=hint) if hint
                  else contextlib.nullcontext()):
                found = guard_input(proto, data, used, session, bs, name=name, option=option)
                enforce(found)
            if found.verdict is Verdict.SUSPECT:
                guard_notes.append(found.message())
    victim = open_subject(model, session, bs, contract, proto=victim_proto)
    ref = open_("reference")
    before = open_("unhardened")
    srcs = resolve_sources(opts, data, open_("source"), before, session, integer=victim.bpda)
    # the user's models beside the victim were run on one image when opened (open_)
    check_fits([victim, srcs.black if srcs.black_origin == "default" else None], data.x)
    suite = make_suite(opts, data, srcs.black is not None)
    notes = list(srcs.notes) + guard_notes
    if srcs.black is None and _needs_black_columns(opts, data):
        notes.append("black-box columns dropped: no transfer source (no --source, and no "
                     "default source for these inputs); pass --source SRC.onnx to run them")
    inferred = family_of(data.name, int(data.x.shape[1]))
    if opts.family is not None and opts.family is not inferred:
        notes.append(f"the {opts.family.value} attack parameters (eps, steps) were asked for on "
                     f"{data.name}, whose own are {inferred.value}'s")
    if victim.bpda:
        suite, added = with_integer_columns(suite, victim.twin)
        if srcs.adaptive is None:  # dropped below, with its own note
            added = [k for k in added if k not in _transfer_keys(suite)]
        if added:
            notes.append(f"integer graph: its white-box gradient is BPDA (straight-through); "
                         f"added beside it: {', '.join(added)} (checks bpda-weaker, "
                         "twin-stronger)")
        if not victim.twin:
            why = getattr(victim.model, "twin_error", None) or "no activation is quantized"
            notes.append(f"adaptive/square-twin not run: the graph has no float-activation "
                         f"twin ({why})")
    if srcs.adaptive_note is not None and _transfer_keys(suite):
        notes.append(srcs.adaptive_note)
    if srcs.adaptive is None and _transfer_keys(suite):
        notes.append("adaptive transfer dropped: no --unhardened model and no transfer source")
        suite = _drop_keys(suite, _transfer_keys(suite))
    suite = _gradient_free_checks(suite, victim, notes)
    _require_gradients(suite, victim, before if opts.baseline else None, srcs,
                       black=bool(suite.by_mode(Mode.BLACK)))
    state = state_path or out.with_name(out.name + ".state.npz")
    run = RunConfig(opts.run.seed, bs, state, cache.cache_dir("transfer"),
                    keep_adversarials=opts.save_adversarials is not None)
    black = srcs.black if suite.by_mode(Mode.BLACK) else None
    bsuite = baseline_suite(suite, before) if before is not None and opts.baseline else None
    # one progress line over both runs: the first one's ETA counts the baseline's work too
    n, crafted = len(data.x), black is not None
    works = [sum(st.work for st in run_stages(s, n, crafted)) for s in (suite, bsuite) if s]
    t0 = time.monotonic()
    with spanning(Span(after=sum(works[1:]))):
        ev = run_evaluation(opts.parallel, victim, data.x, data.y, suite, source=black,
                            reference=ref, labels=opts.labels, config=run,
                            adaptive_source=srcs.adaptive if _transfer_keys(suite) else None)
    if opts.save_adversarials is not None:
        save_adversarials(opts.save_adversarials, ev, data.x, data.name, data.split)
    baseline = None
    if before is not None and bsuite is not None:
        log.info("the model before hardening, %s, on the same suite less its L2 and transfer "
                 "columns (the report's before/after)", before.name)
        base_state = out.with_name(out.name + ".baseline.state.npz")
        with spanning(Span(before=works[0], seconds=time.monotonic() - t0,
                           label="before hardening")):
            bev = run_evaluation(opts.parallel, before, data.x, data.y, bsuite, source=black,
                                 reference=ref, labels=opts.labels,
                                 config=replace(run, state_path=base_state,
                                                keep_adversarials=False))
        baseline = build_baseline(bev)
    results = build_results(ev, data_name=data.name, split=data.split, session=session,
                            source_origin=srcs.black_origin,
                            adaptive_source_role=srcs.adaptive_role, notes=notes,
                            baseline=baseline)
    try:
        write_results(out, results)
    except OutputError as exc:  # the work is done: say where it is kept
        kept = [p for p in (state, *state.parent.glob(f"{state.name}.shard-*-of-*.npz"))
                if p.exists()]
        if kept:
            raise OutputError(f"{exc}; the attacks' results are kept in {kept[0]}: a rerun of "
                              "the same command (same -o) writes them without attacking "
                              "again") from exc
        raise
    for path in (state, out.with_name(out.name + ".baseline.state.npz")):
        path.unlink(missing_ok=True)
        remove_shard_states(path)
    return results


