"""`qrdeploy check` on tiny ONNX classifiers: every threshold passes and fails on a constructed
case, bound vs point, exit codes 0/1/2/3, the JSON summary against its schema (jsonschema) and
the JUnit XML (xml.etree)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qrdeploy.cli import main
from qrdeploy.core.schema import load_schema
from qrdeploy.core.stats import PairedCounts, newcombe_paired_interval
from qrdeploy.data.datasets import Dataset
from qrdeploy.errors import ConfigError
from qrdeploy.gate.junit import junit_xml
from qrdeploy.gate.policy import Policy
from qrdeploy.gate.run import CheckResult, check, write_summary
from tests.unit.onnx_builders import cnn, inputs, ort_logits

N = 40
FLIPPED = 4  # labels of model `a` wrong on 4 of 40 samples: accuracy 90%, Wilson lower 77%
FAST_LATENCY = {"batch_sizes": [1, 4], "warmup": 0, "repeats": 2}


def _saturated(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same classifier with its last layer scaled 1e4: same argmax, a float32 softmax that
    saturates, so the CE input gradient is exactly zero (gradient masking)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name.startswith("fc2."):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1e4, t.name))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("check")
    models = {"a": cnn(0), "b": cnn(1), "hot": _saturated(cnn(0))}
    paths = {}
    for name, m in models.items():
        paths[name] = root / f"{name}.onnx"
        onnx.save(m, paths[name])
    x = inputs(0, (N, 1, 8, 8))  # (N, 1, 8, 8)
    y = ort_logits(models["a"], x).argmax(1).astype(np.int64)  # (N,)
    y[:FLIPPED] = (y[:FLIPPED] + 1) % 10
    np.savez(root / "data.npz", x=x, y=y)
    return {"root": root, "paths": paths, "models": models,
            "data": Dataset("tiny", "test", x, y, 10)}


def _policy(**sections: Any) -> Policy:
    return Policy.from_dict({"latency": FAST_LATENCY, **sections})


def _run(world: dict[str, Any], model: str, policy: Policy, ref: str = "a") -> CheckResult:
    p = world["paths"]
    return check(p[model], p[ref], world["data"], policy, batch_size=64)


def _only(result: CheckResult, metric: str) -> bool:
    (hit,) = [t for t in result.thresholds if t.metric == metric]
    return hit.passed


ROBUST_FGSM = {"attack": "fgsm", "min_accuracy": 0.7}
ROBUST_PGD = {"attack": "pgd", "steps": 3, "min_accuracy": 0.7}
ROBUST_ADAPTIVE = {"attack": "adaptive", "steps": 3, "members": ["pgd-cw"], "min_accuracy": 0.7}

CASES = [
    # id, model, reference, policy sections, metric, passed
    ("accuracy-pass", "a", "a", {"clean": {"min_accuracy": 0.7}}, "clean.accuracy", True),
    ("accuracy-fail", "a", "a", {"clean": {"min_accuracy": 0.95}}, "clean.accuracy", False),
    ("accuracy-lower-bound-fails", "a", "a", {"clean": {"min_accuracy": 0.85}},
     "clean.accuracy", False),
    ("accuracy-point-passes", "a", "a", {"use_bound": "point", "clean": {"min_accuracy": 0.85}},
     "clean.accuracy", True),
    # the same model: no discordant pair, yet 40 samples bound the drop only to about 7 points
    ("drop-same-model-pass", "a", "a", {"clean": {"max_drop": 0.08}}, "clean.drop", True),
    ("drop-same-model-zero-margin-fails", "a", "a", {"clean": {"max_drop": 0.0}}, "clean.drop",
     False),
    ("drop-same-model-zero-margin-point-passes", "a", "a",
     {"use_bound": "point", "clean": {"max_drop": 0.0}}, "clean.drop", True),
    ("drop-other-model-fail", "b", "a", {"clean": {"max_drop": 0.1}}, "clean.drop", False),
    ("agreement-pass", "a", "a", {"clean": {"min_agreement": 0.9}}, "clean.agreement", True),
    ("agreement-fail", "b", "a", {"clean": {"min_agreement": 0.5}}, "clean.agreement", False),
    ("robust-fgsm-eps0-pass", "a", "a", {"robust": {"threshold": [{**ROBUST_FGSM, "eps": 0.0}]}},
     "robust.fgsm@0", True),
    ("robust-fgsm-eps1-fail", "a", "a", {"robust": {"threshold": [{**ROBUST_FGSM, "eps": 1.0}]}},
     "robust.fgsm@1", False),
    ("robust-pgd-eps0-pass", "a", "a", {"robust": {"threshold": [{**ROBUST_PGD, "eps": 0.0}]}},
     "robust.pgd@0", True),
    ("robust-pgd-eps1-fail", "a", "a", {"robust": {"threshold": [{**ROBUST_PGD, "eps": 1.0}]}},
     "robust.pgd@1", False),
    ("robust-adaptive-eps0-pass", "a", "a",
     {"robust": {"threshold": [{**ROBUST_ADAPTIVE, "eps": 0.0}]}}, "robust.adaptive@0", True),
    ("robust-adaptive-eps1-fail", "a", "a",
     {"robust": {"threshold": [{**ROBUST_ADAPTIVE, "eps": 1.0}]}}, "robust.adaptive@1", False),
    ("masking-honest-pass", "a", "a", {"masking": {"fail_if_suspected": True}},
     "masking.suspected", True),
    ("masking-saturated-fail", "hot", "a", {"masking": {"fail_if_suspected": True}},
     "masking.suspected", False),
    ("size-pass", "a", "a", {"size": {"max_mb": 1.0}}, "size.file_mb", True),
    ("size-fail", "a", "a", {"size": {"max_mb": 1e-6}}, "size.file_mb", False),
    ("latency-pass", "a", "a", {"latency": {**FAST_LATENCY, "max_ratio": 1e3}},
     "latency.ratio@b1", True),
    ("latency-fail", "a", "a", {"latency": {**FAST_LATENCY, "max_ratio": 1e-6}},
     "latency.ratio@b4", False),
]


@pytest.mark.parametrize(("model", "ref", "sections", "metric", "passed"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_threshold_passes_and_fails(world: dict[str, Any], model: str, ref: str,
                                         sections: dict[str, Any], metric: str,
                                         passed: bool) -> None:
    result = _run(world, model, _policy(**sections), ref)
    assert _only(result, metric) is passed
    assert result.passed is passed
    assert result.exit_code == (0 if passed else 3)


@pytest.mark.parametrize(("bound", "basis", "compared"), [
    ("lower", "lower bound", pytest.approx(0.769482, abs=1e-6)),  # Wilson lower of 36/40
    ("point", "point", 0.9),
], ids=["lower", "point"])
def test_bound_chooses_what_is_compared(world: dict[str, Any], bound: str, basis: str,
                                        compared: Any) -> None:
    result = _run(world, "a", _policy(use_bound=bound, clean={"min_accuracy": 0.5}))
    (t,) = result.thresholds
    assert (t.value, t.basis, t.compared) == (0.9, basis, compared)
    assert t.interval is not None and t.interval[0] < 0.9 < t.interval[1]


def test_drop_is_paired_and_compares_its_upper_bound(world: dict[str, Any]) -> None:
    (t,) = _run(world, "b", _policy(clean={"max_drop": 0.5})).thresholds
    assert t.basis == "upper bound" and t.interval is not None
    assert t.interval[0] <= t.value <= t.interval[1] == t.compared
    assert "McNemar p" in t.detail
    x, y = world["data"].x, world["data"].y
    model_ok, ref_ok = (ort_logits(world["models"][m], x).argmax(1) == y for m in ("b", "a"))
    c = PairedCounts.from_flags(ref_ok, model_ok)  # the drop: reference minus model
    assert t.value == pytest.approx(c.difference)
    assert t.interval == pytest.approx(newcombe_paired_interval(c))


def test_failure_line_names_metric_value_interval_and_threshold(world: dict[str, Any]) -> None:
    result = _run(world, "a", _policy(clean={"min_accuracy": 0.95}))
    (line,) = [t.line() for t in result.failures]
    assert line == ("FAIL clean.accuracy = 90.00% (95% CI 76.95% .. 96.04%), lower bound 76.95%;"
                    " threshold min 95.00%; 36/40; unreachable at n = 40: even 40/40 has a lower"
                    " bound of 91.24%, the threshold needs n >= 73")


def test_latency_is_in_the_summary_for_both_models(world: dict[str, Any]) -> None:
    result = _run(world, "b", _policy())
    assert result.thresholds == () and result.exit_code == 0
    assert [r.batch_size for r in result.latency] == [1, 4]
    for r in result.latency:
        for t in (r.model, r.reference):
            assert 0 < t.median_ms <= t.p95_ms and t.mean_ms > 0
        assert r.ratio > 0 and r.to_json()["ratio"] == r.ratio


def test_a_fixed_batch_model_is_checked_and_timed_at_its_batch(world: dict[str, Any],
                                                               tmp_path: Path) -> None:
    """An edge export with its batch fixed at 1: clean thresholds score it (batches of 1) and
    latency is timed only at the batch size it accepts (batch 4 is skipped, not an error)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(world["models"]["a"])
    for v in (fixed.graph.input[0], fixed.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, tmp_path / "fixed.onnx")
    result = check(tmp_path / "fixed.onnx", world["paths"]["a"], world["data"],
                   _policy(clean={"min_agreement": 0.9}, size={"max_mb": 1}), batch_size=64)
    assert result.exit_code == 0 and _only(result, "clean.agreement")
    assert [r.batch_size for r in result.latency] == [1]
    # a latency threshold at batch sizes the model cannot take is refused, never passed unmeasured
    unmeasurable = Policy.from_dict({"latency": {"batch_sizes": [4], "max_ratio": 0.01,
                                                 "warmup": 0, "repeats": 2}})
    with pytest.raises(ConfigError, match=r"\[latency\] batch_sizes \[4\]: the models take only "
                                          r"a batch of 1.*set batch_sizes = \[1\]"):
        check(tmp_path / "fixed.onnx", world["paths"]["a"], world["data"], unmeasurable)


