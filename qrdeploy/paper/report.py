"""The report of `qrdeploy reproduce`: report.md (Tables 1–4 in the paper's layout, ours with
95 % intervals beside the paper's), the adaptive columns with masking verdicts, the claims,
the headline statistic both ways, the μ ablation, the bits sweep, ‖ΔW‖₂, the sufficiency check
and the step log; results.json; CSVs; PNG plots.

Everything here is a function of the step outputs collected by qrdeploy.paper.pipeline
(`Collected`); nothing is attacked or trained here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.fileio import atomic_write_text, sha256_file
from qrdeploy.core.markdown import eps_text, table
from qrdeploy.core.stats import PairedCounts, Proportion, newcombe_paired_interval
from qrdeploy.evaluation.results import AdaptiveResult, Results, unflag
from qrdeploy.paper import claims as cl
from qrdeploy.paper.collected import Collected
from qrdeploy.paper.plots import write_plots

Doc = dict[str, Any]
PAPER_ROWS = ("orig:plain", "orig:q", "adv:plain", "adv:q", "fl:plain", "fl:q", "orig:mu",
              "orig:mu-q", "adv:mu", "adv:mu-q", "fl:mu", "fl:mu-q")
FLOOR_ROWS = ("orig-seed1:plain", "orig-seed1:q")
#: the integer graphs of the (Q) rows (profiles with int8_regimes; ours, not the paper's)
INT8_ROWS = ("orig:q-int8", "adv:q-int8", "fl:q-int8")
HEADERS = {"clean": "Clean", "white/cw-l2": "CW-L2", "white/fgsm-w": "FGSM w",
           "white/fgsm-s": "FGSM s", "white/pgd": "PGD", "white/bim": "BIM", "white/mim": "MIM",
           "black/cw-l2": "BB CW-L2", "black/fgsm-w": "BB FGSM w", "black/fgsm-m": "BB FGSM m",
           "black/fgsm-s": "BB FGSM s", "noise/normal": "Normal", "noise/uniform": "Uniform"}


# ---------------------------------------------------------------------------- per-sample scores


def scores(doc: Results) -> dict[str, np.ndarray]:
    """Per-sample robust score of every column of a run (noise: fraction of draws still
    correct), clean included."""
    correct = doc.clean_flags()
    out = {"clean": correct.astype(np.float64)}
    for c in doc.columns:
        if c.noise is not None:
            draws = np.array([unflag(d) for d in c.noise.fooled_draws])  # (D, N)
            out[c.key] = (correct[None, :] & ~draws).mean(axis=0)
        elif c.key != "clean":
            out[c.key] = (correct & ~c.fooled()).astype(np.float64)
    return out


def cell(doc: Results, key: str) -> tuple[float, float, float] | None:
    """(value, lo, hi) in % of a column; noise: mean over draws with its bootstrap interval."""
    if key == "clean":
        lo, hi = doc.clean.interval
        return 100 * doc.clean.value, 100 * lo, 100 * hi
    col = doc.column(key)
    if col is None:
        return None
    if col.noise is not None:
        nz = col.noise
        return 100 * nz.mean, 100 * nz.mean_ci95[0], 100 * nz.mean_ci95[1]
    lo, hi = col.robust.interval
    return 100 * col.robust.value, 100 * lo, 100 * hi


def observations(c: Collected) -> cl.Observations:
    """The claims' input built from the collected step outputs."""
    rows = {}
    for row, doc in c.results.items():
        ad = doc.adaptive
        rows[row] = cl.Row(scores(doc), None if ad is None else
                           ad.worst_flags().astype(np.float64))
    dw = {r: max(lyr["dw"]["matrix"]["value"] for lyr in forms["q"]["layers"])
          for r, forms in c.lipschitz.items() if "q" in forms}
    abl: dict[cl.View, dict[str, list[tuple[float, np.ndarray]]]] = {}
    for view, key in ((cl.View.PAPER, "paper"), (cl.View.ADAPTIVE, "adaptive")):
        abl[view] = {r: [(pt["mu"], unflag(pt[key]).astype(np.float64))
                         for pt in a["points"] if not pt["quant"]]
                     for r, a in c.ablation.items()}
    return cl.Observations(c.profile.family, rows, dw, abl, bool(c.profile.hardening_regimes))


