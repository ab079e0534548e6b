"""`qrdeploy eval --reference`: top-1 agreement, polygraphy-style logit differences with an
atol/rtol pass rate, and the paired accuracy drop (Newcombe interval, McNemar test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qrdeploy.cli import main
from qrdeploy.data.datasets import load_dataset
from qrdeploy.errors import ConfigError
from qrdeploy.evaluation.clean import AccuracyDrop, LogitDiff, Tolerance, evaluate_files

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "models" / "mnist-standard.onnx"


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evalref") / "h2.onnx"
    assert main(["harden", str(MNIST), "-o", str(out), "--bits", "2", "-q"]) == 0
    return out


def test_a_model_against_itself() -> None:
    r = evaluate_files(MNIST, load_dataset("mnist-5k", "test", n=100), reference=MNIST)
    assert r.logits is not None and r.drop is not None and r.agreement is not None
    assert r.logits.max_abs == 0 and r.logits.passed.k == 100 and r.agreement.k == 100
    assert r.drop.difference == 0 and r.drop.p_value == 1.0 and r.drop.interval[0] <= 0


def test_a_hardened_model_against_its_reference(hardened: Path) -> None:
    data = load_dataset("mnist-5k", "test", n=300)
    strict = evaluate_files(hardened, data, reference=MNIST)
    loose = evaluate_files(hardened, data, reference=MNIST, tolerance=Tolerance(atol=1e6))
    assert strict.logits is not None and loose.logits is not None
    assert strict.logits.max_abs > 0 and strict.logits.passed.k < 300
    assert loose.logits.passed.k == 300
    assert strict.logits.max_abs >= strict.logits.mean_abs > 0
    d, acc, ref = strict.drop, strict.accuracy, strict.reference_accuracy
    assert d is not None and acc is not None and ref is not None
    assert d.difference == pytest.approx(ref.value - acc.value)  # reference minus model
    assert d.interval[0] <= d.difference <= d.interval[1]
    assert d.losses - d.gains == round(d.difference * 300)


def test_logit_diff_is_elementwise_isclose() -> None:
    z_ref = np.array([[1.0, 2.0], [10.0, -10.0]], np.float32)
    z = z_ref + np.array([[0.05, 0.0], [0.5, 0.0]], np.float32)
    d = LogitDiff.of(z, z_ref, Tolerance(atol=0.1, rtol=0.0))
    assert d.passed.k == 1 and d.max_abs == pytest.approx(0.5) and d.max_rel == pytest.approx(0.05)
    assert LogitDiff.of(z, z_ref, Tolerance(atol=0.0, rtol=0.06)).passed.k == 2


def test_drop_counts_discordant_pairs() -> None:
    model = np.array([True] * 6 + [False] * 4)
    ref = np.array([True] * 9 + [False])
    d = AccuracyDrop.of(model, ref)
    assert (d.gains, d.losses) == (0, 3) and d.difference == pytest.approx(0.3)
    assert d.p_value == pytest.approx(0.25)  # exact two-sided binomial of 0 vs 3
    assert "McNemar exact p = 0.25" in d.line() and "Newcombe" in d.line()


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_tolerance_refuses(bad: float) -> None:
    with pytest.raises(ConfigError, match="--atol must be a finite number >= 0"):
        Tolerance(atol=bad)


def test_cli_prints_and_writes_json(hardened: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["eval", str(hardened), "--reference", str(MNIST), "-n", "100", "-q"]
    assert main([*common, "--atol", "0.5", "--rtol", "0"]) == 0
    out = capsys.readouterr().out
    assert "reference accuracy:" in out and "accuracy drop vs reference:" in out
    assert "within atol 0.5 + rtol 0:" in out and "top-1 agreement with reference:" in out
    assert main([*common, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["logits"]["atol"] == 1e-5 and doc["drop"]["mcnemar_p"] <= 1.0
    assert doc["input_guard"]["verdict"] == "ok"


def test_no_drop_reads_plus_zero() -> None:
    """The same predictions: '+0.00 points', not the '-0.00' that negating a zero printed."""
    from qrdeploy.evaluation.clean import AccuracyDrop

    ok = np.array([True, False, True, True])
    line = AccuracyDrop.of(ok, ok).line()
    assert "drop vs reference: +0.00 points" in line and "-0.00" not in line
