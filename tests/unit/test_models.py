"""TorchModel against the float64 reference losses; the protocol module imports without torch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from qrdeploy.core.losses import Loss, loss_value_and_cotangent
from qrdeploy.model.protocol import Classifier, Differentiable
from qrdeploy.model.torchmodel import TorchModel
from tests.unit.attack_models import one_torch_thread

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


K = 5


def _conv_net() -> Any:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 3 * 3, K),
    )
    return net.double().eval()


def _batch(n: int = 6) -> tuple[Any, Any]:
    r = np.random.default_rng(1)
    x = torch.tensor(r.uniform(size=(n, 1, 6, 6)))  # (N, C, H, W) float64
    return x, torch.tensor(r.integers(0, K, n))


TEMPS = [1.0, 10.0, np.linspace(0.5, 20.0, 6)]
CASES = [(loss, t) for loss in Loss for t in (TEMPS if loss is Loss.CE_T else [1.0])]


def _id(case: Any) -> str:
    loss, t = case
    return f"{loss.value}-T{'vec' if isinstance(t, np.ndarray) else t}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_loss_and_grad_match_reference(case: Any) -> None:
    loss, t = case
    model, (x, y) = TorchModel(_conv_net(), K), _batch()
    temp = torch.tensor(t) if isinstance(t, np.ndarray) else t
    z, value, grad = model.loss_and_grad(x, y, loss, temp)
    ref_value, ref_cot = loss_value_and_cotangent(z.numpy(), y.numpy(), loss, t)
    np.testing.assert_allclose(value.numpy(), ref_value, rtol=1e-10, atol=1e-12)
    _, ref_grad = model.vjp(x, torch.tensor(ref_cot))
    np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-9, atol=1e-12)
    assert np.abs(grad.numpy()).max() > 0


def test_vjp_of_a_linear_model_is_cotangent_times_weights() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, K)).double()
    x, _ = _batch()
    cot = torch.tensor(np.random.default_rng(2).normal(size=(6, K)))
    z, g = TorchModel(net, K).vjp(x, cot)
    w = net[1].weight.detach().numpy()
    np.testing.assert_allclose(g.numpy(), (cot.numpy() @ w).reshape(x.shape), rtol=1e-12)
    b = net[1].bias.detach().numpy()
    np.testing.assert_allclose(z.numpy(), x.reshape(6, -1).numpy() @ w.T + b, rtol=1e-12)


def test_logits_and_gradients_leave_no_trace() -> None:
    net = _conv_net()
    model, (x, y) = TorchModel(net, K), _batch()
    z = model.logits(x)
    _, _, g = model.loss_and_grad(x, y, Loss.CE)
    assert not z.requires_grad and not g.requires_grad and not x.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert isinstance(model, Differentiable) and isinstance(model, Classifier)


def test_float32_module_keeps_float32() -> None:
    model, (x, y) = TorchModel(_conv_net().float(), K), _batch()
    z, value, g = model.loss_and_grad(x.float(), y, Loss.CW)
    assert (z.dtype, value.dtype, g.dtype) == (torch.float32,) * 3
    assert g.shape == x.shape and value.shape == (6,)


def test_protocol_modules_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import qrdeploy.model.protocol, qrdeploy.model.torchmodel, qrdeploy.attacks\n"
        "from qrdeploy.attacks import PGD\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
