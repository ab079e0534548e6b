"""Progress over a whole run (column k of N, ETA weighted by attack cost, ticks inside a batch,
plain lines in logs), resume and Ctrl-C messages, the user cache of transfer sets (shared across
output folders, LRU-trimmed to a size limit), --quiet in every verb, the CUDA note."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from qrdeploy.attacks import PGD
from qrdeploy.cli import main
from qrdeploy.core import cache, progress
from qrdeploy.core.progress import (
    Line,
    RunProgress,
    ShardProgress,
    Span,
    Stage,
    listening,
    relaying,
    spanning,
)
from qrdeploy.core.runtime import resolve_providers
from qrdeploy.errors import ConfigError
from qrdeploy.evaluation.runner import RunConfig, Subject, evaluate
from qrdeploy.evaluation.suites import build_suite
from tests.unit.attack_models import NumpyLinear
from tests.unit.onnx_builders import cnn, ort_logits


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_run_progress_weighs_columns_by_cost() -> None:
    clock, out = Clock(), io.StringIO()
    bar = RunProgress([Stage("clean", 10, 1.0), Stage("white/pgd", 10, 9.0)],
                      line=Line(out, clock))
    bar.start("clean")
    clock.t = 1.0
    bar.at(10)
    bar.start("white/pgd")
    clock.t = 11.0
    bar.at(5)  # 10 + 45 of 100 units in 11 s
    assert bar.fraction() == pytest.approx(0.55)
    assert bar.eta() == pytest.approx(11.0 / 55 * 45)
    text = bar.text()
    assert text.startswith("[column 2 of 2] white/pgd: 5/10 samples; run 55%, 11s, ETA 9s")


def test_a_run_inside_a_job_shows_the_job() -> None:
    """The first of two runs counts the second's work in its share and ETA; the second adds the
    first's work and seconds, and names itself."""
    clock = Clock()
    with spanning(Span(after=100.0)):
        first = RunProgress([Stage("white/pgd", 10, 10.0)], line=Line(io.StringIO(), clock))
    first.start("white/pgd")
    clock.t = 10.0
    first.at(5)  # 50 of the job's 200 units in 10 s
    assert first.fraction() == pytest.approx(0.5)
    assert first.job_fraction() == pytest.approx(0.25)
    assert first.eta() == pytest.approx(10.0 / 50 * 150)  # this run's rest and the next run
    assert "; all runs 25%, 10s, ETA 30s" in first.text()
    clock.t = 0.0
    with spanning(Span(before=100.0, seconds=20.0, label="before hardening")):
        second = RunProgress([Stage("white/pgd", 10, 10.0)], line=Line(io.StringIO(), clock))
    second.start("white/pgd")
    clock.t = 5.0
    second.at(5)
    assert second.job_fraction() == pytest.approx(0.75)
    assert second.eta() == pytest.approx(5.0)  # nothing after it
    assert second.text().startswith(
        "[before hardening: column 1 of 1] white/pgd: 5/10 samples; all runs 75%, 25s, ETA 5s")
    alone = RunProgress([Stage("a", 10, 1.0)], line=Line(io.StringIO(), clock))  # no job
    alone.start("a")
    assert "; run 0%" in alone.text() and alone.span == Span()


