"""The gradient-masking checks of a run (qrdeploy.evaluation.masking) assembled from an Evaluation.

After the attacks, the runner's per-sample flags become `masking.Arm`s and the probe of the clean
points (logits, CE input gradients) feeds the statistics of one model:
- zero-gradient: the CE input gradient at the clean points (computed once);
- logit-gap, probability-outputs: the clean logits;
- black-box-stronger: black-box (transfer) and noise columns, and the adaptive `transfer`
  column, against every gradient-based attack of the run (`gradient_arms`);
- one-step-stronger: FGSM columns and sweep points against PGD/BIM/MIM ones;
- square-stronger: the adaptive `square` column against every gradient-based attack of the run;
- bpda-weaker (integer graphs only, whose gradient is BPDA): Square, the adaptive transfer column
  and the black-box columns against the BPDA white-box attacks;
- twin-stronger (integer graphs only): what the adaptive `square-twin` column (Square on the
  float-activation twin, scored on the graph) adds to the worst case of every gradient-based
  attack of the run and the adaptive `square` column (the attacks on the graph itself);
- unbounded-below-100: PGD at eps = 1 (`Suite.unbounded`);
- eps-no-effect: every iterative kind of the eps sweep (one check; the first kind that fires is
  named); FGSM curves are not monotone in eps even on honest models, see `sweep_check`.
A restricted adaptive column (run only on the samples that survived the cheaper attacks,
qrdeploy.evaluation.runner) records those cheaper attacks' successes as its own, so its flags are
the per-sample worst case of it and them: valid inside a gradient worst case (the reference of a
comparison), never a challenger of one. See docs/masking.md for each statistic and threshold,
docs/evaluation.md for the wiring."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from qrdeploy.attacks.adaptive import AdaptiveAttack, Role
from qrdeploy.evaluation.masking import (
    Arm,
    Check,
    CheckName,
    Verdict,
    check_black_box,
    check_bpda,
    check_eps_sweep,
    check_logit_gap,
    check_one_step,
    check_probabilities,
    check_square,
    check_twin,
    check_unbounded,
    check_zero_gradient,
    gap_histogram,
)
from qrdeploy.evaluation.metrics import adaptive_worst_case, robust_flags
from qrdeploy.evaluation.runner import Evaluation
from qrdeploy.evaluation.suites import Column, Mode, kind_of, restricted

ITERATIVE = ("pgd", "bim", "mim")


@dataclass(frozen=True)
class Masking:
    """The checks, the verdict and the clean logit-gap histogram (counts per bin of `edges`)."""

    verdict: Verdict
    gap_counts: tuple[int, ...]
    gap_edges: tuple[float, ...]


def _arm(ev: Evaluation, key: str, eps: float | None) -> Arm:
    return Arm(key, robust_flags(ev, key), eps)


def _paper_white(ev: Evaluation) -> list[Column]:
    return [c for c in ev.suite.by_mode(Mode.WHITE) if c.bounded]


def _by_kind(ev: Evaluation, kinds: tuple[str, ...]) -> list[Arm]:
    """White-box columns and sweep points of the given kinds as arms."""
    arms = [_arm(ev, c.key, c.eps) for c in _paper_white(ev) if kind_of(c.name) in kinds]
    return arms + [_arm(ev, p.key, p.eps) for p in ev.suite.sweep if p.kind in kinds]


def _adaptive_arm(ev: Evaluation, name: str) -> Arm | None:
    cols = [c for c in ev.suite.by_mode(Mode.ADAPTIVE) if c.name == name and not restricted(c)]
    return _arm(ev, cols[0].key, cols[0].eps) if cols else None


def gradient_arms(ev: Evaluation) -> list[Arm]:
    """Every gradient-based attack of the run: the paper's white-box L-inf columns and the
    adaptive suite's gradient entries (their flags include the cheaper attacks they ran after, so
    each is at least as strong as the entry alone). The strongest of them is what a query-only
    or transfer attack must not beat (AutoAttack's check compares Square with the best
    gradient-based attack the same way)."""
    arms = [_arm(ev, c.key, c.eps) for c in _paper_white(ev)]
    return arms + [_arm(ev, c.key, c.eps) for c in ev.suite.by_mode(Mode.ADAPTIVE)
                   if isinstance(c.attack, AdaptiveAttack) and c.attack.role is Role.WHITE]


def comparison_checks(ev: Evaluation) -> list[Check]:
    """black-box-stronger, one-step-stronger, square-stronger, bpda-weaker and twin-stronger
    from the run's flags."""
    white = gradient_arms(ev)
    others = [_arm(ev, c.key, c.eps) for c in ev.suite.by_mode(Mode.BLACK) if c.bounded]
    others += [_arm(ev, c.key, None) for c in ev.suite.by_mode(Mode.NOISE)]
    transfer = _adaptive_arm(ev, "transfer")
    others += [transfer] if transfer is not None else []
    square = _adaptive_arm(ev, "square")
    free = [a for a in others if a.name != "noise" and not a.name.startswith("noise/")]
    free += [square] if square is not None else []
    return [check_black_box(white, others),
            check_one_step(_by_kind(ev, ("fgsm",)), _by_kind(ev, ITERATIVE)),
            check_square(square, white), check_bpda(ev.victim.bpda, white, free),
            check_twin(_adaptive_arm(ev, "square-twin"), white + ([square] if square else []),
                       integer=ev.victim.bpda)]


