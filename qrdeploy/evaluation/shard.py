"""Sharded evaluation: the runner's work split by samples over local worker processes
(`--workers N`) or a Ray cluster (`--ray [ADDRESS]`), merged into the Evaluation a single process
would have produced.

Why this is exact: every attack keys its randomness by (seed, attack, global sample position)
(qrdeploy.core.rng), treats samples independently, and the runner's cascade and worst cases are
per sample; a shard of samples [a, b) runs `evaluate` on x[a:b] with `RunConfig.index_offset = a`
and gives the records a single process gives for those samples. On one host the merged results
are byte-identical to the one-process run apart from timings (tests/unit/test_shard.py).

One shard function serves both back ends (`run_shard`): it opens the models again from their
`ModelRef`s (qrdeploy.evaluation.subjects), so nothing unpicklable crosses a process boundary;
with Ray the images travel through the object store once (`ray.put`) and a lost task is retried
by Ray (it is deterministic, so a retry changes nothing). Each shard keeps its own state file
(`<state>.shard-<i>-of-<n>.npz`), so an interrupted sharded run resumes shard by shard.
Workers run with `threads = cores // workers`, Ray tasks with one thread each (and as many
shards as the cluster has CPUs), unless the session or `shards` says otherwise.

Progress: a shard runs quietly and sends its share done to the driver about once a second
(qrdeploy.core.progress.relaying), through a queue the local pool's workers get at their start,
a Ray queue actor, or a direct call for shards run in the driver's own process; the driver shows
one line over all shards (`ShardProgress`) with an ETA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue as queues
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.progress import ShardProgress, relay_interval, relaying
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.errors import ConfigError, RuntimeMissingError, first_line
from qrdeploy.evaluation.runner import (
    Evaluation,
    Labels,
    Probe,
    Record,
    RunConfig,
    Subject,
    Transfer,
    evaluate,
    fingerprint,
    resolve_labels,
    run_stages,
    survivor_keys,
)
from qrdeploy.evaluation.subjects import ModelRef
from qrdeploy.evaluation.suites import Mode, Suite

log = logging.getLogger(__name__)

CLUSTER_HINT = "pip install 'qrdeploy[cluster]'"


@dataclass(frozen=True)
class Parallel:
    """How to spread a run: `workers` local processes, or a Ray cluster (`ray`: None for no Ray,
    'local' to start one on this machine, 'auto' or an address to join one); `shards` pieces of
    the samples (default: one per worker)."""

    workers: int = 1
    ray: str | None = None
    shards: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.shards is not None and self.shards < 1:
            raise ConfigError(f"--shards must be >= 1, got {self.shards}")
        if self.ray is not None:
            ray_address(self.ray)

    @property
    def active(self) -> bool:
        return self.ray is not None or self.workers > 1 or (self.shards or 1) > 1

    def pieces(self, n: int, slots: int | None = None) -> list[tuple[int, int]]:
        """Contiguous sample ranges, as equal as possible, at most n of them: `shards` of them,
        else one per worker, or with Ray one per task slot of the cluster (`slots`: its CPUs
        divided by the threads of a task; 2 when unknown)."""
        default = self.workers if self.ray is None else max(self.workers, slots or 2)
        k = min(n, self.shards or default)
        edges = np.linspace(0, n, k + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(edges, edges[1:], strict=False) if b > a]


@dataclass(frozen=True)
class ShardTask:
    """Everything a shard needs, picklable."""

    index: int
    count: int
    start: int
    stop: int
    victim: ModelRef
    source: ModelRef | None
    adaptive_source: ModelRef | None
    suite: Suite
    config: RunConfig
    threads: int
    run: str = ""  # the sharded run it belongs to: its progress messages carry this


@dataclass(frozen=True)
class ShardOut:
    """What a shard measured (numpy arrays and plain data only)."""

    start: int
    stop: int
    records: dict[str, Record]
    transfer_x: dict[str, np.ndarray] | None
    transfer_records: dict[str, Record] | None
    source_correct: np.ndarray | None
    probe: Probe | None
    timings: dict[str, float]


class _Sender:
    """A shard's progress for the driver: (run, shard, share done, share resumed) put on
    `channel` at most every `every` seconds, and at the end. Progress never fails a shard: a
    channel that cannot take a message loses it."""

    def __init__(self, channel: Any, run: str, index: int, every: float) -> None:
        self.channel, self.run, self.index, self.every = channel, run, index, every
        self.last = -float("inf")

    def __call__(self, share: float, resumed: float) -> None:
        now = time.monotonic()
        if share < 1.0 and now - self.last < self.every:
            return
        self.last = now
        with contextlib.suppress(Exception):
            self.channel.put((self.run, self.index, share, resumed))


class _Direct:
    """The channel of shards run in the driver's own process: straight to its line."""

    def __init__(self, progress: ShardProgress | None) -> None:
        self.progress = progress

    def put(self, message: tuple[str, int, float, float]) -> None:
        if self.progress is not None:
            self.progress.update(*message[1:])


