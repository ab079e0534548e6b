"""Sharded runs (--shards, --workers, --ray) give the results of the one-process run, byte for
byte apart from timings: every attack keys its randomness by global sample position."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from qrdeploy.cli import main
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.errors import ConfigError
from qrdeploy.evaluation import shard
from qrdeploy.evaluation.shard import Parallel, release, warm
from tests.unit.onnx_builders import cnn, ort_logits

SUITE = ["--suite", "paper,adaptive", "--attacks",
         "clean,fgsm-s,pgd,black/fgsm-s,normal,pgd-cw,apgd-t-dlr,square,transfer",
         "--eps", "0.05,0.2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("shard")
    onnx.save(cnn(seed=0, c=1, hw=8), d / "v.onnx")
    onnx.save(cnn(seed=1, c=1, hw=8), d / "s.onnx")
    x = np.random.default_rng(0).uniform(size=(23, 1, 8, 8)).astype(np.float32)
    y = ort_logits(cnn(seed=0, c=1, hw=8), x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    np.savez(d / "d.npz", x=x, y=y)
    return {"root": d, "v": d / "v.onnx", "s": d / "s.onnx", "d": d / "d.npz"}


def run(world: dict[str, Path], out: Path, *extra: str, quiet: bool = True) -> dict[str, Any]:
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--source",
                 str(world["s"]), "--unhardened", str(world["s"]), "--no-baseline",
                 "--batch-size", "5", *(["-q"] if quiet else []), "-o", str(out), *SUITE,
                 *extra]) == 0
    doc = json.loads(out.read_text())
    doc.pop("timings")
    return dict(doc)


@pytest.fixture(scope="module")
def plain(world: dict[str, Path]) -> dict[str, Any]:
    return run(world, world["root"] / "plain.json")


def test_shards_in_process_equal_the_plain_run(world: dict[str, Path], plain: dict[str, Any],
                                               tmp_path: Path) -> None:
    sharded = run(world, tmp_path / "s.json", "--shards", "3")
    assert sharded == plain
    assert plain["masking"] is not None and len(plain["columns"]) == 9
    assert not list(tmp_path.glob("*.shard-*"))  # the shard state files are gone


def test_two_worker_processes_equal_the_plain_run(world: dict[str, Path], plain: dict[str, Any],
                                                  tmp_path: Path) -> None:
    assert run(world, tmp_path / "w.json", "--workers", "2") == plain


def test_ray_missing_is_one_line(world: dict[str, Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--attacks", "pgd",
                 "--ray", "-q", "-o", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'qrdeploy[cluster]'" in err


def test_no_cluster_to_join_is_one_line_with_the_fix(world: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ray = pytest.importorskip("ray", reason="the cluster extra is not installed")

    def no_cluster(*args: Any, **kwargs: Any) -> None:  # what ray.init says with none running
        raise ConnectionError("Could not find any running Ray instance. Please specify the one "
                              "to connect to by setting `--address` flag")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--attacks", "pgd",
                 "--ray", "auto", "-q", "-o", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "internal error" not in err
    assert err.startswith("qrdeploy: error: --ray auto: no Ray cluster")
    assert "ray start --head" in err
    assert "ray" not in shard._HELD  # nothing to shut down


@pytest.mark.parametrize("address", ["not a host:port", "10.0.0.5", "h:0", "h:70000", "h:x"])
def test_a_malformed_ray_address_is_a_usage_error(world: dict[str, Path], tmp_path: Path,
                                                  address: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 in one line, before any work (it was an internal ValueError from Ray)."""
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--attacks", "pgd",
                 "--ray", address, "-q", "-o", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"--ray {address!r} is not an address; give HOST:PORT" in err
    with pytest.raises(ConfigError, match="is not an address"):
        Parallel(ray=address)
    for good in ("local", "auto", "10.0.0.5:6379", "ray://head:10001", "[::1]:6379"):
        assert Parallel(ray=good).ray == good


