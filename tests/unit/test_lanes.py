"""Gradient lanes: a large gradient batch is split over sessions that run at once, and every
output is the same as in one session (qrdeploy.core.runtime.lane_plan)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from qrdeploy.core import runtime
from qrdeploy.core.losses import Loss
from qrdeploy.core.runtime import LANE_MIN_SAMPLES, SessionConfig, lane_plan
from qrdeploy.errors import ConfigError
from qrdeploy.model.ortmodel import OrtModel
from tests.unit.onnx_builders import cnn, inputs, quantize_static

CPU = ["CPUExecutionProvider"]


def _pair(model: Any, lanes: int = 2, threads: int = 2,
          **kw: Any) -> tuple[OrtModel, OrtModel]:
    """The model in `lanes` lanes and in one."""
    return (OrtModel(model, SessionConfig("cpu", threads=threads, lanes=lanes), **kw),
            OrtModel(model, SessionConfig("cpu", threads=threads, lanes=1), **kw))


def _same(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b, strict=True):
        assert p.shape == q.shape and p.dtype == q.dtype
        np.testing.assert_array_equal(p, q)


def test_the_plan() -> None:
    assert lane_plan(SessionConfig("cpu", threads=2), CPU) == (2, 1)
    assert lane_plan(SessionConfig("cpu", threads=8), CPU) == (2, 4)
    assert lane_plan(SessionConfig("cpu", threads=6, lanes=3), CPU) == (3, 2)
    assert lane_plan(SessionConfig("cpu", threads=1), CPU) == (1, 1)  # one thread: no lanes
    assert lane_plan(SessionConfig("cpu", threads=4, lanes=1), CPU) == (1, 4)
    assert lane_plan(SessionConfig("cpu", threads=3, lanes=8), CPU) == (3, 1)  # <= threads
    # a GPU session is never split
    assert lane_plan(SessionConfig("cuda", threads=4), ["CUDAExecutionProvider", *CPU]) == (1, 4)
    with pytest.raises(ConfigError, match="lanes must be >= 0"):
        SessionConfig(lanes=-1)


def test_threads_left_to_onnxruntime_split_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("qrdeploy.core.runtime.os.cpu_count", lambda: 8)
    assert lane_plan(SessionConfig("cpu"), CPU) == (2, 4)
    monkeypatch.setattr("qrdeploy.core.runtime.os.cpu_count", lambda: 1)
    assert lane_plan(SessionConfig("cpu"), CPU) == (1, 0)  # onnxruntime's own default


@pytest.mark.parametrize(("lanes", "n"), [(2, 2 * LANE_MIN_SAMPLES), (2, 151), (3, 100)])
def test_lanes_give_the_one_session_outputs(lanes: int, n: int) -> None:
    """Every output of the fused losses and of vjp, in lanes of unequal sizes too, and across
    batch_size chunks."""
    split, whole = _pair(cnn(seed=3), lanes=lanes, threads=lanes, batch_size=120)
    x = inputs(1, (n, 1, 8, 8))
    y = np.arange(n) % 10
    for loss in (Loss.CE, Loss.CW, Loss.DLR):
        _same(split.loss_and_grad(x, y, loss), whole.loss_and_grad(x, y, loss))
    cot = np.random.default_rng(2).normal(size=(n, 10)).astype(np.float32)
    _same(split.vjp(x, cot), whole.vjp(x, cot))
    assert split.lanes == lanes and split.info["gradient_lanes"] == lanes
    assert set(split._lane_sessions) == {"ce", "cw", "dlr", "vjp"}  # the lanes did the work
    assert not whole._lane_sessions


def test_the_pieces_run_on_the_lane_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A split batch runs one piece on the calling thread and the others on the lane pool, at
    the lane session; a small batch runs whole, on the session with every thread."""
    seen: list[tuple[str, int]] = []
    real = runtime.run_session

    def spy(session: Any, outputs: Any, feeds: dict[str, np.ndarray]) -> list[Any]:
        seen.append((threading.current_thread().name, len(next(iter(feeds.values())))))
        return real(session, outputs, feeds)

    monkeypatch.setattr("qrdeploy.model.ortmodel.run_session", spy)
    om = OrtModel(cnn(seed=3), SessionConfig("cpu", threads=2))
    n = 2 * LANE_MIN_SAMPLES + 1
    om.loss_and_grad(inputs(1, (n, 1, 8, 8)), np.zeros(n, np.int64), Loss.CE)
    assert sorted(size for _, size in seen) == [n // 2, n - n // 2]
    assert seen[0][0] == threading.current_thread().name
    assert seen[1][0].startswith("qrdeploy-lane")
    seen.clear()
    small = 2 * LANE_MIN_SAMPLES - 1
    om.loss_and_grad(inputs(1, (small, 1, 8, 8)), np.zeros(small, np.int64), Loss.CE)
    assert seen == [(threading.current_thread().name, small)]


def test_a_quantized_graph_in_lanes(tmp_path: Path) -> None:
    """BPDA: the twin's gradient runs in lanes, the integer graph scores; the same outputs."""
    src = tmp_path / "f.onnx"
    onnx.save(cnn(seed=4), src)
    x = inputs(5, (80, 1, 8, 8))
    from onnxruntime.quantization import QuantFormat

    q = quantize_static(src, tmp_path / "q.onnx", {"input": x[:16]},
                        quant_format=QuantFormat.QDQ)
    split, whole = _pair(q)
    assert split.bpda
    y = np.arange(len(x)) % 10
    _same(split.loss_and_grad(x, y, Loss.CE), whole.loss_and_grad(x, y, Loss.CE))
    assert "ce" in split._lane_sessions


def test_a_fixed_batch_graph_is_not_split() -> None:
    model = cnn(seed=3)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2 * LANE_MIN_SAMPLES
    split, whole = _pair(model, batch_size=2 * LANE_MIN_SAMPLES)
    x = inputs(1, (2 * LANE_MIN_SAMPLES, 1, 8, 8))
    y = np.arange(len(x)) % 10
    _same(split.loss_and_grad(x, y, Loss.CE), whole.loss_and_grad(x, y, Loss.CE))
    assert not split._lane_sessions


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_runs_its_own_lanes() -> None:
    """A child forked after the parent used the lane pool has none of its threads; it makes its
    own pool instead of queueing work that nothing runs."""
    om = OrtModel(cnn(seed=3), SessionConfig("cpu", threads=2))
    n = 2 * LANE_MIN_SAMPLES
    x, y = inputs(1, (n, 1, 8, 8)), np.zeros(n, np.int64)
    want = om.loss_and_grad(x, y, Loss.CE)[2]
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when the lanes ran and gave the same gradient
        ok = False
        try:
            ok = bool(np.array_equal(om.loss_and_grad(x, y, Loss.CE)[2], want))
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the parent's lane pool")
