"""The public API: the names the README gives are the functions of qrdeploy.api, no package of the
same name shadows one after it is imported, and the old flat module paths of qrdeploy 0.1 still
import the new modules themselves, with one DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from qrdeploy.core.compat import MOVED_MODULES, MOVED_NAMES

PUBLIC = ("harden", "evaluate", "attack", "check", "lipschitz", "reproduce", "load_dataset")


def test_public_names_are_the_api_functions_even_after_every_package_is_imported() -> None:
    for pkg in ("hardening.passes", "spectral.analysis", "paper.pipeline", "gate.run",
                "evaluation.runner", "data.datasets"):
        importlib.import_module(f"qrdeploy.{pkg}")
    import qrdeploy.api

    for name in PUBLIC:
        fn = getattr(qrdeploy, name)
        assert callable(fn) and fn is getattr(qrdeploy.api, name), name
        assert fn.__doc__ and len(fn.__doc__.split()) > 10, f"{name} needs a docstring"
    assert set(PUBLIC) <= set(qrdeploy.__all__)


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_MODULES.items()))
def test_old_module_paths_import_the_new_module_with_a_warning(old: str, new: str) -> None:
    """In a fresh interpreter (the alias is made once per process)."""
    code = (f"import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
            f"import qrdeploy\ntry:\n    importlib.import_module({old!r})\n"
            f"except DeprecationWarning as w:\n    print(w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert f"{old} moved to {new}" in out and "goes in 0.3.0" in out
    if old == "qrdeploy.passes":  # one in-process check that it is the same module object
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert importlib.import_module(old) is importlib.import_module(new)


@pytest.mark.parametrize(("package", "name"), [
    ("qrdeploy.evaluation", "evaluate_onnx"), ("qrdeploy.data", "load_dataset"),
    ("qrdeploy.gradients", "differentiability"), ("qrdeploy.gate", "check"),
    ("qrdeploy.spectral", "largest_singular_value"), ("qrdeploy.margins", "random_directions"),
    ("qrdeploy.report", "write_report")])
def test_names_of_old_modules_that_became_packages_are_forwarded(package: str,
                                                                  name: str) -> None:
    pkg = importlib.import_module(package)
    with pytest.warns(DeprecationWarning, match=f"{package}.{name} moved to "
                                                f"{MOVED_NAMES[package]}.{name}"):
        obj = getattr(pkg, name)
    assert obj is getattr(importlib.import_module(MOVED_NAMES[package]), name)


def test_unknown_names_and_submodules_are_not_forwarded() -> None:
    import qrdeploy.gradients as g

    with pytest.raises(AttributeError):
        g.no_such_thing  # noqa: B018
    from qrdeploy.gradients import prepare  # the submodule, not builder's function

    assert prepare.__name__ == "qrdeploy.gradients.prepare"


def test_the_version_is_written_once() -> None:
    import tomllib
    from pathlib import Path

    import qrdeploy

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml")
                              .read_text())
    assert pyproject["project"]["version"] == qrdeploy.__version__