def test_an_address_where_nothing_answers_fails_at_once(world: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """Ray retries an unreachable address for minutes, printing its own log lines (a review's
    run was still waiting after 120 s); qrdeploy checks first and says so in one line."""
    pytest.importorskip("ray", reason="the cluster extra is not installed")
    t0 = time.monotonic()
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--attacks", "pgd",
                 "--ray", "127.0.0.1:1", "-q", "-o", str(tmp_path / "r.json")]) == 1
    assert time.monotonic() - t0 < 60  # not Ray's minutes of retries
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("qrdeploy: error: --ray 127.0.0.1:1: nothing "
                                               "answers there")
    assert "ray start --head" in err and "ray" not in shard._HELD


@pytest.mark.parametrize(("n", "shards", "pieces"), [
    (10, 3, [(0, 3), (3, 7), (7, 10)]), (2, 5, [(0, 1), (1, 2)]), (7, 1, [(0, 7)])])
def test_pieces_cover_the_samples_once(n: int, shards: int, pieces: list[tuple[int, int]]
                                       ) -> None:
    assert Parallel(shards=shards).pieces(n) == pieces


class _Cluster:
    def __init__(self, cpus: float | None) -> None:
        self.cpus = cpus

    def cluster_resources(self) -> dict[str, float]:
        return {} if self.cpus is None else {"CPU": self.cpus}


def test_ray_shards_default_to_one_thread_and_one_shard_per_cluster_cpu() -> None:
    """A Ray task asks the cluster for as many CPUs as it runs threads: tasks of cores // 1
    threads on a 2-CPU cluster ran one at a time. By default a Ray shard runs one thread and
    there is one shard per CPU of the cluster; --threads and --shards still decide."""
    on_ray = Parallel(ray="auto")
    assert shard._threads(SessionConfig(), on_ray) == 1
    assert shard._threads(SessionConfig(threads=3), on_ray) == 3
    assert shard._threads(SessionConfig(), Parallel(workers=2)) == max(1, (os.cpu_count() or 1)
                                                                       // 2)
    assert shard._ray_slots(_Cluster(6.0), 1) == 6
    assert shard._ray_slots(_Cluster(6.0), 4) == 1 and shard._ray_slots(_Cluster(None), 1) == 1
    assert len(on_ray.pieces(1000, slots=6)) == 6
    assert len(on_ray.pieces(1000)) == 2  # slots unknown
    assert len(Parallel(ray="auto", shards=3).pieces(1000, slots=6)) == 3
    assert len(Parallel(ray="auto", workers=4).pieces(1000, slots=2)) == 4


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


def test_warm_starts_the_worker_processes_before_any_run_and_release_stops_them() -> None:
    """`warm` (what the CLI calls while it parses the options) starts the pool's processes at
    once; every sharded run of the process reuses that pool; `release` stops it."""
    before = _children()
    try:
        warm(Parallel(workers=2))
        pool = shard._pool(2)
        deadline = time.monotonic() + 60
        while len(_children() - before) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_children() - before) == 2
        assert shard._pool(2) is pool  # reused, not a new pool per run
    finally:
        release()
    assert "pool" not in shard._HELD
    assert not _children() - before


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_end_when_their_parent_is_killed() -> None:
    """A parent killed without cleanup (SIGKILL, or SIGTERM by a CI timeout before the handler)
    leaves its workers orphaned: their watchdog ends them instead of letting them compute on
    and write the shard states a rerun writes too."""
    import subprocess

    code = ("import os\n"
            "from qrdeploy.evaluation import shard\n"
            "pool = shard._pool(2)\n"
            "pids = {pool.submit(os.getpid).result() for _ in range(8)}\n"
            "print(' '.join(map(str, sorted(pids))), flush=True)\n"
            "os._exit(0)  # no cleanup, as SIGKILL\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    pids = [int(p) for p in proc.stdout.split()]
    assert pids
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), pids


def test_release_on_interrupt_stops_running_shards_now() -> None:
    """Ctrl-C or SIGTERM that reached only the parent: the workers are stopped at once, not
    after their running shards finish (their state files are written atomically)."""
    before = _children()
    pool = shard._pool(2)
    try:
        futures = [pool.submit(time.sleep, 60) for _ in range(2)]
        deadline = time.monotonic() + 60
        while not all(f.running() for f in futures) and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        release(terminate=True)
        assert time.monotonic() - t0 < 30  # not the 60 s the shards would take
    finally:
        release()
    assert not _children() - before


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        Parallel(workers=0)


