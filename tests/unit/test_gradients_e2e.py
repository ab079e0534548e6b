"""End to end: torch-exported classifiers (mnist-cnn shape, a pre-activation ResNet with BN kept and
folded) and their weight encodings (int8 per-channel DequantizeLinear, INT4 at opset 21, codebook
Gather) run through OrtModel; vjp and every fused loss against torch float64 autograd."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qrdeploy.core.losses import Loss, loss_value_and_cotangent
from qrdeploy.core.runtime import SessionConfig
from qrdeploy.model.ortmodel import OrtModel

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
RTOL, COS = 1e-4, 1 - 1e-6


class MnistCnn(nn.Module):
    """The paper's 4-layer CNN shape: conv 5x5x32 SAME, pool, conv 5x5x64 SAME, pool, fc, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(3136, 1024)
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x: Any) -> Any:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 64, 7, 7)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))  # (N, 10)


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.short = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride > 1 else None

    def forward(self, x: Any) -> Any:
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (self.short(a) if self.short is not None else x)


class TinyResNet(nn.Module):
    """A small pre-activation ResNet (wrn-32-k shape, two blocks) with BN and a mean pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(PreActBlock(8, 8, 1), PreActBlock(8, 16, 2))
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Any) -> Any:
        x = F.relu(self.bn(self.blocks(self.stem(x))))  # (N, 16, 8, 8)
        return self.fc(x.mean(dim=(2, 3)))


def _build(cls: type, seed: int) -> Any:
    torch.manual_seed(seed)
    return _randomise_bn(cls().eval())


def _randomise_bn(module: Any) -> Any:
    for m in module.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return module


def _export(module: Any, shape: tuple[int, ...], keep_bn: bool = False,
            opset: int = 17) -> onnx.ModelProto:
    buf = io.BytesIO()
    kw: dict[str, Any] = {}
    if keep_bn:
        kw = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(1, *shape),), buf, dynamo=False,
                          opset_version=opset, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kw)
    return onnx.load_from_string(buf.getvalue())


def _last_gemm_weight(model: onnx.ModelProto) -> str:
    return [n for n in model.graph.node if n.op_type == "Gemm"][-1].input[1]


def _replace_weight(model: onnx.ModelProto, name: str, codes: onnx.TensorProto,
                    nodes: list[onnx.NodeProto], extra: list[onnx.TensorProto]) -> onnx.ModelProto:
    """The model with initializer `name` replaced by nodes computing it from `codes`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [t for t in out.graph.initializer if t.name != name]
    del out.graph.initializer[:]
    out.graph.initializer.extend([*keep, codes, *extra])
    for node in reversed(nodes):
        out.graph.node.insert(0, node)
    onnx.checker.check_model(out)
    return out


def _per_channel(w: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    scale = (np.abs(w).max(axis=1) / qmax).astype(np.float32)  # (K,)
    return np.clip(np.round(w / scale[:, None]), -qmax, qmax), scale


def qdq_int8(model: onnx.ModelProto) -> tuple[onnx.ModelProto, np.ndarray]:
    name = _last_gemm_weight(model)
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
    q, scale = _per_channel(w, 7)  # 3-bit codes in int8 storage
    dq = helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], [name], axis=0)
    extra = [numpy_helper.from_array(scale, "w_s"),
             numpy_helper.from_array(np.zeros(len(scale), np.int8), "w_zp")]
    codes = numpy_helper.from_array(q.astype(np.int8), "w_q")
    return _replace_weight(model, name, codes, [dq], extra), (q * scale[:, None])


def qdq_int4(model: onnx.ModelProto) -> tuple[onnx.ModelProto, np.ndarray]:
    model = onnx.version_converter.convert_version(model, 21)
    name = _last_gemm_weight(model)
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
    q, scale = _per_channel(w, 7)
    dq = helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], [name], axis=0)
    extra = [numpy_helper.from_array(scale, "w_s"),
             numpy_helper.from_array(np.zeros(len(scale), ml_dtypes.int4), "w_zp")]
    codes = numpy_helper.from_array(q.astype(ml_dtypes.int4), "w_q")
    return _replace_weight(model, name, codes, [dq], extra), (q * scale[:, None])


