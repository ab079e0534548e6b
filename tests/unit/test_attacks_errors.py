"""Error paths of the attacks and of TorchModel: one-line ConfigError / DataError messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks import BIM, CWL2, FGSM, L2PGD, MIM, PGD, GaussianNoise, UniformNoise
from qrdeploy.core.losses import Loss
from qrdeploy.errors import ConfigError, DataError


class Flat:
    """A 3-class linear model over 4 pixels (numpy)."""

    num_classes = 3
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ self.w.T

    def vjp(self, x: np.ndarray, cot: np.ndarray) -> Any:
        return self.logits(x), np.zeros_like(x)

    def loss_and_grad(
        self, x: np.ndarray, y: np.ndarray, loss: Loss, temperature: Any = 1.0
    ) -> Any:
        return self.logits(x), np.zeros(len(x)), np.zeros_like(x)


X = np.full((2, 1, 2, 2), 0.5, np.float32)
Y = np.array([0, 2])

CONFIGS: list[tuple[str, Callable[[], Any], str]] = [
    ("eps-negative", lambda: FGSM(eps=-0.1), r"FGSM: eps must be a number in \[0, 1\].*got -0.1"),
    ("eps-above-1", lambda: PGD(eps=1.5), r"PGD: eps must be a number in \[0, 1\].*got 1.5"),
    ("eps-nan", lambda: BIM(eps=float("nan")), r"BIM: eps must be a number"),
    ("eps-string", lambda: MIM(eps="0.3"), r"MIM: eps must be a number.*got '0.3'"),
    ("steps-0", lambda: PGD(steps=0), r"PGD: steps must be an integer >= 1, got 0"),
    ("steps-float", lambda: BIM(steps=2.5), r"BIM: steps must be an integer >= 1, got 2.5"),
    ("step-0", lambda: BIM(step=0.0), r"BIM: step must be a finite number > 0, got 0.0"),
    ("step-negative", lambda: MIM(step=-0.01), r"MIM: step must be a finite number > 0"),
    ("restarts-0", lambda: PGD(restarts=0), r"PGD: restarts must be an integer >= 1, got 0"),
    ("decay-negative", lambda: MIM(decay=-1.0), r"MIM: decay must be a finite number >= 0"),
    ("loss-unknown", lambda: PGD(loss="mse"), r"PGD: loss must be one of ce, cw, dlr, ce-t"),
    ("temperature-ignored", lambda: PGD(temperature=10.0), r"temperature=10.0 has no effect"),
    ("temperature-0", lambda: FGSM(loss="ce-t", temperature=0.0), r"temperature must be"),
    ("l2-eps-negative", lambda: L2PGD(eps=-1.0), r"L2PGD: eps must be a number >= 0, got -1.0"),
    ("l2-step-0", lambda: L2PGD(step=0), r"L2PGD: step must be a finite number > 0, got 0"),
    ("l2-restarts-0", lambda: L2PGD(restarts=0), r"L2PGD: restarts must be an integer >= 1"),
    ("cw-confidence", lambda: CWL2(confidence=-1.0), r"CWL2: confidence must be a number >= 0"),
    ("cw-lr", lambda: CWL2(learning_rate=0.0), r"CWL2: learning_rate must be a finite number > 0"),
    ("cw-const", lambda: CWL2(initial_const=-1.0), r"CWL2: initial_const must be a finite"),
    ("cw-search", lambda: CWL2(binary_search_steps=0), r"CWL2: binary_search_steps must be an"),
    ("cw-iterations", lambda: CWL2(max_iterations=0), r"CWL2: max_iterations must be an integer"),
    (
        "sigma-above-1",
        lambda: GaussianNoise(sigma=1.5),
        r"GaussianNoise: sigma must be a number in",
    ),
    (
        "bound-negative",
        lambda: UniformNoise(bound=-0.1),
        r"UniformNoise: bound must be a number in",
    ),
    (
        "draws-0",
        lambda: UniformNoise(draws=0),
        r"UniformNoise: draws must be an integer >= 1, got 0",
    ),
]


@pytest.mark.parametrize(("make", "match"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_settings_raise_config_error(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def _with(**kw: Any) -> dict[str, Any]:
    return {"x": X, "y": Y, "seed": 0, "indices": None, **kw}


CALLS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("x-3d", _with(x=X[:, 0]), DataError, r"x must be a non-empty \(N, C, H, W\).*\(2, 2, 2\)"),
    ("x-empty", _with(x=X[:0], y=Y[:0]), DataError, r"non-empty \(N, C, H, W\)"),
    ("x-uint8", _with(x=(X * 255).astype(np.uint8)), DataError, r"floating point.*uint8"),
    ("x-above-1", _with(x=X * 3), DataError, r"x must lie in \[0, 1\].*1.5"),
    ("x-nan", _with(x=X * np.nan), DataError, r"x must lie in \[0, 1\]"),
    ("y-one-hot", _with(y=np.eye(3)[Y]), DataError, r"y must be 2 integer labels.*\(2, 3\)"),
    ("y-float", _with(y=Y.astype(np.float32)), DataError, r"y must be 2 integer labels.*float32"),
    ("y-length", _with(y=Y[:1]), DataError, r"y must be 2 integer labels"),
    ("label-too-big", _with(y=np.array([0, 3])), DataError, r"lie in \[0, 2\].*got \[0, 3\]"),
    ("label-negative", _with(y=np.array([-1, 0])), DataError, r"labels must lie in \[0, 2\]"),
    ("indices-length", _with(indices=[0]), DataError, r"indices must be 2 non-negative integers"),
    ("indices-negative", _with(indices=[0, -4]), DataError, r"indices must be 2 non-negative"),
    ("seed-negative", _with(seed=-1), ConfigError, r"seed must be an integer in \[0, 2\*\*64\)"),
    ("seed-float", _with(seed=1.5), ConfigError, r"seed must be an integer"),
]


ATTACKS = [FGSM(), PGD(steps=2), L2PGD(steps=2), CWL2(max_iterations=2), GaussianNoise()]


@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
@pytest.mark.parametrize(("kw", "exc", "match"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_bad_data_raises(attack: Any, kw: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match) as err:
        attack(Flat(), kw["x"], kw["y"], seed=kw["seed"], indices=kw["indices"])
    assert "\n" not in str(err.value)


def test_torch_model_errors() -> None:
    torch = pytest.importorskip("torch")
    from qrdeploy.model.torchmodel import TorchModel

    with pytest.raises(ConfigError, match=r"num_classes must be an integer >= 2, got 1"):
        TorchModel(torch.nn.Flatten(), 1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(DataError, match=r"logits of shape \(2, 2\).*expected \(2, 3\)"):
        TorchModel(net, 3).logits(torch.tensor(X))
    with pytest.raises(ConfigError, match=r"DLR loss needs at least 3 classes, got 2"):
        TorchModel(net, 2).loss_and_grad(torch.tensor(X), torch.tensor([0, 1]), Loss.DLR)
