"""A small deterministic victim for the adaptive-attack and masking tests: softmax regression on
mnist-5k pixels (trained once per test process, about 4 s), and the same model with its logits
multiplied by 1e4 (float32 softmax saturated: the CE input gradient is exactly 0)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

N_TEST = 200  # one point of accuracy is two samples
SCALE = 1e4


@functools.lru_cache(maxsize=1)
def mnist_linear() -> tuple[Any, np.ndarray, np.ndarray]:
    """(trained torch module, x_test (N_TEST, 1, 28, 28) float32, y_test (N_TEST,) int64)."""
    import torch

    from qrdeploy.data.datasets import load_dataset

    train, test = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test", n=N_TEST)
    assert train.y is not None and test.y is not None
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with torch.no_grad():
        net[1].weight.copy_(0.01 * torch.randn(10, 784, generator=gen))
        net[1].bias.zero_()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.tensor(train.x), torch.tensor(train.y)
    for _ in range(150):  # full batch: deterministic on one thread
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), test.x, test.y


@functools.lru_cache(maxsize=1)
def mnist_mlp() -> Any:
    """A 784-64-10 ReLU network trained on mnist-5k (full batch, 100 Adam steps; ~93% clean on
    the first N_TEST test digits): the nonlinear victim of the APGD-vs-PGD comparison."""
    import torch

    from qrdeploy.data.datasets import load_dataset

    train = load_dataset("mnist-5k", "train")
    assert train.y is not None
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.tensor(train.x), torch.tensor(train.y)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def scaled(module: Any, factor: float) -> Any:
    """module with its logits multiplied by factor (what an unrescaled μ-law layer does)."""
    import torch

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * factor

    return Scaled().eval()


def victims() -> tuple[Any, Any, Any, Any]:
    """(plain TorchModel, x1e4 TorchModel, x torch, y torch)."""
    import torch

    from qrdeploy.model.torchmodel import TorchModel

    net, x, y = mnist_linear()
    return (TorchModel(net, 10), TorchModel(scaled(net, SCALE), 10), torch.tensor(x),
            torch.tensor(y))


class LogitsOnly:
    """A Classifier with nothing but logits, counting the rows it is asked for."""

    def __init__(self, model: Any) -> None:
        self.model, self.num_classes, self.rows, self.calls = model, model.num_classes, 0, 0

    def logits(self, x: Any) -> Any:
        self.rows += int(x.shape[0])
        self.calls += 1
        return self.model.logits(x)
