"""The attack runner and its metrics: robust accuracy, worst case, eps curves, CW-L2 radii, noise
draws, paired tests (pinned against scipy), transfer caching, no-labels mode, suites."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from qrdeploy.attacks import CWL2, PGD
from qrdeploy.core.stats import Proportion
from qrdeploy.evaluation.metrics import (
    attacked_flags,
    bootstrap_mean_interval,
    cw_summary,
    noise_summary,
    paired_test,
    robust_flags,
    sweep_curves,
    worst_case,
)
from qrdeploy.evaluation.runner import Evaluation, Labels, Record, RunConfig, Subject, evaluate
from qrdeploy.evaluation.suites import Column, Family, Mode, Origin, Suite, build_suite, restricted
from tests.unit.attack_models import NumpyLinear

st = pytest.importorskip("scipy.stats")

SHAPE = (1, 4, 4)


def linear(seed: int = 0, noise: float = 0.0) -> NumpyLinear:
    r = np.random.default_rng(seed)
    w = r.normal(size=(4, 16))
    return NumpyLinear(w + noise * np.random.default_rng(99).normal(size=w.shape),
                       r.normal(size=4) * 0.1)


def problem(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(1)
    x = r.uniform(size=(n, *SHAPE)).astype(np.float32)  # (N, 1, 4, 4)
    y = linear().logits(x).argmax(1)
    y[:4] = (y[:4] + 1) % 4  # four clean errors
    return x, y


def small_cw(suite: Suite) -> Suite:
    cols = tuple(dataclasses.replace(c, attack=CWL2(max_iterations=40, binary_search_steps=3))
                 if c.name == "cw-l2" else c for c in suite.columns)
    return dataclasses.replace(suite, columns=cols)


def subject(model: NumpyLinear, tag: str = "a") -> Subject:
    return Subject(f"{tag}.onnx", tag * 64, model)


# ----------------------------------------------------------------- metrics on hand-made records


def hand_eval(fooled: dict[str, list[int]], clean_fooled: list[int],
              draws: list[list[int]] | None = None, l2: list[float] | None = None) -> Evaluation:
    """An Evaluation whose records are written by hand (N = len(clean_fooled))."""
    n = len(clean_fooled)
    cols = [Column("pgd", Mode.WHITE, PGD(eps=0.1), 0.1, Origin.DEFAULT),
            Column("fgsm-s", Mode.BLACK, PGD(eps=0.3), 0.3, Origin.DEFAULT),
            Column("cw-l2", Mode.WHITE, CWL2(), None, Origin.CLEVERHANS),
            Column("normal", Mode.NOISE, None, None, Origin.DEFAULT)]
    suite = Suite("hand", Family.MNIST, tuple(cols), (), (0.5, 1.0))

    def rec(f: list[int]) -> Record:
        r = Record.empty(n, None)
        r.fooled[:] = np.array(f, bool)
        return r

    records = {"clean": rec(clean_fooled)}
    records.update({k: rec(v) for k, v in fooled.items()})
    if l2 is not None:
        records["white/cw-l2"].l2[:] = l2
    if draws is not None:
        records["noise/normal"].draws = np.array(draws, bool)
    return Evaluation(suite, Subject("m", "0" * 64, linear()), Labels.TRUE, np.zeros(n, np.int64),
                      "0" * 64, RunConfig(), records, None, None, {})


CLEAN = [0, 0, 0, 1, 1]  # samples 3 and 4 are clean errors
BASE = {"white/pgd": [1, 0, 0, 1, 0], "black/fgsm-s": [0, 1, 0, 1, 0],
        "white/cw-l2": [1, 1, 0, 1, 1], "noise/normal": [0, 0, 0, 0, 0]}


@pytest.mark.parametrize(("key", "robust", "attacked"), [
    ("white/pgd", [0, 1, 1, 0, 0], [0, 1, 1, 0, 1]),  # sample 4: wrong clean, right attacked
    ("black/fgsm-s", [1, 0, 1, 0, 0], [1, 0, 1, 0, 1]),
], ids=["white", "black"])
def test_robust_counts_clean_errors(key: str, robust: list[int], attacked: list[int]) -> None:
    ev = hand_eval(BASE, CLEAN)
    assert robust_flags(ev, key).tolist() == [bool(v) for v in robust]
    assert attacked_flags(ev, key).tolist() == [bool(v) for v in attacked]


def test_worst_case_is_per_sample_and_over_bounded_columns_only() -> None:
    keys, flags = worst_case(hand_eval(BASE, CLEAN))
    assert keys == ["white/pgd", "black/fgsm-s"]  # CW-L2 (unbounded) and noise are not in it
    assert flags.tolist() == [False, False, True, False, False]


@pytest.mark.parametrize(("l2", "median", "at_r"), [
    ([0.3, 0.8, 0.0, 0.0, 0.0], 0.55, [2, 1]),  # found on samples 0, 1 (2 is not fooled)
    ([2.0, 3.0, 0.0, 0.0, 0.0], 2.5, [3, 3]),  # far examples: accuracy at small r stays high
], ids=["near", "far"])
def test_cw_median_and_radii(l2: list[float], median: float, at_r: list[int]) -> None:
    ev = hand_eval(BASE, [0, 0, 0, 1, 1], l2=l2)
    s = cw_summary(ev, "white/cw-l2")
    assert s.found == 2 and s.median_l2 == pytest.approx(median)
    assert [p.k for _, p in s.at_radius] == at_r  # clean-correct and no example within r


def test_noise_mean_over_draws_and_worst_of_k() -> None:
    draws = [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 1]]  # (3 draws, 5 samples)
    s = noise_summary(hand_eval(BASE, CLEAN, draws=draws), "noise/normal")
    # robust per draw (clean-correct 0, 1, 2): 2/5, 3/5, 1/5 -> mean 6/15
    assert s.draws == 3 and s.mean == pytest.approx(6 / 15)
    assert s.mean_attacked == pytest.approx(1 - 4 / 15)  # the paper's column: 4 fooled of 15
    assert (s.worst.k, s.worst.n) == (1, 5)  # only sample 2 survives all draws
    assert s.mean_ci95[0] <= s.mean <= s.mean_ci95[1]


# ------------------------------------------------------------------------ paired tests, pinned


@pytest.mark.parametrize(("b", "c"), [(3, 12), (0, 7), (10, 10), (40, 61)], ids=str)
def test_mcnemar_matches_scipy_binomtest(b: int, c: int) -> None:
    a = np.array([1] * b + [0] * c + [1] * 5 + [0] * 3, bool)
    other = np.array([0] * b + [1] * c + [1] * 5 + [0] * 3, bool)
    t = paired_test(a, other)
    assert (t.a_only, t.b_only) == (b, c)
    assert t.p_value == pytest.approx(st.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    assert t.significant == (t.p_value < 0.05)
    assert t.diff == pytest.approx((b - c) / len(a))


@pytest.mark.parametrize(("plus", "minus", "ties"), [(30, 10, 160), (5, 5, 90), (0, 12, 88)],
                         ids=str)
def test_paired_interval_is_newcombes_on_the_discordant_counts(plus: int, minus: int,
                                                                ties: int) -> None:
    """One interval of a paired difference in qrdeploy (check, F.L., reports): Newcombe's hybrid
    score interval (pinned to published values in test_stats), a - b in sign."""
    from qrdeploy.core.stats import PairedCounts, newcombe_paired_interval

    a = np.array([1] * plus + [0] * minus + [1] * (ties // 2) + [0] * (ties - ties // 2), bool)
    b = np.array([0] * plus + [1] * minus + [1] * (ties // 2) + [0] * (ties - ties // 2), bool)
    t = paired_test(a, b)
    counts = PairedCounts(ties // 2, plus, minus, ties - ties // 2)
    assert t.ci95 == pytest.approx(newcombe_paired_interval(counts), abs=1e-12)
    assert t.diff == pytest.approx((plus - minus) / len(a))
    assert t.ci95[0] <= t.diff <= t.ci95[1]
    assert (t.ci95[0] > 0) == (plus > minus and t.significant)  # only (30, 10) clears zero


def test_identical_flags_give_no_difference_and_no_significance() -> None:
    f = np.array([1, 0, 1, 1, 0, 1], bool)
    t = paired_test(f, f)
    assert t.diff == 0.0 and t.ci95[0] < 0 < t.ci95[1] and t.p_value == 1.0
    assert not t.significant


def test_noise_interval_matches_scipys_bootstrap() -> None:
    """The noise column's mean over draws keeps a percentile bootstrap (a mean of per-sample
    fractions is not a binomial count)."""
    values = np.random.default_rng(3).integers(0, 11, 300) / 10.0  # (N,) fractions of 10 draws
    lo, hi = bootstrap_mean_interval(values)
    ref = st.bootstrap((values,), np.mean, n_resamples=4000, method="percentile",
                       random_state=0).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.01) and hi == pytest.approx(ref.high, abs=0.01)


def test_wilson_cell_matches_scipy() -> None:
    ref = st.binomtest(81, 263).proportion_ci(method="wilson")
    lo, hi = Proportion(81, 263).interval
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


# --------------------------------------------------------------------------------- the runner


def run(batch: int, suite: Suite | None = None, **kw: object) -> Evaluation:
    x, y = problem()
    s = suite or small_cw(build_suite("white", "mnist", eps=(0.0, 0.05, 0.1, 0.2, 0.4)))
    cfg = RunConfig(batch_size=batch)
    return evaluate(subject(linear()), x, y, s, config=cfg, **kw)  # type: ignore[arg-type]


def test_results_do_not_depend_on_batch_size() -> None:
    picked = "clean,white/cw-l2,pgd,mim,normal,uniform"
    suite = small_cw(build_suite("paper", "mnist", attacks=picked))
    a, b = run(30, suite), run(7, suite)
    for key in a.records:
        np.testing.assert_array_equal(a.records[key].fooled, b.records[key].fooled, err_msg=key)
        np.testing.assert_allclose(a.records[key].l2, b.records[key].l2, rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(a.records["noise/normal"].draws, b.records["noise/normal"].draws)


def test_eps_curve_worst_case_is_non_increasing_and_starts_at_clean() -> None:
    ev = run(10)
    curves = sweep_curves(ev)
    assert set(curves) == {"fgsm", "pgd", "bim", "mim"}
    for kind, pts in curves.items():
        worst = [p.worst.k for p in pts]
        assert worst == sorted(worst, reverse=True), kind
        assert pts[0].eps == 0.0 and pts[0].robust.k == int(ev.clean_correct.sum()), kind
        assert all(p.worst.k <= p.robust.k for p in pts)
    assert curves["pgd"][-1].robust.k < curves["pgd"][0].robust.k  # the attack does something


def test_norms_stay_in_budget() -> None:
    ev = run(10)
    for c in ev.suite.columns:
        if c.eps is not None:
            assert ev.records[c.key].linf.max() <= c.eps + 1e-6, c.key


def test_sweep_points_equal_to_a_column_share_its_job() -> None:
    ev = run(10)
    assert ev.records["sweep/pgd@0.1"] is ev.records["white/pgd"]


class Counting(NumpyLinear):
    calls = 0

    def loss_and_grad(self, *a: object, **k: object) -> object:  # type: ignore[override]
        Counting.calls += 1
        return super().loss_and_grad(*a, **k)  # type: ignore[arg-type]


def test_transfer_set_is_crafted_once_and_reused(tmp_path: Path) -> None:
    x, y = problem()
    src_model = linear(0, noise=0.5)
    source = Subject("src.onnx", "b" * 64, Counting(src_model.w, src_model.b))
    suite = build_suite("black", "mnist", attacks="fgsm-w,fgsm-s")
    cfg = RunConfig(batch_size=10, transfer_dir=tmp_path)
    a = evaluate(subject(linear()), x, y, suite, source=source, config=cfg)
    crafted = Counting.calls
    b = evaluate(subject(linear(5), "c"), x, y, suite, source=source, config=cfg)
    assert crafted > 0 and Counting.calls == crafted  # the second victim reused the cache
    assert len(list(tmp_path.glob("transfer-*.npz"))) == 2
    assert a.transfer is not None and b.transfer is not None
    key = "black/fgsm-s"
    np.testing.assert_array_equal(a.transfer.x_adv[key], b.transfer.x_adv[key])
    assert a.records["black/fgsm-s"].linf.max() == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("reference", [False, True], ids=["self", "reference"])
def test_no_labels_mode_uses_reference_predictions(reference: bool) -> None:
    x, _ = problem()
    ref = subject(linear(3), "r") if reference else None
    suite = build_suite("white", "mnist", attacks="clean,fgsm-w")
    ev = evaluate(subject(linear()), x, None, suite, reference=ref,
                  config=RunConfig(batch_size=10))
    model = (ref or subject(linear())).model
    assert ev.labels is Labels.REFERENCE
    np.testing.assert_array_equal(ev.y, model.logits(x).argmax(1))
    agree = (linear().logits(x).argmax(1) == ev.y).mean()
    assert ev.clean_correct.mean() == pytest.approx(agree)
    assert (agree == 1.0) != reference


# ------------------------------------------------------------------------------------ suites


@pytest.mark.parametrize(("family", "fgsm", "pgd_eps", "pgd_step"), [
    ("mnist", (0.1, 0.3), 0.1, 0.01),
    ("cifar10", (2 / 255, 16 / 255), 4 / 255, 1 / 255),
], ids=["mnist", "cifar10"])
def test_white_suite_defaults(family: str, fgsm: tuple[float, float], pgd_eps: float,
                              pgd_step: float) -> None:
    s = build_suite("white", family)
    assert [c.name for c in s.columns] == ["clean", "cw-l2", "fgsm-w", "fgsm-s", "pgd", "bim",
                                           "mim"]
    by = {c.name: c for c in s.columns}
    assert (by["fgsm-w"].eps, by["fgsm-s"].eps) == pytest.approx(fgsm)
    assert by["pgd"].attack.eps == pytest.approx(pgd_eps)  # type: ignore[union-attr]
    assert by["pgd"].attack.step == pytest.approx(pgd_step)  # type: ignore[union-attr]
    assert by["pgd"].origin is Origin.DEFAULT


@pytest.mark.parametrize(("budget", "steps", "iterations", "lr", "origin"), [
    ("quick", 5, 100, 0.1, Origin.DEFAULT),
    ("paper", 5, 1000, 5e-3, Origin.CLEVERHANS),
], ids=["quick-default", "paper-cleverhans"])
def test_cw_budget(budget: str, steps: int, iterations: int, lr: float, origin: Origin) -> None:
    by = {c.key: c for c in build_suite("paper", "mnist", cw_budget=budget).columns}
    for key in ("white/cw-l2", "black/cw-l2"):
        cw = by[key].attack
        assert isinstance(cw, CWL2) and by[key].origin is origin
        assert (cw.binary_search_steps, cw.max_iterations) == (steps, iterations)
        assert cw.learning_rate == pytest.approx(lr) and cw.initial_const == pytest.approx(1e-2)
    assert build_suite("white", "mnist", cw_budget=budget).cw_budget.value == budget


def test_cw_budget_defaults() -> None:
    """The CLI's options default to the quick budget; the library keeps cleverhans' budget."""
    from qrdeploy.evaluation.campaign import AttackOptions

    assert AttackOptions().cw_budget.value == "quick"
    assert build_suite("white", "mnist").cw_budget.value == "paper"


@pytest.mark.parametrize(("suite", "attacks", "keys"), [
    ("black", None, ["black/cw-l2", "black/fgsm-w", "black/fgsm-m", "black/fgsm-s"]),
    ("noise", None, ["noise/normal", "noise/uniform"]),
    ("paper", "black/fgsm-s,pgd", ["white/pgd", "black/fgsm-s"]),
    ("paper", "fgsm-w,black/fgsm-w,cw-l2", ["white/cw-l2", "white/fgsm-w", "black/fgsm-w"]),
    ("black", "fgsm-w", ["black/fgsm-w"]),
    ("adaptive", None, ["adaptive/pgd-cw", "adaptive/apgd-ce", "adaptive/apgd-dlr",
                        "adaptive/apgd-t-dlr", "adaptive/pgd-ce-t10", "adaptive/pgd-ce-t100",
                        "adaptive/pgd-njs", "adaptive/pgd-f64", "adaptive/square",
                        "adaptive/transfer"]),
    ("paper,adaptive", "clean,pgd,pgd-cw,square", ["clean", "white/pgd", "adaptive/pgd-cw",
                                                   "adaptive/square"]),
    ("white,noise,white", "pgd,normal", ["white/pgd", "noise/normal"]),
], ids=["black", "noise", "qualified", "bare-name-first-mode", "bare-name-black-suite",
        "adaptive", "comma-list", "comma-list-duplicate"])
def test_suite_columns(suite: str, attacks: str | None, keys: list[str]) -> None:
    assert [c.key for c in build_suite(suite, "mnist", attacks).columns] == keys


def test_attacks_override_is_labelled_user() -> None:
    (col,) = build_suite("white", "mnist", "pgd=0.2").columns
    assert col.eps == 0.2 and col.origin is Origin.USER
    assert col.attack.step == pytest.approx(0.02)  # type: ignore[union-attr]


@pytest.mark.parametrize(("family", "eps"), [("mnist", 0.1), ("cifar10", 4 / 255)],
                         ids=["mnist", "cifar10"])
def test_adaptive_suite_eps_unbounded_and_restriction(family: str, eps: float) -> None:
    s = build_suite("paper,adaptive", family)
    assert s.name == "paper,adaptive" and s.checks and s.adaptive_eps == pytest.approx(eps)
    assert s.unbounded is not None and s.unbounded.eps == 1.0
    assert {c.name for c in s.by_mode(Mode.ADAPTIVE) if not restricted(c)} == {"square",
                                                                              "transfer"}
    assert not build_suite("paper", family).checks
    (user,) = build_suite("adaptive", family, "pgd-cw=0.2").columns
    assert user.eps == 0.2 and user.origin is Origin.USER
    assert user.attack.attack.eps == 0.2  # type: ignore[union-attr]


def test_paper_suite_default_sweep_is_fgsm_and_pgd() -> None:
    s = build_suite("paper", "mnist", eps=None)
    assert {p.kind for p in s.sweep} == {"fgsm", "pgd"}
    assert max(p.eps for p in s.sweep) == 1.0
    assert build_suite("white", "mnist", eps=None).sweep == ()


@pytest.mark.parametrize(("family", "fgsm"), [("mnist", "white/fgsm-w"),
                                              ("cifar10", "white/fgsm-w")])
def test_attack_pairs_put_the_stronger_attack_first_at_comparable_eps(family: str,
                                                                      fgsm: str) -> None:
    """White-box before its transfer twin, and PGD before the FGSM at its eps (MNIST: fgsm-w at
    0.1 = PGD's 0.1) or the largest FGSM eps below it (CIFAR-10: fgsm-w at 2/255 < 4/255);
    never FGSM (s), whose eps is three or four times PGD's."""
    from qrdeploy.evaluation.metrics import attack_pairs

    suite = build_suite("paper", family)
    pairs = attack_pairs(suite)
    assert ("white/pgd", fgsm) in pairs
    assert ("white/fgsm-s", "white/pgd") not in pairs and ("white/pgd", "white/fgsm-s") not in pairs
    assert ("white/fgsm-s", "black/fgsm-s") in pairs
    eps = {c.key: c.eps for c in suite.columns}
    for a, b in pairs:  # A's examples may use at least B's budget
        assert eps[a] is None or eps[b] is None or eps[a] >= eps[b] - 1e-12, (a, b)
    only_s = build_suite("white", family, attacks="fgsm-s,pgd")
    assert attack_pairs(only_s) == []  # FGSM with more budget than PGD: no pair
