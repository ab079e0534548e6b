"""Tiny models and a fixed linear problem shared by the attack tests (numpy and torch)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import numpy as np

from qrdeploy.core.losses import Loss, loss_value_and_cotangent

N, SHAPE, K = 12, (1, 3, 4), 4
ATOL = 6e-8  # eps and x + eps are rounded to float32: |delta| <= eps up to half an ulp of 1.0


class NumpyLinear:
    """z = W x + b on numpy arrays; gradients from the float64 reference losses."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        self.w, self.b, self.num_classes = w, b, w.shape[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1).astype(np.float64) @ self.w.T + self.b).astype(np.float32)

    def vjp(self, x: np.ndarray, cot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.logits(x), (cot @ self.w).reshape(x.shape).astype(np.float32)

    def loss_and_grad(
        self, x: np.ndarray, y: np.ndarray, loss: Loss, temperature: Any = 1.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = self.logits(x)
        value, cot = loss_value_and_cotangent(z, y, loss, temperature)
        return z, value, (cot @ self.w).reshape(x.shape).astype(np.float32)


class Scripted:
    """A model whose gradients follow a script and whose logits never change (never fooled)."""

    num_classes = 2

    def __init__(self, grads: list[np.ndarray]) -> None:
        self.grads, self.calls = grads, 0

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[1.0, 0.0]], np.float32), (len(x), 1))  # label 0 always wins

    def loss_and_grad(
        self, x: np.ndarray, y: np.ndarray, loss: Loss, temperature: Any = 1.0
    ) -> Any:
        g = self.grads[min(self.calls, len(self.grads) - 1)]
        self.calls += 1
        return self.logits(x), np.zeros(len(x)), np.broadcast_to(g, x.shape).astype(np.float32)


class Threshold:
    """Fooled iff pixel (0, 0, 0) exceeds t; gradient exactly zero (a fully masked model)."""

    num_classes = 2

    def __init__(self, t: float) -> None:
        self.t = t

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.stack([np.zeros(len(x)), x[:, 0, 0, 0] - self.t], axis=1).astype(np.float32)

    def loss_and_grad(
        self, x: np.ndarray, y: np.ndarray, loss: Loss, temperature: Any = 1.0
    ) -> Any:
        return self.logits(x), np.zeros(len(x)), np.zeros_like(x)


def linear_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    w, b = r.normal(size=(K, int(np.prod(SHAPE)))), r.normal(size=K)
    x = r.uniform(size=(N, *SHAPE)).astype(np.float32)  # (N, C, H, W)
    x[0, 0, 0, :2], x[1, 0, 0, :2] = 0.0, 1.0  # pixels on the box edges
    return w, b, x, r.integers(0, K, N)


def torch_linear(w: np.ndarray, b: np.ndarray) -> Any:
    import torch

    from qrdeploy.model.torchmodel import TorchModel

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(w.shape[1], w.shape[0]))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(w))
        net[1].bias.copy_(torch.tensor(b))
    return TorchModel(net.eval(), w.shape[0])


def run(attack: Any, backend: str, seed: int = 0, **kw: Any) -> tuple[np.ndarray, Any]:
    """Run `attack` on the fixed linear problem; return (x, result) with x_adv as numpy."""
    w, b, x, y = linear_problem()
    if backend == "numpy":
        return x, attack(NumpyLinear(w, b), x, y, seed=seed, **kw)
    import torch

    res = attack(torch_linear(w, b), torch.tensor(x), torch.tensor(y), seed=seed, **kw)
    return x, res


def to_np(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded, then restore: on this 2-core machine under load, tiny ops in a
    2-thread pool wait ~15 ms each for a core (measured), which made the CW tests take 20 s."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
