"""Every bad data input is a one-line DataError naming the problem."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest

from qrdeploy.cli import main
from qrdeploy.data.datasets import (
    check_labels,
    data_label,
    load_dataset,
    parse_data_label,
    parse_idx,
)
from qrdeploy.errors import DataError
from tests.unit.data_builders import Payload, write_cifar_folder


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_unknown_name() -> None:
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


def test_bad_split() -> None:
    with pytest.raises(DataError, match="split must be one of"):
        load_dataset("mnist-5k", "dev")


@pytest.mark.parametrize("name,what", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_folder(tmp_path: Path, name: str, what: str) -> None:
    with pytest.raises(DataError, match=f"{what}.*not found under .*--data-root"):
        load_dataset(name, data_root=tmp_path / "nowhere")


def test_cifar_pickle_calling_a_function_is_refused(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DataError, match="refusing a pickle that calls"):
        load_dataset("cifar10", data_root=tmp_path)
    assert not marker.exists()


def test_cifar_wrong_shape(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"expected \(N, 3072\)"):
        load_dataset("cifar10", data_root=tmp_path)


def test_idx_bad_magic() -> None:
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01\x02\x03\x04")


def test_idx_truncated() -> None:
    with pytest.raises(DataError, match="does not match its dimensions"):
        parse_idx(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)


@pytest.mark.parametrize(
    "arrays,match",
    [({"x": np.full((2, 1, 4, 4), np.nan, np.float32)}, "NaN"),
     ({"x": np.full((2, 1, 4, 4), 3.0, np.float32)}, r"pixels must be in \[0, 1\]"),
     ({"x": np.zeros((0, 1, 4, 4), np.float32)}, "is empty"),
     ({"x": np.zeros((2, 4), np.float32)}, "must be \\(N, C, H, W\\)"),
     ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.zeros(3, np.int64)}, "3 labels for 2"),
     ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.array([0.5, 1.0])}, "integer labels"),
     ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.array([0, -1])}, "negative label"),
     ({"y": np.zeros(2, np.int64)}, "no array named 'x'")],
    ids=["nan", "range", "empty", "shape", "count", "float-y", "negative", "no-x"],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_dataset(_npz(tmp_path, **arrays))


def test_npz_not_a_zip(tmp_path: Path) -> None:
    """Named for what it is, not with the pickle advice numpy gives for such a file."""
    (tmp_path / "d.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"is not an \.npz file \(a zip of arrays") as info:
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert "pickle" not in str(info.value)


def test_labels_beyond_model_classes(tmp_path: Path) -> None:
    ds = load_dataset(_npz(tmp_path, x=np.zeros((11, 1, 4, 4), np.float32), y=np.arange(11)))
    with pytest.raises(DataError, match="label 10 \\(11 classes\\) but the model has 10 outputs"):
        check_labels(ds, 10)


def test_more_samples_than_the_data_has_is_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        ds = load_dataset("mnist-5k", "test", n=99999)
    assert len(ds) == 1000
    assert "-n 99999: mnist-5k (test) has 1000 samples; using all 1000" in caplog.text


def test_data_labels_name_a_split_only_where_there_is_one() -> None:
    assert data_label("mnist-5k", "train") == "mnist-5k:train"
    assert data_label("npz:/a/d.npz", "train") == "npz:/a/d.npz"
    assert parse_data_label("mnist-5k:test") == ("mnist-5k", "test")
    assert parse_data_label("mnist-5k") == ("mnist-5k", "train")
    assert parse_data_label("npz:/a/d.npz") == ("npz:/a/d.npz", "train")
    assert parse_data_label("npz:/a:b/d.npz") == ("npz:/a:b/d.npz", "train")
    assert parse_data_label("npz:/a/d.npz:train") == ("npz:/a/d.npz", "train")  # 0.2.0 and older


def test_a_split_of_an_npz_file_is_said_to_have_no_effect(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.onnx_builders import cnn

    onnx.save(cnn(seed=0, c=1, hw=8), tmp_path / "m.onnx")
    data = _npz(tmp_path, x=np.zeros((6, 1, 8, 8), np.float32), y=np.arange(6))
    assert main(["eval", str(tmp_path / "m.onnx"), "--data", data, "--split", "train",
                 "--no-input-guard"]) == 0
    assert f"--split train: {data} is one set without splits; all of its samples are used" \
        in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "m.onnx"), "--data", data, "--no-input-guard"]) == 0
    assert "--split" not in capsys.readouterr().err
