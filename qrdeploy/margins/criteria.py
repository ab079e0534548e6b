"""The F.L. paper's distance-based criteria, per class and overall (docs/method.md section 1,
step 7; the exact definitions of 1909.05443 are unavailable, so these are ours):

(a) mean minimal L2 adversarial distance, by DeepFool (Moosavi-Dezfooli et al. 2016,
    arXiv 1511.04599; written here through `vjp`) or Carlini-Wagner L2 (qrdeploy.attacks.CWL2),
    over correctly classified samples whose attack succeeded (failures are counted);
(b) mean top-k random-direction margin (qrdeploy.margins.search) over correctly classified samples,
with
    directions from the stream (seed, "margins-eval"), independent of any training stream;
(c) accuracy under Gaussian and uniform noise (qrdeploy.attacks noise, sigma = bound = 0.3).

Per-class values expose the inter-class inequality F.L. compensates for. numpy only, so it runs on
an OrtModel (the deployed graph) or a TorchModel through margins.NumpyModel.

>>> report = margin_criteria(OrtModel(onnx.load("m.onnx")), load_dataset("mnist-5k", "test"))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.attacks import CWL2, GaussianNoise, UniformNoise
from qrdeploy.core.plotting import legend_outside, pyplot, save_png, series_styles
from qrdeploy.data.datasets import Dataset
from qrdeploy.errors import ConfigError, DataError
from qrdeploy.margins import search as mg

EVAL_STREAM = "margins-eval"


class L2Attack(StrEnum):
    DEEPFOOL = "deepfool"
    CW = "cw"


@dataclass(frozen=True)
class CriteriaConfig:
    """Settings of the criteria; all ours (the F.L. paper's are unavailable)."""

    directions: int = 64
    top: int = 40
    search: mg.SearchConfig = field(default_factory=mg.SearchConfig)
    l2_attack: L2Attack = L2Attack.DEEPFOOL
    deepfool_steps: int = 50
    overshoot: float = 0.02  # DeepFool's default
    cw_iterations: int = 100  # ours: cleverhans' 1,000 is too slow on a CPU
    sigma: float = 0.3  # docs/method.md section 5 [DEFAULT] for MNIST
    bound: float = 0.3
    batch_size: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "l2_attack", L2Attack(self.l2_attack))
        if not 1 <= self.top <= self.directions:
            raise ConfigError(f"top must be in [1, directions={self.directions}], got {self.top}")
        if min(self.deepfool_steps, self.cw_iterations, self.batch_size) < 1:
            raise ConfigError("deepfool_steps, cw_iterations and batch_size must be >= 1")


def deepfool_l2(model: mg.VjpClassifier, x: np.ndarray, y: np.ndarray, steps: int = 50,
                overshoot: float = 0.02) -> np.ndarray:
    """DeepFool's L2 distance per sample (N,) float64; inf where no example was found in
    `steps` linearised steps. Every class is a candidate; the example is clipped to [0, 1]."""
    n, k = len(y), model.num_classes
    eye = np.eye(k, dtype=np.float32)
    r_tot = np.zeros((n, x[0].size))  # (N, D)
    dist = np.full(n, np.inf)
    live = np.arange(n)
    for _ in range(steps + 1):
        xa = np.clip(x[live] + (1 + overshoot) * r_tot[live].reshape(-1, *x.shape[1:]), 0, 1)
        z = np.asarray(model.logits(xa), np.float64)  # (M, K)
        done = z.argmax(axis=1) != y[live]
        delta = (xa[done] - x[live[done]]).reshape(int(done.sum()), x[0].size)  # (F, D)
        dist[live[done]] = np.linalg.norm(delta, axis=1)
        live, xa, z = live[~done], xa[~done], z[~done]
        if len(live) == 0:
            break
        r_tot[live] += _deepfool_step(model, xa, y[live], z, eye)
    return dist


