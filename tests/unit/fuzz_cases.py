"""Fuzzing harness shared by tests/unit/test_fuzz.py (bounded, CI) and tools/fuzz_long.py (long):
mutations of valid tiny ONNX files, and a crash-proof worker that feeds each mutant to every
entry point that reads a model.

Allowed outcomes of an entry point: success, or a QrdeployError with a one-line message. Anything
else is a finding: another exception (a traceback), a multi-line message, a signal that kills the
worker (onnx.checker and onnxruntime are C++), or a hang past the per-case timeout.

The worker is a spawned process (concurrent.futures), restarted after it dies or hangs, so a
segfault never reaches the test runner."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import random
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

DATA_NAME = "m.onnx.data"  # a real external-data file beside every mutant
LOCATIONS = (DATA_NAME, "", "../m.onnx.data", "/etc/passwd", "sub/../m.onnx.data", ".",
             "missing.data", "m.onnx", "\x00", "a" * 300)
OP_TYPES = ("Conv", "Gemm", "MatMul", "Relu", "MaxPool", "Flatten", "Reshape", "Identity",
            "Transpose", "DequantizeLinear", "Cast", "Gather", "Mul", "Add", "If", "Loop",
            "Softmax", "NoSuchOp", "")


# ---------------------------------------------------------------- base models


def base_models() -> list[bytes]:
    """Serialized valid models: float CNN, MatMul MLP behind a Transpose, ConvTranspose, and
    qdq / int4 hardened CNNs."""
    from qrdeploy.hardening.passes import MuLawMap, WeightQuant, harden
    from tests.unit.onnx_builders import cnn, conv_transpose_net, mlp_matmul

    models = [cnn(0), mlp_matmul(0, transpose=True, dynamo_reshape=True), conv_transpose_net(0),
              harden(cnn(1), [MuLawMap(255), WeightQuant(3)], "qdq")[0],
              harden(cnn(2), [WeightQuant(4, "channel")], "int4")[0]]
    return [m.SerializeToString(deterministic=True) for m in models]


def external_blob() -> bytes:
    """Valid bytes for the external-data file (the first weights of the CNN, then zeros)."""
    from tests.unit.onnx_builders import cnn

    return b"".join(t.raw_data for t in cnn(0).graph.initializer) + bytes(4096)


# ---------------------------------------------------------------- mutations


def mutate_bytes(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Edits (kind, position, value): 0 overwrite a byte, 1 insert, 2 delete, 3 truncate."""
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            break
        i = pos % len(buf)
        if kind == 0:
            buf[i] = value & 0xFF
        elif kind == 1:
            buf.insert(i, value & 0xFF)
        elif kind == 2:
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


def _pick(seq: Any, r: random.Random) -> Any:
    return seq[r.randrange(len(seq))] if len(seq) else None


def _int(r: random.Random) -> int:
    return _pick((0, 1, -1, 2, 3, 7, 64, 2**31, 2**40, -(2**40), r.randrange(-9, 99)), r)


def _tensors(m: onnx.ModelProto) -> list[onnx.TensorProto]:
    found = list(m.graph.initializer)
    found += [a.t for n in m.graph.node for a in n.attribute if a.HasField("t")]
    return found


def _m_dims(m: onnx.ModelProto, r: random.Random) -> None:
    t = _pick(_tensors(m), r)
    if t is not None:
        del t.dims[:]
        t.dims.extend(_int(r) for _ in range(r.randrange(0, 6)))


def _m_dtype(m: onnx.ModelProto, r: random.Random) -> None:
    t = _pick(_tensors(m), r)
    if t is not None:
        t.data_type = r.randrange(0, 32)


def _m_raw(m: onnx.ModelProto, r: random.Random) -> None:
    t = _pick(_tensors(m), r)
    if t is not None:
        cut = r.randrange(0, len(t.raw_data) + 9)
        t.raw_data = t.raw_data[:cut] + bytes(r.randrange(0, 9))