# in a local worker process: the queue its shards' progress goes to (set at its start)
_WORKER_QUEUE: Any = None


def run_shard(task: ShardTask, x: np.ndarray, y: np.ndarray,
              channel: Any = None) -> ShardOut:
    """Evaluate samples [start, stop) of x (N, C, H, W) / y (N,) with the global rng keys.
    Progress goes to `channel` (anything with `put`; a local worker's own queue when None)."""
    quiet = os.environ.get("QRDEPLOY_QUIET")
    os.environ["QRDEPLOY_QUIET"] = "1"  # the driver shows the progress
    sink = channel if channel is not None else _WORKER_QUEUE
    relay = (contextlib.nullcontext() if sink is None else
             relaying(_Sender(sink, task.run, task.index, relay_interval())))
    try:
        session = dataclasses.replace(task.victim.session, threads=task.threads)
        victim = task.victim.open(session)
        source = None if task.source is None else task.source.open(session)
        adaptive = None if task.adaptive_source is None else task.adaptive_source.open(session)
        xs, ys = x[task.start:task.stop], y[task.start:task.stop]
        with relay:
            ev = evaluate(victim, xs, ys, task.suite, source=source, labels=Labels.TRUE,
                          config=task.config, adaptive_source=adaptive)
    finally:  # a shard run in the driver's own process leaves its progress as it was
        if quiet is None:
            os.environ.pop("QRDEPLOY_QUIET", None)
        else:
            os.environ["QRDEPLOY_QUIET"] = quiet
    t = ev.transfer
    return ShardOut(task.start, task.stop, ev.records, None if t is None else t.x_adv,
                    None if t is None else t.records,
                    None if t is None else t.source_correct, ev.probe, ev.timings)


def _state(path: Path | None, i: int, n: int) -> Path | None:
    return None if path is None else path.with_name(f"{path.name}.shard-{i + 1}-of-{n}.npz")


def _say_other_shard_states(path: Path | None, n: int) -> None:
    """State files of an interrupted run split into another number of shards are not resumed
    (each holds its own slice of the samples): say so before the run starts again."""
    if path is None:
        return
    other = sorted(p.name for p in path.parent.glob(f"{path.name}.shard-*-of-*.npz")
                   if not p.name.endswith(f"-of-{n}.npz"))
    if other:
        log.warning("state files of a run in another number of shards are not resumed by this "
                    "one in %d (%s): rerun with that shard count to resume it; they are "
                    "deleted when this run ends", n, other[0])