EVERYTHING = {
    "clean": {"min_accuracy": 0.5, "max_drop": 0.5, "min_agreement": 0.5},
    "robust": {"n": 20, "threshold": [{**ROBUST_FGSM, "eps": 0.5},
                                      {**ROBUST_PGD, "eps": 0.5},
                                      {**ROBUST_ADAPTIVE, "eps": 0.5,
                                       "members": ["pgd-cw", "square", "transfer"],
                                       "queries": 20}]},
    "masking": {"fail_if_suspected": True},
    "size": {"max_mb": 1.0},
    "latency": {**FAST_LATENCY, "max_ratio": 1e3},
}


@pytest.fixture(scope="module")
def full(world: dict[str, Any]) -> CheckResult:
    return _run(world, "b", Policy.from_dict(EVERYTHING))


def test_summary_validates_against_the_schema(full: CheckResult, tmp_path: Path) -> None:
    doc = write_summary(tmp_path / "summary.json", full)
    assert json.loads((tmp_path / "summary.json").read_text()) == doc
    jsonschema.validate(doc, load_schema("summary.schema.json"))
    assert doc["data"]["robust_n"] == 20
    assert len(doc["thresholds"]) == 3 + 3 + 1 + 1 + 2
    assert doc["exit_code"] == 3 and doc["passed"] is False
    checks = {c["name"] for c in doc["masking"]["checks"]}
    assert {"zero-gradient", "square-stronger", "black-box-stronger"} <= checks


