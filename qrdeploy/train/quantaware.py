"""Quantization-aware training and Lipschitz control (torch).

`attach(model, bits, granularity)` makes every Conv2d and Linear weight go through the fake
quantizer of the harden pass (`qrdeploy harden --bits B`: symmetric, narrow range, max-abs scale
per tensor or per output channel, round half to even; qrdeploy.hardening.quant) with a
straight-through gradient, so the network trains as the graph that ships will compute. `bake`
replaces the latent weights by their quantized values: the checkpoint then holds weights that
`harden --bits B` maps onto themselves (the same scale, the same codes), so the exported and
hardened model is the network that was trained (tests/integration/test_quant_aware.py).

`attach_activations(model)` adds int8 activation QAT: uint8 asymmetric per-tensor fake
quantization (torch.ao.quantization.FakeQuantize, min-max observer; straight-through gradient
inside the range, zero outside) at every point where `harden --activations int8` puts a
QuantizeLinear in the MNIST/CIFAR networks' graphs: the input of each Conv2d and Linear (the
image, and each layer's output after its ReLU / pooling) and the logits. `calibrate` sets the
ranges as the harden pass's min-max calibration does, from clean images with the current weights
(the training loop calls it on the first 500 training images at the start of each epoch and
before each validation, the images and count `harden --calibrate 500` uses by default); between
calibrations the ranges are fixed. `detach_activations` removes it all before the checkpoint is
written, so the checkpoint is an ordinary float network and `harden --activations int8`
recalibrates the deployed graph itself.

`orthogonality(model)` is the Parseval regulariser (Cisse et al. 2017): Σ_l ‖W_l W_lᵀ − I‖²_F
over the weights reshaped to (out, in·k·k), on the smaller Gram side; `lipschitz_reg` (β) scales
it in the training loss. Keeping the layers near-orthogonal bounds each ‖W_l‖₂ near 1, which is
the paper's lever against the amplification of the quantization error (docs/method.md, section
7; Lin et al. 2019, Defensive Quantization).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MinMaxObserver
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

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


ACT_IN, ACT_OUT = "act_in_quant", "act_out_quant"  # submodule names on the layers
CALIBRATION_IMAGES = 500  # as harden --calibrate's default
HOOKS = "_qrdeploy_act_hooks"  # attribute of a layer: its activation hooks' handles


def _fake_quant() -> FakeQuantize:
    """onnxruntime's activation scheme in qrdeploy's integer graphs: uint8, asymmetric, per
    tensor, range from min-max calibration (zero always inside it)."""
    return FakeQuantize(  # type: ignore[no-untyped-call]
        observer=MinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine)


def _quant_input(m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    fq = getattr(m, ACT_IN)
    return (fq(args[0]), *args[1:])


def _quant_output(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor
                  ) -> torch.Tensor:
    quantized: torch.Tensor = getattr(m, ACT_OUT)(out)
    return quantized


def attach_activations(model: nn.Module) -> None:
    """Fake-quantize the input of every Conv2d / Linear and the last layer's output (the
    logits) in `model`'s forward pass; ranges unset until `calibrate`."""
    layers = quantized_layers(model)
    for m in layers:
        m.add_module(ACT_IN, _fake_quant())
        setattr(m, HOOKS, [m.register_forward_pre_hook(_quant_input)])
    layers[-1].add_module(ACT_OUT, _fake_quant())
    getattr(layers[-1], HOOKS).append(layers[-1].register_forward_hook(_quant_output))


def _fake_quants(model: nn.Module) -> Iterator[FakeQuantize]:
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            yield m


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, batch: int = 100) -> None:
    """Set every activation range from min-max over `images` (N, C, H, W) with the current
    weights, in eval mode, then freeze them."""
    was_training = model.training
    model.eval()
    for fq in _fake_quants(model):
        fq.activation_post_process.reset_min_max_vals()
        fq.enable_observer()
        fq.disable_fake_quant()  # ranges of the float activations, as onnxruntime's calibrator
    for i in range(0, len(images), batch):
        model(images[i:i + batch])
    for fq in _fake_quants(model):  # the last forward set scale and zero point from the range
        fq.disable_observer()
        fq.enable_fake_quant()
    model.train(was_training)


def has_activation_quant(model: nn.Module) -> bool:
    return any(True for _ in _fake_quants(model))


def detach_activations(model: nn.Module) -> None:
    """Remove the activation fake quantizers and their hooks: a plain float network again."""
    for m in quantized_layers(model):
        for name in (ACT_IN, ACT_OUT):
            if hasattr(m, name):
                delattr(m, name)
        handles: list[RemovableHandle] = getattr(m, HOOKS, [])
        for handle in handles:
            handle.remove()
        if hasattr(m, HOOKS):
            delattr(m, HOOKS)


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