def _deepfool_step(model: mg.VjpClassifier, xa: np.ndarray, y: np.ndarray, z: np.ndarray,
                   eye: np.ndarray) -> np.ndarray:
    """The smallest step (M, D) onto the nearest linearised boundary z_j = z_y."""
    m = len(y)
    best, step = np.full(m, np.inf), np.zeros((m, xa[0].size))
    for j in range(model.num_classes):
        other = y != j
        if not other.any():
            continue
        _, g = model.vjp(xa, eye[np.full(m, j)] - eye[y])  # d(z_j - z_y)/dx (M, C, H, W)
        g = np.asarray(g, np.float64).reshape(m, -1)
        gap = np.abs(z[:, j] - z[np.arange(m), y]) + 1e-4  # (M,)
        norm = np.maximum(np.linalg.norm(g, axis=1), 1e-12)
        dist = np.where(other, gap / norm, np.inf)
        closer = dist < best
        best[closer] = dist[closer]
        step[closer] = (gap / norm**2)[closer, None] * g[closer]
    return step


@dataclass
class ClassRow:
    """One row of the criteria table (label "all" for the overall row)."""

    label: str
    n: int
    clean_accuracy: float
    l2_mean: float  # over correctly classified samples whose attack succeeded
    l2_failed: int
    margin_top_mean: float  # over correctly classified samples
    margin_cap_fraction: float
    gaussian_accuracy: float
    uniform_accuracy: float


@dataclass
class CriteriaReport:
    rows: list[ClassRow]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": [asdict(r) for r in self.rows]}

    def lines(self) -> list[str]:
        head = ("| class | n | clean | L2 adv. distance | L2 failed | top-k margin | cap frac. "
                "| Gaussian | uniform |")
        out = [head, "|" + "---|" * 9]
        for r in self.rows:
            out.append(f"| {r.label} | {r.n} | {100 * r.clean_accuracy:.2f}% | {r.l2_mean:.3f} "
                       f"| {r.l2_failed} | {r.margin_top_mean:.3f} | {r.margin_cap_fraction:.3f} "
                       f"| {100 * r.gaussian_accuracy:.2f}% | {100 * r.uniform_accuracy:.2f}% |")
        return out


@dataclass
class _PerSample:
    correct: np.ndarray  # (N,) bool
    l2: np.ndarray  # (N,) inf = attack failed, nan = misclassified
    top: np.ndarray  # (N,) nan = misclassified
    capped: np.ndarray  # (N,) fraction of directions not reached
    gaussian: np.ndarray  # (N,) bool correct under noise
    uniform: np.ndarray  # (N,) bool


def _l2(model: mg.VjpClassifier, x: np.ndarray, y: np.ndarray, cfg: CriteriaConfig) -> np.ndarray:
    if cfg.l2_attack is L2Attack.DEEPFOOL:
        return deepfool_l2(model, x, y, cfg.deepfool_steps, cfg.overshoot)
    res = CWL2(max_iterations=cfg.cw_iterations)(model, x, y)  # type: ignore[arg-type]
    d = np.linalg.norm((np.asarray(res.x_adv) - x).reshape(len(x), x[0].size), axis=1)
    return np.where(res.fooled, d, np.inf)


def _measure(model: mg.VjpClassifier, x: np.ndarray, y: np.ndarray, idx: np.ndarray,
             cfg: CriteriaConfig, seed: int) -> _PerSample:
    correct = mg.predict(model, x) == y
    l2, top, capped = (np.full(len(y), np.nan) for _ in range(3))
    c = np.flatnonzero(correct)
    if len(c):
        l2[c] = _l2(model, x[c], y[c], cfg)
        d = mg.random_directions(seed, EVAL_STREAM, idx[c], cfg.directions, x.shape[1:])
        m = mg.directional_margins(model, x[c], y[c], d, cfg.search)  # (M, K)
        top[c] = mg.top_mean(m, cfg.top, cfg.search.t_max)
        capped[c] = (~np.isfinite(m)).mean(axis=1)
    g = GaussianNoise(cfg.sigma)(model, x, y, seed=seed, indices=idx)
    u = UniformNoise(cfg.bound)(model, x, y, seed=seed, indices=idx)
    return _PerSample(correct, l2, top, capped, ~g.fooled_draws[0], ~u.fooled_draws[0])