def codebook(model: onnx.ModelProto) -> tuple[onnx.ModelProto, np.ndarray]:
    """uint8 codes -> Cast(int64) -> Gather(codebook) -> Mul(scale), as the mu-law encoding."""
    name = _last_gemm_weight(model)
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
    book = np.linspace(-1, 1, 8).astype(np.float32) ** 3  # a nonlinear grid
    scale = np.float32(np.abs(w).max())
    codes = np.abs(w[..., None] / scale - book).argmin(axis=-1).astype(np.uint8)
    nodes = [helper.make_node("Cast", ["w_codes"], ["w_i64"], to=onnx.TensorProto.INT64),
             helper.make_node("Gather", ["w_book", "w_i64"], ["w_unit"], axis=0),
             helper.make_node("Mul", ["w_unit", "w_scale"], [name])]
    extra = [numpy_helper.from_array(book, "w_book"), numpy_helper.from_array(scale, "w_scale")]
    return (_replace_weight(model, name, numpy_helper.from_array(codes, "w_codes"), nodes, extra),
            book[codes] * scale)


def _with_weight(module: Any, w: np.ndarray) -> Any:
    clone = type(module)()
    clone.load_state_dict(module.state_dict())
    last = clone.fc2 if hasattr(clone, "fc2") else clone.fc
    last.weight.data = torch.tensor(w, dtype=torch.float32)
    return clone.eval()


ENCODINGS: dict[str, Callable[[onnx.ModelProto], tuple[onnx.ModelProto, np.ndarray]]] = {
    "qdq_int8_per_channel": qdq_int8, "int4_opset21": qdq_int4, "codebook": codebook}


@pytest.fixture(scope="module")
def mnist() -> tuple[Any, onnx.ModelProto]:
    module = _build(MnistCnn, 0)
    return module, _export(module, (1, 28, 28))


@pytest.fixture(scope="module")
def models(mnist: tuple[Any, onnx.ModelProto]) -> dict[str, tuple[Any, onnx.ModelProto]]:
    resnet = _build(TinyResNet, 1)
    out = {"mnist_cnn": mnist,
           "resnet_bn_kept": (resnet, _export(resnet, (3, 16, 16), keep_bn=True, opset=18)),
           "resnet_bn_folded": (resnet, _export(resnet, (3, 16, 16)))}
    for enc, fn in ENCODINGS.items():
        model, w = fn(mnist[1])
        out[f"mnist_{enc}"] = (_with_weight(mnist[0], w), model)
    return out


MODELS = ["mnist_cnn", "resnet_bn_kept", "resnet_bn_folded", *(f"mnist_{e}" for e in ENCODINGS)]