def test_the_masking_line_names_its_eps_and_sample_count(full: CheckResult) -> None:
    from qrdeploy.evaluation.suites import Family, build_suite

    expected = build_suite("paper,adaptive", Family.MNIST, eps=(), cw_budget="quick").adaptive_eps
    assert expected is not None and full.masking is not None
    line = next(x for x in full.lines() if x.startswith("masking"))
    assert line == f"masking at eps {expected:g} on 20 samples: {full.masking.verdict}"


def test_junit_has_one_testcase_per_threshold_and_the_failures(full: CheckResult) -> None:
    root = ET.fromstring(junit_xml(full))
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == [t.metric for t in full.thresholds]
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == [t.metric for t in full.failures] and failed
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == root.get("failures") == str(len(failed))


def test_two_runs_write_the_same_junit(world: dict[str, Any]) -> None:
    """No timestamp, hostname or run-dependent value: two separate checks of the same files
    (latency thresholds left out: their measured times differ) write identical bytes."""
    policy = Policy.from_dict({k: v for k, v in EVERYTHING.items() if k != "latency"})
    first, second = (junit_xml(_run(world, "b", policy)) for _ in range(2))
    assert first == second
    root = ET.fromstring(first)
    assert not {"timestamp", "hostname", "time"} & set(root.find("testsuite").attrib)  # type: ignore[union-attr]
    assert root.findall("./testsuite/testcase")


