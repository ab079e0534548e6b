"""The paper's claims as rules (qrdeploy.paper.claims) on constructed per-sample scores: each rule
held / not held / not significant, the paper's tables and the headline arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from qrdeploy.paper import claims as cl
from qrdeploy.paper.claims import Observations, Outcome, Row, View

N = 400


def flags(k: int, n: int = N, offset: int = 0) -> np.ndarray:
    """n samples, the k from `offset` correct (wrapping), as float scores."""
    out = np.zeros(n)
    out[(np.arange(k) + offset) % n] = 1.0
    return out


def row(acc: dict[str, int] | int, adaptive: int | None = None) -> Row:
    """A row whose every column has `acc` correct samples (or per-column counts)."""
    per = acc if isinstance(acc, dict) else {}
    cols = {k: flags(per.get(k, acc if isinstance(acc, int) else N)) for k in cl.ALL_COLUMNS}
    return Row(cols, None if adaptive is None else flags(adaptive))


def result(obs: Observations, claim: str, view: View = View.PAPER) -> cl.ClaimResult:
    return next(r for r in cl.evaluate_claims(obs) if r.claim == claim and r.view is view)


# ------------------------------------------------------------------------------ paired_diff


def test_paired_diff_pins_mean_and_interval() -> None:
    a, b = flags(200), flags(300)  # b is right on 100 more samples, a never alone
    d = cl.paired_diff(a, b)
    assert d.estimate == pytest.approx(25.0)
    half = cl.Z95 * 100 * np.std(b - a, ddof=1) / np.sqrt(N)
    assert (d.lo, d.hi) == pytest.approx((25.0 - half, 25.0 + half))


# ------------------------------------------------------------------------------ each claim


COLLAPSE = [
    pytest.param(380, 200, Outcome.HELD, id="drop-45-points"),
    pytest.param(380, 340, Outcome.NOT_HELD, id="drop-10-points"),
    # the interval includes 0 but rules out a 20-point drop: the claim is refuted, not open
    pytest.param(380, 379, Outcome.NOT_HELD, id="drop-one-sample"),
]


def test_a_drop_the_interval_neither_shows_nor_rules_out_is_not_significant() -> None:
    assert cl.decide_drop(cl.Diff(-10.0, -25.0, 3.0, 8), 20.0) is Outcome.NOT_SIGNIFICANT
    assert cl.decide_drop(cl.Diff(0.0, -0.55, 0.55, 500), 20.0) is Outcome.NOT_HELD
    assert cl.decide_drop(cl.Diff(-30.0, -40.0, -21.0, 500), 20.0) is Outcome.HELD


@pytest.mark.parametrize(("plain", "quant", "want"), COLLAPSE)
def test_adv_collapses(plain: int, quant: int, want: Outcome) -> None:
    obs = Observations("mnist", {"adv:plain": row({"clean": plain}),
                                 "adv:q": row({"clean": quant})})
    assert result(obs, "adv-collapses-3bit").outcome is want


WB = {k: 0 for k in cl.WHITE_COLUMNS[1:]}
MU_GAIN = [
    pytest.param(100, 300, None, Outcome.HELD, id="gain"),
    pytest.param(300, 100, None, Outcome.NOT_HELD, id="loss"),
    pytest.param(100, 102, None, Outcome.NOT_SIGNIFICANT, id="tiny"),
]


@pytest.mark.parametrize(("plain", "mu", "_", "want"), MU_GAIN)
def test_mu_raises_white_box(plain: int, mu: int, _: None, want: Outcome) -> None:
    obs = Observations("mnist", {"fl:plain": row({k: plain for k in WB} | {"clean": N}),
                                 "fl:mu": row({k: mu for k in WB} | {"clean": N})})
    assert result(obs, "mu-raises-white-box").outcome is want


def test_mu_gain_vanishes_under_adaptive_view() -> None:
    """The paper's gain held, but the adaptive worst case is equal: the L-inf columns are
    bounded by it, and only CW-L2 remains (equal here), so no significant gain."""
    plain = row({k: 100 for k in WB} | {"clean": N}, adaptive=50)
    mu = row({k: 300 for k in WB} | {"clean": N, "white/cw-l2": 100}, adaptive=50)
    obs = Observations("mnist", {"fl:plain": plain, "fl:mu": mu})
    assert result(obs, "mu-raises-white-box", View.PAPER).outcome is Outcome.HELD
    assert result(obs, "mu-raises-white-box", View.ADAPTIVE).outcome is Outcome.NOT_SIGNIFICANT


BB = {k: 0 for k in cl.BLACK_COLUMNS}
BB_EQUAL = [
    pytest.param(390, 390, Outcome.HELD, id="identical"),
    pytest.param(390, 200, Outcome.NOT_HELD, id="drop-47-points"),
    pytest.param(390, 370, Outcome.NOT_SIGNIFICANT, id="drop-5-points-wide-interval"),
]


@pytest.mark.parametrize(("plain", "mu", "want"), BB_EQUAL)
def test_black_box_unchanged(plain: int, mu: int, want: Outcome) -> None:
    obs = Observations("mnist", {"fl:plain": row({k: plain for k in BB}),
                                 "fl:mu": row({k: mu for k in BB})})
    assert result(obs, "bb-unchanged-by-mu").outcome is want


TOLERATES = [
    pytest.param(N, N, Outcome.HELD, id="no-loss"),
    pytest.param(N, 100, Outcome.NOT_HELD, id="collapse"),
    pytest.param(N, 388, Outcome.NOT_SIGNIFICANT, id="loss-3-points-straddles-margin"),
]


@pytest.mark.parametrize(("plain", "quant", "want"), TOLERATES)
def test_fl_tolerates_3bit(plain: int, quant: int, want: Outcome) -> None:
    obs = Observations("mnist", {"fl:plain": row(plain), "fl:q": row(quant)})
    assert result(obs, "fl-tolerates-3bit").outcome is want


DW = [
    pytest.param({"orig": 1.0, "orig-seed1": 1.05, "adv": 2.0}, Outcome.HELD, id="adv-largest"),
    pytest.param({"orig": 2.0, "orig-seed1": 2.05, "adv": 1.0}, Outcome.NOT_HELD,
                 id="adv-smallest"),
    pytest.param({"orig": 1.0, "orig-seed1": 1.5, "adv": 1.2}, Outcome.NOT_SIGNIFICANT,
                 id="within-seed-floor"),
]


@pytest.mark.parametrize(("dw", "want"), DW)
def test_dw_largest_adv(dw: dict[str, float], want: Outcome) -> None:
    assert result(Observations("mnist", {}, dw), "dw-largest-adv").outcome is want


def curve(*ks: int) -> list[tuple[float, np.ndarray]]:
    return [(mu, flags(k)) for mu, k in zip((0.0, 10.0, 255.0, 1000.0), ks, strict=False)]


MONOTONE = [
    pytest.param(curve(100, 200, 300), Outcome.HELD, id="rising"),
    pytest.param(curve(100, 300, 150), Outcome.NOT_HELD, id="significant-fall"),
    pytest.param(curve(100, 101, 102), Outcome.NOT_SIGNIFICANT, id="flat"),
]


@pytest.mark.parametrize(("points", "want"), MONOTONE)
def test_mu_ablation_monotone(points: list[tuple[float, np.ndarray]], want: Outcome) -> None:
    obs = Observations("mnist", {}, ablation={View.PAPER: {"orig": points}})
    assert result(obs, "mu-ablation-monotone").outcome is want


HEADLINE = [
    pytest.param(200, 300, Outcome.HELD, id="gain"),
    pytest.param(300, 200, Outcome.NOT_HELD, id="loss"),
    pytest.param(200, 201, Outcome.NOT_SIGNIFICANT, id="equal"),
]


@pytest.mark.parametrize(("q", "muq", "want"), HEADLINE)
def test_headline(q: int, muq: int, want: Outcome) -> None:
    obs = Observations("mnist", {"fl:q": row(q), "fl:mu-q": row(muq)})
    res = result(obs, "headline-mean-13")
    assert res.outcome is want
    d = cl.headline(obs, View.PAPER, "fl")
    assert isinstance(d, cl.Diff) and d.estimate == pytest.approx(100 * (muq - q) / N)


# ------------------------------------------------------------------------------ not run


NOT_RUN = [
    pytest.param("adv-collapses-3bit", View.PAPER, "model missing", id="no-adv"),
    pytest.param("mu-raises-white-box", View.ADAPTIVE, "model missing", id="no-fl"),
    pytest.param("dw-largest-adv", View.PAPER, "model missing", id="no-dw"),
    pytest.param("mu-ablation-monotone", View.ADAPTIVE, "no ablation", id="no-ablation"),
]


@pytest.mark.parametrize(("claim", "view", "why"), NOT_RUN)
def test_missing_models_are_not_run(claim: str, view: View, why: str) -> None:
    res = result(Observations("mnist", {"orig:plain": row(N)}), claim, view)
    assert res.outcome is Outcome.NOT_RUN and why in res.detail


def test_adaptive_view_without_adaptive_run_is_not_run() -> None:
    obs = Observations("mnist", {"fl:plain": row(N), "fl:mu": row(N)})
    res = result(obs, "mu-raises-white-box", View.ADAPTIVE)
    assert res.outcome is Outcome.NOT_RUN and "adaptive attacks not run" in res.detail


# ------------------------------------------------------------------------------ paper data


HEADLINES = [
    pytest.param("cifar10", 27.84, id="cifar10-matches-slides"),
    pytest.param("mnist", 7.67, id="mnist-tables-give-7.67-not-7.55"),
]


@pytest.mark.parametrize(("family", "want"), HEADLINES)
def test_paper_headline_from_tables(family: str, want: float) -> None:
    assert cl.paper_headline(family) == pytest.approx(want, abs=0.005)


CELLS = [
    pytest.param("mnist", "adv:q", "clean", 42.69, id="mnist-adv-q-clean"),
    pytest.param("mnist", "fl:mu-q", "noise/uniform", 98.21, id="mnist-fl-mu-q-uniform"),
    pytest.param("cifar10", "orig:mu", "white/fgsm-w", 95.30, id="cifar-orig-mu-fgsm-w"),
    pytest.param("cifar10", "adv:mu-q", "black/cw-l2", 15.74, id="cifar-adv-mu-q-bb-cw"),
]


@pytest.mark.parametrize(("family", "row_name", "column", "want"), CELLS)
def test_paper_cells(family: str, row_name: str, column: str, want: float) -> None:
    assert cl.paper_cell(family, row_name, column) == want


def test_every_paper_row_has_13_columns() -> None:
    assert all(len(v) == 13 for fam in cl.PAPER.values() for v in fam.values())
    assert all(len(fam) == 12 for fam in cl.PAPER.values())


# ------------------------------------------------------------------------------ qrdeploy's own


def hardening(float_adaptive: int, qat_adaptive: int, ptq_adaptive: int = 0,
              two_bit_clean: int = N, *, with_rows: bool = True) -> Observations:
    """The hardening rows with the given adaptive worst-case counts (samples from 0) and the
    2-bit model's clean count."""
    rows = {cl.FLOAT_ROW: row(N, float_adaptive), cl.QAT_ROW: row(N, qat_adaptive),
            cl.PTQ_ROW: row(N, ptq_adaptive), cl.QAT2_ROW: row({"clean": two_bit_clean}, 0)}
    return Observations("mnist", rows if with_rows else {}, hardening=True)


