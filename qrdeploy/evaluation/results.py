"""The results JSON of `qrdeploy attack`: built from an Evaluation, validated against the
versioned schema shipped as qrdeploy/schemas/results.schema.json, written atomically, loaded.

Everything but `timings` is a deterministic function of the inputs, the settings and the seed: a
run killed and resumed writes the same file as an uninterrupted one, apart from `timings`.
Accuracies are fractions; every cell is {k, n, value, ci95} with a 95 % Wilson interval.

Version 2 (issue 11) adds the adaptive columns (mode `adaptive`, `restricted` when run only on the
survivors of the cheaper attacks), `adaptive` (eps, the transfer column's source, the adaptive
per-sample worst case), `masking` (the verdict, every check with its statistic, threshold and
docs link, the clean logit-gap histogram), `settings.cw_budget`, `source.origin` (`default` when
qrdeploy chose the transfer source) and `notes`. Version 1 files are refused with a hint."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.fileio import atomic_write_text
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.core.schema import errors, load_schema
from qrdeploy.core.stats import Proportion
from qrdeploy.core.version import __version__
from qrdeploy.errors import DataError
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
    robust_flags,
    sweep_curves,
    worst_case,
)
from qrdeploy.evaluation.runner import Evaluation, Labels, Subject
from qrdeploy.evaluation.suites import Column, Mode, restricted
from qrdeploy.evaluation.verdict import Masking, masking

SCHEMA_NAME = "results.schema.json"
SCHEMA_VERSION = 2
PACKAGES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "array-api-compat")


def cell(p: Proportion) -> dict[str, Any]:
    return p.to_json()


def flags(a: np.ndarray) -> str:
    """Bool flags (N,) as a '0'/'1' string."""
    return "".join(np.where(np.asarray(a, bool).reshape(-1), "1", "0").tolist())


def unflag(s: str) -> np.ndarray:
    """The inverse of `flags`: a '0'/'1' string as bool flags (N,)."""
    return np.frombuffer(s.encode("ascii"), np.uint8) == ord("1")


def _prop(a: np.ndarray) -> Proportion:
    return Proportion(int(np.asarray(a, bool).sum()), int(a.size))


def _norms(a: np.ndarray) -> list[float]:
    return [float(f"{v:.7g}") for v in a.tolist()]


def _model(s: Subject) -> dict[str, Any]:
    return {"name": s.name, "sha256": s.sha256, "harden": s.harden,
            "num_classes": int(s.model.num_classes)}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _column(ev: Evaluation, c: Column) -> dict[str, Any]:
    rec = ev.records[c.key]
    cw = noise = None
    if c.name == "cw-l2":
        s = cw_summary(ev, c.key)
        cw = {"median_l2": s.median_l2, "found": s.found,
              "at_radius": [{"r": r, "robust": cell(p)} for r, p in s.at_radius]}
    if c.mode is Mode.NOISE and rec.draws is not None:
        ns = noise_summary(ev, c.key)
        noise = {"draws": ns.draws, "mean": ns.mean, "mean_ci95": list(ns.mean_ci95),
                 "mean_attacked": ns.mean_attacked, "worst": cell(ns.worst),
                 "fooled_draws": [flags(d) for d in rec.draws]}
    return {"key": c.key, "name": c.name, "mode": c.mode.value, "eps": c.eps,
            "origin": c.origin.value, "attack": None if c.attack is None else repr(c.attack),
            "robust": cell(_prop(robust_flags(ev, c.key))),
            "attacked": cell(_prop(attacked_flags(ev, c.key))), "cw": cw, "noise": noise,
            "restricted": restricted(c),
            "per_sample": {"fooled": flags(rec.fooled), "linf": _norms(rec.linf),
                           "l2": _norms(rec.l2)}}


def paired_json(t: PairedTest) -> dict[str, Any]:
    return {"a": t.a, "b": t.b, "n": t.n, "acc_a": t.acc_a, "acc_b": t.acc_b, "diff": t.diff,
            "ci95": list(t.ci95), "a_only": t.a_only, "b_only": t.b_only,
            "p_value": t.p_value, "significant": t.significant}


def _source(ev: Evaluation, origin: str) -> dict[str, Any] | None:
    if ev.transfer is None:
        return None
    t = ev.transfer
    cols = {k: cell(_prop(t.source_correct & ~r.fooled)) for k, r in t.records.items()}
    return {**_model(t.source), "clean": cell(_prop(t.source_correct)), "columns": cols,
            "origin": origin}


def _adaptive(ev: Evaluation, source_role: str) -> dict[str, Any] | None:
    """The adaptive block: eps, the transfer column's source and the adaptive worst case."""
    if ev.suite.adaptive_eps is None:
        return None
    keys, worst = adaptive_worst_case(ev)
    src = None if ev.adaptive_source is None else {**_model(ev.adaptive_source),
                                                   "role": source_role}
    return {"eps": ev.suite.adaptive_eps, "source": src,
            "survivor_columns": list(ev.survivor_keys),
            "restricted": [c.key for c in ev.suite.by_mode(Mode.ADAPTIVE) if restricted(c)],
            "worst_case": {"columns": keys, "robust": cell(_prop(worst))},
            "per_sample_worst_case": flags(worst)}


