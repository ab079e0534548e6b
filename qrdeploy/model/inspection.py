"""What `qrdeploy inspect` reports about an ONNX file, as one library call: its weight layers
(op, shape, dtype, distinct levels per tensor and per channel, bits, encoding, as the file holds
them), inputs and outputs, the provenance written by `qrdeploy harden`, the quantized ops and
the kernels onnxruntime actually runs (integer vs float, from its optimized graph), the file
size, and whether qrdeploy can differentiate the model (which ops block it, or that the
gradient is BPDA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qrdeploy.errors import QrdeployError, first_line
from qrdeploy.gradients.builder import differentiability
from qrdeploy.graphio.graph import load_model
from qrdeploy.graphio.prevalidate import file_bytes
from qrdeploy.graphio.twin import dequantized_output, float_twin, gradient_form, stored_layers
from qrdeploy.graphio.twin import summary as twin_summary
from qrdeploy.hardening.passes import describe_model
from qrdeploy.model.kernels import kernel_summary


def inspect_model(path: str | Path) -> dict[str, Any]:
    """The JSON-ready description `qrdeploy inspect --json` prints (keys: opset, inputs,
    outputs, layers, provenance, metadata, quantization, file_bytes, external_data, kernels,
    differentiable)."""
    model = load_model(path)
    twin, quant = float_twin(model)
    info = describe_model(twin, stored_layers(model)) if quant.quantized else describe_model(model)
    info = {"schema": "qrdeploy/inspect", "schema_version": 1, **info}
    report = differentiability(model)
    try:  # an integer output: what the attacks read it as (unreadable: `differentiable` says why)
        _, codes = dequantized_output(model)
    except QrdeployError:
        codes = None
    for out in info["outputs"]:
        out["read_as"] = None if codes is None else \
            f"float logits through the output scale and zero point of {codes}"
    info["quantization"] = twin_summary(quant)
    info["file_bytes"] = file_bytes(path)  # the .onnx file plus its external data, if any
    info["external_data"] = info["file_bytes"] != Path(path).stat().st_size
    try:
        info["kernels"] = kernel_summary(model)
    except QrdeployError as exc:  # a graph onnxruntime cannot load: still list what we can
        info["kernels"] = {"verdict": "unknown", "error": first_line(exc, None)}
    info["differentiable"] = {
        "ok": report.ok,
        "gradient": gradient_form(quant),
        "blocking": [{"op": op, "node": node, "reason": reason}
                     for op, node, reason in report.blocking],
    }
    return info
