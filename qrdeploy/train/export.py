"""torch -> ONNX export, one pinned exporter and opset, followed by a parity check.

Exporter: torch's TorchScript-based exporter (`dynamo=False`) at opset 17. Why this one: it needs
no onnxscript, keeps parameter names as initializer names, emits Flatten rather than the dynamo
exporter's Reshape(allowzero=1) with int64 shape initializers, and its output is byte-identical
across runs; opset 17 is run by every onnxruntime >= 1.14 and can be raised to 21 by the INT4
encoding's version conversion. It is deprecated upstream, which is one reason torch is capped at
2.14.1. BatchNormalization stays a node by default: folding BN into the conv weights changes what a
later per-tensor quantization of "the conv weights" means (`fold_bn=True` folds)."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from qrdeploy.core.fileio import atomic_write_bytes
from qrdeploy.core.version import __version__
from qrdeploy.data.datasets import load_dataset
from qrdeploy.errors import CheckpointError, DataError, GraphError
from qrdeploy.evaluation.clean import predict_logits
from qrdeploy.train.load import load_trained
from qrdeploy.train.nets import input_shape

OPSET = 17
PARITY_RTOL = 1e-4  # max |logit difference| relative to the batch's max |logit|
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class Parity:
    """torch vs onnxruntime on one batch."""

    n: int
    max_abs_diff: float
    logit_scale: float
    argmax_agreement: float

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.logit_scale, 1e-12)

    def __str__(self) -> str:
        return (f"parity on {self.n} inputs: max |dlogit| {self.max_abs_diff:.2e} "
                f"({self.rel_diff:.1e} of the logit scale {self.logit_scale:.3g}), "
                f"argmax agreement {self.argmax_agreement:.4f}")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    parity: Parity
    metadata: dict[str, str]


def export_onnx(checkpoint: str | Path, out: str | Path, fold_bn: bool = False,
                parity_n: int = 256, data_root: str | None = None) -> ExportResult:
    """Export a trained checkpoint to ONNX (dynamic batch), check parity, write atomically."""
    if Path(checkpoint).suffix.lower() == ".onnx":
        raise CheckpointError(f"{checkpoint} is already an ONNX model; export takes the "
                              ".safetensors checkpoint that qrdeploy train wrote")
    model, ck = load_trained(checkpoint)
    config = ck.meta["config"]
    proto = export_module(model, input_shape(config["net"]), fold_bn)
    meta = _metadata(ck.meta, fold_bn)
    for k, v in sorted(meta.items()):
        proto.metadata_props.add(key=k, value=v)
    data = proto.SerializeToString()
    x = _parity_batch(config["data"], config["net"], parity_n, data_root)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    parity = check_parity(data, x, ref)
    return ExportResult(atomic_write_bytes(out, data), parity, meta)


def export_module(model: Any, chw: tuple[int, int, int], fold_bn: bool = False) -> onnx.ModelProto:
    """The ONNX graph of an eval-mode nn.Module taking (N, C, H, W) [0, 1] images."""
    model = model.eval()
    buf = io.BytesIO()
    mode = torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, *chw),), buf,  # type: ignore[arg-type]
            dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            training=mode, do_constant_folding=fold_bn,
        )
    return onnx.load_from_string(buf.getvalue())


def _metadata(meta: dict[str, Any], fold_bn: bool) -> dict[str, str]:
    """Recipe and provenance; no timestamps, hostnames or paths, so exports are reproducible."""
    config = meta["config"]
    return {
        "qrdeploy.version": __version__,
        "qrdeploy.net": config["net"],
        "qrdeploy.dataset": config["data"],
        "qrdeploy.method": config["method"],
        "qrdeploy.seed": str(config["seed"]),
        "qrdeploy.val_accuracy": f"{meta['val_accuracy']:.4f}",
        "qrdeploy.bn": "folded" if fold_bn else "kept",
        "qrdeploy.exporter": f"torch.onnx (TorchScript-based), opset {OPSET}",
        "qrdeploy.train_recipe": json.dumps(config, sort_keys=True),
    }


def _parity_batch(data: str, net: str, n: int, data_root: str | None) -> np.ndarray:
    """Real test images when the checkpoint's data set is at hand, else seeded uniform noise."""
    try:
        return load_dataset(data, "test", n=n, data_root=data_root).x
    except DataError:
        return np.random.default_rng(0).random((n, *input_shape(net)), dtype=np.float32)


def check_parity(model: bytes, x: np.ndarray, ref_logits: np.ndarray) -> Parity:
    """Run onnxruntime on x and compare with reference logits; over tolerance is a GraphError."""
    got = predict_logits(model, x)
    diff = float(np.abs(got - ref_logits).max())
    scale = float(np.abs(ref_logits).max())
    top2 = np.sort(ref_logits, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > PARITY_RTOL * max(scale, 1e-12)
    agree = got.argmax(1) == ref_logits.argmax(1)
    parity = Parity(len(x), diff, scale, float(agree.mean()))
    if parity.rel_diff > PARITY_RTOL or not agree[decided].all():
        raise GraphError(f"export parity check failed: {parity} (tolerance {PARITY_RTOL:g})")
    return parity