def sweep_check(ev: Evaluation) -> Check:
    """eps-no-effect over every swept iterative kind (PGD, BIM, MIM): the first that fires, else
    the first that ran. FGSM curves are left out: one step of size eps overshoots, so even an
    honest model's FGSM accuracy can rise at large eps (docs/evaluation.md measures it on the
    standard reference model); FGSM enters one-step-stronger instead. Without a sweep, the
    suite's PGD column and its PGD at eps = 1 (`unbounded`) are the two points of the curve."""
    u = ev.suite.unbounded
    pgd = [c for c in _paper_white(ev) if c.name == "pgd" and c.eps is not None]
    if not ev.suite.sweep and u is not None and pgd:
        check = check_eps_sweep([_arm(ev, pgd[0].key, pgd[0].eps), _arm(ev, u.key, u.eps)])
        return replace(check, detail=f"pgd: {check.detail}")
    checks = []
    for kind in dict.fromkeys(p.kind for p in ev.suite.sweep if p.kind in ITERATIVE):
        check = check_eps_sweep([_arm(ev, p.key, p.eps) for p in ev.suite.sweep
                                 if p.kind == kind])
        checks.append(replace(check, detail=f"{kind}: {check.detail}"))
    chosen = [c for c in checks if c.fired] or [c for c in checks if c.ran] or checks
    return chosen[0] if chosen else check_eps_sweep([])


def unbounded_check(ev: Evaluation) -> Check:
    u = ev.suite.unbounded
    pr = ev.probe
    why = "no input gradients" if u is None and pr is not None and pr.grads is None else ""
    return check_unbounded(None if u is None else _arm(ev, u.key, u.eps), why=why)


def probe_checks(ev: Evaluation) -> list[Check]:
    """zero-gradient, logit-gap and probability-outputs from the probe of the clean points."""
    pr = ev.probe
    if pr is None:
        return []
    zero = check_zero_gradient(pr.grads) if pr.grads is not None else Check(
        CheckName.ZERO_GRADIENT, False, float("nan"), 0.01, "not run: no input gradients",
        ran=False)
    return [zero, check_logit_gap(pr.logits), check_probabilities(pr.logits)]


def masking(ev: Evaluation) -> Masking | None:
    """Every check of the run and the verdict with the adaptive worst case; None without
    adaptive columns (the suite then carries no checks)."""
    if not ev.suite.checks or ev.probe is None:
        return None
    checks = [*probe_checks(ev), *comparison_checks(ev), unbounded_check(ev), sweep_check(ev)]
    _, worst = adaptive_worst_case(ev)
    counts, edges = gap_histogram(ev.probe.logits)
    return Masking(Verdict(tuple(checks), float(np.mean(worst)),
                           float(np.mean(ev.clean_correct))),
                   tuple(int(c) for c in counts), tuple(float(e) for e in edges))
