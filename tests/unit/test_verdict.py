"""qrdeploy.evaluation.verdict on hand-made records: which columns feed which masking check, the
adaptive per-sample worst case, and the sweep kinds that eps-no-effect reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks import FGSM, PGD
from qrdeploy.attacks.adaptive import adaptive_suite
from qrdeploy.evaluation.metrics import adaptive_worst_case
from qrdeploy.evaluation.runner import Evaluation, Labels, Probe, Record, RunConfig, Subject
from qrdeploy.evaluation.suites import Column, Family, Mode, Origin, Suite, SweepPoint
from qrdeploy.evaluation.verdict import masking, sweep_check
from tests.unit.attack_models import NumpyLinear

N = 50
ENTRIES = {e.name: e for e in adaptive_suite(0.1, steps=2, queries=10)}


def _rec(fooled: np.ndarray) -> Record:
    r = Record.empty(len(fooled), None)
    r.fooled[:] = fooled
    return r


def _flags(k: int) -> np.ndarray:
    """The first k of N samples set."""
    return np.arange(N) < k


def hand(sweep: dict[tuple[str, float], int], adaptive: dict[str, int]) -> Evaluation:
    """pgd (fools 10), sweep points (kind, eps) -> samples fooled, adaptive columns -> fooled;
    every sample is clean-correct; the probe has non-zero gradients and small logits."""
    cols = [Column("pgd", Mode.WHITE, PGD(eps=0.1), 0.1, Origin.DEFAULT)]
    cols += [Column(n, Mode.ADAPTIVE, ENTRIES[n], 0.1, Origin.DEFAULT) for n in adaptive]
    points = tuple(SweepPoint(k, e, FGSM(eps=e) if k == "fgsm" else PGD(eps=e))
                   for k, e in sweep)
    unbounded = Column("pgd@1", Mode.WHITE, PGD(eps=1.0), 1.0, Origin.DEFAULT)
    suite = Suite("paper,adaptive", Family.MNIST, tuple(cols), points, (), unbounded=unbounded)
    records = {"clean": _rec(_flags(0)), "white/pgd": _rec(_flags(10)),
               "white/pgd@1": _rec(_flags(N))}
    records.update({p.key: _rec(_flags(sweep[p.kind, p.eps])) for p in points})
    records.update({f"adaptive/{n}": _rec(_flags(k)) for n, k in adaptive.items()})
    probe = Probe(np.tile(np.arange(4, dtype=np.float32), (N, 1)),
                  np.ones((N, 1, 4, 4), np.float32))
    model = NumpyLinear(np.zeros((4, 16)), np.zeros(4))
    survivors = ("white/pgd", *(p.key for p in points if p.eps <= 0.1))
    return Evaluation(suite, Subject("m", "0" * 64, model), Labels.TRUE, np.zeros(N, np.int64),
                      "0" * 64, RunConfig(), records, None, None, {}, probe, None, survivors)


@pytest.mark.parametrize(("sweep", "fired", "kind"), [
    ({("fgsm", 0.5): 40, ("fgsm", 1.0): 25, ("pgd", 0.5): 45, ("pgd", 1.0): 50}, False, "pgd"),
    ({("pgd", 0.5): 45, ("pgd", 1.0): 30}, True, "pgd"),
    ({("pgd", 0.05): 10, ("pgd", 1.0): 12}, True, "pgd"),
    ({("fgsm", 0.5): 40, ("fgsm", 1.0): 25}, False, None),
], ids=["fgsm-rise-ignored", "pgd-rise", "pgd-flat", "fgsm-only-not-checked"])
def test_eps_no_effect_reads_iterative_sweeps(sweep: dict[tuple[str, float], int], fired: bool,
                                              kind: str | None) -> None:
    check = sweep_check(hand(sweep, {}))
    assert check.fired is fired and check.ran is (kind is not None)
    if kind is not None:
        assert check.detail.startswith(f"{kind}: ")


@pytest.mark.parametrize(("pgd_cw", "square", "fired"), [
    (48, 45, False),  # APGD-like entry beats Square: no masking sign, however weak white/pgd is
    (12, 45, True),  # Square far stronger than every gradient attack of the run
], ids=["gradient-entry-stronger", "square-stronger"])
def test_square_is_compared_with_the_strongest_gradient_attack(pgd_cw: int, square: int,
                                                               fired: bool) -> None:
    """Square is judged against every gradient-based attack of the run, the adaptive gradient
    entries included (restricted ones too: their flags are the worst case of them and the
    cheaper attacks), not only the paper's white-box columns (white/pgd fools 10 here)."""
    ev = hand({("pgd", 0.05): 5, ("pgd", 1.0): 50}, {"pgd-cw": pgd_cw, "square": square})
    keys, worst = adaptive_worst_case(ev)
    assert keys == ["white/pgd", "sweep/pgd@0.05", "adaptive/pgd-cw", "adaptive/square"]
    assert int(worst.sum()) == N - max(pgd_cw, square)
    m = masking(ev)
    assert m is not None and m.verdict.worst_case == pytest.approx(worst.mean())
    by = {c.name.value: c for c in m.verdict.checks}
    assert by["square-stronger"].fired is fired and "adaptive/square" in \
        by["square-stronger"].detail
    assert not by["zero-gradient"].fired and not by["unbounded-below-100"].fired
    assert not by["black-box-stronger"].ran  # no black-box, noise or transfer column here
    assert m.verdict.text.startswith("masking suspected: square-stronger" if fired else
                                     "no masking signs detected")
    assert "not checked: black-box-stronger" in m.verdict.text
    assert sum(m.gap_counts) == N


