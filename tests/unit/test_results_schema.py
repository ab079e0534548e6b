"""The results JSON: real outputs validate against the shipped schema (with `jsonschema` and with
qrdeploy's own validator, which must agree), files round-trip, builds are deterministic."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks import CWL2
from qrdeploy.evaluate import RunConfig, Subject, evaluate
from qrdeploy.results import build_results, dumps, load_results, write_results
from qrdeploy.schema import errors, load_schema
from qrdeploy.suites import build_suite
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
    return build_results(ev, data_name="toy", split="test")


def test_real_output_validates_with_jsonschema(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(doc, SCHEMA)
    assert errors(doc, SCHEMA, SCHEMA) == []


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
    _set(["schema_version"], 2),
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
], ids=["version", "no-sha", "bad-sha", "value", "interval", "mode", "flags", "labels",
        "bool", "extra-key", "source", "bool-seed", "timing"])
def test_both_validators_reject_broken_documents(doc: dict[str, Any], mutate: Any) -> None:
    bad = copy.deepcopy(doc)
    mutate(bad)
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(bad)
    assert errors(bad, SCHEMA, SCHEMA) != []


def test_write_then_load_round_trips(doc: dict[str, Any], tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.json", doc)
    assert load_results(path) == doc
    assert path.read_text() == dumps(doc)
