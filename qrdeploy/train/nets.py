"""The paper's networks in PyTorch. Inputs are [0, 1] images; any normalisation lives inside.

- `mnist-cnn`: Madry's MNIST model, the paper's "4-layer CNN" (docs/method.md section 6):
  conv 5x5x32 SAME, ReLU, max-pool 2; conv 5x5x64 SAME, ReLU, max-pool 2; fc 3136->1024, ReLU; fc
  1024->10. Init as Madry's code: truncated normal std 0.1, biases 0.1.
- `wrn-32-k`: Madry's CIFAR-10 wide ResNet-32 with widen factor k (`wrn-32-10` is the paper's;
  `wrn-32-1` is CPU-sized): per-image standardisation, conv 3x3x16, 3 stages x 5 pre-activation
  units (BN, leaky-ReLU 0.1, conv) of widths 16k/32k/64k with strides 1/2/2, shortcut = average
  pool + channel zero-padding when the shape changes, BN, leaky-ReLU, global average pool, fc.
"""

from __future__ import annotations

import re
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from qrdeploy.errors import ConfigError

NETS = ("mnist-cnn", "wrn-32-1", "wrn-32-10")  # wrn-32-K accepts any K >= 1
INPUT_SHAPES = {"mnist-cnn": (1, 28, 28), "wrn": (3, 32, 32)}


class MnistCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        for m in (self.conv1, self.conv2, self.fc1, self.fc2):
            nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
            nn.init.constant_(m.bias, 0.1)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 64, 7, 7)
        x = F.relu(self.fc1(torch.flatten(x, 1)))  # (N, 1024)
        return cast("torch.Tensor", self.fc2(x))  # (N, K)


class PerImageStandardize(nn.Module):
    """tf.image.per_image_standardization: (x - mean) / max(std, 1/sqrt(numel)), per image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x[0].numel()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (x - mean) / torch.clamp(std, min=1.0 / n**0.5)


class PreActUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=0.1)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=0.1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn1(x), 0.1)
        out = self.conv2(F.leaky_relu(self.bn2(self.conv1(h)), 0.1))
        short = x
        if self.stride > 1:
            short = F.avg_pool2d(short, self.stride)
        if self.pad:
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return cast("torch.Tensor", out + short)


class WideResNet32(nn.Module):
    def __init__(self, widen: int, num_classes: int = 10) -> None:
        super().__init__()
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.std = PerImageStandardize()
        self.conv0 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        units: list[nn.Module] = []
        for stage, stride in enumerate((1, 2, 2)):
            for i in range(5):
                c_in = widths[stage] if i == 0 else widths[stage + 1]
                units.append(PreActUnit(c_in, widths[stage + 1], stride if i == 0 else 1))
        self.units = nn.Sequential(*units)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.units(self.conv0(self.std(x)))  # (N, 64k, 8, 8)
        h = F.leaky_relu(self.bn(h), 0.1).mean(dim=(2, 3))  # (N, 64k)
        return cast("torch.Tensor", self.fc(h))


def build_net(name: str, num_classes: int = 10, init: str = "madry") -> nn.Module:
    """A fresh network by name: mnist-cnn or wrn-32-K. init "madry" keeps the constructors' init
    (Madry's code); "torch" then re-initialises every layer with PyTorch's defaults."""
    net = _construct(name, num_classes)
    if init == "torch":
        for module in net.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not net and callable(reset):
                reset()
    elif init != "madry":
        raise ConfigError(f"init must be madry or torch, got {init!r}")
    return net


def _construct(name: str, num_classes: int) -> nn.Module:
    if name == "mnist-cnn":
        return MnistCNN(num_classes)
    m = re.fullmatch(r"wrn-32-(\d+)", name)
    if m and int(m.group(1)) >= 1:
        return WideResNet32(int(m.group(1)), num_classes)
    raise ConfigError(f"unknown net {name!r}; use mnist-cnn or wrn-32-K (e.g. wrn-32-1, wrn-32-10)")


def input_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) a net expects."""
    if name == "mnist-cnn":
        return INPUT_SHAPES["mnist-cnn"]
    if re.fullmatch(r"wrn-32-[1-9]\d*", name):
        return INPUT_SHAPES["wrn"]
    raise ConfigError(f"unknown net {name!r}; use mnist-cnn or wrn-32-K (e.g. wrn-32-1, wrn-32-10)")
