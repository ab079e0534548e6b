"""Results (qrdeploy.evaluation.results) built from an Evaluation of the attack runner: every
number is computed here from the recorded per-sample flags (qrdeploy.evaluation.metrics), the
masking verdict assembled (qrdeploy.evaluation.verdict), and the document validated."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Sequence

import numpy as np

from qrdeploy.attacks.adaptive import AdaptiveAttack
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.stats import Proportion
from qrdeploy.core.version import __version__
from qrdeploy.evaluation.metrics import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    PairedTest,
    adaptive_worst_case,
    attack_pairs,
    attacked_flags,
    cw_summary,
    noise_summary,
    paired_test,
    paper_worst_case,
    robust_flags,
    sweep_curves,
    worst_case,
)
from qrdeploy.evaluation.results import (
    AdaptiveResult,
    AttackSetting,
    Baseline,
    CheckEntry,
    ColumnResult,
    Comparison,
    CWResult,
    DataInfo,
    MaskingResult,
    ModelEntry,
    NoiseResult,
    PerSample,
    PerSampleSummary,
    Results,
    RuntimeInfo,
    Settings,
    SourceEntry,
    SweepPointResult,
    SweepResult,
    WorstCase,
    flags,
    validate_results,
)
from qrdeploy.evaluation.runner import Evaluation, Subject
from qrdeploy.evaluation.suites import Column, Mode, restricted
from qrdeploy.evaluation.verdict import Masking, masking

PACKAGES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "array-api-compat")


def _prop(a: np.ndarray) -> Proportion:
    return Proportion(int(np.asarray(a, bool).sum()), int(a.size))


def _norms(a: np.ndarray) -> tuple[float, ...]:
    return tuple(float(f"{v:.7g}") for v in a.tolist())


def _model(s: Subject) -> ModelEntry:
    return ModelEntry(s.name, s.sha256, s.harden, int(s.model.num_classes))


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _describe(c: Column, adaptive_source_role: str) -> str | None:
    """The column's attack settings; an adaptive transfer entry names the model it was crafted
    on (the model before hardening, else the black-box source)."""
    if c.attack is None:
        return None
    if isinstance(c.attack, AdaptiveAttack):
        return c.attack.describe("the model before hardening" if adaptive_source_role ==
                                 "unhardened" else "the black-box source")
    return c.attack.describe()


def _column(ev: Evaluation, c: Column, adaptive_source_role: str) -> ColumnResult:
    rec = ev.records[c.key]
    cw = noise = None
    if c.name == "cw-l2":
        s = cw_summary(ev, c.key)
        cw = CWResult(s.median_l2, s.found, s.at_radius)
    if c.mode is Mode.NOISE and rec.draws is not None:
        ns = noise_summary(ev, c.key)
        noise = NoiseResult(ns.draws, ns.mean, ns.mean_ci95, ns.mean_attacked, ns.worst,
                            tuple(flags(d) for d in rec.draws))
    return ColumnResult(c.key, c.name, c.mode.value, c.eps, c.origin.value,
                        _describe(c, adaptive_source_role),
                        _prop(robust_flags(ev, c.key)), _prop(attacked_flags(ev, c.key)), cw,
                        noise, restricted(c),
                        PerSample(flags(rec.fooled), _norms(rec.linf), _norms(rec.l2)))


def comparison(t: PairedTest) -> Comparison:
    return Comparison(t.a, t.b, t.n, t.acc_a, t.acc_b, t.diff, t.ci95, t.a_only, t.b_only,
                      t.p_value, t.significant)


def _source(ev: Evaluation, origin: str) -> SourceEntry | None:
    if ev.transfer is None:
        return None
    t = ev.transfer
    cols = {k: _prop(t.source_correct & ~r.fooled) for k, r in t.records.items()}
    return SourceEntry(_model(t.source), _prop(t.source_correct), cols, origin)


def _adaptive(ev: Evaluation, source_role: str) -> AdaptiveResult | None:
    """The adaptive block: eps, the transfer column's source and the adaptive worst case."""
    if ev.suite.adaptive_eps is None:
        return None
    keys, worst = adaptive_worst_case(ev)
    src = None if ev.adaptive_source is None else _model(ev.adaptive_source)
    return AdaptiveResult(ev.suite.adaptive_eps, src, None if src is None else source_role,
                          tuple(ev.survivor_keys),
                          tuple(c.key for c in ev.suite.by_mode(Mode.ADAPTIVE) if restricted(c)),
                          WorstCase(tuple(keys), _prop(worst)), flags(worst))