def test_quick_stages_in_a_log_do_not_flood_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal: the first stage's line, then one per interval however many stages start
    in it; a terminal redraws its line at every stage start."""
    monkeypatch.setenv("QRDEPLOY_PROGRESS_SECONDS", "10")
    stages = [Stage(f"s{i}", 10, 1.0) for i in range(30)]
    clock, out, tty = Clock(), io.StringIO(), Tty()
    log_bar = RunProgress(stages, line=Line(out, clock))
    tty_bar = RunProgress(stages, line=Line(tty, clock))
    for i in range(30):  # a stage every second
        clock.t = float(i)
        log_bar.start(f"s{i}")
        tty_bar.start(f"s{i}")
    lines = out.getvalue().splitlines()
    assert [ln.split("]")[0] for ln in lines] == [
        "[column 1 of 30", "[column 11 of 30", "[column 21 of 30"]
    assert tty.getvalue().count("\r") == 30


def test_resumed_work_is_not_timed() -> None:
    clock = Clock()
    bar = RunProgress([Stage("a", 100, 1.0)], line=Line(io.StringIO(), clock))
    bar.start("a", already=50)  # read back from a state file
    assert bar.eta() is None  # nothing timed yet: no rate to extrapolate
    clock.t = 5.0
    bar.at(60)  # 10 samples in 5 s
    assert bar.eta() == pytest.approx(5.0 / 10 * 40)


def test_log_lines_are_rate_limited_and_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QRDEPLOY_PROGRESS_SECONDS", "10")
    clock, out = Clock(), io.StringIO()
    line = Line(out, clock)
    for t in range(0, 31):
        clock.t = float(t)
        line.show(f"t={t}")
    assert out.getvalue().splitlines() == ["t=0", "t=10", "t=20", "t=30"]
    assert "\r" not in out.getvalue()
    tty = Tty()
    Line(tty, clock).show("x")
    assert tty.getvalue().startswith("\r")


def test_a_quiet_run_relays_its_share_to_a_sharded_runs_driver() -> None:
    """A shard runs without a line of its own (quiet) but tells the driver how far it got, the
    resumed share apart; outside `relaying` nothing is sent."""
    sent: list[tuple[float, float]] = []
    with relaying(lambda share, resumed: sent.append((share, resumed))):
        bar = RunProgress([Stage("a", 10, 1.0), Stage("b", 10, 3.0)], line=None)
    bar.line = None  # quiet, as in a worker
    bar.start("a", already=4)  # 4 of the 40 units read back from a state file
    bar.at(10)
    bar.start("b")
    bar.at(5)
    assert sent == [pytest.approx((0.1, 0.1)), pytest.approx((0.25, 0.1)),
                    pytest.approx((0.25, 0.1)), pytest.approx((0.625, 0.1))]
    alone = RunProgress([Stage("a", 10, 1.0)], line=None)
    alone.start("a")
    assert alone.relay is None and len(sent) == 4


def test_one_line_over_the_shards_weighs_them_by_samples(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The shards' shares, weighed by their samples, make the run's share; a shard's share
    never goes back and a message after its end is ignored; resumed work is not timed; inside a
    Span the line shows the job's share, ETA and head."""
    monkeypatch.setenv("QRDEPLOY_PROGRESS_SECONDS", "0")
    clock, out = Clock(), io.StringIO()
    with spanning(Span(after=300.0, label="")):
        sp = ShardProgress([30, 10], 100.0, "2 shards on 2 workers", line=Line(out, clock))
    assert out.getvalue().splitlines() == ["[2 shards on 2 workers] 0 of 2 done; all runs 0%, 0s"]
    clock.t = 10.0
    sp.update(0, 0.5)  # 15 of 40 samples' worth
    sp.update(1, 0.5, resumed=0.5)  # read back: done, not timed
    assert sp.fraction() == pytest.approx(0.5)
    assert sp.job_fraction() == pytest.approx(50 / 400)
    # timed: 15/40 of the run's 100 units in 10 s; left: 50 units and the 300 after it
    assert sp.eta() == pytest.approx(10.0 / 37.5 * 350)
    sp.update(0, 0.2)  # a retried shard resumes below its last message: no step back
    assert sp.fraction() == pytest.approx(0.5)
    sp.end(1)
    sp.update(1, 0.1)  # late: ignored
    assert sp.fraction() == pytest.approx((15 + 10) / 40)
    assert out.getvalue().splitlines()[-1].startswith(
        "[2 shards on 2 workers] 1 of 2 done; all runs 16%, 10s, ETA")
    sp.update(5, 0.9)  # no such shard
    sp.update(0, 1.0)  # done, but its results are not in: the run reads below 100 %
    assert sp.fraction() == pytest.approx((0.99 * 30 + 10) / 40)
    clock.t = 20.0
    sp.end(0)
    # the run is complete, the job is not: the ETA counts the run still to come
    timed = (1.0 - 10 / 40 * 0.5) * 100.0
    assert sp.fraction() == 1.0 and sp.eta() == pytest.approx(20.0 / timed * 300.0)
    assert sp.text().endswith("all runs 25%, 20s, ETA 1m09s")
    with spanning(Span(before=100.0, seconds=30.0, label="before hardening")):
        second = ShardProgress([5], 100.0, "1 shard in this process", line=None)
    clock.t = 0.0
    assert second.text().startswith("[before hardening: 1 shard in this process] 0 of 1 done; "
                                    "all runs 50%")
    second.end(0)
    assert "ETA" not in second.text()  # nothing after it: the job is done


