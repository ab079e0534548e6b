"""onnxruntime, found and configured in one place: the import check, providers and threads."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from qrdeploy.errors import ConfigError, GraphError, RuntimeMissingError, first_line

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
_FALLBACK_LOGGED: list[bool] = []  # log the CPU fallback once per process
_FIX = "install one: pip install 'qrdeploy[cpu]' (or 'qrdeploy[gpu]' for onnxruntime-gpu)"


def ort() -> Any:
    """Import onnxruntime, or raise a one-line error naming the fix."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissingError(f"onnxruntime is not installed; {_FIX}") from exc
    return onnxruntime


@dataclass(frozen=True)
class SessionConfig:
    """Where and how onnxruntime runs: provider (auto|cpu|cuda) and intra-op threads (0 = ORT's)."""

    provider: str = "auto"
    threads: int = 0
    deterministic: bool = True  # onnxruntime's use_deterministic_compute (same inputs, same bits)
    # spin-waiting of the intra-op threads after a run (onnxruntime's default: on) is off: between
    # two runs an attack does numpy work, and a second session may run next (a quantized model's
    # integer forward and its twin's gradient); spinning threads take the cores from both.
    # Measured on 2 cores (docs/benchmarks.md): CW-L2 on 100 digits 1.8x faster without it, the
    # README's attack 1.4x, with identical results; True restores onnxruntime's default
    spinning: bool = False
    # gradient runs on the CPU split a batch into this many lanes that run at once, each a
    # session with threads / lanes intra-op threads (0: two lanes when there are at least two
    # threads, 1: off); each sample's result is the same either way (see `lane_plan`)
    lanes: int = 0

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ConfigError(f"provider {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if self.lanes < 0:
            raise ConfigError(f"lanes must be >= 0, got {self.lanes}")


def gpu_build_installed() -> bool:
    """Is onnxruntime-gpu (qrdeploy's gpu extra) the installed runtime?"""
    try:
        metadata.distribution("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def resolve_providers(provider: str) -> list[str]:
    """The provider list for a session; auto falls back to CPU (logged) when CUDA is absent."""
    available = ort().get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if provider == "cuda" and not has_cuda:
        raise ConfigError("--provider cuda needs onnxruntime-gpu and a GPU; use --provider cpu")
    if provider in ("cuda", "auto") and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "auto" and not _FALLBACK_LOGGED and gpu_build_installed():
        # only news to someone who installed the gpu extra: the cpu extra never has CUDA
        _FALLBACK_LOGGED.append(True)
        log.info("onnxruntime: CUDA provider not available; running on CPU")
    return ["CPUExecutionProvider"]


def make_session(model: bytes, config: SessionConfig | None = None,
                 optimized_path: str | None = None,
                 qdq_transforms: bool = True,
                 profile_prefix: str | None = None) -> onnxruntime.InferenceSession:
    """An inference session for a serialized model; runtime failures become GraphError.
    `optimized_path`: where onnxruntime writes the graph it actually runs (after fusions).
    `qdq_transforms=False`: no QDQ node-unit rewrites (for the gradient graphs of quantized
    models, whose fake-quantized activations are to stay float: onnxruntime would otherwise copy
    each shared DequantizeLinear once per consumer; measured 3 % of a WRN step).
    `profile_prefix`: write onnxruntime's per-operator profile there (`end_profiling()` names
    the file; tools/profile_step.py)."""
    config = config or SessionConfig()
    rt = ort()
    opts = rt.SessionOptions()
    opts.log_severity_level = 3
    # onnxruntime >= 1.2x rewrites DequantizeLinear -> MatMul into MatMulNBits at accuracy level 4,
    # which quantizes activations to int8 and moves qdq/int4 logits ~0.5% away from the float
    # encoding; level 1 keeps float activations (measured: <= 2e-7 of the logit scale).
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    if config.threads:
        opts.intra_op_num_threads = config.threads
    opts.use_deterministic_compute = config.deterministic
    if not config.spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not qdq_transforms:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return rt.InferenceSession(model, opts, providers=resolve_providers(config.provider))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise GraphError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc


#: A lane gets at least this many samples: below it, one session with every thread is faster.
LANE_MIN_SAMPLES = 32


def lane_plan(config: SessionConfig, providers: list[str]) -> tuple[int, int]:
    """(lanes, intra-op threads of each lane) for the gradient runs of a session `config`.

    A gradient step is a long chain of operators, many of them elementwise; with every thread
    in one session, each operator waits for its threads to meet. Lanes of threads / lanes
    threads, each on its share of the batch, keep the cores busy instead: on the 2-core sandbox
    the wrn-32-1 step at batch 100 ran 1.12x faster (its BPDA step 1.15x), PGD-40 on 200 digits
    1.06-1.13x in three of four runs (docs/benchmarks.md, "Gradient lanes"). Forward runs are
    not split: they gained nothing there. Every sample's output is computed by the same kernels
    whichever lane runs it, so the outputs are those of the one-session run
    (tests/unit/test_lanes.py); a GPU session is never split."""
    if "CUDAExecutionProvider" in providers:
        return 1, config.threads
    threads = config.threads or os.cpu_count() or 1
    lanes = min(config.lanes or 2, threads)
    if lanes < 2:
        return 1, config.threads
    return lanes, threads // lanes


_LANE_POOLS: dict[int, ThreadPoolExecutor] = {}
# a forked child has none of its parent's threads: it makes its own pools (a user's fork after
# qrdeploy ran; qrdeploy's own workers are spawned)
os.register_at_fork(after_in_child=_LANE_POOLS.clear)


def lane_pool(lanes: int) -> ThreadPoolExecutor:
    """The process's thread pool that runs lanes 2..`lanes` of a split batch (the calling thread
    runs the first); onnxruntime releases the GIL while it runs."""
    if lanes not in _LANE_POOLS:
        _LANE_POOLS[lanes] = ThreadPoolExecutor(lanes - 1, thread_name_prefix="qrdeploy-lane")
    return _LANE_POOLS[lanes]


def run_session(session: Any, outputs: list[str] | None, feeds: dict[str, Any],
                what: str = "run the model", fix: str = "") -> list[Any]:
    """session.run with onnxruntime's failures (its own exception types) as one-line GraphErrors:
    "onnxruntime failed to <what>: <its first line>[; <fix>]"."""
    try:
        return list(session.run(outputs, feeds))
    except Exception as exc:
        hint = f"; {fix}" if fix else ""
        raise GraphError(f"onnxruntime failed to {what}: {first_line(exc)}{hint}") from None
