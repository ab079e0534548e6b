"""qrdeploy.graphio.isolate: an onnxruntime session opened in a child process; a crash, a hang or
memory exhaustion of the child becomes a one-line GraphError in the caller.

Real child deaths are provoked with a sitecustomize.py on the child's PYTHONPATH that kills or
stalls the interpreter at start-up when an environment variable asks for it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qrdeploy.errors import ConfigError, GraphError
from qrdeploy.graphio import graph
from qrdeploy.graphio.isolate import Isolation, open_isolated
from tests.unit.onnx_builders import cnn

_SITE = """import os, signal, time
what = os.environ.get("QRD_TEST_CHILD")
if what == "segv":
    os.kill(os.getpid(), signal.SIGSEGV)
elif what == "abort":
    os.abort()
elif what == "hang":
    time.sleep(60)
"""


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return graph.save_model(cnn(0), tmp_path / "m.onnx")


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_valid_model_reports_its_signature(model_path: Path, as_bytes: bool) -> None:
    model = model_path.read_bytes() if as_bytes else model_path
    info = open_isolated(model, isolation=Isolation(probe=True))
    assert info.inputs == (("input", ("N", 1, 8, 8), "tensor(float)"),)
    assert info.outputs == (("logits", ("N", 10), "tensor(float)"),)
    assert "CPUExecutionProvider" in info.providers


@pytest.mark.parametrize(("payload", "match"), [
    (b"junk" * 10, "not a readable ONNX file"),
    (b"", "no graph"),
], ids=["garbage", "empty"])
def test_child_errors_come_back_as_one_line(tmp_path: Path, payload: bytes, match: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(payload)
    with pytest.raises(GraphError, match=match) as err:
        open_isolated(path)
    assert "\n" not in str(err.value)


def test_probe_reports_a_model_that_cannot_run(tmp_path: Path) -> None:
    m = cnn(0)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3  # conv1 has 1 input channel
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(GraphError, match="failed to run the model on zeros: .*channels"):
        open_isolated(path, isolation=Isolation(probe=True))


@pytest.mark.parametrize(("what", "match"), [
    ("segv", "died of signal SIGSEGV"), ("abort", "died of signal SIGABRT"),
], ids=["segfault", "abort"])
def test_child_crash_becomes_graph_error(model_path: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, what: str,
                                         match: str) -> None:
    (tmp_path / "sitecustomize.py").write_text(_SITE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("QRD_TEST_CHILD", what)
    with pytest.raises(GraphError, match=match):
        open_isolated(model_path)


def test_child_hang_is_killed_after_timeout(model_path: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sitecustomize.py").write_text(_SITE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("QRD_TEST_CHILD", "hang")
    start = time.monotonic()
    with pytest.raises(GraphError, match="did not finish within 1.5 s"):
        open_isolated(model_path, isolation=Isolation(timeout_s=1.5))
    assert time.monotonic() - start < 20


def test_memory_limit_becomes_graph_error(model_path: Path) -> None:
    with pytest.raises(GraphError, match="ran out of memory"):
        open_isolated(model_path, isolation=Isolation(memory_bytes=2**26))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"timeout_s": 0}, "timeout must be > 0"),
    ({"timeout_s": -1.0}, "timeout must be > 0"),
    ({"memory_bytes": 1000}, "memory limit must be >= 64 MiB"),
], ids=["timeout-zero", "timeout-negative", "memory-tiny"])
def test_isolation_settings_are_validated(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Isolation(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["inspect", "harden", "eval", "attack", "lipschitz", "check",
                                     "margins"])
def test_every_isolate_flag_opens_the_model_in_a_child_first(
        command: str, model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The child that opens the model dies of SIGSEGV (sitecustomize): a command that really
    isolates reports that death as one line and exits 1; one that skipped the child would not
    see it at all."""
    from qrdeploy.cli import main

    (tmp_path / "sitecustomize.py").write_text(_SITE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("QRD_TEST_CHILD", "segv")
    m, out = str(model_path), str(tmp_path / "out")
    data = ["--data", "mnist-5k", "-n", "4"]
    policy = tmp_path / "p.toml"
    policy.write_text("[clean]\nmin_accuracy = 0.0\n")
    argv = {"inspect": [m], "harden": [m, "-o", out + ".onnx", "--bits", "3"],
            "eval": [m, *data], "attack": [m, "-o", out + ".json", "--suite", "white", *data],
            "lipschitz": [m, "--bits", "3"],
            "check": [m, "--reference", m, "--policy", str(policy), *data],
            "margins": [m, *data]}[command]
    assert main([command, *argv, "--isolate", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "died of signal SIGSEGV" in err, err
