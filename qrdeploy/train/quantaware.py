"""Quantization-aware training and Lipschitz control (torch).

`attach(model, bits, granularity)` makes every Conv2d and Linear weight go through the fake
quantizer of the harden pass (`qrdeploy harden --bits B`: symmetric, narrow range, max-abs scale
per tensor or per output channel, round half to even; qrdeploy.hardening.quant) with a
straight-through gradient, so the network trains as the graph that ships will compute. `bake`
replaces the latent weights by their quantized values: the checkpoint then holds weights that
`harden --bits B` maps onto themselves (the same scale, the same codes), so the exported and
hardened model is the network that was trained (tests/integration/test_quant_aware.py).

`orthogonality(model)` is the Parseval regulariser (Cisse et al. 2017): Σ_l ‖W_l W_lᵀ − I‖²_F
over the weights reshaped to (out, in·k·k), on the smaller Gram side; `lipschitz_reg` (β) scales
it in the training loss. Keeping the layers near-orthogonal bounds each ‖W_l‖₂ near 1, which is
the paper's lever against the amplification of the quantization error (docs/method.md, section
7; Lin et al. 2019, Defensive Quantization).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from qrdeploy.hardening.quant import code_range

LAYERS = (nn.Conv2d, nn.Linear)


def fake_quantize(w: torch.Tensor, bits: int, per_channel: bool, narrow: bool = True
                  ) -> torch.Tensor:
    """The harden pass's uniform quantizer on w (out, ...), with an identity gradient."""
    qmin, qmax = code_range(bits, narrow)
    dims = tuple(range(1, w.ndim)) if per_channel else tuple(range(w.ndim))
    with torch.no_grad():
        hi = w.amax(dim=dims, keepdim=True).double()
        lo = w.amin(dim=dims, keepdim=True).double()
        scale = torch.maximum(hi / qmax, lo / qmin).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(w / scale), qmin, qmax) * scale  # round half to even
    return w + (q - w).detach()


class FakeQuant(nn.Module):
    """A parametrization: weight -> its fake-quantized value (straight-through)."""

    def __init__(self, bits: int, per_channel: bool) -> None:
        super().__init__()
        self.bits, self.per_channel = bits, per_channel

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.bits, self.per_channel)


def quantized_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, LAYERS)]


def attach(model: nn.Module, bits: int, granularity: str = "tensor") -> None:
    """Fake-quantize every Conv2d and Linear weight of `model` in its forward pass."""
    for m in quantized_layers(model):
        parametrize.register_parametrization(m, "weight", FakeQuant(bits, granularity == "channel"))


def bake(model: nn.Module) -> None:
    """Replace each fake-quantized weight by its quantized value (no parametrization left)."""
    for m in quantized_layers(model):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def latent(m: nn.Module) -> torch.Tensor:
    """The trained (float) weight of a layer, under any parametrization."""
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original  # type: ignore[union-attr,return-value]
    return m.weight  # type: ignore[return-value]


def orthogonality(model: nn.Module) -> torch.Tensor:
    """Σ_l ‖W Wᵀ − I‖²_F with W the weight reshaped to (out, in·k·k), Gram on the smaller side."""
    total = torch.zeros(())
    for m in quantized_layers(model):
        w = latent(m).reshape(latent(m).shape[0], -1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        total = total + ((gram - eye) ** 2).sum()
    return total
