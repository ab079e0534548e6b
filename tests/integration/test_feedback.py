"""Feedback learning end to end on a few hundred digits: rounds, recorded diagnostics, the early
stop rule, the CLI, and a resumed run ending with the same bytes as an uninterrupted one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mlxtend")

from qrdeploy.cli import main  # noqa: E402
from qrdeploy.core.fileio import sha256_file  # noqa: E402
from qrdeploy.errors import ConfigError  # noqa: E402
from qrdeploy.train import TrainConfig, load_trained, train  # noqa: E402
from qrdeploy.train.config import FeedbackConfig, Method  # noqa: E402
from qrdeploy.train.feedback import train_feedback  # noqa: E402
from qrdeploy.train.loop import resume_path  # noqa: E402

N_TRAIN = 200
# margin 0.99: a round is rejected only if validation accuracy collapses (it does not here)
TINY_FL = FeedbackConfig(rounds=2, directions=8, top=4, rank_per_class=4, epochs=1,
                         diag_samples=4, margin=0.99)
CLI_FL = ["--fl-rounds", "2", "--fl-directions", "8", "--fl-top", "4", "--fl-rank-per-class",
          "4", "--fl-epochs", "1", "--fl-diag-samples", "4", "--fl-margin", "0.99"]


def _quiet(s: str) -> None:
    pass


@pytest.fixture(scope="module")
def standard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("std") / "std.safetensors"
    # 5 epochs: about 40 % validation accuracy, far enough above chance for a collapse to show
    train(TrainConfig(epochs=5, n_train=N_TRAIN, batch_size=50, threads=1), out, log=_quiet)
    return out


def _config(source: Path, **fl: object) -> TrainConfig:
    return TrainConfig(method=Method.FEEDBACK, from_checkpoint=str(source), n_train=N_TRAIN,
                       batch_size=50, threads=1, seed=4,
                       feedback=FeedbackConfig(**{**TINY_FL.__dict__, **fl}))


def test_rounds_record_diagnostics_and_counts(standard: Path, tmp_path: Path) -> None:
    out = tmp_path / "fl.safetensors"
    ck = train_feedback(_config(standard), out, log=_quiet)
    module, loaded = load_trained(out)
    assert module(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert loaded.meta["source"]["sha256"] == sha256_file(standard)
    rounds = ck.meta["rounds"]
    assert len(rounds) == 2 and not resume_path(out).exists()
    for r in rounds:
        assert r["generated"] + r["discarded"] <= r["proposed"] <= sum(r["seeds"]) * 4
        assert r["generated"] <= N_TRAIN  # generated : real at most 1 : 1
        assert sorted(r["levels"]).count("high") == 2 and r["levels"].count("low") == 5
        assert 0.0 <= r["cap_fraction"] <= 1.0
        hist = r["margin_histogram"]
        assert sum(hist["counts"]) + hist["not_reached"] == r["ranked"] * 8
        assert r["gradient"]["samples"] == 4 and r["gradient"]["gradient_min_mean"] > 0


def test_rounds_record_the_non_inferiority_decision(standard: Path, tmp_path: Path) -> None:
    ck = train_feedback(_config(standard), tmp_path / "fl.safetensors", log=_quiet)
    for r in ck.meta["rounds"]:
        a = r["acceptance"]
        assert a["rule"] == "noninferiority" and a["method"] == "newcombe-hybrid-score"
        assert a["n"] == 500 and a["margin"] == 0.99 and a["confidence"] == 0.95
        assert a["lower"] <= a["estimate"] <= a["upper"]
        assert a["estimate"] == pytest.approx((a["gains"] - a["losses"]) / a["n"])
        assert r["accepted"] == (a["lower"] > -a["margin"]) == (a["decision"] == "non-inferior")


def test_a_round_that_costs_accuracy_is_rejected_and_ends_the_run(standard: Path,
                                                                   tmp_path: Path) -> None:
    """A learning rate of 5 wrecks the weights in one epoch: validation accuracy falls to about
    chance, the non-inferiority decision says "inferior" at a 5-point margin, the round is
    rejected, the run stops there and the starting weights are kept."""
    out = tmp_path / "fl.safetensors"
    ck = train_feedback(_config(standard, lr=5.0, margin=0.05), out, log=_quiet)
    base, rounds = ck.meta["source"]["val_accuracy"], ck.meta["rounds"]
    assert base > 0.25, "the source must be well above chance for a collapse to show"
    assert len(rounds) == 1, "a rejected round must end the run"
    (r,) = rounds
    assert not r["accepted"] and r["acceptance"]["decision"] == "inferior"
    assert r["val_accuracy"] < base - 0.05
    assert ck.meta["accepted_rounds"] == 0 and ck.meta["val_accuracy"] == base
    source, _ = load_trained(standard)
    kept, _ = load_trained(out)
    for (k, v), w in zip(source.state_dict().items(), kept.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_the_drop_rule_is_an_explicit_option(standard: Path, tmp_path: Path) -> None:
    ck = train_feedback(_config(standard, lr=5.0, acceptance="drop", max_drop=0.005, rounds=1),
                        tmp_path / "fl.safetensors", log=_quiet)
    (r,) = ck.meta["rounds"]
    assert r["acceptance"]["rule"] == "drop" and not r["accepted"]
    assert r["acceptance"]["drop"] > 0.005 and "decision" in r["acceptance"]


class Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_same_bytes_and_checks_the_recipe(
        standard: Path, tmp_path: Path) -> None:
    ref, out = tmp_path / "ref.safetensors", tmp_path / "out.safetensors"
    args = ["train", "--method", "feedback", "--from", str(standard), "-o", str(ref),
            "--n-train", str(N_TRAIN), "--batch-size", "50", "--threads", "1", "--seed", "4",
            "-q", *CLI_FL]
    assert main(args) == 0

    def die_in_round_2(msg: str) -> None:
        if msg.startswith("round 2"):
            raise Killed

    with pytest.raises(Killed):
        train_feedback(_config(standard), out, log=die_in_round_2)
    assert resume_path(out).exists() and not out.exists()
    with pytest.raises(ConfigError, match="different recipe"):
        train_feedback(_config(standard, top=3), out, log=_quiet)
    messages: list[str] = []
    train_feedback(_config(standard), out, log=messages.append)
    assert messages[0].startswith("resuming") and "after round 1" in messages[0]
    assert sha256_file(out) == sha256_file(ref)


def test_generated_directions_do_not_depend_on_the_batch() -> None:
    from qrdeploy.train.feedback import directions_for

    cfg = _config(Path("x.safetensors"))
    a = directions_for(cfg, 1, np.array([5, 9]), (1, 28, 28))
    b = directions_for(cfg, 1, np.array([9]), (1, 28, 28))
    c = directions_for(cfg, 2, np.array([9]), (1, 28, 28))
    np.testing.assert_array_equal(a[1], b[0])
    assert not np.allclose(b, c), "each round draws new directions"


def test_fine_tuning_shifts_real_digits_only() -> None:
    from qrdeploy.train.feedback import fine_tune_config
    from qrdeploy.train.loop import augment

    base = TrainConfig(method=Method.FEEDBACK, from_checkpoint="s.safetensors", shift=2)
    ft = fine_tune_config(base, 0)
    assert ft.shift == 2 and ft.method is Method.STANDARD
    off = fine_tune_config(dataclasses.replace(
        base, feedback=FeedbackConfig(augment_real=False)), 0)
    assert off.shift == 0 and not off.flip
    x = torch.rand(64, 1, 28, 28)
    keep = torch.arange(64) >= 32  # the "generated" half
    out = augment(x, ft, torch.Generator().manual_seed(0), keep)
    assert torch.equal(out[32:], x[32:])
    assert not torch.equal(out[:32], x[:32])  # 32 draws of 25 offsets: some sample moved
    same = augment(x, ft, torch.Generator().manual_seed(0))
    assert torch.equal(same[:32], out[:32])  # the mask does not change the other draws
