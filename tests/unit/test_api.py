"""The public API: the names the README gives are the functions of qrdeploy.api, no package of the
same name shadows one after it is imported, and the old flat module paths of qrdeploy 0.1 still
import the new modules themselves, with one DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from qrdeploy.core.compat import MOVED_MODULES, MOVED_NAMES

PUBLIC = ("harden", "search_recipe", "inspect", "evaluate", "attack", "check", "replay",
          "write_report", "lipschitz", "reproduce", "load_dataset")


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


def test_api_harden_refuses_what_it_would_ignore(tmp_path: Path) -> None:
    """The library refuses the same ignored options the command line refuses."""
    import onnx

    import qrdeploy
    from qrdeploy.errors import UsageError
    from tests.unit.onnx_builders import cnn

    src = tmp_path / "m.onnx"
    onnx.save(cnn(0), src)
    (tmp_path / "r.toml").write_text('encoding = "qdq"\n[[passes]]\nkind = "quant"\nbits = 3\n')
    cases = [
        ({"recipe": tmp_path / "r.toml", "encoding": "int4"}, "drop encoding="),
        ({"recipe": tmp_path / "r.toml", "granularity": "channel"}, "drop granularity="),
        ({"mulaw": 255, "granularity": "channel"}, "granularity applies to bits only"),
        ({"bits": 3, "mulaw_layers": "all"}, "mulaw_layers applies to mulaw only"),
        ({"bits": 3, "calibrate": 10}, "apply to activations='int8' only; drop calibrate="),
        ({"bits": 3, "calibration_method": "entropy", "input_spec": "range=0-255"},
         "drop calibration_method=, input_spec="),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message):
            qrdeploy.harden(src, tmp_path / "h.onnx", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "h.onnx").exists()


def test_api_harden_replays_a_recorded_int8_recipe_byte_for_byte(tmp_path: Path) -> None:
    """recipes_of(hardened)[0] carries its calibration (images, method, data): replaying it
    through the API needs nothing else and gives the same bytes (same onnxruntime, same CPU)."""
    import onnx

    import qrdeploy
    from qrdeploy.hardening.passes import recipes_of

    src = Path(__file__).parents[2] / "models" / "mnist-standard.onnx"
    first = qrdeploy.harden(src, tmp_path / "a.onnx", bits=3, activations="int8", calibrate=40,
                            calibration_method="entropy")
    (recipe,) = recipes_of(onnx.load(first.path))
    assert recipe.activations is not None and recipe.activations.samples == 40
    again = qrdeploy.harden(src, tmp_path / "b.onnx", recipe=recipe)
    assert again.path.read_bytes() == first.path.read_bytes()
    # activations="float" drops the recorded int8 step: the weight-only analysis form
    flt = qrdeploy.harden(src, tmp_path / "c.onnx", recipe=recipe, activations="float")
    assert flt.notes and "analysis form" in flt.notes[0]


def test_api_inspect_is_what_the_command_prints(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import onnx

    import qrdeploy
    from qrdeploy.cli import main
    from tests.unit.onnx_builders import cnn

    src = tmp_path / "m.onnx"
    onnx.save(cnn(0), src)
    hard = qrdeploy.harden(src, tmp_path / "h.onnx", bits=3, encoding="qdq").path
    assert main(["inspect", str(hard), "--json"]) == 0
    assert qrdeploy.inspect(hard) == json.loads(capsys.readouterr().out)
    info = qrdeploy.inspect(hard)
    assert info["file_bytes"] == hard.stat().st_size and {r["bits"] for r in info["layers"]} == {3}


def test_a_reference_contract_without_a_reference_is_refused() -> None:
    import qrdeploy
    from qrdeploy.errors import UsageError

    with pytest.raises(UsageError, match=r"^reference_input_spec needs a reference$"):
        qrdeploy.evaluate("models/mnist-standard.onnx", "mnist-5k", n=10,
                          reference_input_spec="range=0-1")


def test_an_own_contract_of_attack_needs_its_model(tmp_path: Path) -> None:
    import qrdeploy
    from qrdeploy.errors import ConfigError, UsageError

    with pytest.raises(UsageError, match=r"^source_input_spec needs source$"):
        qrdeploy.attack("models/mnist-standard.onnx", "mnist-5k", n=10, out=tmp_path / "r.json",
                        source_input_spec="range=0-1")
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(ConfigError, match=r"^source_input_spec: "):
        qrdeploy.attack("models/mnist-standard.onnx", "mnist-5k", n=10, out=tmp_path / "r.json",
                        source="models/mnist-standard-seed1.onnx", source_input_spec="foo=1")


def test_the_reference_contract_keeps_the_float16_upcast() -> None:
    import argparse

    from qrdeploy.commands._options import companion_contract

    args = argparse.Namespace(reference="r.onnx", reference_input_spec="range=0-1",
                              upcast_fp16=True, input_name="image", output_name=None)
    contract = companion_contract(args, "reference")
    assert contract is not None and contract.upcast_fp16 and contract.input_name is None