QAT_GAP = [  # 400 samples: 8 samples are 2 points
    pytest.param(280, 272, Outcome.HELD, id="exactly-2-points-under"),
    pytest.param(280, 271, Outcome.NOT_HELD, id="just-over-2-points-under"),
    pytest.param(280, 300, Outcome.HELD, id="above-the-float-model"),
    pytest.param(280, 232, Outcome.NOT_HELD, id="12-points-under"),
]


@pytest.mark.parametrize(("fl", "qat", "want"), QAT_GAP)
def test_qat_within_2_points_is_decided_on_the_point_estimate(fl: int, qat: int,
                                                              want: Outcome) -> None:
    res = result(hardening(fl, qat), "qat3-within-2-of-float", View.ADAPTIVE)
    assert res.outcome is want
    assert f"{100 * (qat - fl) / N:+.2f} [" in res.statistic  # the paired interval beside it


@pytest.mark.parametrize(("qat", "ptq", "want"), [
    pytest.param(280, 40, Outcome.HELD, id="qat-far-above"),
    pytest.param(280, 279, Outcome.NOT_SIGNIFICANT, id="one-sample"),
    pytest.param(40, 280, Outcome.NOT_HELD, id="qat-below")])
def test_qat_beats_post_training_quantization(qat: int, ptq: int, want: Outcome) -> None:
    res = result(hardening(300, qat, ptq), "qat3-beats-ptq", View.ADAPTIVE)
    assert res.outcome is want


@pytest.mark.parametrize(("clean", "want"), [
    pytest.param(390, Outcome.HELD, id="97.5-percent"),
    pytest.param(362, Outcome.NOT_SIGNIFICANT, id="90.5-percent-interval-straddles"),
    pytest.param(40, Outcome.NOT_HELD, id="collapsed-to-chance")])
def test_two_bit_model_does_not_collapse(clean: int, want: Outcome) -> None:
    res = result(hardening(300, 300, two_bit_clean=clean), "qat-2bit-no-collapse")
    assert res.outcome is want and f"{100 * clean / N:.1f} %" in res.statistic


def test_own_claims_only_for_profiles_with_hardening_rows() -> None:
    rows = dict(hardening(300, 300).rows)
    ids = {r.claim for r in cl.evaluate_claims(Observations("mnist", rows))}
    assert not ids & {c.id for c in cl.OWN_CLAIMS}
    missing = [r for r in cl.evaluate_claims(hardening(0, 0, with_rows=False))
               if r.claim in {c.id for c in cl.OWN_CLAIMS}]
    assert len(missing) == 3
    assert all(r.outcome is Outcome.NOT_RUN and "model missing" in r.detail for r in missing)
