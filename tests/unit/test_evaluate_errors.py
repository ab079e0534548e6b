"""Error paths of suites, the runner, results files and reports: one-line QrdeployErrors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qrdeploy.errors import ConfigError, DataError
from qrdeploy.evaluation.metrics import paired_test
from qrdeploy.evaluation.results import load_results
from qrdeploy.evaluation.runner import RunConfig, Subject, evaluate
from qrdeploy.evaluation.suites import build_suite, family_of, parse_eps
from tests.unit.attack_models import NumpyLinear


class LogitsOnly:
    """A Classifier without gradients."""

    num_classes = 4

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), 4), np.float32)


def linear() -> NumpyLinear:
    r = np.random.default_rng(0)
    return NumpyLinear(r.normal(size=(4, 16)), r.normal(size=4))


X = np.random.default_rng(1).uniform(size=(6, 1, 4, 4)).astype(np.float32)
Y = np.zeros(6, np.int64)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: build_suite("grey", "mnist"), "unknown suite 'grey'"),
    (lambda: build_suite("white", "imagenet"), "family 'imagenet'"),
    (lambda: build_suite("white", "mnist", "pgd,square"), "'square' is not a column"),
    (lambda: build_suite("white", "mnist", "black/fgsm-m"), "not a column of this suite"),
    (lambda: build_suite("white", "mnist", "pgd=big"),
     "'big' is not a number; write e.g. 0.1 or 8/255"),
    (lambda: build_suite("white", "mnist", "cw-l2=0.5"), "cw-l2 is unbounded"),
    (lambda: build_suite("white", "mnist", "clean=0.1"), "clean column takes no value"),
    (lambda: build_suite("white", "mnist", "pgd=1.5"), "eps must be a number in"),
    (lambda: build_suite("white", "mnist", " , "), "names no column"),
    (lambda: build_suite("noise", "mnist", eps=(0.1,)), "this suite has none"),
    (lambda: parse_eps("0.1,abc"), "'abc' is not a number"),
    (lambda: parse_eps("2"), "outside \\[0, 1\\]"),
    (lambda: parse_eps(","), "got no values"),
    (lambda: family_of("npz:x.npz"), "pass --family"),
    (lambda: build_suite("paper,grey", "mnist"), "unknown suite 'grey'; .* paper,adaptive"),
    (lambda: build_suite("white", "mnist", cw_budget="huge"), "CW budget 'huge'"),
    (lambda: build_suite("adaptive", "mnist", "pgd-cw=2"), "eps must be a number in"),
    (lambda: build_suite("adaptive", "mnist", "adaptive/pgd"), "not a column of this suite"),
], ids=["suite", "family", "unknown-attack", "wrong-mode", "bad-value", "cw-eps", "clean-eps",
        "eps-range", "empty", "sweep-without-linf", "eps-text", "eps-range-sweep", "eps-empty",
        "npz-family", "suite-in-list", "cw-budget", "adaptive-eps", "adaptive-name"])
def test_suite_errors(call: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch_size": 0}, "batch size must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
], ids=["batch", "seed"])
def test_run_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig(**kwargs)


@pytest.mark.parametrize(("model", "suite", "x", "err", "match"), [
    (linear(), build_suite("black", "mnist"), X, ConfigError, "need a source model"),
    (LogitsOnly(), build_suite("white", "mnist", "fgsm-s"), X, ConfigError,
     "needs input gradients"),
    (linear(), build_suite("white", "mnist", "clean"), X[0], DataError, "\\(N, C, H, W\\)"),
    (linear(), build_suite("white", "mnist", "clean"), X[:0], DataError, "non-empty"),
    (linear(), build_suite("adaptive", "mnist", "pgd-cw,transfer"), X, ConfigError,
     "crafts on the model before hardening and none was given; pass --unhardened"),
    (LogitsOnly(), build_suite("adaptive", "mnist", "square,pgd-cw"), X, ConfigError,
     "needs input gradients, and LogitsOnly gives none"),
], ids=["black-no-source", "white-no-gradients", "3d-input", "empty", "adaptive-no-source",
        "adaptive-no-gradients"])
def test_runner_errors(model: Any, suite: Any, x: np.ndarray, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        evaluate(Subject("m", "a" * 64, model), x, Y[: len(x)], suite)


def test_paired_test_needs_the_same_samples() -> None:
    with pytest.raises(DataError, match="same samples"):
        paired_test(np.ones(5, bool), np.ones(6, bool))


def _write(tmp: Path, text: str) -> Path:
    p = tmp / "r.json"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "is not JSON"),
    (json.dumps({"schema": "qrdeploy/results", "schema_version": 99}), "schema_version 99"),
    (json.dumps({"schema": "qrdeploy/results", "schema_version": 2}), "missing key 'victim'"),
    (json.dumps({"schema": "qrdeploy/results", "schema_version": 1}),
     "schema_version 1; this qrdeploy reads version 2: rerun qrdeploy attack"),
    (json.dumps([1, 2]), "expected object"),
], ids=["not-json", "future-version", "missing-keys", "version-1", "not-object"])
def test_load_results_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_results(_write(tmp_path, text))


def test_load_results_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; write it with qrdeploy attack"):
        load_results(tmp_path / "nope.json")