def test_public_api_check_is_the_function(world: dict[str, Any]) -> None:
    import qrdeploy

    api: Any = qrdeploy.check
    assert callable(api) and api.__module__ == "qrdeploy.api"
    p = world["paths"]
    result = api(p["a"], p["a"], world["data"], _policy(clean={"min_agreement": 0.9}))
    assert isinstance(result, qrdeploy.CheckResult) and result.passed
    assert qrdeploy.Policy is Policy


# ------------------------------------------------------------------------------------- CLI


def _write_policy(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


PASSING = "[clean]\nmin_agreement = 0.9\n[latency]\nrepeats = 2\nwarmup = 0\nbatch_sizes = [1]\n"
FAILING = PASSING + "[size]\nmax_mb = 1e-6\n"


@pytest.mark.parametrize(("model", "policy", "extra", "code", "fails"), [
    ("a", PASSING, [], 0, 0),
    ("b", PASSING, [], 3, 1),
    ("b", FAILING, [], 3, 2),
    ("missing", PASSING, [], 1, 0),
    ("a", "[clean]\nmin_acc = 0.9\n", [], 1, 0),
    ("a", PASSING, ["--no-such-option"], 2, 0),
], ids=["pass-0", "fail-3", "two-failures-3", "missing-model-1", "bad-policy-1", "usage-2"])
def test_cli_exit_codes(world: dict[str, Any], capsys: pytest.CaptureFixture[str], model: str,
                        policy: str, extra: list[str], code: int, fails: int) -> None:
    root = world["root"]
    pol = _write_policy(root, f"p{code}-{model}.toml", policy)
    argv = ["check", str(root / f"{model}.onnx"), "--reference", str(world["paths"]["a"]),
            "--data", f"npz:{root / 'data.npz'}", "--policy", str(pol), "-q", *extra]
    assert main(argv) == code
    out = capsys.readouterr().out.splitlines()
    assert len([ln for ln in out if ln.startswith("FAIL ")]) == fails  # one line per failure
    if code in (0, 3):
        assert out[-1].startswith("check passed" if code == 0 else "check FAILED")


def test_cli_requires_the_policy(world: dict[str, Any]) -> None:
    root = world["root"]
    assert main(["check", str(world["paths"]["a"]), "--reference", str(world["paths"]["a"]),
                 "--data", f"npz:{root / 'data.npz'}"]) == 2


def test_cli_writes_summary_and_junit(world: dict[str, Any], tmp_path: Path) -> None:
    root = world["root"]
    pol = _write_policy(tmp_path, "fail.toml", FAILING)
    argv = ["check", str(world["paths"]["b"]), "--reference", str(world["paths"]["a"]),
            "--data", f"npz:{root / 'data.npz'}", "--policy", str(pol), "-q",
            "-o", str(tmp_path / "s.json"), "--junit", str(tmp_path / "r.xml")]
    assert main(argv) == 3
    doc = json.loads((tmp_path / "s.json").read_text())
    jsonschema.validate(doc, load_schema("summary.schema.json"))
    failures = ET.parse(tmp_path / "r.xml").getroot().findall(".//failure")
    assert len(failures) == sum(not t["passed"] for t in doc["thresholds"]) == 2


def test_example_policy_parses_and_sets_every_section() -> None:
    from qrdeploy.gate.policy import load_policy

    p = load_policy(Path(__file__).resolve().parents[2] / "examples" / "qrdeploy.toml")
    assert p.clean.min_accuracy is not None and p.clean.max_drop is not None
    assert p.clean.min_agreement is not None and p.masking.fail_if_suspected
    assert {t.attack.value for t in p.robust.thresholds} >= {"fgsm", "pgd", "adaptive"}
    assert p.robust.n == 200 and p.size.max_mb and p.latency.max_ratio


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.95, 0.97, 0.99])
def test_samples_needed_is_the_smallest_n_whose_perfect_score_passes(threshold: float) -> None:
    from qrdeploy.core.stats import Proportion
    from qrdeploy.gate.run import samples_needed

    n = samples_needed(threshold)
    assert Proportion(n, n).interval[0] >= threshold > Proportion(n - 1, n - 1).interval[0]


