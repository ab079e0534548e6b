"""Bounded fuzzing (issue 14, item 2): hypothesis mutates valid tiny ONNX files (bytes, and
protobuf fields: dims, dtypes, raw data, node inputs, op types, attribute values, external-data
entries, opset imports, input shapes) and feeds each mutant to load, inspect, harden, eval, the
gradient builder (run by onnxruntime) and lipschitz, in a spawned worker that a segfault or a hang
cannot take pytest down with (tests/unit/fuzz_cases.py).

Allowed: success or a one-line QrdeployError. Findings in modules owned elsewhere that were
reported to the lead are listed in REPORTED (module -> reason); any other finding fails here.
The long run is tools/fuzz_long.py (docs/reliability.md). Budget: about 300 cases, < 2 minutes
on the 2-core sandbox (max_examples below; the worker's per-case timeout bounds a hang)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.unit import fuzz_cases as fc

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")
from hypothesis import HealthCheck, given, settings  # noqa: E402

# module of the deepest qrdeploy frame -> why it is not fixed here (reported, owner's module)
REPORTED = {
    "grad_prepare.py": "onnxruntime errors while folding constants are not wrapped",
    "ortmodel.py": "onnxruntime run errors of the gradient sessions are not wrapped",
    "grad_rules.py": "zip(strict=True) ValueError on a node with fewer outputs than expected",
    "spectral.py": "numpy LinAlgError (SVD did not converge) on extreme weights",
}

CI = settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
BASES = fc.base_models()


@pytest.fixture(scope="module")
def runner() -> Iterator[fc.Runner]:
    with fc.Runner(timeout_s=60) as r:
        yield r


def _unreported(outcomes: list[str]) -> list[str]:
    """Findings that are crashes, hangs, or in a module not listed in REPORTED."""
    out = []
    for f in fc.findings(outcomes):
        head = f.splitlines()[0]
        module = head.rsplit("@ ", 1)[-1].split(":")[0] if "@ " in head else ""
        if module not in REPORTED:
            out.append(f)
    return out


def test_valid_bases_pass_every_stage(runner: fc.Runner) -> None:
    for data in BASES[:2]:  # the 8x8 CNN and MLP fit the fuzz data set
        assert all(o.endswith(":ok") for o in runner.run(data)), runner.run(data)


edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**20), st.integers(0, 255)),
                 min_size=1, max_size=4)


@CI
@given(base=st.integers(0, len(BASES) - 1), edits=edits)
def test_byte_mutants(runner: fc.Runner, base: int, edits: list[tuple[int, int, int]]) -> None:
    outcomes = runner.run(fc.mutate_bytes(BASES[base], edits))
    assert not _unreported(outcomes), _unreported(outcomes)[0]


seeds = st.lists(st.tuples(st.integers(0, len(fc.FIELD_MUTATORS) - 1), st.integers(0, 2**32)),
                 min_size=1, max_size=3)


@CI
@given(base=st.integers(0, len(BASES) - 1), seeds=seeds)
def test_field_mutants(runner: fc.Runner, base: int, seeds: list[tuple[int, int]]) -> None:
    outcomes = runner.run(fc.mutate_fields(BASES[base], seeds))
    assert not _unreported(outcomes), _unreported(outcomes)[0]


@pytest.mark.parametrize("which", range(len(fc.FIELD_MUTATORS)),
                         ids=[f.__name__.lstrip("_") for f in fc.FIELD_MUTATORS])
def test_every_field_mutator_changes_the_model(which: int) -> None:
    changed = {fc.mutate_fields(BASES[0], [(which, seed)]) != BASES[0] for seed in range(20)}
    assert True in changed


def test_runner_reports_a_worker_crash_and_recovers(runner: fc.Runner) -> None:
    crash = fc.Runner(timeout_s=30)
    with crash:
        pool = crash._executor()
        future = pool.submit(_segfault)
        with pytest.raises(Exception, match="terminated abruptly"):
            future.result(timeout=30)
        crash._shutdown()
        assert crash.run(BASES[0])[0] == "load:ok"


def _segfault() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def test_reported_eval_finding_is_fixed() -> None:
    from qrdeploy.data import Dataset
    from qrdeploy.errors import QrdeployError
    from qrdeploy.evaluation import evaluate_onnx
    from tests.unit.onnx_builders import cnn

    m = cnn(0)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3  # fixed batch 3, data has 2
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(QrdeployError):
        evaluate_onnx(m, Dataset("t", "test", x, np.array([1, 2]), 10))