def _threads(session: SessionConfig, parallel: Parallel) -> int:
    """onnxruntime threads of one shard: the session's count if it names one; else one per Ray
    task (a task asks the cluster for as many CPUs as it runs threads, and Ray's own default is
    one, so a cluster runs as many shards at once as it has CPUs), or cores // workers."""
    if session.threads:
        return session.threads
    if parallel.ray is not None:
        return 1
    return max(1, (os.cpu_count() or 1) // parallel.workers)


def _ray_slots(ray: Any, threads: int) -> int:
    """How many shards of `threads` CPUs the connected Ray cluster runs at once."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return max(1, cpus // threads)


def _merge_records(parts: Sequence[dict[str, Record]]) -> dict[str, Record]:
    """Concatenate per key; keys that shared one Record in every shard share one again."""
    out: dict[str, Record] = {}
    first = parts[0]
    by_id: dict[int, Record] = {}
    for key, rec in first.items():
        if id(rec) in by_id:
            out[key] = by_id[id(rec)]
            continue
        pieces = [p[key] for p in parts]
        draws = None if rec.draws is None else np.concatenate([p.draws for p in pieces], axis=1)
        adv = None if rec.x_adv is None else np.concatenate([p.x_adv for p in pieces])
        fooled, linf, l2, done = (np.concatenate([getattr(p, f) for p in pieces])
                                  for f in ("fooled", "linf", "l2", "done"))
        merged = Record(fooled, linf, l2, done, draws, adv)
        by_id[id(rec)] = out[key] = merged
    return out


def _merge(outs: list[ShardOut], victim: Subject, source: Subject | None,
           adaptive_source: Subject | None, suite: Suite, y: np.ndarray, labels: Labels,
           data_fp: str, config: RunConfig, reference: Subject | None) -> Evaluation:
    outs = sorted(outs, key=lambda o: o.start)
    records = _merge_records([o.records for o in outs])
    transfer = None
    tx = [o.transfer_x for o in outs if o.transfer_x is not None]
    tr = [o.transfer_records for o in outs if o.transfer_records is not None]
    tc = [o.source_correct for o in outs if o.source_correct is not None]
    if source is not None and len(tx) == len(outs):
        transfer = Transfer(source, {k: np.concatenate([t[k] for t in tx]) for k in tx[0]},
                            _merge_records(tr), np.concatenate(tc))
    probe = None
    probes = [o.probe for o in outs if o.probe is not None]
    if len(probes) == len(outs):
        grads = [p.grads for p in probes if p.grads is not None]
        probe = Probe(np.concatenate([p.logits for p in probes]),
                      np.concatenate(grads) if len(grads) == len(probes) else None)
    timings: dict[str, float] = {}
    for o in outs:
        for k, v in o.timings.items():
            timings[k] = max(timings.get(k, 0.0), v)  # the slowest shard: the wall time
    return Evaluation(suite, victim, labels, y, data_fp, config, records, transfer, reference,
                      timings, probe, adaptive_source, survivor_keys(suite))


#: how often a local worker checks that its parent is alive, and its exit status when not
WATCHDOG_SECONDS = 0.5
EXIT_ORPHANED = 1

# What `warm` started and `release` stops: the local worker pool (its size and executor) and
# whether this process connected to Ray itself (a caller's own ray.init is left alone).
_HELD: dict[str, Any] = {}


def _warm_imports() -> None:
    """A worker's start: the imports a shard needs (this module, so the runner, and
    onnxruntime), done before its first shard arrives."""
    import onnxruntime  # noqa: F401


def _worker_start(progress: Any = None) -> None:
    """A local worker's initializer: the queue its progress goes to, the imports, and a watchdog
    that ends the worker when its parent is gone (killed with SIGKILL, or by a CI timeout's
    SIGTERM, which runs no cleanup): an orphaned worker would go on computing and writing shard
    state files that a rerun writes too. Its state files are written atomically, so the rerun
    resumes from them."""
    global _WORKER_QUEUE
    if progress is not None:
        progress.cancel_join_thread()  # at exit, unsent progress is dropped, never waited for
        _WORKER_QUEUE = progress
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_SECONDS)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="qrdeploy-parent-watchdog", daemon=True).start()
    _warm_imports()


def warm(parallel: Parallel) -> None:
    """Start the workers of `parallel` now, without waiting for them: the local pool's processes
    or, on Ray, the connection and one task per CPU of the cluster (at most `shards`), each
    importing what a shard needs. A command calls this before it loads its data and models, so
    the workers' start (about a second: a spawned interpreter importing onnxruntime and
    qrdeploy) overlaps that loading; `evaluate_sharded` then uses these workers, and `release`
    stops them."""
    if parallel.ray is not None:
        ray = _ray(parallel.ray)
        task = ray.remote(num_cpus=1, max_retries=0)(_warm_imports)
        slots = _ray_slots(ray, 1)
        count = min(slots, parallel.shards) if parallel.shards else slots
        _HELD["warming"] = [task.remote() for _ in range(count)]
    elif parallel.workers > 1:
        pool = _pool(parallel.workers)
        for _ in range(parallel.workers):
            pool.submit(_warm_imports)  # each submit starts one more process (spawn)


def release(terminate: bool = False) -> None:
    """Stop what `warm` or a sharded run started in this process: the local worker pool, and the
    Ray connection when this process made it (a local Ray instance stops with it). Without this,
    Ray's own handler at interpreter exit does the same, half a second slower. `terminate`:
    stop the workers now (Ctrl-C or SIGTERM reached only this process) instead of letting their
    running shards finish; their state files are written atomically, so a rerun resumes."""
    pool = _HELD.pop("pool", None)
    _HELD.pop("workers", None)
    _HELD.pop("queue", None)
    _HELD.pop("warming", None)
    if pool is not None:
        if terminate:
            # the executor keeps its processes in a private mapping; Python 3.14 has
            # terminate_workers() for this
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
    if _HELD.pop("ray", False):
        import ray

        ray.shutdown()


def _pool(workers: int) -> ProcessPoolExecutor:
    """The process's pool of `workers` local processes, made once and reused by every run (a
    reproduce run shards many attack steps)."""
    if _HELD.get("workers") != workers:
        old = _HELD.pop("pool", None)
        if old is not None:
            old.shutdown(wait=True, cancel_futures=True)
        # spawn: no fork of a process that holds onnxruntime sessions and threads
        ctx = get_context("spawn")
        _HELD["queue"] = ctx.Queue()  # the workers' progress, read by the driver
        _HELD["pool"] = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                            initializer=_worker_start,
                                            initargs=(_HELD["queue"],))
        _HELD["workers"] = workers
    pool: ProcessPoolExecutor = _HELD["pool"]
    return pool


_RAY_FIX = ("start one with `ray start --head`, give its address, or pass --ray alone to run "
            "a local one")


def ray_address(address: str) -> tuple[str, int] | None:
    """Check the form of a --ray ADDRESS: local, auto, HOST:PORT or ray://HOST:PORT; the
    (host, port) to reach, None for local and auto. A malformed one is a ConfigError in one
    line, before Ray is imported."""
    if address in ("local", "auto"):
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"--ray {address!r} is not an address; give HOST:PORT (e.g. "
                          "10.0.0.5:6379), ray://HOST:PORT, auto to join the cluster running "
                          "here, or --ray alone to run a local one")
    return host.strip("[]"), int(port)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Something answers at a HOST:PORT address: Ray itself retries an unreachable one for
    minutes, printing its own log lines."""
    target = ray_address(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: nothing answers there ({exc.strerror or exc}); "
                          f"{_RAY_FIX}") from None


