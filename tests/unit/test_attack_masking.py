"""`qrdeploy attack --suite paper,adaptive` end to end: the masking checks fire on a
model whose logits are multiplied by 1e4 and not on the same model unscaled, the adaptive worst
case brings the scaled model back to the unscaled one, and the report shows the verdict.

The victims are softmax regressions on mnist-5k pixels (Flatten -> Gemm [-> Mul 1e4]), trained
here with numpy in a fraction of a second, run by onnxruntime through `qrdeploy attack`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from qrdeploy.cli import main
from qrdeploy.core.schema import errors, load_schema
from qrdeploy.data.datasets import load_dataset
from tests.unit.onnx_builders import Builder

SCHEMA = load_schema("results.schema.json")
N = 40
# a short sweep that reaches eps where a linear MNIST model is at 0 %
COMMON = ["--data", "mnist-5k", "-n", str(N), "--suite", "paper,adaptive", "--eps", "0.05,0.5",
          "--attacks", "clean,fgsm-w,fgsm-s,pgd,bim,black/fgsm-s,normal,pgd-cw,apgd-ce,apgd-dlr,"
          "apgd-t-dlr,pgd-ce-t10,pgd-njs,pgd-f64,square,transfer", "-q"]


def softmax_regression(steps: int = 60, lr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """W (10, 784), b (10,) by full-batch gradient descent on 1,000 mnist-5k training digits."""
    d = load_dataset("mnist-5k", "train", n=1000)
    x = d.x.reshape(len(d.x), -1).astype(np.float64)  # (N, 784)
    onehot = np.eye(10)[d.y]  # (N, 10)
    w, b = np.zeros((10, x.shape[1])), np.zeros(10)
    for _ in range(steps):
        z = x @ w.T + b  # (N, 10)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(x)  # (N, 10)
        w -= lr * g.T @ x
        b -= lr * g.sum(axis=0)
    return w.astype(np.float32), b.astype(np.float32)


def linear_onnx(w: np.ndarray, b: np.ndarray, scale: float | None) -> onnx.ModelProto:
    bd = Builder(0)
    h = bd.node("Flatten", ["input"], axis=1)
    z = bd.node("Gemm", [h, bd.init("fc.weight", w), bd.init("fc.bias", b)], name="fc", transB=1)
    if scale is not None:  # inflates the logit scale: float32 softmax saturates
        z = bd.node("Mul", [z, bd.init("scale", np.array(scale, np.float32))], name="scale")
    return bd.model(["N", 1, 28, 28], z, 10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    d = tmp_path_factory.mktemp("masking")
    w, b = softmax_regression()
    out: dict[str, dict[str, Any]] = {}
    onnx.save(linear_onnx(w, b, None), d / "plain.onnx")
    for name, scale in [("plain", None), ("scaled", 1e4)]:
        onnx.save(linear_onnx(w, b, scale), d / f"{name}.onnx")
        path = d / f"{name}.json"
        rc = main(["attack", str(d / f"{name}.onnx"), "--unhardened", str(d / "plain.onnx"),
                   "-o", str(path), *COMMON])
        assert rc == 0
        doc = json.loads(path.read_text())
        assert errors(doc, SCHEMA, SCHEMA) == []
        out[name] = {"doc": doc, "path": path}
    return out


def _check(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(c for c in doc["masking"]["checks"] if c["name"] == name))


@pytest.mark.parametrize(("model", "verdict", "zero_fires"), [
    ("plain", "no masking signs detected", False),
    ("scaled", "masking suspected", True),
], ids=["plain", "logits-x1e4"])
def test_verdict(runs: dict[str, dict[str, Any]], model: str, verdict: str,
                 zero_fires: bool) -> None:
    doc = runs[model]["doc"]
    assert doc["masking"]["verdict"].startswith(verdict)
    assert doc["masking"]["suspected"] is zero_fires
    zero = _check(doc, "zero-gradient")
    assert zero["fired"] is zero_fires and zero["ran"]
    if zero_fires:  # every correctly classified digit has an exactly zero CE gradient
        assert zero["statistic"] >= doc["clean"]["value"] - 1e-9
        assert "zero-gradient" in doc["masking"]["verdict"]
    else:
        assert not any(c["fired"] for c in doc["masking"]["checks"])


def test_scaled_model_fires_strength_checks(runs: dict[str, dict[str, Any]]) -> None:
    doc = runs["scaled"]["doc"]
    fired = {c["name"] for c in doc["masking"]["checks"] if c["fired"]}
    assert {"zero-gradient", "logit-gap", "unbounded-below-100"} <= fired
    assert fired & {"black-box-stronger", "square-stronger", "eps-no-effect"}


def test_adaptive_worst_case_matches_unscaled(runs: dict[str, dict[str, Any]]) -> None:
    plain, scaled = (runs[m]["doc"] for m in ("plain", "scaled"))
    wc = [d["adaptive"]["worst_case"]["robust"]["k"] for d in (plain, scaled)]
    assert abs(wc[0] - wc[1]) <= 1  # one digit of 40
    # while the paper's CE white-box columns look robust on the scaled model only
    pgd = [next(c for c in d["columns"] if c["key"] == "white/pgd")["robust"]["k"]
           for d in (plain, scaled)]
    assert pgd[1] > pgd[0] + 5
    assert scaled["adaptive"]["source"]["role"] == "unhardened"


def test_restricted_columns_run_after_cheaper_attacks(runs: dict[str, dict[str, Any]]) -> None:
    doc = runs["plain"]["doc"]
    by = {c["key"]: c for c in doc["columns"]}
    assert not by["adaptive/square"]["restricted"] and by["adaptive/pgd-cw"]["restricted"]
    cheaper = np.array([c == "1" for c in by["white/pgd"]["per_sample"]["fooled"]])
    cw = np.array([c == "1" for c in by["adaptive/pgd-cw"]["per_sample"]["fooled"]])
    assert cw[cheaper].all()  # a sample PGD fooled is not attacked again and counts as fooled
    # the gradient entries cascade in suite order: each starts from what the ones before left
    restricted = [c for c in doc["columns"] if c["mode"] == "adaptive" and c["restricted"]]
    assert len(restricted) >= 5
    fooled = [np.array([ch == "1" for ch in c["per_sample"]["fooled"]]) for c in restricted]
    for before, after in zip(fooled, fooled[1:], strict=False):
        assert (after | ~before).all(), "a later entry must count every earlier success"
    ks = [c["robust"]["k"] for c in restricted]
    assert ks == sorted(ks, reverse=True)


def test_report_shows_verdict_and_checks(runs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    assert main(["report", str(runs["plain"]["path"]), str(runs["scaled"]["path"]), "-o",
                 str(out), "-q"]) == 0
    md = out.read_text()
    for d in (runs["plain"]["doc"], runs["scaled"]["doc"]):
        assert f"**Verdict:** {d['masking']['verdict']}" in md
    assert "[zero-gradient](#check-zero-gradient) | **fired**" in md  # explained in the report
    assert '<a id="check-zero-gradient"></a>' in md
    main_table = md.split("## Robust accuracy per attack")[1].split("\n## ")[0]
    assert "| paper worst case | own eps |" in main_table  # both worst cases, as rows
    assert "| adaptive worst case | " in main_table
    assert "| adaptive worst case | scaled.onnx " in md  # paired against the first model
    assert "**suspected**: zero-gradient" in md.split("## Robust accuracy")[0]  # the summary
    assert "## Adaptive attacks" in md and "pgd-cw" in md
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert len(sections) == len(set(sections)), sections  # each section once


def test_the_baseline_of_the_model_itself_gives_its_figures_without_l2_columns(
        tmp_path: Path) -> None:
    """`--unhardened` naming the victim itself: the baseline block (run without the L2 columns,
    which enter none of its figures) has the victim's clean and paper worst-case flags exactly,
    and an adaptive worst case no lower (the victim's adds its transfer column)."""
    from qrdeploy.core.runtime import SessionConfig
    from qrdeploy.evaluation.campaign import baseline_suite
    from qrdeploy.evaluation.results import load_results
    from qrdeploy.evaluation.subjects import open_subject
    from qrdeploy.evaluation.suites import Family, build_suite

    w, b = softmax_regression()
    onnx.save(linear_onnx(w, b, None), tmp_path / "m.onnx")
    out = tmp_path / "r.json"
    assert main(["attack", str(tmp_path / "m.onnx"), "--unhardened", str(tmp_path / "m.onnx"),
                 "-o", str(out), "--data", "mnist-5k", "-n", "20", "--suite", "paper,adaptive",
                 "--attacks", "clean,cw-l2,fgsm-s,pgd,black/cw-l2,black/fgsm-s,normal,pgd-cw,"
                 "square,transfer", "-q"]) == 0
    doc = json.loads(out.read_text())
    base, keys = doc["baseline"], {c["key"] for c in doc["columns"]}
    assert {"white/cw-l2", "black/cw-l2"} <= keys  # the victim's run has them
    assert base["per_sample"]["clean_correct"] == doc["per_sample"]["clean_correct"]
    keys, alive = load_results(out).paper_worst()
    assert base["worst_case"]["columns"] == list(keys)
    assert base["per_sample"]["worst_case"] == "".join("1" if a else "0" for a in alive)
    mine = doc["adaptive"]["worst_case"]["robust"]["k"]
    assert base["adaptive_worst_case"]["robust"]["k"] >= mine
    # the baseline's suite is the victim's less the transfer entry and the L2 columns
    suite = build_suite("paper,adaptive", Family.MNIST, None, None)
    before = open_subject(tmp_path / "m.onnx", SessionConfig(), 100)
    kept = {c.key for c in baseline_suite(suite, before).columns}
    l2 = {c.key for c in suite.columns if c.name == "cw-l2"}
    assert l2 == {"white/cw-l2", "black/cw-l2"}
    assert kept == {c.key for c in suite.columns} - l2 - {"adaptive/transfer"}