# ---------------------------------------------------------------------------- markdown pieces


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [*table(header, rows), ""]


def _fmt_cell(ours: tuple[float, float, float] | None, paper: float | None) -> str:
    o = "not run" if ours is None else f"{ours[0]:.1f} [{ours[1]:.1f}, {ours[2]:.1f}]"
    return f"{o} / {'—' if paper is None else f'{paper:.2f}'}"


def _row_cells(c: Collected, row: str, keys: Sequence[str], paper_family: str) -> list[str]:
    regime = row.split(":")[0]
    if row not in c.results:
        why = c.missing.get(regime) or c.data_note or "not run"
        return [row_name(row), why, *[""] * (len(keys) - 1)]
    doc = c.results[row]
    return [row_name(row), *(_fmt_cell(cell(doc, k), cl.paper_cell(paper_family, row, k))
                             for k in keys)]


def row_name(row: str) -> str:
    return cl.row_label(row)


def paper_table(c: Collected, title: str, family: str, keys: Sequence[str]) -> list[str]:
    """One of Tables 1–4: our cell [95 % interval] / the paper's, rows in the paper's order."""
    head = [f"### {title}", ""]
    if c.profile.family != family:
        folder = "CIFAR-10" if family == "cifar10" else "MNIST"
        profiles = "quick-cifar or paper-cifar" if family == "cifar10" else "quick or paper-mnist"
        return [*head, f"not run ({folder}: profile {c.profile.name} is {c.profile.family}; "
                       f"use --profile {profiles})", ""]
    rows = [_row_cells(c, r, keys, family) for r in PAPER_ROWS]
    floor = [_row_cells(c, r, keys, family) for r in FLOOR_ROWS + INT8_ROWS if r in c.results]
    note = ("Each cell: ours (robust accuracy %, correct on the clean input and under the "
            "attack; noise: mean over draws) [95 % interval] / the paper's (slides). Black-box "
            "columns transfer from Orig. seed 1, so its own rows (the seed-variance floor) have "
            "none. Rows marked (Q, int8 act.) are ours: the (Q) model as a full-integer graph, "
            "white-box columns through BPDA gradients.")
    return [*head, note, "", *_table(["Model", *(HEADERS[k] for k in keys)], rows + floor)]


def paper_iterative(doc: Results) -> np.ndarray:
    """Correct and not fooled by the paper's PGD, BIM and MIM (N,) bool."""
    alive = doc.clean_flags()
    for key in ("white/pgd", "white/bim", "white/mim"):
        col = doc.column(key)
        if col is not None:
            alive = alive & ~col.fooled()
    return alive


def _cascade(doc: Results, ad: AdaptiveResult) -> str:
    """'name broken/attacked' of each adaptive gradient entry along the runner's cascade, then
    Square and transfer (run on every sample) with their own robust accuracy."""
    before = doc.clean_flags()
    for key in ad.survivor_columns:
        col = doc.column(key)
        if col is not None:
            before = before & ~col.fooled()
    parts = []
    for c in (c for c in doc.columns if c.mode == "adaptive"):
        fooled = c.fooled()
        if c.restricted:
            parts.append(f"{c.name} {int((before & fooled).sum())}/{int(before.sum())}")
            before = before & ~fooled
        else:
            parts.append(f"{c.name} {100 * c.robust.value:.1f}%")
    return ", ".join(parts)


#: the cell of `_cascade`: counts for the restricted entries, robust accuracy for the others
CASCADE_HEADER = "gradient entries: broken/attacked; square, transfer: robust %"


