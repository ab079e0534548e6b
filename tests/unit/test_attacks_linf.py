"""Properties of the one L-inf loop (FGSM, BIM, PGD, MIM) on numpy and torch inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from qrdeploy.attacks import BIM, CWL2, FGSM, L2PGD, MIM, PGD
from qrdeploy.attacks.loop import MIM_FLOOR
from qrdeploy.core import rng
from qrdeploy.core.losses import Loss
from qrdeploy.errors import ConfigError
from tests.unit.attack_models import (
    ATOL,
    SHAPE,
    K,
    N,
    NumpyLinear,
    Scripted,
    Threshold,
    linear_problem,
    one_torch_thread,
    run,
    to_np,
    torch_linear,
)

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


ATTACKS = [
    FGSM(eps=0.2),
    FGSM(eps=0.2, loss=Loss.CW),
    BIM(eps=0.2, step=0.05, steps=5),
    PGD(eps=0.2, step=0.05, steps=5, restarts=2),
    PGD(eps=0.2, step=0.05, steps=5, early_stop=False),
    # DLR is constant (gradient ~1e-15 noise) once y ranks third, i.e. after the sample is fooled
    PGD(eps=0.2, step=0.05, steps=5, loss=Loss.DLR),
    PGD(eps=0.2, step=0.05, steps=5, loss=Loss.CE_T, temperature=10.0),
    MIM(eps=0.2, step=0.05, steps=5),
]
BACKENDS = ["numpy", "torch"]


def _zero_eps(a: Any) -> Any:
    return dataclasses.replace(a, eps=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_eps_zero_returns_input(attack: Any, backend: str) -> None:
    x, res = run(_zero_eps(attack), backend)
    np.testing.assert_array_equal(to_np(res.x_adv), x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_perturbation_in_eps_ball_and_box(attack: Any, backend: str) -> None:
    x, res = run(attack, backend)
    assert to_np(res.x_adv).dtype == np.float32  # the input's dtype
    adv = to_np(res.x_adv).astype(np.float64)
    assert adv.shape == x.shape
    assert np.abs(adv - x).max() <= attack.eps + ATOL
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert np.abs(adv - x).max() > 0.5 * attack.eps  # the attack did move the inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_fooled_is_the_victims_verdict(attack: Any, backend: str) -> None:
    w, b, _, y = linear_problem()
    _, res = run(attack, backend)
    z = NumpyLinear(w, b).logits(to_np(res.x_adv))
    np.testing.assert_array_equal(res.fooled, z.argmax(1) != y)
    assert res.fooled.sum() > N // 2  # eps 0.2 on this problem fools most samples


@pytest.mark.parametrize("loss", [Loss.CE, Loss.CW], ids=lambda v: v.value)
def test_fgsm_linear_equals_closed_form(loss: Loss) -> None:
    w, b, x, y = linear_problem()
    z = x.reshape(N, -1).astype(np.float64) @ w.T + b  # (N, K)
    if loss is Loss.CE:
        p = np.exp(z - z.max(1, keepdims=True))
        cot = p / p.sum(1, keepdims=True) - np.eye(K)[y]  # dCE/dz
    else:
        other = np.where(np.eye(K)[y] > 0, -np.inf, z).argmax(1)
        cot = np.eye(K)[other] - np.eye(K)[y]  # d(z_j* - z_y)/dz
    expected = np.clip(x + 0.1 * np.sign(cot @ w).reshape(x.shape), 0, 1)
    res = FGSM(eps=0.1, loss=loss)(NumpyLinear(w, b), x, y)
    np.testing.assert_allclose(res.x_adv, expected, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "attack", [PGD(eps=0.2, step=0.02, steps=4, restarts=3), MIM(eps=0.2, step=0.03)], ids=repr
)
def test_same_seed_same_result_across_batch_sizes(attack: Any, backend: str) -> None:
    _, whole = run(attack, backend, seed=7)
    w, b, x, y = linear_problem()
    parts = []
    for lo in range(0, N, 5):
        sl = slice(lo, lo + 5)
        if backend == "numpy":
            parts.append(attack(NumpyLinear(w, b), x[sl], y[sl], seed=7, indices=range(N)[sl]))
        else:
            xt, yt = torch.tensor(x[sl]), torch.tensor(y[sl])
            parts.append(attack(torch_linear(w, b), xt, yt, seed=7, indices=range(N)[sl]))
    np.testing.assert_array_equal(
        np.concatenate([to_np(p.x_adv) for p in parts]), to_np(whole.x_adv)
    )


def test_seed_changes_the_random_start() -> None:
    attack = PGD(eps=0.2, step=0.01, steps=1, early_stop=False)
    _, a = run(attack, "numpy", seed=0)
    _, b = run(attack, "numpy", seed=1)
    _, c = run(attack, "numpy", seed=0)
    assert np.abs(a.x_adv - b.x_adv).max() > 0.05
    np.testing.assert_array_equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_numpy_and_torch_give_the_same_examples(attack: Any) -> None:
    _, a = run(attack, "numpy", seed=3)
    _, t = run(attack, "torch", seed=3)
    np.testing.assert_allclose(to_np(t.x_adv), a.x_adv, atol=1e-6)
    np.testing.assert_array_equal(t.fooled, a.fooled)


S = np.array([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0], np.float32).reshape(1, 1, 2, 4)
# Powers of two keep every normalisation exact: grad / mean|grad| is exactly +-S.
SCRIPT = [1024.0 * S, -(2.0**-10) * S, 0.0 * S]


@pytest.mark.parametrize(
    ("attack", "moves"),
    [
        (BIM(eps=0.5, step=0.1, steps=3), 0.0),  # +S, -S, then a zero gradient: zero step
        (MIM(eps=0.5, step=0.1, steps=3, decay=0.0), 0.0),  # decay 0 is BIM
        (MIM(eps=0.5, step=0.1, steps=3, decay=1.0), 0.1),  # m: S, S - S = 0, 0
        (MIM(eps=0.5, step=0.1, steps=3, decay=0.5), -0.1),  # m: S, -S/2, -S/4
        (MIM(eps=0.5, step=0.1, steps=3, decay=2.0), 0.3),  # m: S, S, 2S: momentum wins
    ],
    ids=repr,
)
def test_mim_decay_and_normalisation(attack: Any, moves: float) -> None:
    x = np.full((2, 1, 2, 4), 0.5, np.float32)
    res = attack(Scripted(SCRIPT), x, np.zeros(2, np.int64))
    np.testing.assert_allclose(res.x_adv - x, np.broadcast_to(moves * S, x.shape), atol=1e-7)


def test_mim_floor_keeps_tiny_gradients_finite() -> None:
    x = np.full((1, 1, 2, 4), 0.5, np.float32)
    tiny = [np.float32(1e-30) * S]  # mean|grad| below the floor: divided by 1e-12, not by 1e-30
    res = MIM(eps=0.5, step=0.1, steps=2)(Scripted(tiny), x, np.zeros(1, np.int64))
    assert MIM_FLOOR == 1e-12
    np.testing.assert_allclose(res.x_adv - x, 0.2 * S, atol=1e-7)


def test_restarts_keep_the_worst_case() -> None:
    x = np.full((40, 1, 2, 2), 0.5, np.float32)
    x[:, 0, 0, 0] = np.linspace(0.4, 0.6, 40)
    model, y, attack = Threshold(0.65), np.zeros(40, np.int64), PGD(eps=0.2, step=0.01, steps=2)
    idx = np.arange(40)
    starts = [np.clip(x + rng.uniform(5, "pgd", idx, r, (1, 2, 2), 0.2), 0, 1) for r in range(4)]
    hits = np.stack([s[:, 0, 0, 0] > 0.65 for s in starts])  # (restarts, N)
    res = PGD(eps=0.2, step=0.01, steps=2, restarts=4)(model, x, y, seed=5)
    np.testing.assert_array_equal(res.fooled, hits.any(0))
    first = hits.argmax(0)  # the first restart that fooled each sample is the one kept
    for i in np.flatnonzero(hits.any(0)):
        np.testing.assert_allclose(res.x_adv[i], starts[first[i]][i], atol=ATOL)
    for i in np.flatnonzero(~hits.any(0)):  # never fooled: the start with the largest margin
        best = np.argmax([s[i, 0, 0, 0] for s in starts])
        np.testing.assert_allclose(res.x_adv[i], starts[best][i], atol=ATOL)
    single = attack(model, x, y, seed=5)
    assert hits.any(0).sum() > single.fooled.sum() > 0  # restarts help on a masked model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "early", [BIM(eps=0.1, step=0.01, steps=20), PGD(eps=0.1, step=0.01, steps=20)], ids=repr
)
def test_early_stop_never_weakens(early: Any, backend: str) -> None:
    late = dataclasses.replace(early, early_stop=False)
    _, a = run(early, backend, seed=2)
    _, b = run(late, backend, seed=2)
    assert (a.fooled | ~b.fooled).all()  # fooled without early stop => fooled with it
    assert 0 < b.fooled.sum() < N  # eps 0.1 is between the easy and the hopeless regime


def test_rng_streams_are_per_sample_and_pinned() -> None:
    both = rng.uniform(0, "pgd", np.array([0, 5]), 0, (4,), 0.3)
    alone = rng.uniform(0, "pgd", np.array([5]), 0, (4,), 0.3)
    np.testing.assert_array_equal(both[1:], alone)
    np.testing.assert_allclose(both[0], [0.28615844, 0.17787986, -0.25240913, -0.07858256])
    assert not np.allclose(rng.uniform(0, "pgd", np.array([5]), 1, (4,), 0.3), alone)
    assert not np.allclose(rng.uniform(0, "bim", np.array([5]), 0, (4,), 0.3), alone)
    assert rng.name_hash("pgd") == 10721046034217498785


@pytest.mark.parametrize(
    ("attack", "text"),
    [
        (FGSM(), "FGSM(eps=0.3, loss='ce', temperature=1.0)"),
        (PGD(loss="cw"), "PGD(eps=0.3, step=0.05, steps=10, restarts=1, loss='cw'"),
        (MIM(), "MIM(eps=0.3, step=0.06, steps=10, decay=1.0, loss='ce'"),
        (BIM(), "BIM(eps=0.3, step=0.05, steps=10, loss='ce'"),
    ],
    ids=["fgsm", "pgd", "mim", "bim"],
)
def test_repr_names_the_attack_and_cleverhans_defaults(attack: Any, text: str) -> None:
    assert repr(attack).startswith(text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_the_device_and_match_numpy() -> None:
    w, b, x, y = linear_problem()
    model = torch_linear(w, b)
    model.module.cuda()
    attack = PGD(eps=0.2, step=0.05, steps=5, restarts=2)
    res = attack(model, torch.tensor(x).cuda(), torch.tensor(y).cuda(), seed=3)
    assert res.x_adv.is_cuda and res.logits.is_cuda
    _, ref = run(attack, "numpy", seed=3)
    np.testing.assert_allclose(to_np(res.x_adv), ref.x_adv, atol=1e-6)


ORT_ATTACKS = [
    FGSM(eps=0.15),
    BIM(eps=0.15, step=0.02),
    PGD(eps=0.15, step=0.02, restarts=2),
    PGD(eps=0.15, step=0.02, loss=Loss.CW),
    MIM(eps=0.15, step=0.02),
    L2PGD(eps=1.0, step=0.2),
    CWL2(max_iterations=100),
]


@pytest.mark.parametrize("attack", ORT_ATTACKS, ids=repr)
def test_ortmodel_and_torchmodel_give_the_same_examples(attack: Any) -> None:
    """The deployed graph (onnxruntime, numpy) and the torch module give the same examples."""
    pytest.importorskip("onnxruntime")
    from qrdeploy.core.runtime import SessionConfig
    from qrdeploy.model.ortmodel import OrtModel
    from qrdeploy.model.torchmodel import TorchModel
    from qrdeploy.train.export import export_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5),
    ).eval()  # fmt: skip
    victim = TorchModel(net, 5)
    deployed = OrtModel(export_module(net, (1, 8, 8)), SessionConfig("cpu", threads=1))
    x = np.random.default_rng(0).uniform(size=(16, 1, 8, 8)).astype(np.float32)
    y = victim.logits(torch.tensor(x)).argmax(1).numpy()  # clean accuracy 100%
    on_ort = attack(deployed, x, y, seed=1)
    on_torch = attack(victim, torch.tensor(x), torch.tensor(y), seed=1)
    np.testing.assert_allclose(on_ort.x_adv, on_torch.x_adv.numpy(), atol=1e-6)
    np.testing.assert_array_equal(on_ort.fooled, on_torch.fooled)
    most = len(y) if isinstance(attack, CWL2) else len(y) - 1  # CW-L2 is unbounded
    assert 0 < on_ort.fooled.sum() <= most


def test_targeted_pgd_reaches_the_runner_up_classes() -> None:
    """Class k reads pixel k: z_k = 10 * x_k. With the whole box as budget, descending the
    target's loss lights the target's pixel and darkens the others, so with early stop off the
    prediction ends at each sample's runner-up class, not at whichever class is easiest."""
    k, d = 4, int(np.prod(SHAPE))
    w = np.zeros((k, d), np.float64)
    w[np.arange(k), np.arange(k)] = 10.0
    model = NumpyLinear(w, np.zeros(k))
    x = np.full((3, *SHAPE), 0.1, np.float32).reshape(3, -1)
    x[:, 0] = 0.9  # label 0 leads
    x[0, 2], x[1, 3], x[2, 1] = 0.5, 0.5, 0.5  # runner-ups 2, 3, 1
    x = x.reshape(3, *SHAPE)
    y = np.zeros(3, np.int64)
    res = PGD(eps=1.0, step=0.2, steps=20, targeted=True, early_stop=False)(model, x, y)
    assert res.fooled.all()
    assert model.logits(res.x_adv).argmax(1).tolist() == [2, 3, 1]
    untargeted = PGD(eps=1.0, step=0.2, steps=20, early_stop=False)(model, x, y)
    assert untargeted.fooled.all()  # the same budget fools untargeted too
    with pytest.raises(ConfigError):
        PGD(targeted=True, steps=0)