def _finite(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def masking_result(m: Masking | None) -> MaskingResult | None:
    """The verdict, every check (statistic/threshold None when not run) and the histogram."""
    if m is None:
        return None
    v = m.verdict
    checks = tuple(CheckEntry(c.name.value, c.fired, c.ran, _finite(c.statistic),
                              _finite(c.threshold), c.detail, c.doc) for c in v.checks)
    return MaskingResult(v.text, v.suspected, v.worst_case, checks,
                         tuple(_finite(e) for e in m.gap_edges), tuple(m.gap_counts))


def _sweeps(ev: Evaluation) -> tuple[SweepResult, ...]:
    by_key = {(p.kind, p.eps): p for p in ev.suite.sweep}
    out = []
    for kind, points in sweep_curves(ev).items():
        pts = tuple(SweepPointResult(p.eps, by_key[kind, p.eps].attack.describe(), p.robust,
                                     p.worst, flags(ev.records[by_key[kind, p.eps].key].fooled))
                    for p in points)
        out.append(SweepResult(kind, pts))
    return tuple(out)


def build_baseline(ev: Evaluation) -> Baseline:
    """The before-hardening block of the results: the baseline model's run of the same suite."""
    wc_keys, wc = paper_worst_case(ev)
    m = masking(ev)
    adaptive = None if ev.suite.adaptive_eps is None else adaptive_worst_case(ev)
    awc = None if adaptive is None else WorstCase(tuple(adaptive[0]), _prop(adaptive[1]))
    return Baseline(_model(ev.victim), _prop(ev.clean_correct),
                    WorstCase(tuple(wc_keys), _prop(wc)), awc,
                    None if m is None else m.verdict.text, flags(ev.clean_correct), flags(wc),
                    None if adaptive is None else flags(adaptive[1]))


def build_results(ev: Evaluation, *, data_name: str, split: str,
                  session: SessionConfig | None = None, source_origin: str = "user",
                  adaptive_source_role: str = "unhardened",
                  notes: Sequence[str] = (), baseline: Baseline | None = None) -> Results:
    """The results of an Evaluation (validated before they are returned). source_origin:
    'user' or 'default' (qrdeploy chose the transfer source); adaptive_source_role: what the
    adaptive transfer column crafted on ('unhardened' or 'black-box source'); notes: lines the
    report prints (what was chosen or dropped for the user)."""
    session = session or SessionConfig()
    wc_keys, wc = worst_case(ev)
    settings = Settings(
        ev.suite.name, ev.config.seed, ev.config.batch_size, ev.suite.cw_budget.value,
        tuple(AttackSetting(c.key, _describe(c, adaptive_source_role), c.eps,
                            c.origin.value) for c in ev.suite.columns),
        tuple(sorted({p.eps for p in ev.suite.sweep})), tuple(ev.suite.cw_radii), ALPHA,
        BOOTSTRAP_RESAMPLES)
    runtime = RuntimeInfo(session.provider, session.threads, dict(ev.victim.info),
                          {"python": platform.python_version(),
                           **{p: _version(p) for p in PACKAGES}})
    results = Results(
        __version__, _model(ev.victim), _source(ev, source_origin),
        None if ev.reference is None else _model(ev.reference),
        DataInfo(data_name, split, ev.n, ev.data_fingerprint, ev.labels.value,
                 ev.suite.family.value),
        settings, runtime, _prop(ev.clean_correct),
        tuple(_column(ev, c, adaptive_source_role) for c in ev.suite.columns),
        WorstCase(tuple(wc_keys), _prop(wc)),
        _adaptive(ev, adaptive_source_role), masking_result(masking(ev)), tuple(notes),
        _sweeps(ev),
        tuple(comparison(paired_test(robust_flags(ev, a), robust_flags(ev, b), a, b))
              for a, b in attack_pairs(ev.suite)),
        PerSampleSummary(tuple(int(v) for v in ev.y.tolist()), flags(ev.clean_correct),
                         flags(wc)),
        dict(ev.timings), baseline)
    validate_results(results.to_json())
    return results
