"""The deploy side on the project's wide ResNet-32 graphs (random weights, non-trivial BN
statistics), exported with BN kept and with BN folded: per-channel hardening, the Lipschitz
analysis with conv operator norms at each layer's input shape, the directional margins and the
check gate, on the embedded CIFAR-10 images. Gradients of the same graphs against torch are in
test_gradients_e2e.py (`test_project_wrn_32_1_all_losses`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qrdeploy.cli import main
from qrdeploy.data.datasets import load_dataset
from qrdeploy.graphio.graph import weight_layers
from qrdeploy.hardening.passes import MuLawMap, WeightQuant, describe_model, harden
from qrdeploy.hardening.quant import Granularity
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.spectral.analysis import LipschitzConfig, lipschitz_report

torch = pytest.importorskip("torch")

#: BN layers of wrn-32-1 as exported: all 31 kept, or the 16 that do not directly follow a conv
#: (the pre-activation BN of each unit and the final one) when folding.
BN_NODES = {"kept": 31, "folded": 16}


@pytest.fixture(scope="module")
def wrn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from qrdeploy.train.export import export_module
    from qrdeploy.train.nets import build_net
    from tests.unit.test_gradients_e2e import _randomise_bn

    torch.manual_seed(5)
    net = _randomise_bn(build_net("wrn-32-1").eval())
    folder = tmp_path_factory.mktemp("wrn")
    paths = {}
    for bn in BN_NODES:
        paths[bn] = folder / f"wrn-{bn}.onnx"
        onnx.save(export_module(net, (3, 32, 32), fold_bn=bn == "folded"), paths[bn])
    return paths


def _paper_passes() -> list[object]:
    return [MuLawMap(255.0, True, "last:3"), WeightQuant(3, Granularity.CHANNEL)]


@pytest.mark.parametrize("bn", list(BN_NODES))
def test_harden_per_channel_keeps_the_graph_and_quantizes_every_layer(wrn: dict[str, Path],
                                                                      bn: str) -> None:
    model = onnx.load(wrn[bn])
    hardened, _ = harden(model, _paper_passes(), "float")
    ops = [n.op_type for n in hardened.graph.node]
    assert ops == [n.op_type for n in model.graph.node]  # BN kept or folded as it was
    assert ops.count("BatchNormalization") == BN_NODES[bn]
    layers = describe_model(hardened)["layers"]
    assert len(layers) == 32  # conv0, 30 unit convs, fc
    assert all(2 <= lyr["levels_per_channel"] <= 7 for lyr in layers)
    records = describe_model(hardened)["provenance"]["records"]
    mapped = [r["node"] for r in records if r["pass_kind"] == "mulaw"]
    assert mapped == ["/units/units.14/conv1/Conv", "/units/units.14/conv2/Conv", "/fc/Gemm"]
    assert [r["levels_per_channel"] for r in records if r["pass_kind"] == "quant"] == \
        [lyr["levels_per_channel"] for lyr in layers]
    x = load_dataset("cifar10-10k", "test", n=8).x
    logits = OrtModel(hardened).logits(x)
    assert logits.shape == (8, 10) and np.isfinite(logits).all()


def test_lipschitz_measures_conv_operator_norms_at_their_input_shapes(
        wrn: dict[str, Path]) -> None:
    model = onnx.load(wrn["kept"])
    hardened, _ = harden(model, _paper_passes(), "float")
    x = load_dataset("cifar10-10k", "test", n=4).x
    config = LipschitzConfig(tol=1e-3, max_iter=60)  # Lanczos from below: loose is safe here
    report = lipschitz_report(model, hardened, x, config=config).to_json()
    convs = [lyr for lyr in report["layers"] if lyr["op_type"] == "Conv"]
    # stage inputs: the image, then 16 channels at 32x32, 32 at 16x16, 64 at 8x8; the first
    # conv of stages 2 and 3 (stride 2) sees the previous stage's shape
    shapes = [tuple(lyr["input_shape"]) for lyr in convs]
    assert shapes[0] == (3, 32, 32)
    assert shapes[1:11] == [(16, 32, 32)] * 10
    assert shapes[11] == (16, 32, 32) and shapes[12:21] == [(32, 16, 16)] * 9
    assert shapes[21] == (32, 16, 16) and shapes[22:] == [(64, 8, 8)] * 9
    for lyr in convs:
        for norms in (lyr["w"], lyr["dw"]):
            op = norms["operator"]["value"]
            assert op > 0
            if norms["fft_bound"] is not None:  # an upper bound of the operator norm
                assert op <= norms["fft_bound"] * (1 + 1e-3)
    assert [lyr["mulaw"] for lyr in report["layers"]] == [False] * 29 + [True] * 3
    assert all(lyr["amplification"] is not None for lyr in report["layers"])


def test_margins_run_on_the_wrn_graph(wrn: dict[str, Path]) -> None:
    from qrdeploy.margins.criteria import CriteriaConfig, margin_criteria

    test = load_dataset("cifar10-10k", "test", n=12)
    report = margin_criteria(OrtModel(onnx.load(wrn["kept"])), test,
                             CriteriaConfig(directions=8, top=4), seed=0).to_json()
    rows = {r["label"]: r for r in report["rows"]}
    assert rows["all"]["n"] == 12
    assert sum(r["n"] for label, r in rows.items() if label != "all") == 12


def test_check_gate_runs_on_the_wrn_graph(wrn: dict[str, Path], tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('version = 1\nuse_bound = "point"\n[clean]\nmax_drop = 0.0\n'
                      "min_agreement = 1.0\n")
    summary = tmp_path / "summary.json"
    assert main(["check", str(wrn["folded"]), "--reference", str(wrn["kept"]), "--data",
                 "cifar10-10k", "-n", "16", "--policy", str(policy), "-o", str(summary),
                 "-q"]) == 0  # the same weights with BN folded: same predictions
    assert summary.is_file()


def test_weight_layers_of_both_exports_match(wrn: dict[str, Path]) -> None:
    kept, folded = (weight_layers(onnx.load(wrn[bn])) for bn in ("kept", "folded"))
    assert [lyr.shape for lyr in kept] == [lyr.shape for lyr in folded]
    assert sum(lyr.folded_bn for lyr in folded) == 15 and not any(lyr.folded_bn for lyr in kept)