def _row(label: str, s: _PerSample, mask: np.ndarray) -> ClassRow:
    ok = mask & s.correct
    found = ok & np.isfinite(s.l2)
    return ClassRow(
        label, int(mask.sum()), float(s.correct[mask].mean()),
        float(s.l2[found].mean()) if found.any() else float("nan"),
        int((ok & ~np.isfinite(s.l2)).sum()),
        float(s.top[ok].mean()) if ok.any() else float("nan"),
        float(s.capped[ok].mean()) if ok.any() else float("nan"),
        float(s.gaussian[mask].mean()), float(s.uniform[mask].mean()))


def margin_criteria(model: mg.VjpClassifier, ds: Dataset, config: CriteriaConfig = CriteriaConfig(),
                    seed: int = 0) -> CriteriaReport:
    """The criteria per class and overall on a labelled data set, in batches."""
    if ds.y is None:
        raise DataError(f"{ds.name} {ds.split} has no labels; the criteria need labelled data")
    parts = []
    for i in range(0, len(ds), config.batch_size):
        sl = slice(i, i + config.batch_size)
        parts.append(_measure(model, ds.x[sl], ds.y[sl], np.arange(len(ds))[sl], config, seed))
    s = _PerSample(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in _PerSample.__dataclass_fields__))
    rows = [_row(str(c), s, ds.y == c) for c in range(ds.num_classes) if (ds.y == c).any()]
    rows.append(_row("all", s, np.ones(len(ds), bool)))
    settings = {"data": ds.name, "split": ds.split, "n": len(ds), "seed": seed,
                "directions": config.directions, "top": config.top,
                "t_max": config.search.t_max, "l2_attack": config.l2_attack.value,
                "sigma": config.sigma, "bound": config.bound}
    return CriteriaReport(rows, settings)


def plot_criteria(reports: dict[str, CriteriaReport], path: str | Path) -> Path:
    """Per-class bars of the L2 distance and the top-k margin, one bar group per model."""
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(len(reports), 1)
    colors = [s["color"] for s in series_styles(len(reports))]
    capped_any = False
    for i, (name, rep) in enumerate(reports.items()):
        rows = [r for r in rep.rows if r.label != "all"]
        pos = np.arange(len(rows)) + i * width
        axes[0].bar(pos, [r.l2_mean for r in rows], width, label=name, color=colors[i])
        # a class whose margins hit the search cap t_max: its mean is a lower bound (hatched)
        capped = [r.margin_cap_fraction > 0 for r in rows]
        capped_any |= any(capped)
        axes[1].bar(pos, [r.margin_top_mean for r in rows], width, label=name, color=colors[i],
                    hatch=["//" if c else "" for c in capped], edgecolor="black", linewidth=0.3)
        labels = [r.label for r in rows]
    for ax, title, ylabel in zip(
            axes, ["mean minimal L2 adversarial distance", "mean top-k random-direction margin"],
            ["L2 distance ([0, 1] pixel units)", "margin t along a random direction"],
            strict=True):
        ax.set_title(title)
        ax.set_xlabel("class")
        ax.set_ylabel(ylabel)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
        ax.set_xticklabels(labels)
    t_max = next(iter(reports.values())).settings["t_max"]
    axes[1].axhline(t_max, color="black", linestyle="--", linewidth=0.8,
                    label=f"search cap t_max = {t_max:g}")
    legend_outside(axes[1])  # one legend for both panels (the same models)
    if capped_any:
        axes[1].text(0.0, -0.2, f"hatched: some directions reached no other class within "
                     f"t_max = {t_max:g}; the bar is a lower bound", transform=axes[1].transAxes,
                     fontsize=8)
    return save_png(fig, path, dpi=110)