def _ray(address: str) -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeMissingError(f"--ray needs Ray, which is not installed; {CLUSTER_HINT} "
                                  "(or use --workers N on this machine)") from exc
    if not ray.is_initialized():
        _HELD["ray"] = True
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if address == "local":
            # a fresh instance even when a cluster already runs here (ray.init() without an
            # address would join that one and refuse num_cpus)
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
        else:
            try:
                _reachable(address)
                ray.init(address=address, **kwargs)
            except ConnectionError as exc:  # Ray's message names its own CLI flags
                _HELD.pop("ray", None)
                raise ConfigError(f"--ray {address}: no Ray cluster to join there; "
                                  f"{_RAY_FIX}") from exc
            except (ValueError, RuntimeError) as exc:  # e.g. ray:// without ray[client]
                _HELD.pop("ray", None)
                raise ConfigError(f"--ray {address}: Ray refused it: {first_line(exc)}") from exc
            except ConfigError:
                _HELD.pop("ray", None)
                raise
    return ray


#: how often the driver reads the shards' progress while it waits for them (seconds)
POLL_SECONDS = 0.25


def _messages(get: Callable[[], Any], run: str, progress: ShardProgress | None) -> None:
    """Hand every waiting progress message of `run` to `progress` (`get` raises
    queue.Empty when none is left); other runs' late messages are dropped."""
    while True:
        try:
            msg = get()
        except queues.Empty:
            return
        if progress is not None and isinstance(msg, tuple) and len(msg) == 4 and msg[0] == run:
            progress.update(int(msg[1]), float(msg[2]), float(msg[3]))