def _ref(module: Any, x: np.ndarray, cot_fn: Callable[[np.ndarray], np.ndarray]
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 torch: logits, the cotangent cot_fn(logits) and its input gradient."""
    m64 = copy.deepcopy(module).double().eval()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    z = m64(xt)  # (N, K)
    cot = cot_fn(z.detach().numpy())
    (z * torch.tensor(cot)).sum().backward()
    return z.detach().numpy(), cot, xt.grad.numpy()


def _assert_grad(g: np.ndarray, ref: np.ndarray) -> None:
    g64, r64 = g.reshape(len(g), -1).astype(np.float64), ref.reshape(len(ref), -1)
    norms = np.linalg.norm(r64, axis=1)
    assert np.all(norms > 0)
    assert (np.linalg.norm(g64 - r64, axis=1) / norms).max() <= RTOL
    assert ((g64 * r64).sum(axis=1) / (np.linalg.norm(g64, axis=1) * norms)).min() >= COS


def _x(shape: tuple[int, ...], n: int = 4) -> np.ndarray:
    return np.random.default_rng(3).random((n, *shape)).astype(np.float32)  # (N, C, H, W)


@pytest.mark.parametrize("name", MODELS, ids=MODELS)
def test_vjp_matches_torch(models: dict[str, tuple[Any, onnx.ModelProto]], name: str) -> None:
    module, model = models[name]
    om = OrtModel(model, SessionConfig("cpu"), batch_size=3)
    x = _x(om.prepared.input_shape)
    cot = np.random.default_rng(5).normal(size=(len(x), 10)).astype(np.float32)  # (N, K)
    z_ref, _, g_ref = _ref(module, x, lambda z: cot.astype(np.float64))
    z, g = om.vjp(x, cot)
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4)
    _assert_grad(g, g_ref)


@pytest.mark.parametrize("loss", list(Loss), ids=[lo.value for lo in Loss])
@pytest.mark.parametrize("name", MODELS, ids=MODELS)
def test_fused_loss_matches_torch(models: dict[str, tuple[Any, onnx.ModelProto]], name: str,
                                  loss: Loss) -> None:
    module, model = models[name]
    om = OrtModel(model, SessionConfig("cpu"), batch_size=3)
    x = _x(om.prepared.input_shape)
    y = np.array([3, 1, 4, 1])
    temp = np.array([0.5, 2.0, 3.0, 7.0])
    z_ref, _, g_ref = _ref(module, x, lambda z: loss_value_and_cotangent(z, y, loss, temp)[1])
    srt = np.sort(z_ref, axis=1)
    assert np.diff(srt, axis=1).min() > 1e-5, "tied logits make CW/DLR ill-defined"
    value_ref, _ = loss_value_and_cotangent(z_ref, y, loss, temp)
    z, value, g = om.loss_and_grad(x, y, loss, temp)
    np.testing.assert_allclose(value, value_ref, rtol=1e-4, atol=1e-5)
    _assert_grad(g, g_ref)


def test_bn_kept_and_folded_differ_in_graph(models: dict[str, tuple[Any, onnx.ModelProto]]
                                            ) -> None:
    def count(name: str) -> int:
        return sum(n.op_type == "BatchNormalization" for n in models[name][1].graph.node)

    assert count("resnet_bn_kept") == 5
    assert count("resnet_bn_folded") < count("resnet_bn_kept")


@pytest.mark.parametrize("name", [f"mnist_{e}" for e in ENCODINGS], ids=list(ENCODINGS))
def test_encoded_weights_are_folded(models: dict[str, tuple[Any, onnx.ModelProto]],
                                    name: str) -> None:
    om = OrtModel(models[name][1])
    ops = {n.op_type for n in om.prepared.model.graph.node}
    assert om.info["folded_nodes"] >= 1
    assert not ops & {"DequantizeLinear", "Gather", "Cast"}


def test_project_wrn_32_1_all_losses() -> None:
    """The project's own wrn-32-1 (per-image standardisation, LeakyRelu, BN kept) as export.py
    makes it; float64 torch is slow here, so 2 samples and one forward for all losses."""
    from qrdeploy.train import export, nets

    torch.manual_seed(2)
    net = _randomise_bn(nets.build_net("wrn-32-1").eval())
    om = OrtModel(export.export_module(net, (3, 32, 32), fold_bn=False), batch_size=1)
    x, y = _x((3, 32, 32), n=2), np.array([0, 5])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    z = net.double()(xt)  # (N, K)
    for loss in Loss:
        value_ref, cot = loss_value_and_cotangent(z.detach().numpy(), y, loss, 2.0)
        (g_ref,) = torch.autograd.grad(z, xt, torch.tensor(cot), retain_graph=True)
        _, value, g = om.loss_and_grad(x, y, loss, 2.0)
        np.testing.assert_allclose(value, value_ref, rtol=1e-4, atol=1e-5)
        _assert_grad(g, g_ref.numpy())
