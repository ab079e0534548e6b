"""The results JSON: real outputs validate against the shipped schema (with `jsonschema` and with
qrdeploy's own validator, which must agree), typed results and files round-trip exactly, and a
build from the same evaluation gives the same document."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks import CWL2
from qrdeploy.attacks.adaptive import adaptive_suite
from qrdeploy.core.schema import errors, load_schema
from qrdeploy.evaluation.build import build_results
from qrdeploy.evaluation.results import Results, dumps, load_results, write_results
from qrdeploy.evaluation.runner import RunConfig, Subject, evaluate
from qrdeploy.evaluation.suites import Mode, Suite, build_suite
from tests.unit.attack_models import NumpyLinear

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = load_schema("results.schema.json")


def linear(seed: int) -> NumpyLinear:
    r = np.random.default_rng(seed)
    return NumpyLinear(r.normal(size=(4, 16)), r.normal(size=4) * 0.1)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    x = np.random.default_rng(1).uniform(size=(20, 1, 4, 4)).astype(np.float32)
    y = linear(0).logits(x).argmax(1)
    y[:3] = (y[:3] + 1) % 4
    suite = build_suite("paper", "mnist", eps=(0.05, 0.1))
    cols = tuple(dataclasses.replace(c, attack=CWL2(max_iterations=30, binary_search_steps=2))
                 if c.name == "cw-l2" else c for c in suite.columns)
    suite = dataclasses.replace(suite, columns=cols)
    victim = Subject("v.onnx", "a" * 64, linear(0), [{"bits": 3, "mulaw": 255}])
    ev = evaluate(victim, x, y, suite, source=Subject("s.onnx", "b" * 64, linear(1)),
                  config=RunConfig(batch_size=8))
    return build_results(ev, data_name="toy", split="test").to_json()


def small_adaptive(suite: Suite) -> Suite:
    """The suite with the adaptive entries at a small budget (10 steps, 200 queries)."""
    entries = {e.name: e for e in adaptive_suite(0.1, steps=10, queries=200, targets=2)}
    cols = tuple(dataclasses.replace(c, attack=entries[c.name]) if c.mode is Mode.ADAPTIVE
                 else c for c in suite.columns)
    return dataclasses.replace(suite, columns=cols)


@pytest.fixture(scope="module")
def adoc() -> dict[str, Any]:
    """paper,adaptive on a linear model (no CW, no noise), with masking checks."""
    x = np.random.default_rng(1).uniform(size=(20, 1, 4, 4)).astype(np.float32)
    y = linear(0).logits(x).argmax(1)
    suite = small_adaptive(build_suite("paper,adaptive", "mnist", eps=(0.05, 0.3),
                                       attacks="clean,fgsm-s,pgd,black/fgsm-s,pgd-cw,apgd-dlr,"
                                               "square,transfer"))
    src = Subject("s.onnx", "b" * 64, linear(1))
    ev = evaluate(Subject("v.onnx", "a" * 64, linear(0)), x, y, suite, source=src,
                  adaptive_source=src, config=RunConfig(batch_size=8))
    return build_results(ev, data_name="toy", split="test", notes=["a note"]).to_json()


@pytest.mark.parametrize("which", ["doc", "adoc"], ids=["paper", "paper-adaptive"])
def test_real_output_validates_with_jsonschema(which: str, request: pytest.FixtureRequest
                                               ) -> None:
    d = request.getfixturevalue(which)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(d, SCHEMA)
    assert errors(d, SCHEMA, SCHEMA) == []
    assert (d["masking"] is None) == (which == "doc")


def test_adaptive_output_carries_checks_and_worst_case(adoc: dict[str, Any]) -> None:
    m, ad = adoc["masking"], adoc["adaptive"]
    assert {c["name"] for c in m["checks"]} == {
        "zero-gradient", "logit-gap", "probability-outputs", "black-box-stronger",
        "one-step-stronger", "square-stronger", "unbounded-below-100", "eps-no-effect",
        "bpda-weaker", "twin-stronger"}
    assert all(c["doc"] == f"docs/masking.md#{c['name']}" for c in m["checks"])
    assert m["verdict"].startswith(("no masking signs detected", "masking suspected"))
    assert f"adaptive worst case {100 * ad['worst_case']['robust']['value']:.1f}%" in m["verdict"]
    assert ad["restricted"] == ["adaptive/pgd-cw", "adaptive/apgd-dlr"]
    # L-inf columns and sweep points of eps <= 0.1 (black/fgsm-s has 0.3, fgsm-s too)
    assert ad["survivor_columns"] == ["white/pgd", "sweep/fgsm@0.05", "sweep/pgd@0.05"]
    # the adaptive worst case never exceeds any of its columns, and counts clean errors
    wc = ad["worst_case"]["robust"]["value"]
    by = {c["key"]: c["robust"]["value"] for c in adoc["columns"]}
    assert all(wc <= by[k] + 1e-12 for k in ad["worst_case"]["columns"] if k in by)
    assert ad["source"]["role"] == "unhardened" and adoc["notes"] == ["a note"]
    assert sum(m["gap_histogram"]["counts"]) == 20 and m["gap_histogram"]["edges"][-1] is None


def test_output_carries_what_issue_8_lists(doc: dict[str, Any]) -> None:
    assert doc["victim"]["harden"] == [{"bits": 3, "mulaw": 255}]
    assert doc["source"]["sha256"] == "b" * 64 and 0 <= doc["source"]["clean"]["value"] <= 1
    assert doc["settings"]["seed"] == 0 and doc["runtime"]["packages"]["numpy"] == np.__version__
    pgd = next(c for c in doc["columns"] if c["key"] == "white/pgd")
    assert len(pgd["per_sample"]["fooled"]) == 20 and len(pgd["per_sample"]["linf"]) == 20
    assert max(pgd["per_sample"]["linf"]) <= 0.1 + 1e-6
    assert [p["eps"] for p in doc["sweeps"][0]["points"]] == [0.05, 0.1]
    assert {c["key"] for c in doc["columns"] if c["noise"]} == {"noise/normal", "noise/uniform"}
    lo, hi = doc["clean"]["ci95"]
    assert lo <= doc["clean"]["value"] <= hi


def _set(path: list[Any], value: Any) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return mutate


def _drop(path: list[Any]) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return mutate


@pytest.mark.parametrize("mutate", [
    _set(["schema_version"], 1),
    _drop(["victim", "sha256"]),
    _set(["victim", "sha256"], "XYZ"),
    _set(["clean", "value"], 1.5),
    _set(["clean", "ci95"], [0.1]),
    _set(["columns", 0, "mode"], "grey"),
    _set(["columns", 0, "per_sample", "fooled"], "01x"),
    _set(["data", "labels"], "maybe"),
    _set(["comparisons", 0, "significant"], "yes"),
    _set(["extra"], 1),
    _set(["source"], {"name": "s"}),
    _set(["settings", "seed"], True),
    _set(["timings", "clean"], -1),
    _set(["masking", "checks", 0, "name"], "vibes"),
    _set(["masking", "checks", 0, "doc"], "http://elsewhere"),
    _drop(["masking", "verdict"]),
    _set(["adaptive", "worst_case", "robust", "value"], 2.0),
    _set(["adaptive", "source", "role"], "guess"),
    _drop(["notes"]),
    _set(["settings", "cw_budget"], "huge"),
    _drop(["columns", 1, "restricted"]),
], ids=["version", "no-sha", "bad-sha", "value", "interval", "mode", "flags", "labels",
        "bool", "extra-key", "source", "bool-seed", "timing", "check-name", "check-doc",
        "no-verdict", "adaptive-wc", "adaptive-role", "no-notes", "cw-budget", "restricted"])
def test_both_validators_reject_broken_documents(adoc: dict[str, Any], mutate: Any) -> None:
    bad = copy.deepcopy(adoc)
    mutate(bad)
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(bad)
    assert errors(bad, SCHEMA, SCHEMA) != []


@pytest.mark.parametrize("which", ["doc", "adoc"], ids=["paper", "paper-adaptive"])
def test_typed_results_and_files_round_trip(which: str, request: pytest.FixtureRequest,
                                            tmp_path: Path) -> None:
    d = request.getfixturevalue(which)
    typed = Results.from_json(d)
    assert typed.to_json() == d  # every key of the file format is carried by an attribute
    path = write_results(tmp_path / "r.json", typed)
    assert load_results(path) == typed
    assert path.read_text() == dumps(typed)
    assert typed.clean.k == d["clean"]["k"] and typed.columns[0].key == d["columns"][0]["key"]


def test_two_runs_with_one_seed_give_the_same_document_but_timings() -> None:
    """Two separate runs (random start on, batch sizes differing) with one seed."""
    x = np.random.default_rng(3).uniform(size=(12, 1, 4, 4)).astype(np.float32)
    y = linear(0).logits(x).argmax(1)
    suite = build_suite("white", "mnist", attacks="clean,fgsm-s,pgd", eps=(0.05,))
    docs = []
    for batch in (5, 12):
        ev = evaluate(Subject("v.onnx", "a" * 64, linear(0)), x, y, suite,
                      config=RunConfig(seed=7, batch_size=batch))
        d = build_results(ev, data_name="toy", split="test").to_json()
        d.pop("timings")
        d["settings"].pop("batch_size")
        docs.append(d)
    assert docs[0] == docs[1]
    other = evaluate(Subject("v.onnx", "a" * 64, linear(0)), x, y, suite,
                     config=RunConfig(seed=8, batch_size=5))
    pgd = [c.per_sample.l2 for c in build_results(other, data_name="toy", split="test").columns
           if c.key == "white/pgd"]
    assert pgd[0] != tuple(next(c for c in docs[0]["columns"] if c["key"] == "white/pgd")
                          ["per_sample"]["l2"]), "another seed moves the random start"


def test_a_check_summary_is_refused_by_name(tmp_path: Path) -> None:
    from qrdeploy.errors import DataError

    (tmp_path / "s.json").write_text('{"schema": "qrdeploy/check-summary", "schema_version": 2}')
    with pytest.raises(DataError, match="summary of qrdeploy check, not a results file"):
        load_results(tmp_path / "s.json")
    with pytest.raises(DataError, match="is a folder, not a results file"):
        load_results(tmp_path)