def _empty() -> Any:
    raise queues.Empty


def _run_ray(tasks: list[ShardTask], x: np.ndarray, y: np.ndarray, ray: Any,
             done: Callable[[ShardOut], None], progress: ShardProgress | None) -> list[ShardOut]:
    from ray.util.queue import Empty, Queue

    remote = ray.remote(max_retries=3, retry_exceptions=False)(run_shard)
    x_ref, y_ref = ray.put(x), ray.put(y)  # once, through the object store
    # an actor with no CPU of its own: shards that hold every CPU still reach it; progress
    # never fails a run: without the actor the line moves only as shards end
    try:
        channel: Any = Queue(actor_options={"num_cpus": 0})
    except Exception:  # Ray's own exception types
        channel = None

    def get() -> Any:
        if channel is None:
            raise queues.Empty
        try:
            return channel.get_nowait()
        except Empty:
            raise queues.Empty from None

    try:
        pending = [remote.options(num_cpus=t.threads).remote(t, x_ref, y_ref, channel)
                   for t in tasks]
        outs = []
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            _messages(get, tasks[0].run, progress)
            for ref in ready:
                out = ray.get(ref)
                done(out)
                outs.append(out)
    finally:
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.shutdown()
    return outs


def _run_local(tasks: list[ShardTask], x: np.ndarray, y: np.ndarray, workers: int,
               done: Callable[[ShardOut], None], progress: ShardProgress | None
               ) -> list[ShardOut]:
    if workers == 1:
        outs = []
        for t in tasks:
            out = run_shard(t, x, y, _Direct(progress))
            done(out)
            outs.append(out)
        return outs
    outs = []
    pool = _pool(workers)
    channel = _HELD.get("queue")
    get = channel.get_nowait if channel is not None else _empty
    _messages(get, "", None)  # what an earlier run left unread
    try:
        pending: set[Future[ShardOut]] = {pool.submit(run_shard, t, x, y) for t in tasks}
        while pending:
            finished, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            _messages(get, tasks[0].run, progress)
            for f in finished:
                out = f.result()
                done(out)
                outs.append(out)
    except KeyboardInterrupt:
        release(terminate=True)  # Ctrl-C / SIGTERM sent to this process only: stop them now
        raise
    except BrokenProcessPool as exc:
        release()
        raise ConfigError(
            "a worker process died before its shard ended (killed, out of memory, or a script "
            "that calls qrdeploy with workers= outside `if __name__ == \"__main__\":`: each "
            "worker imports the script again); rerun, with fewer --workers if memory is short"
        ) from exc
    except BaseException:
        # a failed shard: stop the workers, as leaving a `with` pool did
        release()
        raise
    return outs