def _adaptive_row(doc: Results, row: str, ad: AdaptiveResult) -> list[str]:
    return [row_name(row), f"{100 * paper_iterative(doc).mean():.1f}",
            f"{100 * ad.worst_case.robust.value:.1f}", f"{doc.data.n}", _cascade(doc, ad),
            row_verdict(doc)]


def adaptive_table(c: Collected) -> list[str]:
    ran = {r: d for r, d in c.results.items() if d.adaptive is not None}
    rows = [_adaptive_row(ran[r], r, ad) for r in PAPER_ROWS + INT8_ROWS
            if r in ran and (ad := ran[r].adaptive) is not None]
    if not rows:
        return ["## Adaptive attacks", "", "not run (no model, or adaptive attacks off)", ""]
    eps = next(d.adaptive.eps for d in ran.values() if d.adaptive is not None)
    intro = (f"The attack runner's adaptive suite at eps {eps_text(eps)}, run with the paper's "
             "columns (qrdeploy.evaluation.runner): its gradient entries as a cascade, cheapest "
             "first, each on the samples that survived the paper's white-box L-inf columns of at "
             "most that eps and the entries before it ('broken' counts are of that cascade); "
             "Square and transfer on every sample. The adaptive worst case is over all of them and"
             " the paper's columns; the verdict is that run's masking verdict (docs/masking.md), "
             "the same as `qrdeploy attack --suite paper,adaptive` gives.")
    return ["## Adaptive attacks (qrdeploy's, not the paper's)", "", intro, "",
            *_table(["Model", "paper PGD∧BIM∧MIM %", "adaptive worst case %", "n",
                     CASCADE_HEADER, "masking verdict"], rows)]


def int8_table(c: Collected) -> list[str]:
    """(Q) against its full-integer graph (Q, int8 act.), paired on the same samples: clean
    accuracy and the adaptive worst case, each difference with Newcombe's interval."""
    pairs = [(r.replace(":q-int8", ":q"), r) for r in INT8_ROWS if r in c.results]
    pairs = [(q, i) for q, i in pairs if q in c.results]
    if not pairs:
        return []
    rows = []
    for q, i in pairs:
        a, b = c.results[q], c.results[i]
        cells = [row_name(i)]
        for new, old in ((b.clean_flags(), a.clean_flags()),
                         (None if b.adaptive is None else b.adaptive.worst_flags(),
                          None if a.adaptive is None else a.adaptive.worst_flags())):
            if new is None or old is None:
                cells += ["not run", ""]
                continue
            cells += [f"{100 * new.mean():.1f} vs {100 * old.mean():.1f}",
                      _paired_cell(new, old)]
        rows.append(cells)
    intro = ("The (Q) models as the integer graphs an edge runtime executes (ours, not the "
             "paper's): the same 3-bit weights with int8 activations calibrated min-max on "
             f"{c.profile.calibrate} training images (qrdeploy.hardening.integer). Attacks score "
             "the integer graph; white-box gradients are the straight-through (BPDA) gradients "
             "of its dequantized twin; Square and transfer need none, and Square also runs on "
             "its float-activation twin (square-twin: quantized logits can stall Square). "
             "Paired on the same samples; differences in points with Newcombe's 95 % interval.")
    return ["## The integer graphs that ship (qrdeploy's, not the paper's)", "", intro, "",
            *_table(["Model", "clean % (int8 vs Q)", "clean difference",
                     "adaptive worst case % (int8 vs Q)", "adaptive difference"], rows)]


#: qrdeploy's hardening rows (profiles with hardening_regimes), in the report's order
HARDENING_ROWS = (cl.FLOAT_ROW, cl.PTQ_ROW, cl.SEARCHED_ROW, cl.QAT_ROW, cl.QAT2_ROW)


def _paired_cell(new: np.ndarray, old: np.ndarray) -> str:
    pc = PairedCounts.from_flags(new, old)
    lo, hi = newcombe_paired_interval(pc)
    return (f"{100 * pc.difference:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
            f"({pc.gains} gained, {pc.losses} lost)")