def test_ray_local_cluster_equals_the_plain_run(world: dict[str, Path], plain: dict[str, Any],
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """... and its tasks' progress reaches the driver's line through Ray while they run."""
    ray = pytest.importorskip("ray", reason="the cluster extra is not installed")
    monkeypatch.delenv("QRDEPLOY_QUIET", raising=False)
    monkeypatch.setenv("QRDEPLOY_PROGRESS_SECONDS", "0")  # the local cluster's workers inherit it
    try:
        assert run(world, tmp_path / "r.json", "--ray", "--shards", "2", quiet=False) == plain
    finally:
        ray.shutdown()
    lines = [ln for ln in capsys.readouterr().err.splitlines()
             if ln.startswith("[2 shards on Ray]")]
    before_any_end = [int(m.group(1)) for ln in lines
                      if (m := re.search(r"\] 0 of 2 done; run (\d+)%", ln))]
    assert any(0 < v < 100 for v in before_any_end), lines
    assert lines[-1].startswith("[2 shards on Ray] 2 of 2 done; run 100%")


def test_ray_beside_a_running_cluster(world: dict[str, Path], plain: dict[str, Any],
                                      tmp_path: Path) -> None:
    """With a cluster already running on this machine (`ray start --head`), `--ray auto` joins it
    and plain `--ray` still starts its own local instance; both give the plain run's results."""
    import shutil
    import subprocess

    ray = pytest.importorskip("ray", reason="the cluster extra is not installed")
    cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    started = subprocess.run([cli, "start", "--head", "--num-cpus", "2",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        # joined: one shard per CPU of the cluster by default (two here)
        for flags in (["--ray", "auto"], ["--ray", "--shards", "2"]):
            try:
                assert run(world, tmp_path / "c.json", *flags) == plain
            finally:
                ray.shutdown()
    finally:
        subprocess.run([cli, "stop", "--force"], check=False, capture_output=True)


def _kill_first_shard_worker(found: list[int], stop: Any) -> None:
    """Poll /proc for a Ray worker running run_shard and SIGKILL it once."""
    import os
    import signal

    while not stop.is_set() and not found:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::run_shard" in cmd:
                os.kill(int(pid), signal.SIGKILL)
                found.append(int(pid))
                return
        stop.wait(0.02)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_killed_ray_worker_changes_nothing(world: dict[str, Path], plain: dict[str, Any],
                                             tmp_path: Path) -> None:
    import threading

    ray = pytest.importorskip("ray", reason="the cluster extra is not installed")
    killed: list[int] = []
    stop = threading.Event()
    poller = threading.Thread(target=_kill_first_shard_worker, args=(killed, stop))
    poller.start()
    try:
        assert run(world, tmp_path / "k.json", "--ray", "--shards", "3") == plain
    finally:
        stop.set()
        poller.join()
        ray.shutdown()
    assert killed, "no shard worker was seen running, so none was killed"


def test_reproduce_attack_steps_shard_with_the_same_results(world: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """reproduce's runner adapter (qrdeploy.paper.steps.run_suite) takes --workers / --ray /
    --shards and writes the results of the one-process run; the CLI passes the options on."""
    from qrdeploy.cli import build_parser
    from qrdeploy.commands._options import parallel
    from qrdeploy.data.datasets import Dataset
    from qrdeploy.evaluation.suites import build_suite
    from qrdeploy.paper.steps import run_suite

    d = np.load(world["d"])
    data = Dataset("npz", "test", d["x"], d["y"], 10)
    suite = build_suite("paper,adaptive", "mnist",
                        "clean,pgd,black/fgsm-s,pgd-cw,square,transfer", ())
    docs = []
    for label, par in (("plain", None), ("sharded", Parallel(shards=3))):
        out = tmp_path / label / "results.json"
        out.parent.mkdir()
        run_suite(world["v"], data, suite, out, source=world["s"], seed=0, batch=5,
                  state=out.parent / "state.npz", transfer_dir=out.parent / "t",
                  adaptive_source=world["s"], parallel=par)
        doc = json.loads(out.read_text())
        doc.pop("timings")
        docs.append(doc)
    assert docs[0] == docs[1] and docs[0]["adaptive"] is not None
    args = build_parser().parse_args(["reproduce", "-o", "x", "--workers", "2", "--shards", "4"])
    assert parallel(args) == Parallel(2, None, 4)


def test_in_process_shards_leave_progress_on_and_say_what_they_do(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Shards run in this process silence their own lines only while they run (they left
    QRDEPLOY_QUIET=1 behind, so every later run in the program showed no progress); the bar has
    a line at the start (a shard reports only when it ends); state files of another shard count
    are named as not resumed."""
    monkeypatch.delenv("QRDEPLOY_QUIET", raising=False)
    monkeypatch.setenv("QRDEPLOY_PROGRESS_SECONDS", "1000")  # only the forced lines
    out = tmp_path / "r.json"
    other = tmp_path / "r.json.state.npz.shard-1-of-2.npz"
    other.write_bytes(b"")
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--attacks", "pgd",
                 "--eps", "none", "--batch-size", "5", "--shards", "3", "-o", str(out)]) == 0
    assert "QRDEPLOY_QUIET" not in os.environ
    err = capsys.readouterr().err
    assert "[3 shards in this process] 0 of 3 done; run 0%" in err  # the line at the start
    assert ("state files of a run in another number of shards are not resumed by this one in 3 "
            f"({other.name})") in err
    assert not other.exists()  # deleted at the end, as said


@pytest.mark.parametrize(("flags", "where"), [(["--shards", "2"], "in this process"),
                                              (["--workers", "2"], "on 2 workers")])
def test_the_shards_progress_reaches_the_driver_while_they_run(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], flags: list[str], where: str) -> None:
    """Each shard runs quietly and sends its share done to the driver, so the one line over the
    shards moves before any shard has ended (it used to stand still until a whole shard ended,
    which with one shard per worker was the end of the run)."""
    monkeypatch.delenv("QRDEPLOY_QUIET", raising=False)
    monkeypatch.setenv("QRDEPLOY_PROGRESS_SECONDS", "0")  # every move is a line (the workers
    # inherit it: the command starts its own)
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--suite",
                 "paper,adaptive", "--attacks", "pgd,square", "--eps", "none", "--batch-size",
                 "5", "-o", str(tmp_path / "p.json"), *flags]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines()
             if ln.startswith(f"[2 shards {where}]")]
    before_any_end = [int(m.group(1)) for ln in lines
                      if (m := re.search(r"\] 0 of 2 done; run (\d+)%", ln))]
    assert before_any_end[0] == 0 and any(0 < v < 100 for v in before_any_end), lines
    assert before_any_end == sorted(before_any_end)  # it never goes back
    assert lines[-1].startswith(f"[2 shards {where}] 2 of 2 done; run 100%")


def test_ctrl_c_before_any_shard_saved_says_nothing_is_saved(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It named shard state files that were never written."""
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(shard, "_run_local", interrupted)
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--attacks", "pgd",
                 "--eps", "none", "--shards", "2", "-q", "-o", str(tmp_path / "r.json")]) == 130
    err = capsys.readouterr().err
    assert "no shard had saved any work yet: rerun the command to start again" in err
    assert ".shard-*-of-2.npz" not in err


def test_a_terminal_of_zero_columns_keeps_the_whole_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from qrdeploy.core import progress

    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert progress._columns() == 100


def test_workers_that_die_at_their_start_are_one_line_with_the_fix(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A script that calls qrdeploy with workers= outside a main guard kills its spawned workers
    at their start: the pool broke with a traceback; now one line names the guard."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    class Broken:
        def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
            f: Future[Any] = Future()
            f.set_exception(BrokenProcessPool("A process in the process pool was terminated "
                                              "abruptly while the future was running or pending."))
            return f

    monkeypatch.setattr(shard, "_pool", lambda workers: Broken())
    monkeypatch.setattr(shard, "warm", lambda parallel: None)
    assert main(["attack", str(world["v"]), "--data", f"npz:{world['d']}", "--attacks", "pgd",
                 "--eps", "none", "--workers", "2", "-q", "-o", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a worker process died before its shard ended" in err
    assert 'if __name__ == "__main__":' in err