def evaluate_sharded(victim: Subject, x: np.ndarray, y: np.ndarray | None, suite: Suite,
                     parallel: Parallel, *, source: Subject | None = None,
                     reference: Subject | None = None, labels: Labels = Labels.TRUE,
                     config: RunConfig | None = None,
                     adaptive_source: Subject | None = None) -> Evaluation:
    """`runner.evaluate` split into sample shards run by `parallel`; the merged Evaluation. The
    Subjects must have been opened by qrdeploy.evaluation.subjects.open_subject (their ModelRef
    reopens them in the workers)."""
    cfg = config or RunConfig()
    x = np.ascontiguousarray(x, np.float32)
    for s in (victim, source, adaptive_source):
        if s is not None and not isinstance(s.ref, ModelRef):
            raise ConfigError(f"{s.name}: sharded runs need models opened from files "
                              "(qrdeploy.evaluation.subjects.open_subject)")
    yy, mode, ref = resolve_labels(x, y, Labels(labels), reference, victim, cfg.batch_size)
    data_fp = fingerprint(x, yy)
    threads = _threads(victim.ref.session, parallel)
    ray = None if parallel.ray is None else _ray(parallel.ray)
    ranges = parallel.pieces(len(yy), None if ray is None else _ray_slots(ray, threads))
    run = uuid.uuid4().hex
    tasks = [ShardTask(i, len(ranges), a, b, victim.ref, None if source is None else source.ref,
                       None if adaptive_source is None else adaptive_source.ref, suite,
                       dataclasses.replace(cfg, state_path=_state(cfg.state_path, i,
                                                                  len(ranges)),
                                           index_offset=a), threads, run)
             for i, (a, b) in enumerate(ranges)]
    _say_other_shard_states(cfg.state_path, len(tasks))
    crafted = source is not None and bool(suite.by_mode(Mode.BLACK))
    work = sum(st.work for st in run_stages(suite, len(yy), crafted))
    where = ("on Ray" if ray is not None else
             f"on {parallel.workers} workers" if parallel.workers > 1 else "in this process")
    count = f"{len(tasks)} shard{'s' if len(tasks) != 1 else ''}"
    progress = ShardProgress([b - a for a, b in ranges], work, f"{count} {where}")
    index = {t.start: t.index for t in tasks}
    t0 = time.perf_counter()

    def done(out: ShardOut) -> None:
        progress.end(index[out.start])

    try:
        if ray is not None:
            outs = _run_ray(tasks, x, yy, ray, done, progress)
        else:
            outs = _run_local(tasks, x, yy, parallel.workers, done, progress)
    except KeyboardInterrupt:
        saved = [t.config.state_path for t in tasks
                 if t.config.state_path is not None and t.config.state_path.exists()]
        if not saved:
            log.warning("interrupted; no shard had saved any work yet: rerun the command to "
                        "start again")
        else:
            log.warning("interrupted; what %d of the %d shards did is saved in %s.shard-*-of-"
                        "%d.npz: rerun the same command to resume", len(saved), len(tasks),
                        cfg.state_path, len(tasks))
        raise
    finally:
        progress.close()
    log.debug("%d shards in %.1f s", len(tasks), time.perf_counter() - t0)
    return _merge(outs, victim, source, adaptive_source, suite, yy, mode, data_fp, cfg, ref)


def run_evaluation(parallel: Parallel | None, victim: Subject, x: np.ndarray,
                   y: np.ndarray | None, suite: Suite, **kw: Any) -> Evaluation:
    """The attack runner, in this process (`parallel` None or inactive) or sharded: the one entry
    `attack`, `check` and `reproduce` call; the results are the same either way."""
    if parallel is not None and parallel.active:
        return evaluate_sharded(victim, x, y, suite, parallel, **kw)
    return evaluate(victim, x, y, suite, **kw)


def remove_shard_states(state_path: Path) -> None:
    """Delete the shard state files of a finished run (the caller has written its results)."""
    for p in state_path.parent.glob(f"{state_path.name}.shard-*-of-*.npz"):
        p.unlink(missing_ok=True)
