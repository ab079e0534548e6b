"""Error paths of `qrdeploy check`: bad TOML, unknown keys, out-of-range values, missing files
and unlabelled data; each is one ConfigError / DataError / GraphError line naming the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qrdeploy.data.datasets import Dataset
from qrdeploy.errors import ConfigError, DataError, QrdeployError
from qrdeploy.gate.policy import Policy, load_policy
from qrdeploy.gate.run import check
from tests.unit.onnx_builders import cnn, inputs

BAD_POLICIES = [
    ("not-toml", "clean = [\n", r"is not valid TOML"),
    ("unknown-top-key", "thresholds = 1\n", r"unknown key 'thresholds'; allowed keys: version"),
    ("unknown-clean-key", "[clean]\nmin_acc = 0.9\n",
     r"\[clean\]: unknown key 'min_acc'; allowed keys: min_accuracy, max_drop, min_agreement"),
    ("unknown-robust-key", "[[robust.threshold]]\nattack = 'pgd'\neps = 0.1\nmin_accuracy = 0.1"
     "\nstep = 3\n", r"#1: unknown key 'step'; allowed keys: attack, eps, min_accuracy, steps"),
    ("unknown-latency-key", "[latency]\nbatch = 4\n", r"\[latency\]: unknown key 'batch'"),
    ("section-not-table", "clean = 0.9\n", r"\[clean\]: expected a table, got float"),
    ("accuracy-above-1", "[clean]\nmin_accuracy = 95\n",
     r"min_accuracy must be a number in \[0, 1\]"),
    ("drop-negative", "[clean]\nmax_drop = -0.1\n", r"max_drop must be a number in \[0, 1\]"),
    ("bool-as-number", "[clean]\nmin_agreement = true\n", r"min_agreement must be a number"),
    ("string-as-number", "[clean]\nmin_accuracy = '0.9'\n", r"min_accuracy must be a number"),
    ("use-bound", "use_bound = 'upper'\n", r"use_bound must be \"lower\" or \"point\""),
    ("version", "version = 2\n", r"version must be 1, got 2"),
    ("version-float", "version = 1.0\n", r"version must be 1, got 1.0"),
    ("queries-without-square", "[[robust.threshold]]\nattack = 'adaptive'\neps = 0.1\n"
     "min_accuracy = 0.1\nmembers = ['pgd-cw']\nqueries = 5\n",
     r"queries is Square's query budget, and members has no square"),
    ("steps-with-square-only", "[[robust.threshold]]\nattack = 'adaptive'\neps = 0.1\n"
     "min_accuracy = 0.1\nmembers = ['square']\nsteps = 5\n",
     r"steps applies to the gradient and transfer members"),
    ("robust-n-zero", "[robust]\nn = 0\n", r"\[robust\]: n must be an integer >= 1"),
    ("robust-not-array", "[robust]\nthreshold = 3\n", r"threshold must be an array of tables"),
    ("robust-missing-eps", "[[robust.threshold]]\nattack = 'pgd'\nmin_accuracy = 0.1\n",
     r"#1: eps is required"),
    ("robust-eps-range", "[[robust.threshold]]\nattack = 'pgd'\neps = 8\nmin_accuracy = 0.1\n",
     r"#1: eps must be an L-inf budget in \[0, 1\] pixel units, e.g. 0.1 or \"8/255\", got 8"),
    ("robust-unknown-attack", "[[robust.threshold]]\nattack = 'cw'\neps = 0.1\n"
     "min_accuracy = 0.1\n", r"attack must be one of fgsm, pgd, bim, mim, adaptive, got 'cw'"),
    ("robust-steps-zero", "[[robust.threshold]]\nattack = 'pgd'\neps = 0.1\nmin_accuracy = 0.1\n"
     "steps = 0\n", r"steps must be an integer >= 1, got 0"),
    ("members-not-adaptive", "[[robust.threshold]]\nattack = 'pgd'\neps = 0.1\n"
     "min_accuracy = 0.1\nmembers = ['pgd-cw']\n", r"members applies to attack = \"adaptive\""),
    ("members-unknown", "[[robust.threshold]]\nattack = 'adaptive'\neps = 0.1\n"
     "min_accuracy = 0.1\nmembers = ['fab']\n", r"members has unknown name 'fab'; known: pgd-cw"),
    ("members-empty", "[[robust.threshold]]\nattack = 'adaptive'\neps = 0.1\n"
     "min_accuracy = 0.1\nmembers = []\n", r"members must be a non-empty list"),
    ("robust-duplicate", "[[robust.threshold]]\nattack = 'pgd'\neps = 0.1\nmin_accuracy = 0.1\n"
     "[[robust.threshold]]\nattack = 'pgd'\neps = 0.1\nmin_accuracy = 0.2\n",
     r"names robust.pgd@0.1 twice"),
    ("accuracy-1-through-bound", "[clean]\nmin_accuracy = 1.0\n",
     r"\[clean\]: min_accuracy = 1 can never pass with use_bound = \"lower\".*"
     r"use_bound = \"point\""),
    ("agreement-1-through-bound", "[clean]\nmin_agreement = 1\n",
     r"min_agreement = 1 can never pass"),
    ("robust-1-through-bound", "[[robust.threshold]]\nattack = 'pgd'\neps = 0.1\n"
     "min_accuracy = 1\n", r"#1: min_accuracy = 1 can never pass"),
    ("steps-on-fgsm", "[[robust.threshold]]\nattack = 'fgsm'\neps = 0.1\nmin_accuracy = 0.1\n"
     "steps = 10\n", r"#1: steps does not apply to attack = \"fgsm\""),
    ("queries-on-pgd", "[[robust.threshold]]\nattack = 'pgd'\neps = 0.1\nmin_accuracy = 0.1\n"
     "queries = 100\n", r"#1: queries is Square's query budget and applies to attack = "
                        r"\"adaptive\" only"),
    ("robust-eps-word", "[[robust.threshold]]\nattack = 'pgd'\neps = 'small'\n"
     "min_accuracy = 0.1\n", r"#1: eps must be an L-inf budget .* got 'small'"),
    ("robust-eps-fraction-above-1", "[[robust.threshold]]\nattack = 'pgd'\neps = '300/255'\n"
     "min_accuracy = 0.1\n", r"#1: eps must be an L-inf budget .* got '300/255'"),
    ("masking-not-bool", "[masking]\nfail_if_suspected = 1\n", r"must be true or false, got 1"),
    ("size-zero", "[size]\nmax_mb = 0\n", r"max_mb must be a finite number > 0"),
    ("size-inf", "[size]\nmax_mb = inf\n", r"max_mb must be a finite number > 0"),
    ("latency-ratio-negative", "[latency]\nmax_ratio = -1\n", r"max_ratio must be a finite"),
    ("latency-batches-empty", "[latency]\nbatch_sizes = []\n", r"batch_sizes must be a non-empty"),
    ("latency-batch-zero", "[latency]\nbatch_sizes = [0]\n", r"batch_sizes must be an integer"),
    ("latency-repeats-one", "[latency]\nrepeats = 1\n", r"repeats must be an integer >= 2"),
    ("latency-warmup-negative", "[latency]\nwarmup = -1\n", r"warmup must be an integer >= 0"),
]


@pytest.mark.parametrize(("text", "match"), [c[1:] for c in BAD_POLICIES],
                         ids=[c[0] for c in BAD_POLICIES])
def test_bad_policies_are_one_line_config_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        Policy.from_toml(text)
    assert "\n" not in str(info.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy file .* does not exist; pass --policy"):
        load_policy(tmp_path / "nope.toml")


def test_eps_takes_a_fraction_as_the_command_line_does() -> None:
    p = Policy.from_toml("[[robust.threshold]]\nattack = 'pgd'\neps = '8/255'\n"
                         "min_accuracy = 0.1\n")
    assert p.robust.thresholds[0].eps == pytest.approx(8 / 255)


def test_a_minimum_of_1_is_allowed_on_the_point_estimate() -> None:
    p = Policy.from_toml("use_bound = 'point'\n[clean]\nmin_accuracy = 1.0\n")
    assert p.clean.min_accuracy == 1.0


def test_empty_policy_sets_no_threshold() -> None:
    p = Policy.from_toml("")
    assert p.clean.min_accuracy is None and p.robust.thresholds == ()
    assert not p.masking.fail_if_suspected and p.size.max_mb is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    root = tmp_path_factory.mktemp("check_errors")
    onnx.save(cnn(0), root / "a.onnx")
    x = inputs(0, (8, 1, 8, 8))  # (8, 1, 8, 8)
    return root, Dataset("tiny", "test", x, np.zeros(8, np.int64), 10)


@pytest.mark.parametrize(("model", "ref", "match"), [
    ("missing.onnx", "a.onnx", r"missing.onnx does not exist"),
    ("a.onnx", "missing.onnx", r"missing.onnx does not exist"),
], ids=["model", "reference"])
def test_missing_model_files(tiny: tuple[Path, Dataset], model: str, ref: str,
                             match: str) -> None:
    root, data = tiny
    with pytest.raises(QrdeployError, match=match):
        check(root / model, root / ref, data, Policy())


def test_unlabelled_data_with_an_accuracy_threshold(tiny: tuple[Path, Dataset]) -> None:
    root, data = tiny
    unlabelled = Dataset("tiny", "test", data.x, None, 10)
    policy = Policy.from_dict({"clean": {"min_accuracy": 0.5}})
    with pytest.raises(DataError, match=r"has no labels, and the policy sets \[clean\]"):
        check(root / "a.onnx", root / "a.onnx", unlabelled, policy)


def test_unlabelled_data_still_checks_agreement(tiny: tuple[Path, Dataset]) -> None:
    root, data = tiny
    unlabelled = Dataset("tiny", "test", data.x, None, 10)
    policy = Policy.from_dict({"clean": {"min_agreement": 0.5},
                               "latency": {"batch_sizes": [1], "repeats": 2, "warmup": 0}})
    result = check(root / "a.onnx", root / "a.onnx", unlabelled, policy)
    assert result.passed and result.data["labels"] == "reference"


def test_wrong_input_shape_is_a_data_error(tiny: tuple[Path, Dataset]) -> None:
    root, _ = tiny
    wrong = Dataset("tiny", "test", inputs(0, (4, 1, 9, 9)), np.zeros(4, np.int64), 10)
    with pytest.raises(DataError, match=r"expects images of shape"):
        check(root / "a.onnx", root / "a.onnx", wrong, Policy())


def test_isolate_turns_a_garbage_model_into_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qrdeploy.cli import main

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    policy = tmp_path / "p.toml"
    policy.write_text("version = 1\n[clean]\nmin_accuracy = 0.5\n")
    rc = main(["check", str(bad), "--reference", str(bad), "--policy", str(policy),
               "--data", "mnist-5k", "-n", "10", "--isolate", "-q"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.onnx" in err


def test_a_reference_that_does_not_fit_the_data_is_the_one_named(
        tiny: tuple[Path, Dataset]) -> None:
    """The input guard runs on the reference first: its shape error names --reference, not
    "the model" (which fits)."""
    root, data = tiny
    onnx.save(cnn(0, hw=10), root / "ref10.onnx")
    with pytest.raises(DataError, match=r"^--reference .*ref10.onnx expects images of shape"):
        check(root / "a.onnx", root / "ref10.onnx", data, Policy())


def test_an_empty_policy_is_refused_not_passed(tiny: tuple[Path, Dataset]) -> None:
    """A policy with no section would pass every model without measuring anything."""
    root, data = tiny
    with pytest.raises(ConfigError, match=r"the policy sets no threshold, so the check would "
                                          r"pass without measuring anything"):
        check(root / "a.onnx", root / "a.onnx", data, Policy())
    latency_only = Policy.from_dict({"latency": {"batch_sizes": [1], "repeats": 2,
                                                 "warmup": 0}})
    assert check(root / "a.onnx", root / "a.onnx", data, latency_only).latency  # a report
    # a [latency] section is a request for the table whatever its values, defaults included
    assert not Policy.from_dict({"latency": {"batch_sizes": [1, 32]}}).empty
    assert not Policy.from_dict({"latency": {}}).empty and Policy.from_dict({}).empty