def _pct(k: int, n: int) -> str:
    lo, hi = Proportion(k, n).interval
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def hardening_table(c: Collected) -> list[str]:
    """The stronger adversarial model, its post-training (Q) and its 3-bit QAT fine-tuning at 3
    and 2 bits: clean accuracy and the adaptive worst case with Wilson intervals, each paired
    with the float model on the same samples."""
    if not c.profile.hardening_regimes:
        return []
    base = c.results.get(cl.FLOAT_ROW)
    base_ad = None if base is None or base.adaptive is None else base.adaptive.worst_flags()
    rows = []
    for row in HARDENING_ROWS:
        doc = c.results.get(row)
        if doc is None:
            why = c.missing.get(row) or c.missing.get(row.split(":")[0]) or c.data_note or \
                "not run"
            rows.append([row_name(row), why, "", "", "", ""])
            continue
        ad = doc.adaptive
        if ad is None:
            rows.append([row_name(row), _pct(doc.clean.k, doc.clean.n), "not run", "", "",
                         row_verdict(doc)])
            continue
        worst = ad.worst_flags()
        vs = "—" if row == cl.FLOAT_ROW or base_ad is None else _paired_cell(worst, base_ad)
        rows.append([row_name(row), _pct(doc.clean.k, doc.clean.n),
                     _pct(int(worst.sum()), worst.size), vs, _cascade(doc, ad),
                     row_verdict(doc)])
    eps = next((d.adaptive.eps for r in HARDENING_ROWS if (d := c.results.get(r)) is not None
                and d.adaptive is not None), None)
    intro = ("Hardening that holds (ours, not the paper's): the stronger adversarial reference "
             "model (Adv. strong; 30 epochs of PGD-10 training), its post-training 3-bit form, "
             "its post-training form with the per-layer bits that `qrdeploy harden --search` "
             "chose for it (searched: the recipe file beside the model, replayed), "
             "and its 3-bit quantization-aware fine-tuning (Adv.+QAT) hardened at 3 and at 2 "
             "bits, each scored by clean accuracy and the adaptive suite alone"
             f"{'' if eps is None else f' at eps {eps_text(eps)}'} (the profile's adaptive "
             "budget; the transfer entry crafts on Orig. seed 1). Percentages with Wilson 95 % "
             "intervals; differences against Adv. strong paired on the same samples, Newcombe's "
             "95 % interval. The claims table holds the pre-registered targets (OWN_CLAIMS in "
             "qrdeploy/paper/claims.py); docs/training.md has the recipes and their seed spread.")
    return ["## Hardening that holds (qrdeploy's, not the paper's)", "", intro, "",
            *_table(["Model", "clean %", "adaptive worst case %", "vs Adv. strong (points)",
                     CASCADE_HEADER, "masking verdict"], rows)]


def row_verdict(doc: Results) -> str:
    """The row's masking verdict, or why there is none."""
    return "not run (adaptive attacks off)" if doc.masking is None else doc.masking.verdict


def claims_table(results: Sequence[cl.ClaimResult]) -> list[str]:
    by_id = {c.id: c for c in cl.CLAIMS + cl.OWN_CLAIMS}
    rows = [[r.claim, by_id[r.claim].paper, by_id[r.claim].rule_text, r.view.value,
             f"**{r.outcome.value}**", r.statistic, r.detail] for r in results]
    intro = ("Written down as rules before anything ran (qrdeploy/paper/claims.py). Thresholds "
             f"that are ours [DEFAULT]: {cl.THRESHOLDS} (points). Intervals: paired, normal "
             "approximation, 95 %.")
    if any(r.claim in {c.id for c in cl.OWN_CLAIMS} for r in results):
        intro += (" Claims whose 'paper' column starts with 'ours' are qrdeploy's own targets for "
                  f"the hardening rows, {cl.OWN_THRESHOLDS}, not the paper's.")
    return ["## Claims", "", intro, "",
            *_table(["claim", "paper", "rule", "view", "outcome", "statistic", "note"], rows)]


