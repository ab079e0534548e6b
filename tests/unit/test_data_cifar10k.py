"""The embedded cifar10-10k data set: split sizes and strata, a fixed split, the official test
order, and parts checked against their sha256 on load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from qrdeploy.data import datasets
from qrdeploy.data.datasets import cifar10_10k_arrays, cifar10_10k_indices, load_dataset
from qrdeploy.errors import DataError
from qrdeploy.evaluation.suites import Family, family_of

#: Per class (airplane ... truck) in the embedded file: the test images, and the training images
#: before the 50-per-class validation split.
TEST_COUNTS = [130, 114, 128, 130, 109, 112, 131, 120, 143, 128]
TRAIN_COUNTS = [836, 822, 850, 814, 886, 829, 846, 839, 886, 841]


def test_split_sizes_and_strata() -> None:
    sets = {s: load_dataset("cifar10-10k", s) for s in ("train", "val", "test")}
    for ds in sets.values():
        assert ds.x.shape[1:] == (3, 32, 32) and ds.x.dtype == np.float32
        assert ds.y is not None and ds.y.dtype == np.int64 and ds.num_classes == 10
        assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    counts = {s: np.bincount(ds.y, minlength=10).tolist()  # type: ignore[arg-type]
              for s, ds in sets.items()}
    assert counts["val"] == [50] * 10
    assert counts["test"] == TEST_COUNTS
    assert [a + b for a, b in zip(counts["train"], counts["val"], strict=True)] == TRAIN_COUNTS


def test_train_and_val_partition_the_training_images_with_a_fixed_split() -> None:
    y = cifar10_10k_arrays()["y_train"]
    a, b = cifar10_10k_indices(y), cifar10_10k_indices(y)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    union = np.concatenate([a["train"], a["val"]])
    assert np.array_equal(np.sort(union), np.arange(len(y)))
    assert not np.all(np.diff(a["train"]) > 0)  # shuffled


def test_test_split_keeps_the_official_order() -> None:
    arrays = cifar10_10k_arrays()
    assert np.all(np.diff(arrays["idx_test"]) > 0)
    assert arrays["idx_test"][:3].tolist() == [0, 1, 2]
    # the first labels of the official test batch: cat, ship, ship, airplane, frog, frog, ...
    test = load_dataset("cifar10-10k", "test", n=10)
    assert test.y is not None and test.y.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    pixels = (test.x[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    assert np.array_equal(pixels, arrays["x_test"][0])


def test_the_arrays_are_read_only() -> None:
    with pytest.raises(ValueError, match="read-only"):
        cifar10_10k_arrays()["x_train"][0, 0, 0, 0] = 0


def test_the_family_is_cifar10() -> None:
    assert family_of("cifar10-10k") is Family.CIFAR10


def _parts(folder: Path, chunks: list[bytes]) -> tuple[tuple[str, str], ...]:
    folder.mkdir(exist_ok=True)
    parts = []
    for i, data in enumerate(chunks):
        (folder / f"f.part{i}").write_bytes(data)
        parts.append((f"f.part{i}", hashlib.sha256(data).hexdigest()))
    return tuple(parts)


def test_parts_join_to_the_checked_file(tmp_path: Path) -> None:
    whole = b"embedded data, in two parts"
    parts = _parts(tmp_path, [whole[:10], whole[10:]])
    digest = hashlib.sha256(whole).hexdigest()
    assert datasets.read_embedded_parts(tmp_path, parts, digest) == whole


def test_a_damaged_part_is_a_one_line_error(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [b"first", b"second"])
    (tmp_path / "f.part1").write_bytes(b"secomd")
    with pytest.raises(DataError, match=r"part f.part1 is damaged \(sha256 mismatch\); reinstall"):
        datasets.read_embedded_parts(tmp_path, parts, hashlib.sha256(b"firstsecond").hexdigest())


def test_a_missing_part_is_a_one_line_error(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [b"first", b"second"])
    (tmp_path / "f.part0").unlink()
    with pytest.raises(DataError, match="part f.part0 is missing from"):
        datasets.read_embedded_parts(tmp_path, parts, hashlib.sha256(b"firstsecond").hexdigest())


def test_parts_in_the_wrong_order_do_not_join(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [b"first", b"second"])
    with pytest.raises(DataError, match="does not join to the expected file"):
        datasets.read_embedded_parts(tmp_path, parts[::-1],
                                     hashlib.sha256(b"firstsecond").hexdigest())


def test_every_committed_part_is_at_most_16_mb() -> None:
    for name, _ in datasets.CIFAR10K_PARTS:
        assert (datasets.EMBEDDED / name).stat().st_size <= 16 * 2**20
