"""qrdeploy.evaluation.verdict on hand-made records: which columns feed which masking check, the
adaptive per-sample worst case, and the sweep kinds that eps-no-effect reads."""

from __future__ import annotations

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


def test_restricted_columns_enter_the_worst_case_not_the_checks() -> None:
    # square fools 45 and pgd-cw 48 of 50: Square looks far stronger than pgd (10); pgd-cw is
    # restricted, so only the worst case sees it
    ev = hand({("pgd", 0.05): 5, ("pgd", 1.0): 50}, {"pgd-cw": 48, "square": 45})
    keys, worst = adaptive_worst_case(ev)
    assert keys == ["white/pgd", "sweep/pgd@0.05", "adaptive/pgd-cw", "adaptive/square"]
    assert int(worst.sum()) == N - 48
    m = masking(ev)
    assert m is not None and m.verdict.worst_case == pytest.approx((N - 48) / N)
    by = {c.name.value: c for c in m.verdict.checks}
    assert by["square-stronger"].fired and "adaptive/square" in by["square-stronger"].detail
    assert not by["zero-gradient"].fired and not by["unbounded-below-100"].fired
    assert not by["black-box-stronger"].ran  # no black-box, noise or transfer column here
    assert m.verdict.text.startswith("masking suspected: square-stronger")
    assert "not checked: black-box-stronger" in m.verdict.text
    assert sum(m.gap_counts) == N
