"""Import paths of qrdeploy 0.1, kept for one release (the compatibility policy, CHANGELOG.md).

qrdeploy 0.1 kept its modules flat (`qrdeploy.passes`, `qrdeploy.ortmodel`, ...). 0.2 moved them
into feature packages. An old path still works in 0.2 and warns once with a DeprecationWarning
naming the new one; 0.3 removes it. Two mechanisms:

* `MOVED_MODULES`: an old module name that is free now is an alias of its new module (a meta-path
  finder, installed by `qrdeploy/__init__`), so `from qrdeploy.passes import harden_file` imports
  qrdeploy.hardening.passes itself, not a copy;
* `MOVED_NAMES`: an old module name that is a package now (`qrdeploy.evaluation`, ...) forwards
  the old module's names through the package's `__getattr__` (`forward`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

REMOVED_IN = "0.3.0"

#: old module -> new module, for old names that no package took over.
MOVED_MODULES: dict[str, str] = {
    f"qrdeploy.{old}": f"qrdeploy.{new}" for old, new in {
        "io": "core.fileio", "stats": "core.stats", "progress": "core.progress",
        "runtime": "core.runtime", "plotting": "core.plotting", "schema": "core.schema",
        "losses": "core.losses", "attacks.rng": "core.rng", "attacks.arrays": "core.arrays",
        "graph": "graphio.graph", "prevalidate": "graphio.prevalidate",
        "isolate": "graphio.isolate", "inputspec": "graphio.inputspec",
        "quant": "hardening.quant", "encodings": "hardening.encodings",
        "passes": "hardening.passes",
        "grad_rules": "gradients.rules", "grad_rules_act": "gradients.rules_act",
        "grad_rules_shape": "gradients.rules_shape", "grad_prepare": "gradients.prepare",
        "models": "model.protocol", "ortmodel": "model.ortmodel",
        "evaluate": "evaluation.runner", "suites": "evaluation.suites",
        "campaign": "evaluation.campaign", "runstate": "evaluation.runstate",
        "metrics": "evaluation.metrics", "masking": "evaluation.masking",
        "verdict": "evaluation.verdict", "results": "evaluation.results",
        "report_masking": "report.masking",
        "policy": "gate.policy", "check_measure": "gate.measure", "junit": "gate.junit",
        "lipschitz": "spectral.analysis", "lipschitz_render": "spectral.render",
        "margin_criteria": "margins.criteria",
        "nets": "train.nets", "export": "train.export", "recipes": "train.recipes",
        "reproduce": "paper.pipeline", "reproduce_cache": "paper.cache",
        "reproduce_steps": "paper.steps", "reproduce_profiles": "paper.profiles",
        "reproduce_report": "paper.report", "reproduce_plots": "paper.plots",
        "claims": "paper.claims",
    }.items()}

#: package that took an old module's name -> the module the old names now live in.
MOVED_NAMES: dict[str, str] = {
    "qrdeploy.data": "qrdeploy.data.datasets",
    "qrdeploy.evaluation": "qrdeploy.evaluation.clean",
    "qrdeploy.report": "qrdeploy.report.render",
    "qrdeploy.margins": "qrdeploy.margins.search",
    "qrdeploy.gradients": "qrdeploy.gradients.builder",
    "qrdeploy.spectral": "qrdeploy.spectral.norms",
    "qrdeploy.gate": "qrdeploy.gate.run",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new} in qrdeploy 0.2; import it from there (the old path "
                  f"goes in {REMOVED_IN})", DeprecationWarning, stacklevel=3)


class _Alias(importlib.abc.Loader):
    """Loads an old module name as the new module object itself."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(spec.name, self.new)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module is already imported."""


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Make the old module names importable (once per process)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def forward(package: str) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that hands out the old module's names, with the
    deprecation warning."""
    def getattr_(name: str) -> Any:
        target = MOVED_NAMES[package]
        if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is not None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")  # a submodule
        module = importlib.import_module(target)
        if not hasattr(module, name):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        _warn(f"{package}.{name}", f"{target}.{name}")
        return getattr(module, name)

    return getattr_
