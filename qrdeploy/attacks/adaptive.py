"""The `adaptive` suite as data: named, configured attacks that the runner iterates.

Each entry is an `AdaptiveAttack`: a name (the report column), an attack config, how the victim
is wrapped (temperature.py), and its role: a gradient attack on the victim, a query-only attack
on the victim, or a transfer attack crafted on the model before hardening and scored on the
victim. Every entry is called like an attack, `entry(model, x, y, seed=, indices=, source=)`,
and returns an AttackResult scored on the victim's forward pass.

| name        | attack                                                | why                        |
|-------------|-------------------------------------------------------|----------------------------|
| pgd-cw      | PGD, CW margin loss                                   | no softmax, scale-free     |
| apgd-ce     | APGD, cross-entropy                                   | AutoAttack's first attack  |
| apgd-dlr    | APGD, DLR (shift and scale invariant)                 | AutoAttack                 |
| apgd-t-dlr  | APGD, targeted DLR over the top-9 other classes       | AutoAttack                 |
| pgd-ce-t10  | PGD, CE of z / 10                                     | docs/method.md section 10  |
| pgd-ce-t100 | PGD, CE of z / 100                                    | docs/method.md section 10  |
| pgd-njs     | PGD, CE of z / T(x), Gupta & Ajanthan NJS temperature | G&A 2020                   |
| pgd-f64     | PGD, CE with a float64 unit-max cotangent             | removes softmax underflow  |
| square      | Square, 5,000 queries, logits only                    | gradient-free              |
| transfer    | PGD-CW crafted on the unhardened model                | near-perfect surrogate     |
| square-twin | Square on the float-activation twin, scored on victim | quantized outputs stall it |

`square-twin` is for integer graphs only (activations quantized at run time; `integer=True`):
their logits move in steps of the output quantizer, so Square, which keeps a candidate only on a
strict improvement, can stall on a plateau; the twin (the same weights, activations not rounded,
qrdeploy.graphio.twin) has no plateaus, and its examples are scored on the deployed graph.

Budgets are qrdeploy [DEFAULT]s: 100 iterations for PGD and APGD (AutoAttack's), PGD step
2.5 eps / steps (Madry et al.'s rule), 1 restart; eps is the family's iterative-attack eps
(MNIST 0.1, CIFAR-10 4/255, as the paper columns in qrdeploy.evaluation.suites).

>>> for entry in adaptive_suite(eps=0.1):
...     res = entry(victim, x, y, seed=0, indices=idx, source=unhardened)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

import numpy as np

from qrdeploy.attacks.apgd import APGD
from qrdeploy.attacks.checks import check_batch
from qrdeploy.attacks.linf import PGD
from qrdeploy.attacks.result import AttackResult
from qrdeploy.attacks.square import Square
from qrdeploy.attacks.temperature import Float64Cotangent, NJSModel
from qrdeploy.core.arrays import Array, to_numpy
from qrdeploy.core.losses import Loss
from qrdeploy.errors import ConfigError
from qrdeploy.model.protocol import Twinned

AdaptiveConfig: TypeAlias = PGD | APGD | Square


class Wrap(StrEnum):
    """How the victim is wrapped before the attack sees it (qrdeploy.attacks.temperature)."""

    NONE = "none"
    FLOAT64 = "float64-cotangent"
    NJS = "njs"


class Role(StrEnum):
    WHITE = "white"  # gradients of the victim
    QUERY = "query"  # the victim's logits only
    TRANSFER = "transfer"  # crafted on the unhardened source, scored on the victim
    TWIN = "twin"  # crafted on the victim's float-activation twin, scored on the victim


@dataclass(frozen=True)
class AdaptiveAttack:
    """One column of the adaptive suite."""

    name: str
    attack: AdaptiveConfig
    wrap: Wrap = Wrap.NONE
    role: Role = Role.WHITE

    @property
    def eps(self) -> float:
        return float(self.attack.eps)

    def describe(self, transfer_source: str = "the model before hardening") -> str:
        """The entry as a reader wants it: its attack's settings and how it reaches the victim
        (a transfer entry: crafted on `transfer_source`)."""
        how = {Role.WHITE: "gradients of the victim", Role.QUERY: "the victim's outputs only",
               Role.TRANSFER: f"crafted on {transfer_source}, scored on the victim",
               Role.TWIN: "crafted on the victim's float-activation twin, scored on the victim"}
        wrap = {Wrap.NONE: "", Wrap.FLOAT64: ", float64 cotangent",
                Wrap.NJS: ", NJS rescaled logits"}
        return f"{self.attack.describe()} ({how[self.role]}{wrap[self.wrap]})"

    def cost(self) -> float:
        """Model evaluations per sample at most (progress estimates only)."""
        return self.attack.cost() * (2.0 if self.wrap is Wrap.NJS else 1.0)

    def __call__(
        self,
        model: Any,
        x: Array,
        y: Array,
        *,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
        source: Any = None,
    ) -> AttackResult:
        """Run the entry on the victim `model` (a Differentiable, or a Classifier for the query
        role, a Twinned model for the twin role); `source` (Differentiable, the model before
        hardening) is needed by the transfer role only."""
        attack = _fit_targets(self.attack, model.num_classes)
        if self.role is Role.TRANSFER:
            if source is None:
                raise ConfigError(
                    f"adaptive attack {self.name!r} crafts on the model before hardening; pass "
                    "source= (on the CLI: --source unhardened.onnx) or drop it from the suite"
                )
            crafted = attack(source, x, y, seed=seed, indices=indices)
            return score(model, crafted.x_adv, y)
        if self.role is Role.TWIN:
            twin = model.activation_twin() if isinstance(model, Twinned) else None
            if twin is None:
                raise ConfigError(
                    f"adaptive attack {self.name!r} needs a graph whose activations are "
                    "quantized at run time (an integer graph), and this model has none; drop "
                    "it from --attacks"
                )
            if not isinstance(attack, Square):
                raise ConfigError(f"adaptive attack {self.name!r}: the twin role runs Square "
                                  "(the twin gives logits only), not "
                                  f"{type(attack).__name__}")
            crafted = attack(twin, x, y, seed=seed, indices=indices)
            return score(model, crafted.x_adv, y)
        victim = {Wrap.NONE: model, Wrap.FLOAT64: Float64Cotangent, Wrap.NJS: NJSModel}[self.wrap]
        if self.wrap is not Wrap.NONE:
            victim = victim(model)
        return attack(victim, x, y, seed=seed, indices=indices)


def _fit_targets(attack: AdaptiveConfig, num_classes: int) -> AdaptiveConfig:
    """Targeted APGD asks for at most K - 1 target classes."""
    if isinstance(attack, APGD) and attack.targets > num_classes - 1:
        return dataclasses.replace(attack, targets=num_classes - 1)
    return attack


def score(model: Any, x_adv: Array, y: Array) -> AttackResult:
    """Score examples crafted elsewhere on the victim's forward pass."""
    yh = check_batch(x_adv, y, model.num_classes)
    z = model.logits(x_adv)
    return AttackResult(x_adv=x_adv, logits=z, fooled=to_numpy(z).argmax(axis=1) != yh)