def headline_table(c: Collected, obs: cl.Observations) -> list[str]:
    fam = c.profile.family
    rows = []
    for regime in cl.REGIMES:
        for view in cl.View:
            d = cl.headline(obs, view, regime)
            paper = f"{cl.paper_headline(fam, regime):.2f}" if fam in cl.PAPER else "—"
            rows.append([cl.REGIME_LABEL[regime], view.value, str(d), paper])
    stated = cl.PAPER_HEADLINE.get(fam)
    intro = (f"Mean over the 13 columns of X+mu (Q) − X (Q), in points. The slides state "
             f"{stated} for F.L. on this dataset; the paper's own tables give the 'paper' "
             "column (our arithmetic).")
    return ["## Headline statistic", "", intro, "",
            *_table(["regime", "view", "ours (95 % interval)", "paper tables"], rows)]


# ---------------------------------------------------------------------------- the rest of the md


def ablation_table(c: Collected) -> list[str]:
    rows = []
    for regime, a in c.ablation.items():
        for pt in a["points"]:
            vals = [f"{100 * unflag(pt[k]).mean():.1f}" for k in ("clean", "paper", "adaptive")]
            rows.append([cl.REGIME_LABEL[regime], f"{pt['mu']:g}", "(Q)" if pt["quant"] else
                         "fp32", *vals])
    if not rows:
        return ["## μ ablation", "", "not run", ""]
    n = next(iter(c.ablation.values()))["n"]
    return ["## μ ablation (last layer)", "",
            f"n = {n}; paper view: PGD (CE) at the table eps; adaptive view: PGD on the CW "
            "margin. ![mu ablation](mu-ablation.png)", "",
            *_table(["regime", "μ", "form", "clean %", "PGD %", "PGD-CW %"], rows)]


def bits_table(c: Collected) -> list[str]:
    rows = [[cl.REGIME_LABEL[r], str(pt["bits"]),
             f"{100 * pt['value']:.1f} [{100 * pt['ci95'][0]:.1f}, {100 * pt['ci95'][1]:.1f}]"]
            for r, b in c.bits.items() for pt in b["points"]]
    if not rows:
        return ["## Clean accuracy vs bits", "", "not run", ""]
    return ["## Clean accuracy vs bits (per tensor, max scale, narrow)", "",
            "![bits sweep](bits-sweep.png)", "", *_table(["regime", "bits", "clean %"], rows)]


def dw_table(c: Collected) -> list[str]:
    rows = []
    for regime, forms in c.lipschitz.items():
        for form, rep in forms.items():
            for lyr in rep["layers"]:
                amp = lyr["amplification"]
                rows.append([cl.REGIME_LABEL[regime] + cl.FORM_SUFFIX[form], lyr["node"],
                             f"{lyr['w']['matrix']['value']:.3f}",
                             f"{lyr['dw']['matrix']['value']:.3f}",
                             "—" if amp is None or amp["ratio"] is None else
                             f"{amp['ratio']:.2f}"])
    if not rows:
        return ["## ‖ΔW‖₂", "", "not run", ""]
    return ["## ‖ΔW‖₂ per layer and error amplification", "",
            "‖·‖₂ of the weight matrix (conv: reshaped kernel); amplification = propagated / "
            "local relative error (qrdeploy.spectral.analysis). ![dw](dw-bars.png)", "",
            *_table(["model", "layer", "‖W‖₂", "‖ΔW‖₂", "amplification"], rows)]


def sufficiency_rows(c: Collected) -> list[list[str]]:
    """One row per (model, column): accuracy at the budget, at twice it, change, flag."""
    limit = c.profile.sufficiency_points
    rows = []
    for row, pair in c.sufficiency.items():
        for col in pair["budget"].columns:
            a, b = cell(pair["budget"], col.key), cell(pair["doubled"], col.key)
            if a is None or b is None:
                continue
            flag = "budget too small" if abs(b[0] - a[0]) > limit else "ok"
            rows.append([row_name(row), col.key, f"{a[0]:.1f}", f"{b[0]:.1f}",
                         f"{b[0] - a[0]:+.1f}", flag])
    return rows


