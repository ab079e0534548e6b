"""Export: parity with torch, byte-identical re-export, BN kept or folded, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from qrdeploy.data.datasets import load_dataset  # noqa: E402
from qrdeploy.evaluation.clean import predict_logits  # noqa: E402
from qrdeploy.train import load_trained  # noqa: E402
from qrdeploy.train.export import check_parity, export_module, export_onnx  # noqa: E402


def test_argmax_agrees_on_all_1000_test_digits(tiny_checkpoint: Path, tiny_onnx: Path) -> None:
    model, _ = load_trained(tiny_checkpoint)
    x = load_dataset("mnist-5k", "test").x
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = predict_logits(tiny_onnx, x)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_export_twice_is_byte_identical(tiny_checkpoint: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(tiny_checkpoint, a)
    export_onnx(tiny_checkpoint, b)
    assert a.read_bytes() == b.read_bytes()


def test_metadata_records_recipe_without_paths(tiny_onnx: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(tiny_onnx).metadata_props}
    assert meta["qrdeploy.net"] == "mnist-cnn" and meta["qrdeploy.method"] == "standard"
    assert meta["qrdeploy.bn"] == "kept" and meta["qrdeploy.seed"] == "1"
    assert not any("/" in v and ("tmp" in v or "home" in v) for v in meta.values())


def test_dynamic_batch(tiny_onnx: Path) -> None:
    for n in (1, 3, 17):
        assert predict_logits(tiny_onnx, np.zeros((n, 1, 28, 28), np.float32)).shape == (n, 10)


@pytest.mark.parametrize("fold,expected_bn", [(False, 31), (True, 16)], ids=["kept", "folded"])
def test_batchnorm_kept_or_folded(fold: bool, expected_bn: int) -> None:
    # wrn-32-1 has 31 BN layers; folding removes the 15 that directly follow a conv (bn2 of
    # each unit), the pre-activation ones (after an Add) stay nodes.
    from qrdeploy.train.nets import build_net

    torch.manual_seed(0)
    net = build_net("wrn-32-1").eval()
    proto = export_module(net, (3, 32, 32), fold_bn=fold)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == expected_bn
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert check_parity(proto.SerializeToString(), x, ref).argmax_agreement == 1.0


def test_parity_failure_is_an_error(tiny_onnx: Path) -> None:
    from qrdeploy.errors import GraphError

    x = np.zeros((2, 1, 28, 28), np.float32)
    wrong = predict_logits(tiny_onnx, x) + 1.0
    with pytest.raises(GraphError, match="parity check failed"):
        check_parity(tiny_onnx.read_bytes(), x, wrong)
