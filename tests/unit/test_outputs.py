"""Output paths: a bad `-o` fails in one line before the work starts, a device or FIFO is written
through (never replaced by a regular file), and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import onnx
import pytest

from qrdeploy.cli import main
from qrdeploy.core.fileio import atomic_write_bytes, check_output_dir, check_output_file
from qrdeploy.errors import OutputError

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "mnist-standard.onnx"
PROC = Path("/proc")  # a pseudo file system: no new files, not even for root


class FifoReader:
    """Reads everything written into a FIFO, on a thread (opening it for writing blocks until
    a reader is there)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.data = path, b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as fh:
            self.data = fh.read()

    def join(self) -> bytes:
        self.thread.join(timeout=60)
        return self.data


def test_a_fifo_is_written_through_and_stays_a_fifo(tmp_path: Path) -> None:
    reader = FifoReader(tmp_path / "pipe")
    atomic_write_bytes(tmp_path / "pipe", b"payload")
    assert reader.join() == b"payload"
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file left


def test_harden_into_a_fifo_writes_the_model_through_it(tmp_path: Path) -> None:
    reader = FifoReader(tmp_path / "model-pipe")
    assert main(["harden", str(MODEL), "-o", str(tmp_path / "model-pipe"), "--bits", "3",
                 "-q"]) == 0
    model = onnx.load_from_string(reader.join())
    assert len(model.graph.initializer) > 0
    assert stat.S_ISFIFO((tmp_path / "model-pipe").stat().st_mode)


def test_a_folder_or_a_file_as_parent_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_write_bytes(tmp_path, b"x")
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic_write_bytes(tmp_path / "plain" / "out.json", b"x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "plain")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
    assert check_output_file(tmp_path / "new" / "deeper" / "out.json").name == "out.json"
    assert not (tmp_path / "new").exists()  # the check creates no folder


@pytest.mark.skipif(not PROC.is_dir(), reason="needs Linux's /proc")
def test_an_unwritable_place_is_refused_with_the_reason() -> None:
    with pytest.raises(OutputError, match=r"cannot write /proc/qrdeploy-out\.json: .*writable"):
        check_output_file(PROC / "qrdeploy-out.json")
    with pytest.raises(OutputError, match="cannot write /proc/qrdeploy-out.json"):
        atomic_write_bytes(PROC / "qrdeploy-out.json", b"x")


@pytest.mark.parametrize("argv", [
    ["attack", "missing.onnx", "--data", "mnist-5k", "-n", "5", "-o", "{dir}"],
    ["attack", "missing.onnx", "--data", "mnist-5k", "-n", "5", "-o", "{dir}/r.json",
     "--save-adversarials", "{file}/a.npz"],
    ["harden", "missing.onnx", "-o", "{file}/x.onnx", "--bits", "3"],
    ["lipschitz", "missing.onnx", "missing.onnx", "--csv", "{dir}"],
    ["report", "missing.json", "-o", "{dir}"],
    ["reproduce", "--profile", "smoke", "-o", "{file}"],
    ["check", "missing.onnx", "--reference", "missing.onnx", "--policy", "missing.toml",
     "--data", "mnist-5k", "--junit", "{file}/j.xml"],
], ids=["attack-o", "attack-save", "harden", "lipschitz-csv", "report", "reproduce", "check"])
def test_a_bad_output_fails_first_in_one_line(argv: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain").write_text("a file")
    args = [a.format(dir=tmp_path, file=tmp_path / "plain") for a in argv]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    # the output is refused before the (missing) input is even opened
    assert err.startswith("qrdeploy: error: cannot write") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


@pytest.mark.parametrize(("argv", "message"), [
    (["check", "M", "--reference", "R", "--data", "mnist-5k", "--policy", "P", "-o", "M"],
     "it is MODEL, which this command reads; give --output another path"),
    (["check", "M", "--reference", "R", "--data", "mnist-5k", "--policy", "P", "-o", "R"],
     "it is --reference"),
    (["check", "M", "--reference", "R", "--data", "mnist-5k", "--policy", "P", "--junit", "P"],
     "it is --policy, which this command reads; give --junit another path"),
    (["check", "M", "--reference", "R", "--data", "mnist-5k", "--policy", "P", "-o", "S",
      "--junit", "S"], "--output and --junit both name it"),
    (["harden", "M", "-o", "P", "--recipe", "P"], "it is --recipe"),
    (["report", "P", "-o", "P"], "it is RESULTS"),
], ids=["check-over-model", "check-over-reference", "junit-over-policy", "two-outputs",
        "harden-over-recipe", "report-over-results"])
def test_an_output_never_replaces_an_input_or_another_output(
        argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {"M": tmp_path / "m.onnx", "R": tmp_path / "r.onnx", "P": tmp_path / "p.toml",
             "S": tmp_path / "s.out"}
    files["M"].write_bytes(MODEL.read_bytes())
    files["R"].write_bytes(MODEL.read_bytes())
    files["P"].write_text("[clean]\nmin_agreement = 0.5\n")
    before = {k: p.read_bytes() for k, p in files.items() if p.exists()}
    assert main([str(files[a]) if a in files else a for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qrdeploy: error: cannot write") and message in err and "\n" not in err
    assert {k: p.read_bytes() for k, p in files.items() if p.exists()} == before
    assert not files["S"].exists()


def test_harden_in_place_and_a_shared_device_stay_allowed(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL.read_bytes())
    assert main(["harden", str(model), "-o", str(model), "--bits", "3", "--in-place", "-q"]) == 0
    assert model.read_bytes() != MODEL.read_bytes()
    policy = tmp_path / "p.toml"
    policy.write_text("[clean]\nmin_agreement = 0.5\n[latency]\nrepeats = 2\nwarmup = 0\n"
                      "batch_sizes = [1]\n")
    assert main(["check", str(model), "--reference", str(MODEL), "--data", "mnist-5k", "-n",
                 "20", "--policy", str(policy), "-o", os.devnull, "--junit", os.devnull,
                 "-q"]) == 0


def test_a_full_disk_asks_for_space_not_another_path(tmp_path: Path) -> None:
    import errno

    from qrdeploy.core.fileio import _cannot

    full = _cannot(tmp_path / "r.json", OSError(errno.ENOSPC, "No space left on device"))
    assert str(full).endswith("No space left on device; free some space there and rerun")
    denied = _cannot(tmp_path / "r.json", OSError(errno.EACCES, "Permission denied"))
    assert str(denied).endswith("Permission denied; choose a writable path")
