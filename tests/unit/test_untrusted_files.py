"""Untrusted files (docs/reliability.md): external data that leaves the model's folder, huge
declared sizes that must never be allocated, pickles with a payload, and input validation at the
API boundary (one-line QrdeployError naming the bad value and range)."""

from __future__ import annotations

import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qrdeploy.data.datasets import Dataset, load_dataset
from qrdeploy.errors import CheckpointError, ConfigError, DataError, GraphError, PassError
from qrdeploy.evaluation.clean import evaluate_onnx
from qrdeploy.graphio import graph
from qrdeploy.hardening.passes import MuLawMap, WeightQuant
from tests.unit.onnx_builders import cnn

# ---------------------------------------------------------------- external data


def _relocate(path: Path, location: str) -> Path:
    m = onnx.load_model(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(m.SerializeToString())
    return path


def _external_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return graph.save_model(cnn(0), folder / "m.onnx", external_data=True)


@pytest.mark.parametrize("location", ["../m.onnx.data", "sub/../../m.onnx.data", "ABSOLUTE"],
                         ids=["dotdot", "nested-dotdot", "absolute"])
def test_external_location_leaving_folder_is_refused(tmp_path: Path, location: str) -> None:
    path = _external_model(tmp_path / "model")
    outside = tmp_path / "m.onnx.data"
    outside.write_bytes((tmp_path / "model" / "m.onnx.data").read_bytes())  # a valid target
    location = str(outside) if location == "ABSOLUTE" else location
    with pytest.raises(GraphError, match="outside the model's folder"):
        graph.load_model(_relocate(path, location))


def test_symlink_leading_out_of_folder_is_refused(tmp_path: Path) -> None:
    path = _external_model(tmp_path / "model")
    outside = tmp_path / "secret.data"
    (tmp_path / "model" / "m.onnx.data").rename(outside)
    (tmp_path / "model" / "m.onnx.data").symlink_to(outside)
    with pytest.raises(GraphError, match="outside the model's folder"):
        graph.load_model(path)


def test_symlinked_folder_leading_out_is_refused(tmp_path: Path) -> None:
    path = _external_model(tmp_path / "model")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "model" / "m.onnx.data").rename(tmp_path / "elsewhere" / "m.onnx.data")
    (tmp_path / "model" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(GraphError, match="outside the model's folder"):
        graph.load_model(_relocate(path, "link/m.onnx.data"))


def test_symlink_inside_folder_is_refused_too(tmp_path: Path) -> None:
    """onnx itself refuses symbolic links; qrdeploy says so first, in one line."""
    path = _external_model(tmp_path / "model")
    (tmp_path / "model" / "m.onnx.data").rename(tmp_path / "model" / "real.data")
    (tmp_path / "model" / "m.onnx.data").symlink_to("real.data")
    with pytest.raises(GraphError, match="goes through a symbolic link"):
        graph.load_model(path)


def _huge_external(folder: Path, length: str | None) -> Path:
    """A Gemm whose weight declares 2**40 float32 elements (4 TiB) stored in a 16-byte file."""
    (folder / "w.data").write_bytes(b"\x00" * 16)
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**20, 2**20])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.data")
    if length is not None:
        w.external_data.add(key="length", value=length)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "huge",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2**20])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2**20])], [w])
    path = folder / "huge.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
                     .SerializeToString())
    return path


def _huge_inline(folder: Path, length: str | None) -> Path:
    m = cnn(0)
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([2**31, 2**31])
    path = folder / "huge.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize(("build", "length", "match"), [
    (_huge_external, str(2**42), "max_tensor_elements"),
    (_huge_external, None, "max_tensor_elements"),
    (_huge_inline, None, "max_tensor_elements"),
], ids=["external-declared-length", "external-no-length", "inline-dims"])
def test_huge_declared_size_is_not_allocated(tmp_path: Path, build: object, length: str | None,
                                             match: str) -> None:
    path = build(tmp_path, length)  # type: ignore[operator]
    tracemalloc.start()
    try:
        with pytest.raises(GraphError, match=match):
            graph.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # 8 MiB, against 4 TiB declared


def test_huge_declared_length_within_element_limit_is_not_allocated(tmp_path: Path) -> None:
    """A 1 GiB tensor (within the element limit) backed by 16 bytes: refused by size, before
    any read; a resource limit on the address space would turn an allocation into an error."""
    (tmp_path / "w.data").write_bytes(b"\x00" * 16)
    m = cnn(0)
    t = next(t for t in m.graph.initializer if t.name == "fc1.weight")
    t.ClearField("raw_data")
    del t.dims[:]
    t.dims.extend([2**14, 2**14])
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="w.data")
    t.external_data.add(key="length", value=str(2**30))
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    tracemalloc.start()
    try:
        with pytest.raises(GraphError, match="bytes 0..1,073,741,824 of w.data, which has 16"):
            graph.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


# ---------------------------------------------------------------- pickles with a payload