def test_runs_inside_one_step_are_told_apart() -> None:
    """A reproduce step of several runs (the μ points of the ablation) names each run after the
    step, keeping the step's place in the job."""
    clock = Clock()
    with spanning(Span(after=5.0, label="step ablation.orig")), progress.sublabel("μ 255"):
        bar = RunProgress([Stage("clean", 8, 1.0)], line=Line(io.StringIO(), clock))
    bar.start("clean")
    assert bar.text().startswith("[step ablation.orig, μ 255: column 1 of 1] clean: 0/8")
    assert bar.span.after == 5.0
    with progress.sublabel("μ 0"):
        alone = RunProgress([Stage("clean", 8, 1.0)], line=Line(io.StringIO(), clock))
    alone.start("clean")
    assert alone.text().startswith("[μ 0: column 1 of 1]")


def test_report_reaches_only_a_listener() -> None:
    seen: list[float] = []
    progress.report(0.5)  # nobody listens: a no-op
    with listening(seen.append):
        progress.report(0.25)
        progress.report(2.0)
    progress.report(0.75)
    assert seen == [0.25, 1.0]


def test_a_long_attack_moves_the_line_inside_one_batch(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """24 samples in one batch of 100: PGD's iterations tick the line between 0 and 24."""
    monkeypatch.setenv("QRDEPLOY_QUIET", "0")
    monkeypatch.setenv("QRDEPLOY_PROGRESS_SECONDS", "0")
    r = np.random.default_rng(0)
    model = NumpyLinear(r.normal(size=(4, 16)), np.zeros(4))
    x = r.uniform(size=(24, 1, 4, 4)).astype(np.float32)
    y = model.logits(x).argmax(1)
    suite = build_suite("white", "mnist", attacks="pgd:eps=0.01,steps=8,restarts=2")
    evaluate(Subject("v.onnx", "a" * 64, model), x, y, suite, config=RunConfig(batch_size=100))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "white/pgd" in ln]
    assert lines[0].startswith("[column 2 of 2] white/pgd: 0/24 samples")
    inside = {int(ln.split(": ")[1].split("/")[0]) for ln in lines} - {0, 24}
    assert len(inside) >= 4, lines  # ticks per iteration, not one per batch


# ------------------------------------------------------------------------- resume and Ctrl-C


class Interrupting(NumpyLinear):
    """Raises KeyboardInterrupt on the gradient call number `at` (counted across instances)."""

    calls = 0
    at = 10**9

    def loss_and_grad(self, *a: object, **k: object) -> object:  # type: ignore[override]
        Interrupting.calls += 1
        if Interrupting.calls == Interrupting.at:
            raise KeyboardInterrupt
        return super().loss_and_grad(*a, **k)  # type: ignore[arg-type]


def test_ctrl_c_says_what_is_saved_and_the_rerun_says_it_resumed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = np.random.default_rng(0)
    w = r.normal(size=(4, 16))
    x = r.uniform(size=(30, 1, 4, 4)).astype(np.float32)
    y = NumpyLinear(w, np.zeros(4)).logits(x).argmax(1)
    suite = build_suite("white", "mnist", attacks="pgd:eps=0.05,steps=5")
    cfg = RunConfig(batch_size=10, state_path=tmp_path / "r.json.state.npz")
    victim = Subject("v.onnx", "a" * 64, Interrupting(w, np.zeros(4)))
    Interrupting.calls, Interrupting.at = 0, 7  # inside the second batch
    caplog.set_level(logging.INFO)
    with pytest.raises(KeyboardInterrupt):
        evaluate(victim, x, y, suite, config=cfg)
    said = caplog.text
    assert "interrupted in white/pgd at 10 of 30 samples" in said
    assert "rerun the same command to resume" in said and cfg.state_path.exists()
    with np.load(cfg.state_path) as saved:
        spent = {k: float(saved[k]) for k in saved.files if k.endswith(".seconds")}
    caplog.clear()
    Interrupting.at = 10**9
    ev = evaluate(victim, x, y, suite, config=cfg)
    assert "resuming the interrupted run saved in" in caplog.text
    assert "1 of 2 columns on this model complete" in caplog.text  # clean done, pgd 10 of 30
    assert ev.timings["white/pgd"] >= spent["1.seconds"] > 0  # its earlier time counted
    assert ev.timings["clean"] >= spent["0.seconds"]  # restored complete: not 0.0


def test_ctrl_c_without_a_state_file_says_nothing_is_saved(
        caplog: pytest.LogCaptureFixture) -> None:
    """check runs without a state file: Ctrl-C must not name one."""
    r = np.random.default_rng(0)
    w = r.normal(size=(4, 16))
    x = r.uniform(size=(30, 1, 4, 4)).astype(np.float32)
    y = NumpyLinear(w, np.zeros(4)).logits(x).argmax(1)
    suite = build_suite("white", "mnist", attacks="pgd:eps=0.05,steps=5")
    victim = Subject("v.onnx", "a" * 64, Interrupting(w, np.zeros(4)))
    Interrupting.calls, Interrupting.at = 0, 7
    caplog.set_level(logging.INFO)
    with pytest.raises(KeyboardInterrupt):
        evaluate(victim, x, y, suite, config=RunConfig(batch_size=10))
    assert "interrupted in white/pgd at 10 of 30 samples; nothing is saved" in caplog.text
    assert "None" not in caplog.text and "resume" not in caplog.text


