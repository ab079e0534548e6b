"""qrdeploy: ONNX deployment hardening (mu-law mapping, low-bit weight quantization) and honest
robustness evaluation of the deployed graph.

The public API is imported lazily, so `import qrdeploy` stays fast and never imports torch."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

#: True when an onnxruntime build (qrdeploy[cpu] or qrdeploy[gpu]) is importable. The deploy-side
#: calls raise RuntimeMissingError naming the fix when it is not.
HAS_RUNTIME = importlib.util.find_spec("onnxruntime") is not None

_API = {
    # name: module that defines it
    "QrdeployError": "qrdeploy.errors",
    "DataError": "qrdeploy.errors",
    "GraphError": "qrdeploy.errors",
    "PassError": "qrdeploy.errors",
    "UnsupportedOpError": "qrdeploy.errors",
    "load_dataset": "qrdeploy.data",
    "Dataset": "qrdeploy.data",
    "evaluate_onnx": "qrdeploy.evaluation",
    "EvalResult": "qrdeploy.evaluation",
    "build_net": "qrdeploy.nets",
    "train": "qrdeploy.train",
    "TrainConfig": "qrdeploy.train",
    "export_onnx": "qrdeploy.export",
    "check": "qrdeploy.gate",
    "Policy": "qrdeploy.gate",
    "CheckResult": "qrdeploy.gate",
}

__all__ = ["__version__", "HAS_RUNTIME", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'qrdeploy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
