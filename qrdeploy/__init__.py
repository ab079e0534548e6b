"""qrdeploy: ONNX deployment hardening (mu-law mapping, low-bit weight quantization) and honest
robustness evaluation of the deployed graph.

The public API (qrdeploy.api, docs/api.md): harden, search_recipe, inspect, evaluate, attack,
check, replay, write_report, lipschitz, reproduce, load_dataset; and train / export_onnx with
the `train` extra. It is imported lazily, so `import qrdeploy` stays fast and never imports
torch. Old module paths of qrdeploy 0.1 still
import, with a DeprecationWarning (qrdeploy.core.compat)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from qrdeploy.core import compat
from qrdeploy.core.version import __version__

compat.install()

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
    "harden": "qrdeploy.api",
    "search_recipe": "qrdeploy.api",
    "SearchConfig": "qrdeploy.bitsearch.search",
    "evaluate": "qrdeploy.api",
    "attack": "qrdeploy.api",
    "check": "qrdeploy.api",
    "replay": "qrdeploy.api",
    "inspect": "qrdeploy.api",
    "write_report": "qrdeploy.api",
    "InputContractError": "qrdeploy.errors",
    "lipschitz": "qrdeploy.api",
    "reproduce": "qrdeploy.api",
    "load_dataset": "qrdeploy.api",
    "Dataset": "qrdeploy.data.datasets",
    "evaluate_onnx": "qrdeploy.evaluation.clean",
    "EvalResult": "qrdeploy.evaluation.clean",
    "build_net": "qrdeploy.train.nets",
    "train": "qrdeploy.train",
    "TrainConfig": "qrdeploy.train",
    "export_onnx": "qrdeploy.train.export",
    "Policy": "qrdeploy.gate.policy",
    "CheckResult": "qrdeploy.gate.run",
}

__all__ = ["__version__", "HAS_RUNTIME", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'qrdeploy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