def _m_node_input(m: onnx.ModelProto, r: random.Random) -> None:
    node = _pick(m.graph.node, r)
    if node is None:
        return
    names = [x for n in m.graph.node for x in (*n.input, *n.output)] + ["", "nowhere"]
    if node.input and r.random() < 0.7:
        node.input[r.randrange(len(node.input))] = _pick(names, r)
    elif node.input:
        del node.input[r.randrange(len(node.input))]
    else:
        node.input.append(_pick(names, r))


def _m_op_type(m: onnx.ModelProto, r: random.Random) -> None:
    node = _pick(m.graph.node, r)
    if node is not None:
        node.op_type = _pick(OP_TYPES, r)


def _m_attribute(m: onnx.ModelProto, r: random.Random) -> None:
    node = _pick([n for n in m.graph.node if n.attribute], r)
    if node is None:
        return
    a = _pick(node.attribute, r)
    if a.type == onnx.AttributeProto.INTS or r.random() < 0.3:
        del a.ints[:]
        a.ints.extend(_int(r) for _ in range(r.randrange(0, 6)))
    elif a.type == onnx.AttributeProto.INT:
        a.i = _int(r)
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = _pick((0.0, -1.0, float("nan"), float("inf"), 1e30), r)
    else:
        a.type = r.randrange(0, 15)


def _m_external(m: onnx.ModelProto, r: random.Random) -> None:
    t = _pick(list(m.graph.initializer), r)
    if t is None:
        return
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    t.external_data.add(key="location", value=_pick(LOCATIONS, r))
    for key in ("offset", "length"):
        if r.random() < 0.7:
            t.external_data.add(key=key, value=_pick(
                ("0", "16", str(r.randrange(0, 9000)), "-1", "x", str(2**62)), r))
    if r.random() < 0.1:
        t.external_data.add(key=_pick(("checksum", "basepath", "evil"), r), value="/tmp")


def _m_opset(m: onnx.ModelProto, r: random.Random) -> None:
    choice = r.randrange(4)
    if choice == 0 and m.opset_import:
        m.opset_import[0].version = _pick((-1, 0, 1, 7, 12, 13, 18, 21, 22, 28, 99, 2**40), r)
    elif choice == 1 and m.opset_import:
        m.opset_import[0].domain = _pick(("ai.onnx", "com.microsoft", "x"), r)
    elif choice == 2:
        del m.opset_import[:]
    else:
        m.ir_version = _pick((0, 1, 3, 7, 8, 10, 11, 99, -1), r)


def _m_input_shape(m: onnx.ModelProto, r: random.Random) -> None:
    for v in m.graph.input:
        dims = v.type.tensor_type.shape.dim
        if dims:
            d = dims[r.randrange(len(dims))]
            if r.random() < 0.5:
                d.dim_value = _int(r)
            else:
                d.dim_param = "M"


FIELD_MUTATORS: tuple[Callable[[onnx.ModelProto, random.Random], None], ...] = (
    _m_dims, _m_dtype, _m_raw, _m_node_input, _m_op_type, _m_attribute, _m_external, _m_opset,
    _m_input_shape)


def mutate_fields(data: bytes, seeds: list[tuple[int, int]]) -> bytes:
    """Each (mutator index, seed) applies one protobuf-level mutation."""
    m = onnx.ModelProto()
    m.ParseFromString(data)
    for which, seed in seeds:
        FIELD_MUTATORS[which % len(FIELD_MUTATORS)](m, random.Random(seed))
    return m.SerializeToString()


# ---------------------------------------------------------------- the entry points (worker side)


def _one_line(exc: Exception) -> str:
    msg = str(exc)
    if "\n" in msg or not msg.strip():
        raise AssertionError(f"{type(exc).__name__} message is not one line: {msg[:300]!r}")
    return f"{type(exc).__name__}"