def test_a_threshold_the_sample_cannot_reach_says_so() -> None:
    from qrdeploy.core.stats import Proportion
    from qrdeploy.gate.policy import Bound
    from qrdeploy.gate.run import _proportion

    line = _proportion("clean.agreement", Proportion(99, 100), 0.97, Bound.LOWER).line()
    assert line.startswith("FAIL") and "unreachable at n = 100" in line
    assert "needs n >= 125" in line
    for p, bound in ((Proportion(199, 200), Bound.LOWER), (Proportion(99, 100), Bound.POINT)):
        assert "unreachable" not in _proportion("clean.agreement", p, 0.97, bound).line()


def test_a_drop_threshold_the_sample_cannot_reach_says_so() -> None:
    import numpy as np

    from qrdeploy.gate.policy import Bound
    from qrdeploy.gate.run import _drop

    ok = np.arange(100) < 97  # 97 % correct, the model answers exactly as the reference
    line = _drop(ok, ok, 0.02, Bound.LOWER).line()
    assert line.startswith("FAIL") and "unreachable at n = 100: even the reference's own" in line
    big = np.arange(5000) < 4850
    assert "unreachable" not in _drop(big, big, 0.02, Bound.LOWER).line()
    assert "unreachable" not in _drop(ok, ok, 0.02, Bound.POINT).line()


def test_fewer_robust_samples_than_the_policy_asks_are_noted(full: CheckResult) -> None:
    import dataclasses

    assert not any(line.startswith("note:") for line in full.lines())  # n = 20 as asked
    short = dataclasses.replace(full, data={**full.data, "robust_n": 12})
    notes = [line for line in short.lines() if line.startswith("note:")]
    assert notes == ["note: the robust thresholds ran on 12 samples, fewer than the policy's "
                     "[robust] n = 20: the data holds 12 (-n or the data set)"]


def test_a_check_that_cannot_run_still_writes_a_junit_error(world: dict[str, Any],
                                                           tmp_path: Path) -> None:
    from qrdeploy.cli import main

    rgb = tmp_path / "rgb.onnx"
    onnx.save(cnn(2, c=3), rgb)  # 3 channels: the data has 1
    policy = tmp_path / "p.toml"
    policy.write_text("[clean]\nmin_accuracy = 0.5\n")
    junit = tmp_path / "j.xml"
    assert main(["check", str(rgb), "--reference", str(world["paths"]["a"]), "--policy",
                 str(policy), "--data", f"npz:{world['root'] / 'data.npz'}", "--junit",
                 str(junit), "-q"]) == 1
    root = ET.fromstring(junit.read_bytes())
    assert root.get("errors") == "1" and root.get("tests") == "1"
    (error,) = root.findall("./testsuite/testcase/error")
    assert f"{rgb} expects images of shape" in (error.get("message") or "")