def test_the_worst_case_covers_every_column_that_ran() -> None:
    """The top-level worst case is over every L-inf column of the run, adaptive ones included:
    here the adaptive pgd-cw (30 fooled), not the paper's pgd (10), decides it."""
    from qrdeploy.evaluation.metrics import worst_case

    ev = hand({("pgd", 0.05): 5}, {"pgd-cw": 30, "square": 20})
    keys, flags = worst_case(ev)
    assert keys == ["white/pgd", "adaptive/pgd-cw", "adaptive/square"]
    assert int(flags.sum()) == N - 30
    assert int(flags.sum()) <= int(adaptive_worst_case(ev)[1].sum())


class _MaskedLinear(NumpyLinear):
    """The same logits as NumpyLinear, with an exactly zero input gradient (fully masked)."""

    def vjp(self, x: np.ndarray, cot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.logits(x), np.zeros_like(x)

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray, loss: Any,
                      temperature: Any = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, value, _ = super().loss_and_grad(x, y, loss, temperature)
        return z, value, np.zeros_like(x)


def test_a_transfer_column_inside_the_adaptive_eps_can_fire_black_box_stronger() -> None:
    """The restricted gradient entries run after the white-box columns only: were a black-box
    column among the cheaper attacks they skip, its successes would count in the gradient worst
    case it is held against, and black-box-stronger could never fire for it. Here the victim's
    gradient is exactly zero and black/fgsm-w (eps 0.1, the adaptive eps) transfers from a
    source with the same logits: the check fires and names it."""
    from qrdeploy.evaluation.runner import evaluate, survivor_keys
    from qrdeploy.evaluation.suites import build_suite

    r = np.random.default_rng(0)
    w, b = r.normal(size=(4, 16)), r.normal(size=4) * 0.1
    x = r.uniform(size=(60, 1, 4, 4)).astype(np.float32)
    y = NumpyLinear(w, b).logits(x).argmax(1)
    suite = build_suite("paper,adaptive", "mnist", attacks="clean,pgd,black/fgsm-w,pgd-cw,apgd-ce",
                        eps=())
    assert survivor_keys(suite) == ("white/pgd",)  # no black-box column among them
    ev = evaluate(Subject("masked", "1" * 64, _MaskedLinear(w, b)), x, y, suite,
                  source=Subject("source", "2" * 64, NumpyLinear(w, b)),
                  adaptive_source=Subject("source", "2" * 64, NumpyLinear(w, b)),
                  config=RunConfig(batch_size=30))
    m = masking(ev)
    assert m is not None
    check = next(c for c in m.verdict.checks if c.name.value == "black-box-stronger")
    assert check.fired and "black/fgsm-w" in check.detail, check.detail
