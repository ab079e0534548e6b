"""The command line: exit codes, one-line errors, and the deploy side without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qrdeploy.cli import main

BLOCK_TORCH = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True,
                          text=True, timeout=300)


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "qrdeploy" in capsys.readouterr().out
    assert main(["eval", "--help"]) == 0


@pytest.mark.parametrize("argv", [
    [], ["nonsense"], ["eval"], ["eval", "m.onnx", "--split", "x"], ["eval", "m.onnx", "-n", "0"],
    ["attack", "m.onnx", "-o", "r.json", "-n", "-5"], ["eval", "m.onnx", "-n", "many"],
    ["lipschitz", "a.onnx", "b.onnx", "--split", "x"], ["lipschitz", "a.onnx", "b.onnx", "-n", "0"],
    ["harden", "m.onnx", "-o", "h.onnx", "--bits", "9"],
    ["harden", "m.onnx", "-o", "h.onnx", "--bits", "3", "--activations", "int8", "--calibrate",
     "0"],
    ["eval", "m.onnx", "--isolate-timeout", "0"], ["eval", "m.onnx", "--input-spec",
                                                    "range=0-256"],
    ["eval", "m.onnx", "--batch-size", "0"], ["attack", "m.onnx", "-o", "r.json", "--workers",
                                              "0"],
    ["train", "-o", "t.safetensors", "--n-train", "0"], ["train", "-o", "t.safetensors",
                                                         "--lr", "-1"],
    ["eval", "m.onnx", "--threads", "-1"], ["eval", "m.onnx", "--atol", "-1"],
    ["harden", "m.onnx", "-o", "h.onnx", "--mulaw", "-1"],
    ["harden", "m.onnx", "-o", "h.onnx", "--bits", "3", "--seed", "-5"],
    ["check", "m.onnx", "--reference", "r.onnx", "--seed", str(2**64)],
    ["eval", "m.onnx", "--data", "mnist5k"],
    ["harden", "m.onnx", "-o", "h.onnx", "--bits", "3", "--activations", "int8",
     "--calibration-data", "cifar"],
    ["attack", "m.onnx", "-o", "r.json", "--eps", "2"],
    ["attack", "m.onnx", "-o", "r.json", "--attacks", "foo"],
    ["attack", "m.onnx", "-o", "r.json", "--attacks", "pgd=2"],
    ["attack", "m.onnx", "-o", "r.json", "--suite", "white", "--attacks", "black/fgsm-w"],
], ids=["none", "unknown", "missing-model", "bad-choice", "n-zero", "n-negative", "n-word",
        "lipschitz-split", "lipschitz-n", "bits-9", "calibrate-0", "isolate-timeout-0",
        "input-spec-range", "batch-size-0", "workers-0", "n-train-0", "lr-negative",
        "threads-negative", "atol-negative", "mulaw-negative", "seed-negative", "seed-too-big",
        "data-misspelt", "calibration-data-misspelt", "eps-out-of-range", "attacks-unknown",
        "attacks-eps-out-of-range", "attacks-mode-not-in-suite"])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert main(argv) == 2


def test_an_unknown_option_prints_the_commands_usage(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    assert main(["eval", "m.onnx", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: qrdeploy eval ") and "unrecognized arguments: --bogus" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["lipschitz", "a.onnx", "b.onnx", "--bits", "3"], "not both"),
    (["lipschitz", "a.onnx"], "nothing to compare"),
    (["harden", "a.onnx", "-o", "h.onnx", "--bits", "3", "--recipe", "r.toml"],
     "cannot be combined"),
    (["harden", "a.onnx", "-o", "h.onnx", "--search", "--bits", "3"], "chooses the bits itself"),
    (["reproduce", "-o", "out", "--model", "fl"], "--model expects REGIME=PATH"),
    (["reproduce", "-o", "out", "--retrain", "--model", "fl=m.onnx"], "--retrain trains every"),
    (["harden", "a.onnx", "-o", "h.onnx", "--bits", "3", "--calibrate", "100"],
     "--calibrate only applies with --activations int8"),
    (["harden", "a.onnx", "-o", "h.onnx", "--bits", "3", "--avg-bits", "4"],
     "--avg-bits applies to --search only"),
    (["harden", "a.onnx", "-o", "h.onnx", "--recipe", "r.toml", "--granularity", "channel"],
     "--recipe sets the passes and the encoding itself; drop --granularity"),
    (["harden", "a.onnx", "-o", "h.onnx", "--bits", "3", "--activations", "int8", "--encoding",
      "int4"], "drop --encoding int4"),
    (["margins", "m.onnx", "--top", "100"], "--top 100 is more than --directions 64"),
    (["harden", "a.onnx", "-o", "h.onnx", "--bits", "3", "--mulaw-layers", "all"],
     "--mulaw-layers applies to --mulaw only"),
    (["harden", "a.onnx", "-o", "h.onnx", "--mulaw", "255", "--scale", "mse", "--full-range"],
     "--scale, --full-range apply to --bits only"),
    (["harden", "a.onnx", "-o", "h.onnx", "--recipe", "r.toml", "--granularity", "tensor"],
     "drop --granularity"),
    (["harden", "a.onnx", "-o", "h.onnx", "--search", "--no-mulaw-rescale"],
     "drop --no-mulaw-rescale"),
    (["harden", "a.onnx", "-o", "h.onnx", "--mulaw", "255", "--encoding", "qdq"],
     "--encoding qdq needs a quantization pass"),
    (["harden", "a.onnx", "-o", "h.onnx", "--bits", "5", "--encoding", "int4"],
     "--encoding int4 holds at most 4 bits"),
    (["harden", "a.onnx", "-o", "h.onnx", "--mulaw", "255", "--activations", "int8"],
     "--activations int8 needs a quantization pass"),
    (["harden", "a.onnx", "-o", "h.onnx", "--bits", "3", "--quantizer", "companding",
      "--activations", "int8"], "need uniform codes"),
    (["harden", "a.onnx", "-o", "h.onnx"], "no pass given"),
    (["train", "--net", "mnist-cnn", "--method", "feedback", "--from", "m.onnx", "-o", "f.onnx",
      "--fl-directions", "10"], "--fl-top 40 is more than --fl-directions 10"),
], ids=["lipschitz-both", "lipschitz-neither", "recipe-and-bits", "search-and-bits",
        "model-format", "retrain-and-model", "calibrate-without-int8", "avg-bits-without-search",
        "recipe-and-granularity", "int8-and-int4", "margins-top", "mulaw-layers-without-mulaw",
        "quant-options-without-bits", "recipe-and-default-granularity", "search-and-rescale",
        "mulaw-only-qdq", "int4-5-bits", "int8-without-bits", "int8-companding", "no-pass",
        "train-fl-top"])
def test_conflicting_options_exit_2_in_one_line(argv: list[str], message: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Options that do not go together are usage errors (2), named before any file is read
    (none of the files exists)."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qrdeploy: error:") and message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_eval_prints_accuracy_with_interval(tiny_onnx: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tiny_onnx), "-n", "200", "-q"]) == 0
    out = capsys.readouterr().out
    assert "samples: 200" in out and "accuracy:" in out and "95% Wilson" in out


def test_eval_reference_agreement_with_itself(tiny_onnx: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tiny_onnx), "--reference", str(tiny_onnx), "-n", "50", "-q"]) == 0
    assert "top-1 agreement with reference: 100.00%" in capsys.readouterr().out


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qrdeploy: error:")
    assert match in err


def test_truncated_onnx(tiny_onnx: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(tiny_onnx.read_bytes()[: tiny_onnx.stat().st_size // 2])
    _one_line_error(["eval", str(bad)], capsys, "cut.onnx")


def test_missing_dataset_folder(tiny_onnx: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(["eval", str(tiny_onnx), "--data", "mnist", "--data-root",
                     str(tmp_path / "none")], capsys, "not found under")


def test_npz_with_11_classes(tiny_onnx: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((11, 1, 28, 28), np.float32), y=np.arange(11))
    _one_line_error(["eval", str(tiny_onnx), "--data", f"npz:{path}"], capsys, "11 classes")


def test_cifar_pickle_payload(tiny_onnx: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    from tests.unit.data_builders import Payload, write_cifar_folder

    write_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(Payload(marker)))
    _one_line_error(["eval", str(tiny_onnx), "--data", "cifar10", "--data-root", str(tmp_path)],
                    capsys, "refusing a pickle")
    assert not marker.exists()


def test_wrong_image_shape(tiny_onnx: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 3, 32, 32), np.float32), y=np.arange(2))
    _one_line_error(["eval", str(tiny_onnx), "--data", f"npz:{path}"], capsys, "expects images")


def test_import_and_eval_without_torch(tiny_onnx: Path) -> None:
    code = (
        "import qrdeploy, sys\n"
        "from qrdeploy.cli import main\n"
        f"rc = main(['eval', {str(tiny_onnx)!r}, '-n', '100', '-q'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    proc = _run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy:" in proc.stdout


@pytest.mark.parametrize(("argv", "what"), [
    (["train", "-o", "{tmp}/x.safetensors", "-q"], "training"),
    (["export", "{tmp}/ck.safetensors", "-o", "{tmp}/x.onnx"], "export"),
    (["margins", "{tmp}/ck.safetensors", "-n", "5"], "reading the checkpoint ck.safetensors"),
], ids=["train", "export", "margins"])
def test_torch_commands_without_torch_name_the_extra(argv: list[str], what: str,
                                                     tmp_path: Path) -> None:
    (tmp_path / "ck.safetensors").write_bytes(b"not read: torch is missing first")
    args = [a.format(tmp=tmp_path) for a in argv]
    proc = _run_blocked(f"from qrdeploy.cli import main\nimport sys; sys.exit(main({args!r}))\n")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"qrdeploy: error: {what} needs torch: pip install " \
                                  "'qrdeploy[train]'"


@pytest.mark.parametrize("command", ["export", "margins"])
def test_a_missing_checkpoint_is_named_before_torch_is_needed(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [command, str(tmp_path / "gone.safetensors")]
    argv += ["-o", str(tmp_path / "x.onnx")] if command == "export" else ["-n", "5"]
    _one_line_error(argv, capsys, "gone.safetensors does not exist")


def test_inspect_reports_differentiability(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sin", ["x"], ["s"], name="sin1"),
         helper.make_node("Flatten", ["s"], ["logits"], name="flat")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])])
    path = tmp_path / "sin.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["inspect", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "blocked by 1 node(s)" in out and "Sin node 'sin1'" in out
    # a rule's own refusal names the node once (a Pad in reflect mode)
    pad = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode="reflect"),
         helper.make_node("Flatten", ["y"], ["logits"], name="flat")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor("pads", TensorProto.INT64, [8], [0] * 8)])
    onnx.save(helper.make_model(pad, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["inspect", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "blocked by 1 node(s)" in out and out.count("Pad node 'pad'") == 1, out


def test_inspect_names_the_input_and_output(tiny_onnx: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import onnx

    assert main(["inspect", str(tiny_onnx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["schema"], info["schema_version"]) == ("qrdeploy/inspect", 1)
    assert set(info["quantization"]) == {"integer_ops_in_file", "activation_quant",
                                         "activations"}  # the keys docs/api.md describes
    graph = onnx.load(tiny_onnx).graph
    assert [t["name"] for t in info["inputs"]] == [graph.input[0].name]
    assert info["inputs"][0]["dtype"] == "float32" and len(info["inputs"][0]["shape"]) == 4
    assert [t["name"] for t in info["outputs"]] == [o.name for o in graph.output]
    assert main(["inspect", str(tiny_onnx)]) == 0
    assert f"input {graph.input[0].name!r}: float32 (" in capsys.readouterr().out


def test_a_reader_that_goes_away_is_no_internal_error(tiny_onnx: Path) -> None:
    """`qrdeploy inspect m.onnx | head -1`: the pipe closes early; no traceback, no 'internal
    error', the shell's code for SIGPIPE."""
    code = ("import sys, os\n"
            "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
            "from qrdeploy.cli import main\n"
            f"sys.exit(main(['inspect', {str(tiny_onnx)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 141, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr


def test_a_cifar_model_on_the_default_data_names_the_cifar_data_set(
        capsys: pytest.CaptureFixture[str]) -> None:
    """eval's --data defaults to mnist-5k: a CIFAR-10 model then says which embedded data set
    fits it, not only that the shapes differ."""
    model = Path(__file__).parents[2] / "models" / "cifar10-standard.onnx"
    _one_line_error(["eval", str(model), "-n", "4"], capsys, "pass --data cifar10-10k")


def test_sigterm_is_handled_as_ctrl_c_with_its_own_exit_code(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A CI timeout's SIGTERM reaches the same handlers as Ctrl-C (progress saved, one line) and
    exits 143; the process's own SIGTERM handler is back afterwards."""
    import os
    import signal

    from qrdeploy import cli

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_check_outputs",
                        lambda args: os.kill(os.getpid(), signal.SIGTERM))
    assert main(["eval", "m.onnx"]) == 143
    assert capsys.readouterr().err.strip() == "qrdeploy: terminated"
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_while_the_commands_are_imported_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from qrdeploy import cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["eval", "m.onnx"]) == 130
    assert capsys.readouterr().err.strip() == "qrdeploy: interrupted"