# ------------------------------------------------------------------------------- user cache


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QRDEPLOY_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir("transfer") == tmp_path / "c" / "transfer"
    monkeypatch.setenv("QRDEPLOY_CACHE", "off")
    assert cache.cache_dir("transfer") is None
    monkeypatch.delenv("QRDEPLOY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cache.sys, "platform", "linux")
    assert cache.cache_root() == tmp_path / "xdg" / "qrdeploy"


@pytest.mark.parametrize(("raw", "size"), [("", cache.DEFAULT_SIZE), ("500M", 500 * 2**20),
                                           ("2g", 2 * 2**30), ("1024", 1024), ("1.5K", 1536)])
def test_cache_size_limit(monkeypatch: pytest.MonkeyPatch, raw: str, size: int) -> None:
    monkeypatch.setenv("QRDEPLOY_CACHE_SIZE", raw)
    assert cache.size_limit() == size


def test_cache_size_limit_refuses_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QRDEPLOY_CACHE_SIZE", "lots")
    with pytest.raises(ConfigError, match="QRDEPLOY_CACHE_SIZE='lots' is not a size"):
        cache.size_limit()


def test_trim_deletes_least_recently_used_first(tmp_path: Path) -> None:
    for i, name in enumerate(["old", "mid", "new", "kept"]):
        p = tmp_path / name
        p.write_bytes(b"x" * 100)
        os.utime(p, (1000 + i, 1000 + i))
    os.utime(tmp_path / "old", (5000, 5000))  # used recently: now the newest
    deleted = cache.trim(tmp_path, limit=250, keep=tmp_path / "mid")
    # by last use: mid (kept: just written), new, kept, old; 400 bytes down to 200
    assert [p.name for p in deleted] == ["new", "kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "old"]
    assert cache.trim(tmp_path, limit=10**6) == []


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cache")
    victim, source = cnn(seed=0, c=1, hw=8), cnn(seed=1, c=1, hw=8)
    onnx.save(victim, d / "v.onnx")
    onnx.save(source, d / "s.onnx")
    x = np.random.default_rng(0).uniform(size=(16, 1, 8, 8)).astype(np.float32)
    np.savez(d / "d.npz", x=x, y=ort_logits(victim, x).argmax(1))
    return {"v": d / "v.onnx", "s": d / "s.onnx", "d": d / "d.npz"}


def test_transfer_sets_are_shared_across_output_folders(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QRDEPLOY_CACHE", str(tmp_path / "cache"))
    args = ["attack", str(files["v"]), "--data", f"npz:{files['d']}", "--source",
            str(files["s"]), "--attacks", "clean,black/fgsm-s", "--batch-size", "8"]
    assert main([*args, "-o", str(tmp_path / "a" / "r.json")]) == 0
    first = capsys.readouterr()
    assert "from the cache" not in first.err
    assert "note: adaptive transfer" not in first.out  # no adaptive column: nothing to note
    (entry,) = (tmp_path / "cache" / "transfer").glob("transfer-*.npz")
    assert main([*args, "-o", str(tmp_path / "b" / "r.json")]) == 0
    assert f"transfer set from the cache {entry}" in capsys.readouterr().err
    assert not any(p.name.startswith(".qrdeploy") for p in (tmp_path / "b").iterdir())


def test_an_interrupted_transfer_set_says_where_its_progress_is(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while crafting a transfer set: the line names the cache entry holding what is done
    (the run's own state file does not exist yet), and the rerun completes it."""
    from qrdeploy.evaluation import runner

    monkeypatch.setenv("QRDEPLOY_CACHE", str(tmp_path / "cache"))
    real, calls = runner._attack_batch, {"n": 0}

    def batch(*a: object, **k: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "_attack_batch", batch)
    args = ["attack", str(files["v"]), "--data", f"npz:{files['d']}", "--source",
            str(files["s"]), "--attacks", "clean,black/fgsm-s", "--batch-size", "8", "-o",
            str(tmp_path / "r.json")]
    assert main(args) == 130
    err = capsys.readouterr().err
    (entry,) = (tmp_path / "cache" / "transfer").glob("transfer-*.npz")
    assert (f"interrupted in craft black/fgsm-s on source at 8 of 16 samples; what is done is "
            f"saved "
            f"in the transfer cache {entry}: rerun the same command to resume") in err
    monkeypatch.setattr(runner, "_attack_batch", real)
    assert main(args) == 0


def test_one_line_over_the_attack_and_its_baseline(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`attack --unhardened`: the hardened model's run ends well short of 100 % (the baseline
    is still to come), and the baseline's line carries on from there instead of restarting."""
    monkeypatch.setenv("QRDEPLOY_QUIET", "0")
    monkeypatch.setenv("QRDEPLOY_PROGRESS_SECONDS", "0")
    monkeypatch.setenv("QRDEPLOY_CACHE", str(tmp_path / "cache"))
    assert main(["attack", str(files["v"]), "--data", f"npz:{files['d']}", "--unhardened",
                 str(files["s"]), "--attacks", "clean,pgd:steps=3,fgsm-s", "--batch-size", "4",
                 "-o", str(tmp_path / "r.json")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "samples; " in ln]

    def share(line: str) -> int:
        return int(line.split("all runs ")[1].split("%")[0])

    first = [share(ln) for ln in lines if ln.startswith("[column")]
    second = [share(ln) for ln in lines if ln.startswith("[before hardening: column")]
    assert first and second and len(first) + len(second) == len(lines), lines
    assert first == sorted(first) and second == sorted(second)
    assert 30 <= first[-1] <= 70  # the two runs do about the same work
    assert second[0] >= first[-1] and second[-1] == 100


def test_cache_off_crafts_in_memory(files: dict[str, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QRDEPLOY_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["attack", str(files["v"]), "--data", f"npz:{files['d']}", "--source",
                 str(files["s"]), "--attacks", "black/fgsm-s", "-o",
                 str(tmp_path / "r.json")]) == 0
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


# ------------------------------------------------------------------------------------ --quiet


def test_quiet_prints_only_the_summary_in_every_verb(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QRDEPLOY_QUIET", "0")  # as a user's shell: only -q may silence
    out = tmp_path / "r.json"
    assert main(["attack", str(files["v"]), "--data", f"npz:{files['d']}", "--attacks", "pgd",
                 "-o", str(out), "-q"]) == 0
    got = capsys.readouterr()
    assert got.err == ""
    lines = got.out.splitlines()
    assert lines[1].split()[0] == "clean" and lines[2].split()[0] == "white/pgd"
    assert lines[-1] == f"results written to {out}"
    assert not any(ln.startswith("note:") for ln in lines)

    assert main(["harden", str(files["v"]), "-o", str(tmp_path / "h.onnx"), "--bits", "3",
                 "-q"]) == 0
    got = capsys.readouterr()
    assert got.err == "" and got.out.count("\n") == 1 and got.out.startswith("wrote ")
    assert main(["harden", str(files["v"]), "-o", str(tmp_path / "h2.onnx"), "--bits", "3"]) == 0
    assert capsys.readouterr().out.count("\n") > 1  # without -q: the per-tensor table too

    assert main(["report", str(out), "-o", str(tmp_path / "rep.md"), "--no-plots", "-q"]) == 0
    got = capsys.readouterr()
    assert got.err == "" and got.out == f"report: {tmp_path / 'rep.md'}\n"


def test_attack_summary_shows_clean_without_asking(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attack", str(files["v"]), "--data", f"npz:{files['d']}", "--attacks",
                 "pgd:steps=3", "-o", str(tmp_path / "r.json")]) == 0
    keys = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:4]]
    assert keys == ["clean", "white/pgd", "paper"]  # then the paper worst case


# --------------------------------------------------------------------------------- CUDA note


def test_cuda_note_only_for_the_gpu_build(monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    from qrdeploy.core import runtime

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(runtime, "_FALLBACK_LOGGED", [])
    monkeypatch.setattr(runtime, "gpu_build_installed", lambda: False)
    if "CUDAExecutionProvider" in runtime.ort().get_available_providers():
        pytest.skip("this machine has a CUDA provider: there is no fallback to note")
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
    assert "CUDA" not in caplog.text  # the cpu extra never had CUDA: nothing to say
    monkeypatch.setattr(runtime, "gpu_build_installed", lambda: True)
    resolve_providers("auto")
    assert "CUDA provider not available; running on CPU" in caplog.text


def test_pgd_settings_reach_the_attack() -> None:
    (col,) = build_suite("white", "mnist", "pgd:steps=7").columns
    assert isinstance(col.attack, PGD) and col.attack.cost() == 7.0
