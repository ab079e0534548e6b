"""Open an untrusted ONNX file in a child process, so that a crash (segfault, abort), a hang or
memory exhaustion inside onnx.checker or onnxruntime (both C++) becomes a clean GraphError in the
caller instead of killing it (`--isolate`).

The child is `python -m qrdeploy.graphio.isolate`: it loads the file with
qrdeploy.graphio.graph.load_model (pre-validation and checker), creates an onnxruntime session and,
when asked, runs one all-zero batch; it prints the session's signature as one JSON line. The caller
waits at most `timeout_s` and kills the child after that.

Example:
    info = open_isolated("untrusted.onnx", timeout_s=60)   # raises GraphError on crash / hang
    model = graph.load_model("untrusted.onnx")              # the same checks, now known safe
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.runtime import SessionConfig, make_session, ort, run_session
from qrdeploy.errors import ConfigError, GraphError, QrdeployError
from qrdeploy.graphio import graph

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # so the child imports this qrdeploy
_STDIN = "-"


@dataclass(frozen=True)
class Isolation:
    """How the child runs: wall-clock limit, address-space limit (None: none), one probe batch."""

    timeout_s: float = 120.0
    memory_bytes: int | None = None
    probe: bool = False

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigError(f"isolation timeout must be > 0 seconds, got {self.timeout_s}")
        if self.memory_bytes is not None and self.memory_bytes < 2**26:
            raise ConfigError(f"isolation memory limit must be >= 64 MiB, got {self.memory_bytes}")


@dataclass(frozen=True)
class SessionInfo:
    """What the child's onnxruntime session reported."""

    inputs: tuple[tuple[str, tuple[Any, ...], str], ...]  # (name, shape, type)
    outputs: tuple[tuple[str, tuple[Any, ...], str], ...]
    providers: tuple[str, ...]


def open_isolated(model: str | os.PathLike[str] | bytes, config: SessionConfig | None = None,
                  isolation: Isolation | None = None) -> SessionInfo:
    """Load `model` (a file path, or serialized bytes) and create an onnxruntime session in a
    child process. A QrdeployError in the child is re-raised as GraphError with its message; a
    signal, a timeout or an out-of-memory death becomes a GraphError naming it."""
    config, isolation = config or SessionConfig(), isolation or Isolation()
    data = model if isinstance(model, bytes) else None
    target = _STDIN if data is not None else str(Path(model).resolve())  # type: ignore[arg-type]
    cmd = [sys.executable, "-m", "qrdeploy.graphio.isolate", target, "--provider", config.provider,
           "--threads", str(config.threads)]
    if isolation.memory_bytes:
        cmd += ["--memory-bytes", str(isolation.memory_bytes)]
    if isolation.probe:
        cmd.append("--probe")
    what = "the serialized model" if data is not None else target
    try:
        done = subprocess.run(cmd, input=data or b"", capture_output=True,
                              timeout=isolation.timeout_s, env=_child_env())
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        raise GraphError(f"opening {what} did not finish within {isolation.timeout_s:g} s "
                         "(killed): a large model needs a longer --isolate-timeout; a small one "
                         "that takes this long is suspect") from None
    return _result(done, what)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _result(done: subprocess.CompletedProcess[bytes], what: str) -> SessionInfo:
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    reply = _json(lines[-1]) if lines else None
    if done.returncode == 0 and reply and "inputs" in reply:
        return SessionInfo(tuple(_row(r) for r in reply["inputs"]),
                           tuple(_row(r) for r in reply["outputs"]), tuple(reply["providers"]))
    if reply and "error" in reply:
        raise GraphError(str(reply["error"]))
    raise GraphError(f"opening {what} in an isolated process failed: {_death(done)}; "
                     "the file is hostile or corrupt")


def _json(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _row(r: list[Any]) -> tuple[str, tuple[Any, ...], str]:
    return str(r[0]), tuple(r[1]), str(r[2])


def _death(done: subprocess.CompletedProcess[bytes]) -> str:
    rc = done.returncode
    if rc < 0:
        try:
            return f"it died of signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"it died of signal {-rc}"
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()
    last = tail[-1][:200] if tail else "no message"
    return f"exit code {rc} ({last})"


# ---------------------------------------------------------------- the child


def _limit_memory(nbytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))


def _open(target: str, config: SessionConfig, probe: bool) -> dict[str, Any]:
    data = sys.stdin.buffer.read() if target == _STDIN else \
        graph.model_to_bytes(graph.load_model(target))
    sess = make_session(data, config)
    if probe:
        _probe(sess)

    def rows(values: Any) -> list[list[Any]]:
        return [[v.name, [d if isinstance(d, int) else str(d) for d in v.shape], v.type]
                for v in values]

    return {"inputs": rows(sess.get_inputs()), "outputs": rows(sess.get_outputs()),
            "providers": list(sess.get_providers())}


#: input types the probe feeds (uint8: images read through an input spec's dtype=uint8)
_PROBE_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(uint8)": np.uint8}


def _probe(sess: Any) -> None:
    """Run one batch of zeros (symbolic dims = 1) through every image input."""
    feed = {}
    for v in sess.get_inputs():
        if v.type not in _PROBE_TYPES:
            raise GraphError(f"input {v.name!r} is {v.type}; qrdeploy needs float or uint8 "
                             "image inputs")
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in v.shape)
        feed[v.name] = np.zeros(shape, _PROBE_TYPES[v.type])
    run_session(sess, None, feed, what="run the model on zeros")


_OUT_OF_MEMORY = ("opening the model ran out of memory (isolation limit); the file is hostile or "
                  "too large for this machine")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qrdeploy.graphio.isolate")
    p.add_argument("model", help="path of the .onnx file, or - for serialized bytes on stdin")
    p.add_argument("--provider", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--memory-bytes", type=int, default=None)
    p.add_argument("--probe", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.memory_bytes:
            ort()  # load the libraries first: the limit is for the work on the model
            _limit_memory(args.memory_bytes)
        reply = _open(args.model, SessionConfig(args.provider, args.threads), args.probe)
    except QrdeployError as exc:
        # a C++ allocation that hit the limit surfaces as std::bad_alloc inside another message
        oom = args.memory_bytes and "bad_alloc" in str(exc)
        print(json.dumps({"error": _OUT_OF_MEMORY if oom else str(exc)}))
        return 1
    except MemoryError:
        print(json.dumps({"error": _OUT_OF_MEMORY}))
        return 1
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