def _finite(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def masking_json(m: Masking | None) -> dict[str, Any] | None:
    """The verdict, every check (statistic/threshold null when not run) and the histogram."""
    if m is None:
        return None
    v = m.verdict
    checks = [{"name": c.name.value, "fired": c.fired, "ran": c.ran,
               "statistic": _finite(c.statistic), "threshold": _finite(c.threshold),
               "detail": c.detail, "doc": c.doc} for c in v.checks]
    return {"verdict": v.text, "suspected": v.suspected, "worst_case": v.worst_case,
            "checks": checks,
            "gap_histogram": {"edges": [_finite(e) for e in m.gap_edges],
                              "counts": list(m.gap_counts)}}


def _sweeps(ev: Evaluation) -> list[dict[str, Any]]:
    by_key = {(p.kind, p.eps): p for p in ev.suite.sweep}
    out = []
    for kind, points in sweep_curves(ev).items():
        pts = [{"eps": p.eps, "attack": repr(by_key[kind, p.eps].attack), "robust": cell(p.robust),
                "worst": cell(p.worst), "fooled": flags(ev.records[by_key[kind, p.eps].key].fooled)}
               for p in points]
        out.append({"kind": kind, "points": pts})
    return out


def build_results(ev: Evaluation, *, data_name: str, split: str,
                  session: SessionConfig | None = None, source_origin: str = "user",
                  adaptive_source_role: str = "unhardened",
                  notes: Sequence[str] = ()) -> dict[str, Any]:
    """The results document of an Evaluation (validated before it is returned). source_origin:
    'user' or 'default' (qrdeploy chose the transfer source); adaptive_source_role: what the
    adaptive transfer column crafted on ('unhardened' or 'black-box source'); notes: lines the
    report prints (what was chosen or dropped for the user)."""
    session = session or SessionConfig()
    wc_keys, wc = worst_case(ev)
    doc = {
        "schema": "qrdeploy/results", "schema_version": SCHEMA_VERSION,
        "qrdeploy_version": __version__,
        "victim": _model(ev.victim), "source": _source(ev, source_origin),
        "reference": None if ev.reference is None else _model(ev.reference),
        "data": {"name": data_name, "split": split, "n": ev.n, "fingerprint": ev.data_fingerprint,
                 "labels": ev.labels.value, "family": ev.suite.family.value},
        "settings": {
            "suite": ev.suite.name, "seed": ev.config.seed, "batch_size": ev.config.batch_size,
            "cw_budget": ev.suite.cw_budget.value,
            "attacks": [{"key": c.key, "attack": None if c.attack is None else repr(c.attack),
                         "eps": c.eps, "origin": c.origin.value} for c in ev.suite.columns],
            "sweep_eps": sorted({p.eps for p in ev.suite.sweep}),
            "cw_radii": list(ev.suite.cw_radii), "alpha": ALPHA,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES},
        "runtime": {"provider": session.provider, "threads": session.threads,
                    "info": ev.victim.info,
                    "packages": {"python": platform.python_version(),
                                 **{p: _version(p) for p in PACKAGES}}},
        "clean": cell(_prop(ev.clean_correct)),
        "columns": [_column(ev, c) for c in ev.suite.columns],
        "worst_case": {"columns": wc_keys, "robust": cell(_prop(wc))},
        "adaptive": _adaptive(ev, adaptive_source_role),
        "masking": masking_json(masking(ev)),
        "notes": list(notes),
        "sweeps": _sweeps(ev),
        "comparisons": [paired_json(paired_test(robust_flags(ev, a), robust_flags(ev, b), a, b))
                        for a, b in attack_pairs(ev.suite)],
        "per_sample": {"labels": ev.y.tolist(), "clean_correct": flags(ev.clean_correct),
                       "worst_case": flags(wc)},
        "timings": {k: round(v, 3) for k, v in ev.timings.items()},
    }
    validate_results(doc)
    return doc


def validate_results(doc: Any, where: str = "results") -> None:
    """DataError naming the first problems when `doc` does not match the shipped schema."""
    if isinstance(doc, dict) and doc.get("schema_version") not in (None, SCHEMA_VERSION):
        raise DataError(f"{where} has schema_version {doc.get('schema_version')!r}; this qrdeploy "
                        f"reads version {SCHEMA_VERSION}: rerun qrdeploy attack")
    schema = load_schema(SCHEMA_NAME)
    problems = errors(doc, schema, schema)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataError(f"{where} does not match the results schema: "
                        f"{'; '.join(problems[:3])}{more}; rerun qrdeploy attack to rewrite it")


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n"


def write_results(path: str | Path, doc: dict[str, Any]) -> Path:
    validate_results(doc)
    return atomic_write_text(path, dumps(doc))


def load_results(path: str | Path) -> dict[str, Any]:
    """A results file, parsed and validated."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(f"results file {p} does not exist; write it with qrdeploy attack") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{p} is not JSON ({exc}); pass a file written by qrdeploy attack"
        ) from None
    validate_results(doc, str(p))
    return dict(doc)


def label_note(doc: dict[str, Any]) -> str:
    """'accuracy' or 'top-1 agreement with REF' for a results document."""
    if doc["data"]["labels"] == Labels.REFERENCE.value:
        ref = doc["reference"]["name"] if doc["reference"] else "the model itself"
        return f"top-1 agreement with {ref}"
    return "accuracy"
