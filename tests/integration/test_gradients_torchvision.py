"""End to end on torchvision architectures (random weights, 32x32 inputs, 10 classes), exported by
qrdeploy's exporter (TorchScript-based, opset 17, BN kept) and by torch's dynamo exporter (opset
20, BN folded by its optimizer): the onnxruntime gradient against torch float64 autograd on the
source module, also after `harden --bits 3` in the float, qdq and int4 encodings, and FGSM
through OrtModel against FGSM through TorchModel.

Reference for a hardened graph: the source module with the float weights each layer sees in the
hardened graph (qrdeploy.graphio.graph.layer_weight) loaded by name. The name is the original
initializer's, found through the consumer node (hardening keeps node names); for the dynamo
export, whose optimizer folded BN into the convs, the module is first conv-BN fused with torch.fx
so its parameters are the ones the graph holds. The dynamo exports take most of this file's time
(about 5 s for resnet18 and 12 s for mobilenet_v2 on an idle 2-core machine)."""

from __future__ import annotations

import copy
import functools
import hashlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest

from qrdeploy.attacks import FGSM
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.gradients.builder import Report, differentiability
from qrdeploy.graphio.graph import weight_layers
from qrdeploy.hardening.encodings import Encoding
from qrdeploy.hardening.passes import WeightQuant, harden
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.model.torchmodel import TorchModel
from qrdeploy.spectral.analysis import comparable, hardened_weight
from tests.unit.test_gradients_e2e import _assert_grad, _randomise_bn, _ref, _x

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

ARCHS = ("resnet18", "mobilenet_v2")
EXPORTERS = ("qrdeploy", "dynamo")
CHW = (3, 32, 32)
N = 2  # samples per check: float64 autograd of a deep net is the slow part


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """float64 autograd of these nets is 10x slower with 2 threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _source(arch: str) -> Any:
    torch.manual_seed(11)
    return _randomise_bn(getattr(torchvision.models, arch)(num_classes=10).eval())


@functools.cache
def _exported(arch: str, exporter: str) -> onnx.ModelProto:
    module = _source(arch)
    if exporter == "qrdeploy":
        from qrdeploy.train.export import export_module

        return export_module(module, CHW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (torch.zeros(1, *CHW),), dynamo=True, input_names=["input"],
            output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto


def _reference_module(arch: str, exporter: str) -> Any:
    """The source module in the parameterisation the exported graph holds."""
    module = copy.deepcopy(_source(arch))
    if exporter == "dynamo":
        from torch.fx.experimental.optimization import fuse

        module = fuse(module)
    return module.eval()


def _graph_weights(original: onnx.ModelProto, hardened: onnx.ModelProto
                   ) -> dict[str, np.ndarray]:
    """The float weight each layer of `hardened` sees, by the original initializer's name (read
    through the dequantized twin, so MatMulNBits layers of the nbits encoding count too)."""
    ref = {lyr.node_name: lyr for lyr in weight_layers(original)}
    twin = comparable(hardened)
    return {ref[h.node_name].weight_name: hardened_weight(twin, ref[h.node_name], h)
            for h in weight_layers(twin)}


_REFS: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}


def _reference(arch: str, exporter: str, weights: dict[str, np.ndarray] | None,
               x: np.ndarray, cot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 logits and vjp of the source module, with `weights` loaded (cached by content:
    the three encodings of one hardening give bit-identical weights, so one reference)."""
    digest = hashlib.sha256()
    for name, w in sorted((weights or {}).items()):
        digest.update(name.encode() + np.ascontiguousarray(w).tobytes())
    key = (arch, exporter, digest.hexdigest())
    if key not in _REFS:
        module = _source(arch) if weights is None else _reference_module(arch, exporter)
        if weights is not None:
            state = module.state_dict()
            missing = set(weights) - set(state)
            assert not missing, f"weights with no torch parameter: {sorted(missing)[:3]}"
            state.update({k: torch.tensor(w.reshape(state[k].shape)) for k, w in weights.items()})
            module.load_state_dict(state)
        z, _, g = _ref(module, x, lambda z: cot.astype(np.float64))
        _REFS[key] = (z, g)
    return _REFS[key]


def _check_vjp(arch: str, exporter: str, model: onnx.ModelProto,
               weights: dict[str, np.ndarray] | None = None) -> None:
    om = OrtModel(model, SessionConfig("cpu", threads=1), batch_size=N)
    x = _x(CHW, n=N)
    cot = np.random.default_rng(5).normal(size=(N, 10)).astype(np.float32)  # (N, K)
    z_ref, g_ref = _reference(arch, exporter, weights, x, cot)
    z, g = om.vjp(x, cot)
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4 * np.abs(z_ref).max())
    _assert_grad(g, g_ref)


CASES = [(a, e) for a in ARCHS for e in EXPORTERS]
IDS = [f"{a}-{e}" for a, e in CASES]


@pytest.mark.parametrize(("arch", "exporter"), CASES, ids=IDS)
def test_vjp_matches_torch(arch: str, exporter: str) -> None:
    model = _exported(arch, exporter)
    assert differentiability(model) == Report(True, [])
    _check_vjp(arch, exporter, model)


@pytest.mark.parametrize("encoding", list(Encoding), ids=[e.value for e in Encoding])
@pytest.mark.parametrize(("arch", "exporter"), CASES, ids=IDS)
def test_hardened_3bit_matches_torch(arch: str, exporter: str, encoding: Encoding) -> None:
    model = _exported(arch, exporter)
    hardened, records = harden(model, [WeightQuant(bits=3)], encoding)
    assert len(records) == len(weight_layers(model))
    weights = _graph_weights(model, hardened)
    assert len(weights) == len(records)
    _check_vjp(arch, exporter, hardened, weights)


@pytest.mark.parametrize(("arch", "exporter"), CASES[:2], ids=IDS[:2])
def test_fgsm_matches_torch(arch: str, exporter: str) -> None:
    x = _x(CHW, n=4)
    with torch.no_grad():  # the source's own predictions: clean accuracy 100%, so fooled flags
        y = _source(arch)(torch.tensor(x)).argmax(1).numpy()  # come from the step alone
    attack = FGSM(eps=4 / 255)
    om = OrtModel(_exported(arch, exporter), SessionConfig("cpu", threads=1), batch_size=4)
    ort_result = attack(om, x, y, seed=0)
    torch_result = attack(TorchModel(_source(arch), 10), torch.tensor(x), torch.tensor(y), seed=0)
    x_torch = torch_result.x_adv.numpy()
    differ = np.abs(ort_result.x_adv - x_torch) > 1e-6  # sign(g) may flip where g is ~0
    assert differ.mean() <= 1e-3, f"{differ.mean():.2e} of the pixels differ"
    assert np.abs(ort_result.x_adv - x).max() <= 4 / 255 + 1e-6
    np.testing.assert_array_equal(ort_result.fooled, np.asarray(torch_result.fooled))
    assert 0 < ort_result.fooled.sum() < len(x), "eps fools all or none: the check is vacuous"