def adaptive_suite(
    eps: float,
    steps: int = 100,
    queries: int = 5000,
    targets: int = 9,
    temperatures: Sequence[float] = (10.0, 100.0),
    integer: bool = False,
) -> tuple[AdaptiveAttack, ...]:
    """The adaptive suite at one L-inf eps (see the module table); `integer` adds the entries
    for graphs that quantize activations at run time (square-twin)."""
    step = 2.5 * eps / steps if eps > 0 else 1.0

    def pgd(loss: Loss = Loss.CE, temperature: float = 1.0) -> PGD:
        return PGD(eps=eps, step=step, steps=steps, loss=loss, temperature=temperature)

    fixed = tuple(
        AdaptiveAttack(f"pgd-ce-t{t:g}", pgd(Loss.CE_T, float(t))) for t in temperatures
    )
    return (
        AdaptiveAttack("pgd-cw", pgd(Loss.CW)),
        AdaptiveAttack("apgd-ce", APGD(eps=eps, steps=steps, loss=Loss.CE)),
        AdaptiveAttack("apgd-dlr", APGD(eps=eps, steps=steps, loss=Loss.DLR)),
        AdaptiveAttack("apgd-t-dlr", APGD(eps=eps, steps=steps, loss=Loss.DLR, targets=targets)),
        *fixed,
        AdaptiveAttack("pgd-njs", pgd(Loss.CE_T), Wrap.NJS),
        AdaptiveAttack("pgd-f64", pgd(Loss.CE), Wrap.FLOAT64),
        AdaptiveAttack("square", Square(eps=eps, queries=queries), role=Role.QUERY),
        AdaptiveAttack("transfer", pgd(Loss.CW), role=Role.TRANSFER),
        *((AdaptiveAttack("square-twin", Square(eps=eps, queries=queries), role=Role.TWIN),)
          if integer else ()),
    )


#: The adaptive suite per data-set family, at the family's iterative-attack eps.
ADAPTIVE: dict[str, tuple[AdaptiveAttack, ...]] = {
    "mnist": adaptive_suite(0.1),
    "cifar10": adaptive_suite(4 / 255),
}