class _Payload:
    """Unpickling this calls open(marker, 'w'): harmless, but proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_cifar_pickle_with_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Payload(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"refusing a pickle that calls (builtins|io)\.open"):
        load_dataset("cifar10", "test", data_root=tmp_path)
    assert not marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    x = np.empty(1, dtype=object)
    x[0] = _Payload(marker)
    np.savez(tmp_path / "d.npz", x=x)
    with pytest.raises(DataError, match="not a readable .npz file"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert not marker.exists()


def test_torch_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from qrdeploy.train import load_trained

    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt.pt"
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="not a qrdeploy safetensors checkpoint"):
        load_trained(path)
    assert not marker.exists()


def test_checkpoint_without_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from qrdeploy.train import load_trained
    from qrdeploy.train.checkpoint import Checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "c.safetensors",
                           Checkpoint({"model": {"w": torch.zeros(2)}}, {"kind": "model"}))
    with pytest.raises(CheckpointError):
        load_trained(path)


# ---------------------------------------------------------------- API boundary


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: MuLawMap(-1.0), PassError, r"mu must be a finite number >= 0 .*got -1.0"),
    (lambda: MuLawMap(float("nan")), PassError, "mu must be a finite number >= 0"),
    (lambda: WeightQuant(0), PassError, r"bits must be in 1..8, got 0"),
    (lambda: WeightQuant(9), PassError, r"bits must be in 1..8, got 9"),
    (lambda: WeightQuant(3.0), PassError, r"bits must be an integer in 1..8, got 3.0"),
], ids=["mu-negative", "mu-nan", "bits-0", "bits-9", "bits-float"])
def test_pass_settings_name_value_and_range(make: object, error: type[Exception],
                                            match: str) -> None:
    with pytest.raises(error, match=match) as err:
        make()  # type: ignore[operator]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), float("inf")],
                         ids=["negative", "above-1", "nan", "inf"])
def test_attack_eps_outside_0_1(eps: float) -> None:
    from qrdeploy.attacks import FGSM, PGD

    for cls in (FGSM, PGD):
        with pytest.raises(ConfigError, match=r"eps must be a number in \[0, 1\], got"):
            cls(eps=eps)


_X = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
_Y = np.array([0, 1, 2, 3])


@pytest.mark.parametrize(("x", "y", "match"), [
    (_X[:0], _Y[:0], r"non-empty \(N, C, H, W\) batch"),
    (_X[:, 0], _Y, r"non-empty \(N, C, H, W\) batch, got shape \(4, 8, 8\)"),
    ((_X * 255).astype(np.uint8), _Y, "floating point in .0, 1., got dtype uint8"),
    (_X * 2, _Y, r"must lie in \[0, 1\], got values in"),
    (_X, np.array([0, 1, 2, 10]), r"labels must lie in \[0, 9\] for a 10-class model"),
    (_X, np.array([0, 1, 2, -1]), r"labels must lie in \[0, 9\]"),
    (_X, _Y[:2], "y must be 4 integer labels"),
], ids=["empty", "3d", "uint8", "range", "label-high", "label-negative", "label-count"])
def test_attack_batch_is_validated(x: np.ndarray, y: np.ndarray, match: str) -> None:
    from qrdeploy.attacks.checks import check_batch

    with pytest.raises(DataError, match=match):
        check_batch(x, y, 10)


@pytest.mark.parametrize(("x", "y", "match"), [
    (_X[:, :, :4], _Y, r"expects images of shape \(1, 8, 8\), the data has \(1, 4, 8\)"),
    (_X, np.array([11, 0, 1, 2]), "has label 11 .* but the model has 10 outputs"),
], ids=["shape", "label-high"])
def test_evaluate_onnx_validates(x: np.ndarray, y: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        evaluate_onnx(cnn(0), Dataset("t", "test", x, y, 10))


@pytest.mark.parametrize(("x", "y"), [
    ((_X * 255).astype(np.uint8), _Y), (_X.astype(np.float64), _Y), (_X * 255, _Y),
    (_X[:0], _Y[:0]), (_X, np.array([-1, 0, 1, 2])), (_X, _Y[:2]), (_X * np.nan, _Y),
], ids=["uint8", "float64", "range", "empty", "label-negative", "label-count", "nan"])
def test_evaluate_onnx_refuses_bad_data(x: np.ndarray, y: np.ndarray) -> None:
    with pytest.raises(DataError):
        evaluate_onnx(cnn(0), Dataset("t", "test", x, y, 10))


def test_npz_pixels_out_of_range(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=_X * 3, y=_Y)
    with pytest.raises(DataError, match=r"pixels must be in \[0, 1\], found \[0"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_empty(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=_X[:0], y=_Y[:0])
    with pytest.raises(DataError, match="is empty"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_absolute_paths_are_not_written_into_saved_models(tmp_path: Path) -> None:
    path = graph.save_model(cnn(0), tmp_path / "m.onnx", external_data=True)
    assert os.fsencode(str(tmp_path)) not in path.read_bytes()


class _Above2GB:
    """Stands in for a > 2 GB ModelProto: upb's ByteSize raises instead of returning a size."""

    def ByteSize(self) -> int:  # noqa: N802 (protobuf's name)
        from google.protobuf.message import EncodeError

        raise EncodeError("Failed to serialize proto")


def test_model_above_2gb_is_sent_to_external_data() -> None:
    """tools/big_model_roundtrip.py does the real 2.25 GiB round trip (docs/reliability.md)."""
    with pytest.raises(GraphError, match="above 2 GB .* save it with save_model"):
        graph.model_to_bytes(_Above2GB())  # type: ignore[arg-type]


def test_atomic_write_removes_only_orphaned_temp_files(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from qrdeploy.core.fileio import atomic_write_bytes

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = tmp_path / f".out.bin.{dead}.abc.tmp"
    live = tmp_path / f".out.bin.{os.getpid()}.def.tmp"  # a concurrent writer of the same file
    orphan.write_bytes(b"x")
    live.write_bytes(b"y")
    atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert not orphan.exists() and live.exists()
