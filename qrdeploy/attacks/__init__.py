"""Adversarial attacks written once against the model protocol (qrdeploy.model.protocol), for numpy
arrays (onnxruntime) and torch tensors alike. See docs/attacks.md.

>>> from qrdeploy.attacks import PGD
>>> result = PGD(eps=0.3, step=0.01, steps=40)(model, x, y, seed=0)   # result.fooled (N,)
"""

from __future__ import annotations

from qrdeploy.attacks.cw import CWL2
from qrdeploy.attacks.l2 import L2PGD
from qrdeploy.attacks.linf import BIM, FGSM, MIM, PGD
from qrdeploy.attacks.loop import LoopSpec, Norm, run_loop
from qrdeploy.attacks.noise import GaussianNoise, NoiseResult, UniformNoise
from qrdeploy.attacks.result import AttackResult

__all__ = [
    "BIM",
    "CWL2",
    "FGSM",
    "L2PGD",
    "MIM",
    "PGD",
    "AttackResult",
    "GaussianNoise",
    "LoopSpec",
    "NoiseResult",
    "Norm",
    "UniformNoise",
    "run_loop",
]
