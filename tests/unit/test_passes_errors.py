"""Pass and recipe error paths: each has its own test and a one-line message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from qrdeploy import cli
from qrdeploy.errors import ConfigError, PassError
from qrdeploy.graphio import graph
from qrdeploy.hardening import quant
from qrdeploy.hardening.passes import MuLawMap, WeightQuant, harden, load_recipe, recipe_from_dict
from tests.unit.onnx_builders import cnn, shared_weight_net


def test_selection_matching_nothing() -> None:
    with pytest.raises(PassError, match="matches none of the 4 weight layers"):
        harden(cnn(0), [WeightQuant(3, layers="nonexistent*")])


def test_selection_op_absent() -> None:
    with pytest.raises(PassError, match="matches none"):
        harden(cnn(0), [MuLawMap(255, layers="MatMul")])


@pytest.mark.parametrize("bits", [0, 9, -1], ids=["zero", "nine", "negative"])
def test_bits_out_of_range(bits: int) -> None:
    with pytest.raises(PassError, match=r"bits must be in 1\.\.8"):
        WeightQuant(bits)


def test_bits_not_integer() -> None:
    with pytest.raises(PassError, match="must be an integer"):
        WeightQuant(3.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("mu", [-1.0, float("nan"), float("inf")], ids=["negative", "nan", "inf"])
def test_mu_invalid(mu: float) -> None:
    with pytest.raises(PassError, match="mu must be a finite number >= 0"):
        MuLawMap(mu)


def test_mu_negative_in_primitive() -> None:
    with pytest.raises(PassError, match="mu must be"):
        quant.mu_law(np.ones(2), -5)


def test_nan_weights() -> None:
    m = cnn(0)
    w = numpy_helper.to_array(graph.initializer_map(m)["fc2.weight"]).copy()
    w[0, 0] = np.nan
    graph.initializer_map(m)["fc2.weight"].CopyFrom(numpy_helper.from_array(w, "fc2.weight"))
    with pytest.raises(PassError, match="NaN or Inf"):
        harden(m, [WeightQuant(3)])


@pytest.mark.parametrize("spec", ["last:0", "first:x", "", "a,,b"],
                         ids=["last0", "first-x", "empty", "empty-term"])
def test_bad_selection_syntax(spec: str) -> None:
    with pytest.raises(PassError, match="layer selection|N >= 1"):
        WeightQuant(3, layers=spec)


def test_bad_enum_value() -> None:
    with pytest.raises(PassError, match="granularity must be one of tensor|channel"):
        WeightQuant(3, "row")  # type: ignore[arg-type]


def test_no_passes() -> None:
    with pytest.raises(PassError, match="no pass given"):
        harden(cnn(0), [])


def test_encoding_without_quantization() -> None:
    with pytest.raises(PassError, match="needs a quantization pass"):
        harden(cnn(0), [MuLawMap(255)], "qdq")


def test_int4_with_too_many_bits() -> None:
    with pytest.raises(PassError, match="int4 holds at most 4 bits"):
        harden(cnn(0), [WeightQuant(5)], "int4")


def test_shared_weight_refused() -> None:
    with pytest.raises(PassError, match="also feeds another node"):
        harden(shared_weight_net(0), [WeightQuant(3)])


def test_already_quantized_refused() -> None:
    hard, _ = harden(cnn(0), [WeightQuant(3)], "qdq")
    with pytest.raises(PassError, match="already qdq-encoded"):
        harden(hard, [WeightQuant(3)])


def test_recipe_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="kind must be mulaw or quant"):
        recipe_from_dict({"passes": [{"kind": "prune"}]})


def test_recipe_unknown_setting() -> None:
    with pytest.raises(ConfigError, match=r"unknown quant settings \['bitz'\]"):
        recipe_from_dict({"passes": [{"kind": "quant", "bitz": 3}]})


def test_recipe_not_toml(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text("[[passes]\nkind=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(tmp_path / "r.toml")


def test_recipe_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "absent.toml")


def test_cli_refuses_to_overwrite_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    src = graph.save_model(cnn(0), tmp_path / "m.onnx")
    before = src.read_bytes()
    assert cli.main(["harden", str(src), "-o", str(src), "--bits", "3"]) == 1
    assert "--in-place" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_cli_recipe_with_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = graph.save_model(cnn(0), tmp_path / "m.onnx")
    (tmp_path / "r.toml").write_text('[[passes]]\nkind = "quant"\n')
    argv = ["harden", str(src), "-o", str(tmp_path / "o.onnx"), "--bits", "3",
            "--recipe", str(tmp_path / "r.toml")]
    assert cli.main(argv) == 2  # usage: the options do not go together
    assert "cannot be combined" in capsys.readouterr().err
