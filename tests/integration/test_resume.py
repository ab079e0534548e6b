"""Resumable runs: a `qrdeploy attack` killed with SIGKILL at a random batch and re-run writes the
same results as an uninterrupted run (apart from timings); corrupt or mismatched state files are
detected and the run restarts cleanly instead of mixing numbers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from qrdeploy.attacks.adaptive import adaptive_suite
from qrdeploy.evaluation.runner import Evaluation, RunConfig, Subject, evaluate
from qrdeploy.evaluation.suites import Mode, build_suite
from tests.unit.attack_models import NumpyLinear
from tests.unit.onnx_builders import cnn, ort_logits

ROOT = Path(__file__).resolve().parents[2]
N, BATCH = 80, 4
ATTACKS = "clean,white/fgsm-s,pgd,bim,mim,normal,uniform"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("resume")
    model = cnn(seed=0, c=1, hw=8)
    onnx.save(model, d / "v.onnx")
    x = np.random.default_rng(0).uniform(size=(N, 1, 8, 8)).astype(np.float32)  # (N, 1, 8, 8)
    y = ort_logits(model, x).argmax(1)
    y[::9] = (y[::9] + 1) % 10  # some clean errors
    np.savez(d / "d.npz", x=x, y=y)
    return d / "v.onnx", d / "d.npz"


def command(model: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "qrdeploy", "attack", str(model), "--data", f"npz:{data}",
            "--suite", "paper", "--attacks", ATTACKS, "--eps", "none", "--batch-size",
            str(BATCH), "-q", "-o", str(out)]


def without_timings(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    doc.pop("timings")
    return dict(doc)


def batches_done(state: Path) -> int:
    try:
        with np.load(state) as npz:
            return sum(int(npz[k].sum()) for k in npz.files if k.endswith(".done")) // BATCH
    except (OSError, ValueError, KeyError):
        return 0


def kill_at(cmd: list[str], state: Path, target: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if state.exists() and batches_done(state) >= target:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    return proc.wait()


def test_sigkill_then_rerun_gives_identical_results(files: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    model, data = files
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref" / "r.json"
    subprocess.run(command(model, data, ref), cwd=ROOT, env=env, check=True)
    total = 7 * N // BATCH
    target = int(np.random.default_rng().integers(1, total - 1))  # a random batch
    out = tmp_path / "run" / "r.json"
    state = out.with_name("r.json.state.npz")
    for _ in range(4):
        rc = kill_at(command(model, data, out), state, target)
        if rc == -signal.SIGKILL:
            break
        # the last columns' batches take microseconds: the run can end between two polls of
        # its state file; kill an earlier batch then (the property is the same at any batch)
        out.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
        target = max(1, target // 2)
    assert rc == -signal.SIGKILL, f"the run was not killed (target batch {target})"
    assert not out.exists() and target <= batches_done(state) < total
    subprocess.run(command(model, data, out), cwd=ROOT, env=env, check=True)
    assert without_timings(out) == without_timings(ref), f"killed at batch {target}"
    assert not state.exists()  # cleaned up once the results are written


# ---------------------------------------------------------------- in-process interruptions


class Breaks(NumpyLinear):
    """Raises after `after` calls of loss_and_grad (an interrupted run)."""

    def __init__(self, model: NumpyLinear, after: int) -> None:
        super().__init__(model.w, model.b)
        self.left = after

    def loss_and_grad(self, *a: Any, **k: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return super().loss_and_grad(*a, **k)


def linear() -> NumpyLinear:
    r = np.random.default_rng(0)
    return NumpyLinear(r.normal(size=(4, 16)), r.normal(size=4) * 0.1)


def run(model: NumpyLinear, state: Path | None, seed: int = 0) -> Evaluation:
    x = np.random.default_rng(1).uniform(size=(24, 1, 4, 4)).astype(np.float32)
    y = linear().logits(x).argmax(1)
    suite = build_suite("white", "mnist", attacks="clean,fgsm-s,pgd,mim")
    return evaluate(Subject("m.onnx", "a" * 64, model), x, y, suite,
                    config=RunConfig(seed=seed, batch_size=6, state_path=state))


def run_adaptive(model: NumpyLinear, state: Path | None) -> Evaluation:
    """white + adaptive at a small budget: restricted columns run after the survivors are known,
    so a resume must restore the cheaper columns first."""
    x = np.random.default_rng(1).uniform(size=(24, 1, 4, 4)).astype(np.float32)
    y = linear().logits(x).argmax(1)
    suite = build_suite("white,adaptive", "mnist", attacks="clean,fgsm-s,pgd,pgd-cw,apgd-dlr,"
                        "pgd-f64,square", eps=())
    small = {e.name: e for e in adaptive_suite(0.1, steps=8, queries=50)}
    suite = dataclasses.replace(suite, columns=tuple(
        dataclasses.replace(c, attack=small[c.name]) if c.mode is Mode.ADAPTIVE else c
        for c in suite.columns))
    return evaluate(Subject("m.onnx", "a" * 64, model), x, y, suite,
                    config=RunConfig(batch_size=6, state_path=state))


def same(a: Evaluation, b: Evaluation) -> None:
    for key in a.records:
        np.testing.assert_array_equal(a.records[key].fooled, b.records[key].fooled, key)
        np.testing.assert_array_equal(a.records[key].l2, b.records[key].l2, key)


@pytest.mark.parametrize("after", [3, 25, 47], ids=lambda a: f"after{a}")
def test_interrupted_run_resumes_to_the_same_numbers(tmp_path: Path, after: int) -> None:
    state = tmp_path / "s.npz"
    with pytest.raises(KeyboardInterrupt):
        run(Breaks(linear(), after), state)
    assert state.exists()
    same(run(linear(), state), run(linear(), None))


@pytest.mark.parametrize("after", [40, 120, 160], ids=lambda a: f"after{a}")
# 178 loss_and_grad calls in all, about 100 before the first adaptive column
def test_interrupted_adaptive_run_resumes_to_the_same_numbers(tmp_path: Path,
                                                               after: int) -> None:
    state = tmp_path / "s.npz"
    with pytest.raises(KeyboardInterrupt):
        run_adaptive(Breaks(linear(), after), state)
    assert state.exists()
    resumed, fresh = run_adaptive(linear(), state), run_adaptive(linear(), None)
    same(resumed, fresh)
    assert resumed.probe is not None and fresh.probe is not None
    np.testing.assert_array_equal(resumed.probe.grads, fresh.probe.grads)


def _partial_state(tmp_path: Path, seed: int) -> Path:
    state = tmp_path / "s.npz"
    with pytest.raises(KeyboardInterrupt):
        run(Breaks(linear(), 20), state, seed=seed)
    return state


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:100])


def _garbage(p: Path) -> None:
    p.write_bytes(b"not a zip file at all")


def _foreign_arrays(p: Path) -> None:
    with np.load(p) as npz:  # the right key and settings, other arrays
        key, settings = str(npz["__key__"]), str(npz["__settings__"])
    np.savez(p, __key__=np.array(key), __settings__=np.array(settings), **{"0.fooled": np.zeros(3)})


@pytest.mark.parametrize(("damage", "why"), [
    (_truncate, "cannot be read"),
    (_garbage, "cannot be read"),
    (_foreign_arrays, "not the ones this run needs"),
], ids=["truncated", "garbage", "wrong-arrays"])
def test_corrupt_state_restarts_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                        damage: Any, why: str) -> None:
    state = _partial_state(tmp_path, seed=0)
    damage(state)
    with caplog.at_level(logging.WARNING):
        resumed = run(linear(), state)
    assert why in caplog.text
    same(resumed, run(linear(), None))


def test_state_of_other_settings_is_never_mixed(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    state = _partial_state(tmp_path, seed=1)
    with caplog.at_level(logging.WARNING):
        resumed = run(linear(), state, seed=0)
    assert "belongs to other settings" in caplog.text
    same(resumed, run(linear(), None, seed=0))


def test_interrupted_transfer_crafting_resumes(tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(size=(24, 1, 4, 4)).astype(np.float32)
    y = linear().logits(x).argmax(1)
    suite = build_suite("black", "mnist", attacks="fgsm-w,fgsm-s")
    victim = Subject("m.onnx", "a" * 64, linear())

    def craft(model: NumpyLinear, folder: Path | None) -> Evaluation:
        source = Subject("s.onnx", "b" * 64, model)
        cfg = RunConfig(batch_size=6, transfer_dir=folder)
        return evaluate(victim, x, y, suite, source=source, config=cfg)

    with pytest.raises(KeyboardInterrupt):
        craft(Breaks(linear(), 6), tmp_path)  # dies in the second column's crafting
    assert len(list(tmp_path.glob("transfer-*.npz"))) == 2
    resumed, fresh = craft(linear(), tmp_path), craft(linear(), None)
    assert resumed.transfer is not None and fresh.transfer is not None
    for key in ("black/fgsm-w", "black/fgsm-s"):
        np.testing.assert_array_equal(resumed.transfer.x_adv[key], fresh.transfer.x_adv[key])
    same(resumed, fresh)
