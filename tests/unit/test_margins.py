"""Margins along directions (qrdeploy.margins.search): the search against analytic distances on
linear classifiers, class ranking and scaled seed counts on constructed cases, and generation (every
kept example fools its generator; the others are discarded and counted). numpy only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qrdeploy.margins import search as mg

SHAPE = (1, 4, 4)
EXACT = mg.SearchConfig(t0=0.05, t_max=10.0, bisect_steps=20)


class Linear:
    """logits = W x + b on flattened inputs: every boundary is a hyperplane."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        self.w, self.b = w.astype(np.float64), b.astype(np.float64)
        self.num_classes = len(b)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1) @ self.w.T + self.b).astype(np.float32)  # (N, K)

    def vjp(self, x: np.ndarray, cot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.logits(x), (cot @ self.w).reshape(x.shape).astype(np.float32)


def _analytic(model: Linear, x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
    """First t > 0 where some z_j overtakes z_y along x + t d, ignoring the clip (N, K)."""
    xf, df = x.reshape(len(x), 1, -1), d.reshape(len(x), d.shape[1], -1)  # (N,1,D), (N,K,D)
    out = np.full(d.shape[:2], np.inf)
    for j in range(model.num_classes):
        dw = model.w[j] - model.w[y]  # (N, D)
        gap = -((xf[:, 0] * dw).sum(1) + model.b[j] - model.b[y])  # (N,) > 0 for j != y
        rate = (df * dw[:, None]).sum(2)  # (N, K)
        other = np.asarray(j != y)  # (N,)
        t = np.where((rate > 0) & other[:, None], gap[:, None] / np.where(rate > 0, rate, 1),
                     np.inf)
        out = np.minimum(out, t)
    return out


def _case(seed: int, classes: int) -> tuple[Linear, np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    w = g.normal(size=(classes, 16))
    x = np.full((6, *SHAPE), 0.5, np.float32) + g.uniform(-0.05, 0.05, (6, *SHAPE)).astype(
        np.float32)
    b = np.zeros(classes)
    b[0] = 0.3  # class 0 wins at x ~ 0.5 by a logit gap of 0.3
    model = Linear(w, b - (w @ x[0].reshape(-1)))
    y = mg.predict(model, x)
    return model, x, y


@pytest.mark.parametrize("seed,classes", [(0, 2), (1, 3), (2, 10)], ids=["2-class", "3-class",
                                                                          "10-class"])
def test_search_finds_the_analytic_margin(seed: int, classes: int) -> None:
    model, x, y = _case(seed, classes)
    d = mg.random_directions(seed, "test", np.arange(len(x)), 32, SHAPE)
    got = mg.directional_margins(model, x, y, d, EXACT)
    want = _analytic(model, x, y, d)
    inside = want < 0.45  # no pixel leaves [0, 1] before the crossing, so the clip is inactive
    assert inside.sum() >= 10
    np.testing.assert_allclose(got[inside], want[inside], atol=1e-3)
    assert (got[inside] >= want[inside] - 1e-6).all(), "the result must lie past the boundary"


def test_gradient_direction_gives_the_distance_to_the_hyperplane() -> None:
    model, x, y = _case(3, 2)
    got = mg.directional_margins(model, x, y, mg.gradient_directions(model, x, y), EXACT)[:, 0]
    dw = model.w[1 - y] - model.w[y]  # (N, D)
    gap = (x.reshape(len(x), -1) * dw).sum(1) + model.b[1 - y] - model.b[y]
    want = np.abs(gap) / np.linalg.norm(dw, axis=1)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_direction_that_never_crosses_is_not_reached() -> None:
    # class 1 only wins when pixel 0 exceeds 2, which the clip to [0, 1] never allows
    w = np.zeros((2, 16))
    w[1, 0] = 1.0
    model = Linear(w, np.array([2.0, 0.0]))
    x = np.full((1, *SHAPE), 0.5, np.float32)
    d = np.zeros((1, 2, *SHAPE), np.float32)
    d[0, 0, 0, 0, 0], d[0, 1, 0, 0, 1] = 1.0, 1.0
    got = mg.directional_margins(model, x, np.array([0]), d, mg.SearchConfig(t_max=4.0))
    assert np.isinf(got).all()
    assert mg.top_mean(got, 1, 4.0).tolist() == [4.0]


def test_directions_are_unit_and_keyed_by_sample() -> None:
    a = mg.random_directions(5, "rank", np.array([3, 7]), 4, SHAPE)
    b = mg.random_directions(5, "rank", np.array([7]), 4, SHAPE)
    np.testing.assert_allclose(np.linalg.norm(a.reshape(2, 4, -1), axis=2), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(a[1], b[0])
    c = mg.random_directions(5, "eval", np.array([7]), 4, SHAPE)
    assert not np.allclose(b, c), "another stream name must give independent directions"


@pytest.mark.parametrize(
    "scores,high,low",
    [([5, 1, 3, 9, 7, 2, 8, 4, 6, 0], {3, 6}, {9, 1, 5, 2, 7}),
     ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], {0, 1}, {5, 6, 7, 8, 9}),
     ([2, np.nan, 3, 1, 0], {2}, {1, 4})],
    ids=["distinct", "ties-by-index", "nan-last"],
)
def test_rank_classes(scores: list[float], high: set[int], low: set[int]) -> None:
    levels = mg.rank_classes(np.array(scores, dtype=float))
    assert {i for i, lv in enumerate(levels) if lv is mg.Level.HIGH} == high
    assert {i for i, lv in enumerate(levels) if lv is mg.Level.LOW} == low


LEVELS = mg.rank_classes(np.array([5, 1, 3, 9, 7, 2, 8, 4, 6, 0], dtype=float))


@pytest.mark.parametrize(
    "n_train,ratio,high,medium,low",
    [(60000, 1.0, 20, 100, 150),  # the paper's counts: 1,090 seeds x 40 = 43,600 <= 60,000
     (3500, 1.0, 1, 6, 9),  # mnist-5k: 20, 100, 150 x 3,500 / 60,000 = 1.17, 5.83, 8.75
     (60000, 0.5, 13, 68, 103),  # 1 : 2 cap: 750 seeds at most, counts x 750 / 1,090, floored
     (100, 1.0, 1, 1, 1)],  # tiny: at least one seed wherever the paper has one
    ids=["mnist-60k", "mnist-5k", "capped", "tiny"],
)
def test_seed_counts_scale_and_cap(n_train: int, ratio: float, high: int, medium: int,
                                   low: int) -> None:
    counts = mg.seed_counts(LEVELS, n_train, max_ratio=ratio)
    want = {mg.Level.HIGH: high, mg.Level.MEDIUM: medium, mg.Level.LOW: low}
    assert counts.tolist() == [want[lv] for lv in LEVELS]
    if n_train >= 1000:
        assert counts.sum() * 40 <= ratio * n_train


def test_pick_seeds_takes_the_smallest_scores_per_class() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([3.0, 1.0, 2.0, 0.5, 0.7, 0.1])
    assert mg.pick_seeds(scores, y, np.array([2, 1])).tolist() == [1, 2, 5]


class Stripe:
    """Class 1 only on a stripe 0.3 <= x_0 < 0.5 or where x_1 >= 0.3; class 0 elsewhere: going
    1.75x past the first boundary along +e_0 lands back in class 0, along +e_1 it stays in 1."""

    num_classes = 2

    def logits(self, x: np.ndarray) -> np.ndarray:
        s = x.reshape(len(x), -1)[:, 0]
        on = ((s >= 0.3) & (s < 0.5)) | (x.reshape(len(x), -1)[:, 1] >= 0.3)
        return np.stack([np.zeros_like(s), np.where(on, 1.0, -1.0)], axis=1).astype(np.float32)


def test_generated_examples_fool_the_generator_or_are_discarded() -> None:
    model = Stripe()
    x = np.zeros((1, *SHAPE), np.float32)
    d = np.zeros((1, 3, *SHAPE), np.float32)
    d[0, 0, 0, 0, 0] = 1.0  # crosses at 0.3, lands at 0.525: back in class 0, discarded
    d[0, 1, 0, 0, 1] = 1.0  # crosses at 0.3, stays in class 1: kept
    d[0, 2, 0, 1, 0] = 1.0  # never crosses: not proposed
    y = mg.predict(model, x)
    m = mg.directional_margins(model, x, y, d, EXACT)
    np.testing.assert_allclose(m[0, :2], 0.3, atol=1e-3)
    assert np.isinf(m[0, 2])
    gen = mg.boundary_examples(model, x, y, d, m, np.full((1, 3), 1.75))
    assert (gen.proposed, gen.discarded, len(gen.y)) == (2, 1, 1)
    assert (mg.predict(model, gen.x) != gen.y).all() and gen.y.tolist() == [0]
    np.testing.assert_allclose(gen.x.reshape(-1)[1], 1.75 * m[0, 1], rtol=1e-6)


def test_histogram_counts_finite_and_not_reached() -> None:
    h = mg.histogram(np.array([[0.1, 0.6, np.inf], [0.9, np.inf, 0.2]]), cap=1.0, bins=2)
    assert h["counts"] == [2, 2] and h["not_reached"] == 2


def test_deepfool_finds_the_hyperplane_distance_of_a_linear_model() -> None:
    from qrdeploy.margins.criteria import deepfool_l2

    model, x, y = _case(3, 2)
    dw = model.w[1 - y] - model.w[y]  # (N, D)
    gap = np.abs((x.reshape(len(x), -1) * dw).sum(1) + model.b[1 - y] - model.b[y])
    want = 1.02 * (gap + 1e-4) / np.linalg.norm(dw, axis=1)  # one step, overshoot 0.02
    np.testing.assert_allclose(deepfool_l2(model, x, y), want, rtol=1e-4)


def test_margins_command_prints_a_per_class_table(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    from qrdeploy.cli import main
    from tests.unit.onnx_builders import cnn

    onnx.save(cnn(0, hw=8, k=3), tmp_path / "m.onnx")
    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.uniform(0, 1, (12, 1, 8, 8)).astype(np.float32),
             y=np.arange(12) % 3)
    argv = ["margins", str(tmp_path / "m.onnx"), "--data", f"npz:{tmp_path / 'd.npz'}",
            "--directions", "8", "--top", "4", "--plot", str(tmp_path / "m.png"), "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "## m.onnx" in out and "| all | 12 |" in out
    assert all(f"\n| {c} | 4 |" in out for c in range(3))
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("channels", "noise"), [(1, 0.3), (3, 0.1)], ids=["mnist", "cifar10"])
def test_margins_noise_follows_the_data_family(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               channels: int, noise: float) -> None:
    """The noise columns use the attack suite's scale for the data (a CIFAR-10 model under
    MNIST's sigma 0.3 predicts one class for almost every image); --sigma overrides it."""
    pytest.importorskip("onnxruntime")
    import json

    import onnx

    from qrdeploy.cli import main
    from tests.unit.onnx_builders import cnn

    onnx.save(cnn(0, c=channels, hw=8, k=3), tmp_path / "m.onnx")
    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.uniform(0, 1, (6, channels, 8, 8)).astype(np.float32),
             y=np.arange(6) % 3)
    argv = ["margins", str(tmp_path / "m.onnx"), "--data", f"npz:{tmp_path / 'd.npz'}",
            "--directions", "4", "--top", "2", "--json", "-q"]
    assert main(argv) == 0
    config = json.loads(capsys.readouterr().out)["m.onnx"]["settings"]
    assert (config["sigma"], config["bound"]) == (noise, noise)
    assert main([*argv, "--sigma", "0.05"]) == 0
    config = json.loads(capsys.readouterr().out)["m.onnx"]["settings"]
    assert (config["sigma"], config["bound"]) == (0.05, noise)