def sufficiency_table(c: Collected) -> list[str]:
    rows = sufficiency_rows(c)
    if not rows:
        return ["## Budget sufficiency", "", "not run", ""]
    bad = any(r[-1] != "ok" for r in rows)
    head = ("**The budget is flagged as too small**: doubling moved an accuracy by more than "
            f"{c.profile.sufficiency_points:g} point." if bad else
            f"Doubling iterations and restarts moved no accuracy by more than "
            f"{c.profile.sufficiency_points:g} point.")
    return ["## Budget sufficiency", "", head, "",
            *_table(["model", "column", "budget %", "2x budget %", "change", "verdict"], rows)]


def steps_table(c: Collected) -> list[str]:
    rows = [[e.name, e.status.value, f"{e.seconds:.1f}",
             "" if e.computed_seconds is None else f"{e.computed_seconds:.1f}"] for e in c.events]
    total = sum(e.computed_seconds or 0.0 for e in c.events)
    return ["## Steps", "", f"Wall time {c.wall_seconds:.0f} s; computing the steps took "
            f"{total:.0f} s in all when they ran (a reused step records its own).", "",
            *_table(["step", "status", "seconds (this run)", "seconds (when computed)"], rows)]


ModelFiles = dict[str, dict[str, str] | None]


def model_files(c: Collected) -> ModelFiles:
    """Regime -> the model file that ran (path and sha256), None when missing."""
    return {r: None if m is None else {"path": str(m), "sha256": sha256_file(m)}
            for r, m in c.models.items()}


def models_table(c: Collected, files: ModelFiles) -> list[str]:
    source = ("the paper's four trained by `train.*` steps (--retrain), the hardening rows' "
              "read from disk") if c.retrained else "files read from disk"
    rows = [[cl.REGIME_LABEL.get(r, r), "missing" if f is None else f"`{f['path']}`",
             "" if f is None else f["sha256"][:16]] for r, f in files.items()]
    return ["## Models", "", f"Model files: {source}.", "", *_table(["regime", "file", "sha256 "
            "(first 16)"], rows)]


def header(c: Collected, files: ModelFiles) -> list[str]:
    p = c.profile
    budget = _table(["setting", "value"], p.rows())
    notes = [f"- {cl.row_label(r) if ':' in r else cl.REGIME_LABEL[r]}: {why}"
             for r, why in c.missing.items()]
    if c.data_note:
        notes.append(f"- data: {c.data_note}")
    return [f"# Reproduction of Song, Fallon, Li (AAAI-21 RSEML): profile `{p.name}`", "",
            p.note, "", f"Data: {p.data} {p.split}, n = {c.n}; seed {c.seed}; machine: "
            f"{platform.machine()} ({platform.system()}).", "",
            "The paper's numbers come from the slides (docs/method.md section 9). The paper states "
            "no eps, step counts, noise scales, μ value, layer choice or quantizer details: "
            "those are qrdeploy's [DEFAULT]s (docs/method.md, qrdeploy/evaluation/suites.py, "
            "qrdeploy/paper/profiles.py), as are all reduced budgets below.", "",
            *models_table(c, files),
            "## Profile and budgets", "", *budget, "## Not run", "",
            *(notes or [f"- every model of profile `{p.name}` ran; the tables of a data set "
                        "this profile does not use say so in their cells"]), ""]


