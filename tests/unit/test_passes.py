"""passes.py: μ-law and quantization passes, selection, records, provenance, recipes, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qrdeploy import cli
from qrdeploy.graphio import graph
from qrdeploy.hardening import quant
from qrdeploy.hardening.passes import (
    META_STEPS,
    MuLawMap,
    Recipe,
    WeightQuant,
    bits_sweep,
    describe_model,
    harden,
    harden_file,
    load_recipe,
    recipes_of,
    select_layers,
)
from qrdeploy.hardening.quant import Granularity
from tests.unit.onnx_builders import cnn, conv_transpose_net, inputs, mlp_matmul, ort_logits


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_input_is_never_mutated() -> None:
    m = cnn(0, bn=True)
    before = m.SerializeToString()
    harden(m, [MuLawMap(255, layers="all"), WeightQuant(3, "channel")], "qdq")
    assert m.SerializeToString() == before


@pytest.mark.parametrize(("spec", "expected"), [
    ("all", ["conv1", "conv2", "fc1", "fc2"]), ("*", ["conv1", "conv2", "fc1", "fc2"]),
    ("last:1", ["fc2"]), ("last:3", ["conv2", "fc1", "fc2"]), ("first:2", ["conv1", "conv2"]),
    ("Conv", ["conv1", "conv2"]), ("gemm", ["fc1", "fc2"]), ("fc*", ["fc1", "fc2"]),
    ("conv1.weight", ["conv1"]), ("all,!last:1", ["conv1", "conv2", "fc1"]),
    ("!Conv", ["fc1", "fc2"]), ("first:1,last:1", ["conv1", "fc2"]), ("last:9", None),
], ids=lambda v: str(v))
def test_selection(spec: str, expected: list[str] | None) -> None:
    layers = graph.weight_layers(cnn(0))
    names = [lyr.node_name for lyr in select_layers(layers, spec)]
    assert names == (expected or ["conv1", "conv2", "fc1", "fc2"])


@pytest.mark.parametrize(("rescale", "max_after"), [(True, "same"), (False, 1.0)],
                         ids=["rescaled", "unscaled"])
def test_mulaw_rescale(rescale: bool, max_after: str | float) -> None:
    m = cnn(0)
    w = weights(m)["fc2.weight"]
    hard, records = harden(m, [MuLawMap(255, rescale)])
    w2 = weights(hard)["fc2.weight"]
    s = np.max(np.abs(w))
    expected = s * quant.mu_law(w / s, 255) if rescale else quant.mu_law(w / s, 255)
    np.testing.assert_allclose(w2, expected, rtol=1e-6)
    assert np.max(np.abs(w2)) == pytest.approx(s if max_after == "same" else 1.0, rel=1e-6)
    (r,) = records
    assert (r.tensor, r.pass_kind, r.mu, r.bits) == ("fc2.weight", "mulaw", 255.0, None)
    assert r.max_abs_delta == pytest.approx(float(np.max(np.abs(w2 - w))))


def test_mu_zero_is_recorded_no_op() -> None:
    m = cnn(0)
    hard, (r,) = harden(m, [MuLawMap(0)])
    assert r.max_abs_delta == 0 and r.mu == 0
    np.testing.assert_array_equal(weights(hard)["fc2.weight"], weights(m)["fc2.weight"])


@pytest.mark.parametrize("biases", [False, True], ids=["weights-only", "with-biases"])
def test_biases_untouched_unless_asked(biases: bool) -> None:
    m = cnn(0)
    hard, records = harden(m, [WeightQuant(2, biases=biases)])
    changed = [n for n, v in weights(m).items() if not np.array_equal(v, weights(hard)[n])]
    bias_changed = sorted(n for n in changed if n.endswith(".bias"))
    assert bias_changed == (["conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias"] if biases else [])
    assert {r.role for r in records} == ({"weight", "bias"} if biases else {"weight"})


@pytest.mark.parametrize("model", [cnn(0, bn=True), mlp_matmul(0, dynamo_reshape=True)],
                         ids=["bn-params", "dynamo-int64-shape"])
def test_non_weight_initializers_untouched(model: onnx.ModelProto) -> None:
    hard, records = harden(model, [MuLawMap(255, layers="all"), WeightQuant(3, "channel")], "qdq")
    after = graph.initializer_map(hard)
    touched = {r.tensor for r in records}
    for t in model.graph.initializer:
        if t.name not in touched:
            assert after[t.name] == t, t.name


@pytest.mark.parametrize("gran", list(Granularity), ids=lambda g: g.value)
def test_records_levels_and_scales(gran: Granularity) -> None:
    hard, records = harden(cnn(0), [WeightQuant(3, gran)], "qdq")
    assert len(records) == 4
    for r in records:
        assert r.bits == 3 and r.encoding == "qdq" and not r.folded_bn
        if gran is Granularity.CHANNEL:
            assert r.levels_per_channel is not None and r.levels_per_channel <= 7
            assert len(r.scale) == r.shape[r.axis or 0]
        else:
            assert r.levels <= 7 and len(r.scale) == 1
        assert r.max_abs_delta <= max(r.scale) / 2 * (1 + 1e-6)


def test_order_mulaw_then_quant_is_what_runs() -> None:
    m = cnn(0)
    hard, records = harden(m, [MuLawMap(255), WeightQuant(3, layers="last:1")])
    w = weights(m)["fc2.weight"]
    s = np.max(np.abs(w))
    expected = quant.quantize(s * quant.mu_law(w / s, 255), 3).values
    np.testing.assert_array_equal(weights(hard)["fc2.weight"], expected)
    assert [r.pass_kind for r in records] == ["mulaw", "quant"]


def test_provenance_replays_to_identical_bytes(tmp_path: Path) -> None:
    m = cnn(0)
    hard, _ = harden(m, [MuLawMap(100, False, "fc*"), WeightQuant(3, "channel", "mse")], "int4")
    (recipe,) = recipes_of(hard)
    again, _ = harden(m, recipe.passes, recipe.encoding)
    assert graph.model_to_bytes(again) == graph.model_to_bytes(hard)
    meta = json.dumps(graph.get_metadata(hard))
    assert str(tmp_path.parent) not in meta and "/tmp" not in meta and "time" not in meta


def test_second_harden_appends_a_step() -> None:
    first, _ = harden(cnn(0), [MuLawMap(255)])
    second, _ = harden(first, [WeightQuant(3)], "qdq")
    steps = json.loads(graph.get_metadata(second)[META_STEPS])
    assert [s["passes"][0]["kind"] for s in steps] == ["mulaw", "quant"]


def test_toml_recipe(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('encoding = "qdq"\n[[passes]]\nkind = "mulaw"\nmu = 255\nlayers = "last:1"\n'
                    '[[passes]]\nkind = "quant"\nbits = 3\ngranularity = "channel"\n')
    assert load_recipe(path) == Recipe(
        (MuLawMap(255.0, True, "last:1"), WeightQuant(3, Granularity.CHANNEL)), "qdq")


def test_bits_sweep_uses_the_given_evaluator() -> None:
    m = cnn(0)
    x = inputs(0, (64, 1, 8, 8))
    ref = ort_logits(m, x).argmax(1)
    seen: list[int] = []

    def agreement(model: onnx.ModelProto) -> float:
        seen.append(len(model.metadata_props))
        return float(np.mean(ort_logits(model, x).argmax(1) == ref))

    result = bits_sweep(m, evaluate=agreement)
    assert [b for b, _ in result] == list(range(1, 9)) and len(seen) == 8
    assert result[-1][1] >= 0.9 and all(0 <= a <= 1 for _, a in result)


# ---- CLI

def _cli_harden(src: Path, dst: Path, *extra: str) -> int:
    return cli.main(["harden", str(src), "-o", str(dst), "--quiet", *extra])


def test_cli_harden_twice_is_byte_identical_and_inspect(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = graph.save_model(cnn(0), tmp_path / "m.onnx")
    opts = ["--mulaw", "255", "--bits", "3", "--granularity", "channel", "--encoding", "int4"]
    assert _cli_harden(src, tmp_path / "a.onnx", *opts) == 0
    assert _cli_harden(src, tmp_path / "b.onnx", *opts) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    capsys.readouterr()
    assert cli.main(["inspect", str(tmp_path / "a.onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["levels_per_channel"] <= 7 for r in info["layers"]] == [True] * 4
    assert {r["bits"] for r in info["layers"]} == {3}
    assert info["provenance"]["steps"][0]["encoding"] == "int4"
    assert cli.main(["inspect", str(tmp_path / "a.onnx")]) == 0
    assert "harden step 1" in capsys.readouterr().out


def test_cli_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = graph.save_model(cnn(0), tmp_path / "m.onnx")
    before = src.stat().st_size
    assert _cli_harden(src, src, "--bits", "3", "--in-place") == 0
    assert describe_model(graph.load_model(src))["layers"][0]["bits"] == 3
    # the input size is the file before it was replaced, not the new file's again
    assert f"({src.stat().st_size:,} bytes; input {before:,} bytes)" in capsys.readouterr().out
    assert src.stat().st_size != before


def test_cli_recipe_equals_options(tmp_path: Path) -> None:
    src = graph.save_model(cnn(0), tmp_path / "m.onnx")
    (tmp_path / "r.toml").write_text('encoding = "qdq"\n[[passes]]\nkind = "quant"\nbits = 4\n')
    assert _cli_harden(src, tmp_path / "a.onnx", "--recipe", str(tmp_path / "r.toml")) == 0
    assert _cli_harden(src, tmp_path / "b.onnx", "--bits", "4", "--encoding", "qdq") == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize(("model", "axes"), [
    (cnn(0), [0, 0, 0, 0]), (cnn(0, trans_b=0), [0, 0, 1, 1]),
    (conv_transpose_net(0), [1, 0]), (mlp_matmul(0), [1, 1]),
    (mlp_matmul(0, transpose=True), [0, 1]),
], ids=["conv-gemmT", "gemm-transB0", "convtranspose", "matmul", "matmul-behind-transpose"])
def test_per_channel_axis_follows_consumer(model: onnx.ModelProto, axes: list[int]) -> None:
    _, records = harden(model, [WeightQuant(3, "channel")])
    assert [r.axis for r in records] == axes  # stored-tensor axis of the consumer's channels
    for r in records:
        assert len(r.scale) == r.shape[r.axis or 0]
        assert r.levels_per_channel is not None and 1 <= r.levels_per_channel <= 7


@pytest.mark.parametrize(("c", "hw", "layers", "noted"), [
    (3, 32, "last:1", True), (3, 32, "last:3", False), (1, 28, "last:1", False)],
    ids=["cifar-last1", "cifar-last3", "mnist-last1"])
def test_mulaw_on_the_last_layer_of_a_cifar_model_points_to_the_cifar_selection(
        tmp_path: Path, c: int, hw: int, layers: str, noted: bool) -> None:
    src = graph.save_model(cnn(0, c=c, hw=hw), tmp_path / "m.onnx")
    result = harden_file(src, tmp_path / "h.onnx",
                         Recipe((MuLawMap(255.0, layers=layers), WeightQuant(3))))
    assert any("--mulaw-layers last:3" in n for n in result.notes) == noted


def test_cli_input_size_counts_external_data(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A model whose weights live in an external-data file: its input size is both files, as
    check's size threshold counts it, not the few bytes of the graph."""
    from qrdeploy.graphio.prevalidate import file_bytes

    src = graph.save_model(cnn(0), tmp_path / "ext.onnx", external_data=True)
    total = file_bytes(src)
    assert total > src.stat().st_size  # the weights are in the other file
    assert _cli_harden(src, tmp_path / "h.onnx", "--bits", "3") == 0
    assert f"input {total:,} bytes)" in capsys.readouterr().out