def _stages(path: Path) -> list[tuple[str, Callable[[Any], Any]]]:
    import numpy as np

    from qrdeploy.core.losses import Loss
    from qrdeploy.core.runtime import SessionConfig
    from qrdeploy.data.datasets import Dataset
    from qrdeploy.evaluation.clean import evaluate_onnx
    from qrdeploy.hardening.passes import MuLawMap, Recipe, WeightQuant, describe_model, harden
    from qrdeploy.model.ortmodel import OrtModel
    from qrdeploy.spectral.analysis import lipschitz_report

    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)  # (N, C, H, W)
    ds = Dataset("fuzz", "test", x, np.array([1, 2]), 10)
    one = SessionConfig("cpu", 1)
    recipe = Recipe((MuLawMap(255), WeightQuant(3)))
    return [
        ("inspect", describe_model),
        ("harden-qdq", lambda m: harden(m, [MuLawMap(255), WeightQuant(3)], "qdq")),
        ("harden-int4", lambda m: harden(m, [WeightQuant(4, "channel")], "int4")),
        ("eval", lambda m: evaluate_onnx(m, ds, config=one)),
        ("gradients", lambda m: OrtModel(m, one).loss_and_grad(x, ds.y, Loss.CW)),
        ("lipschitz", lambda m: lipschitz_report(m, recipe=recipe, data=x)),
    ]


def run_case(data: bytes) -> list[str]:
    """Feed one mutant to every entry point; one outcome per stage ('ok', an error class name,
    or 'FINDING ...' with the traceback)."""
    from qrdeploy.errors import QrdeployError
    from qrdeploy.graphio import graph

    with tempfile.TemporaryDirectory(prefix="qrd-fuzz-") as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(data)
        (Path(tmp) / DATA_NAME).write_bytes(_BLOB)
        outcomes: list[str] = []
        try:
            model = graph.load_model(path)
            outcomes.append("load:ok")
        except QrdeployError as exc:
            return [_checked_line("load", exc)]
        except Exception:
            return [_finding("load")]
        for name, fn in _stages(path):
            try:
                fn(model)
                outcomes.append(f"{name}:ok")
            except QrdeployError as exc:
                outcomes.append(_checked_line(name, exc))
            except Exception:
                outcomes.append(_finding(name))
        return outcomes


def _finding(stage: str) -> str:
    """'FINDING stage: Type: message @ deepest qrdeploy frame', then the traceback."""
    exc = sys.exception()
    frames = [f for f in traceback.extract_tb(exc.__traceback__ if exc else None)
              if "qrdeploy" in f.filename and "tests" not in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    first = str(exc).strip().splitlines()[0][:160] if exc and str(exc).strip() else ""
    return f"FINDING {stage}: {type(exc).__name__}: {first} @ {where}\n{traceback.format_exc()}"


def _checked_line(stage: str, exc: Exception) -> str:
    """'stage:ErrorType' for a one-line QrdeployError; a 'FINDING stage: ...' otherwise (an
    empty or multi-line message breaks the CLI's one-line contract)."""
    try:
        return f"{stage}:{_one_line(exc)}"
    except AssertionError as bad:
        return f"FINDING {stage}: {bad}"


_BLOB = b""


def _init_worker(blob: bytes) -> None:
    global _BLOB
    _BLOB = blob
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# ---------------------------------------------------------------- the crash-proof runner


@dataclass
class Runner:
    """Runs cases in one spawned worker; a worker that dies or hangs is replaced and the case is
    reported as a finding."""

    timeout_s: float = 30.0
    _pool: cf.ProcessPoolExecutor | None = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._shutdown()

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(external_blob(),))
        return self._pool

    def _shutdown(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()  # only our own worker, by its handle
        pool.shutdown(wait=True, cancel_futures=True)

    def run(self, data: bytes) -> list[str]:
        future = self._executor().submit(run_case, data)
        try:
            return future.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            self._shutdown(kill=True)
            return [f"FINDING hang: no answer within {self.timeout_s:g} s"]
        except cf.process.BrokenProcessPool:
            self._shutdown()
            return ["FINDING crash: the worker process died (signal or abort)"]


def findings(outcomes: list[str]) -> list[str]:
    return [o for o in outcomes if o.startswith("FINDING")]