def render_markdown(c: Collected, claim_results: Sequence[cl.ClaimResult],
                    obs: cl.Observations, files: ModelFiles) -> str:
    """report.md; `files` are the model files as summary() recorded them (hashed once)."""
    lines = [*header(c, files),
             "## Tables 1–4", "",
             *paper_table(c, "Table 1: MNIST white-box", "mnist", cl.WHITE_COLUMNS),
             *paper_table(c, "Table 2: MNIST black-box and noise", "mnist",
                          cl.BLACK_NOISE_COLUMNS),
             *paper_table(c, "Table 3: CIFAR-10 white-box", "cifar10", cl.WHITE_COLUMNS),
             *paper_table(c, "Table 4: CIFAR-10 black-box and noise", "cifar10",
                          cl.BLACK_NOISE_COLUMNS),
             "Eps curves: ![pgd](eps-pgd.png) ![fgsm](eps-fgsm.png)", "",
             *adaptive_table(c), *int8_table(c), *hardening_table(c),
             *claims_table(claim_results),
             *headline_table(c, obs),
             *ablation_table(c), *bits_table(c), *dw_table(c), *sufficiency_table(c),
             *steps_table(c)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- files


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def table_rows(c: Collected) -> list[list[Any]]:
    """Every (row, column) cell: ours with interval and the paper's."""
    out = []
    for row, doc in c.results.items():
        for key in cl.ALL_COLUMNS:
            ours = cell(doc, key)
            if ours is not None:
                out.append([row, row_name(row), key, *(round(v, 4) for v in ours),
                            cl.paper_cell(c.profile.family, row, key)])
    return out


def claims_rows(results: Sequence[cl.ClaimResult]) -> list[list[str]]:
    return [[r.claim, r.view.value, r.outcome.value, r.statistic, r.detail] for r in results]


def summary(c: Collected, results: Sequence[cl.ClaimResult], obs: cl.Observations) -> Doc:
    """results.json: cells, claims, headline, budgets, verdicts, steps (timings last)."""
    head = {f"{r}|{v.value}": str(cl.headline(obs, v, r)) for r in cl.REGIMES for v in cl.View}
    return {
        "schema": "qrdeploy/reproduce", "schema_version": 1, "profile": c.profile.settings(),
        "seed": c.seed, "n": c.n, "models": model_files(c), "retrained": c.retrained,
        "missing": c.missing, "data_note": c.data_note,
        "cells": [dict(zip(("row", "label", "column", "value", "lo", "hi", "paper"), r,
                           strict=True)) for r in table_rows(c)],
        "claims": [dict(zip(("claim", "view", "outcome", "statistic", "detail"), r, strict=True))
                   for r in claims_rows(results)],
        "headline": head,
        "paper_headline": {"stated": cl.PAPER_HEADLINE, "from_tables": {
            f: cl.paper_headline(f) for f in cl.PAPER}},
        "masking": {row: row_verdict(doc) for row, doc in c.results.items()},
        "sufficiency": sufficiency_rows(c),
        "steps": [{"step": e.name, "status": e.status.value, "seconds": round(e.seconds, 3),
                   "computed_seconds": e.computed_seconds} for e in c.events],
        "wall_seconds": round(c.wall_seconds, 1),
    }


def _text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def write_report(c: Collected, out: Path, plots: bool = True) -> tuple[Path, ...]:
    """report.md, results.json, tables.csv, claims.csv, bits.csv and the PNGs (unless `plots`
    is False); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    obs = observations(c)
    results = cl.evaluate_claims(obs)
    doc = summary(c, results, obs)
    files = [
        _text(out / "report.md", render_markdown(c, results, obs, doc["models"])),
        _text(out / "results.json", json.dumps(doc, indent=1,
                                               allow_nan=False, default=_nan_safe) + "\n"),
        _text(out / "tables.csv", _csv(["row", "label", "column", "ours", "lo", "hi", "paper"],
                                       table_rows(c))),
        _text(out / "claims.csv", _csv(["claim", "view", "outcome", "statistic", "detail"],
                                       claims_rows(results))),
        _text(out / "bits.csv", _csv(["regime", "bits", "k", "n", "value"],
                                     [[r, p["bits"], p["k"], p["n"], p["value"]]
                                      for r, b in c.bits.items() for p in b["points"]])),
    ]
    return (*files, *write_plots(c, out)) if plots else tuple(files)


def _nan_safe(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else str(value)
