"""The profiles of `qrdeploy reproduce`: every budget of the paper's experiment in one place.

A `Profile` is a frozen dataclass; `PROFILES` holds the five named ones. The report prints the
chosen profile's fields (`Profile.rows()`), so every number says what budget produced it.

Which settings are the paper's and which are qrdeploy's own:
- the paper's: the 12 rows (3 regimes × plain, (Q), +mu, +mu (Q)), the 13 columns, 3-bit
  weight-only quantization, μ-law on "the last few layers", bits 1–8 for the bit sweep;
- cleverhans v3 defaults (most likely the paper's): CW-L2 5 binary-search steps × 1,000 iterations;
- qrdeploy [DEFAULT]s (docs/method.md): μ = 255, last:1 (MNIST) / last:3 (CIFAR-10), per-tensor
  max-scale narrow 7-level quantizer, every eps, step count and noise scale
  (qrdeploy.evaluation.suites), the adaptive suite's budgets (qrdeploy.attacks.adaptive), the
  transfer source (a second standard model, another seed), the μ ablation values;
- reduced budgets of the `smoke`, `quick` and `quick-cifar` profiles (ours, stated in the
  report): iterative attacks keep their total path length (steps × step) when their step count is
  cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from qrdeploy.errors import ConfigError

#: μ ablation values of docs/method.md section 8 ([DEFAULT]; 0 is the identity).
PAPER_ABLATION_MU = (0.0, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 255.0, 500.0, 1000.0)


class ProfileName(StrEnum):
    SMOKE = "smoke"
    QUICK = "quick"
    QUICK_CIFAR = "quick-cifar"
    PAPER_MNIST = "paper-mnist"
    PAPER_CIFAR = "paper-cifar"


@dataclass(frozen=True)
class Budget:
    """Attack budgets. None keeps the suite's own value (the paper's or our [DEFAULT])."""

    iter_steps: int | None = None  # PGD / BIM / MIM steps ([DEFAULT] 20 MNIST, 10 CIFAR-10)
    pgd_restarts: int = 1
    cw_binary_steps: int = 5  # cleverhans v3 default
    cw_iterations: int = 1000  # cleverhans v3 default
    noise_draws: int | None = None  # [DEFAULT] 10
    sweep_eps: tuple[float, ...] | None = None  # None: the suite's sweep up to eps 1 / 64/255
    sweep_steps: int | None = None  # PGD steps at every sweep point (None: as iter_steps)
    adaptive: bool = True
    adaptive_steps: int = 100  # AutoAttack's 100 iterations
    adaptive_queries: int = 5000  # Square, AutoAttack's budget
    adaptive_names: tuple[str, ...] | None = None  # None: the whole adaptive suite

    def __post_init__(self) -> None:
        for name in ("pgd_restarts", "cw_binary_steps", "cw_iterations", "adaptive_steps",
                     "adaptive_queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"budget {name} must be >= 1, got {getattr(self, name)}")

    def doubled(self) -> Budget:
        """Twice the iterations and restarts (the sufficiency check). CW-L2's binary-search
        steps count as its restarts: each one multiplies the constant c by 10 until a success,
        so a search cut too short never reaches a c that fools the model."""
        steps = None if self.iter_steps is None else 2 * self.iter_steps
        return Budget(steps, 2 * self.pgd_restarts, 2 * self.cw_binary_steps,
                      2 * self.cw_iterations, self.noise_draws, self.sweep_eps,
                      self.sweep_steps, self.adaptive, 2 * self.adaptive_steps,
                      2 * self.adaptive_queries, self.adaptive_names)


@dataclass(frozen=True)
class Profile:
    """One run of the paper's experiment: data, models, forms and budgets."""

    name: str
    family: str  # mnist | cifar10 (qrdeploy.evaluation.suites.Family)
    data: str  # mnist-5k | cifar10-10k | mnist | cifar10
    split: str
    n_test: int | None  # None: the whole split
    batch_size: int
    budget: Budget
    model_prefix: str  # models/<prefix>-standard.onnx, ...; the recipes of --retrain
    mu: float = 255.0
    mu_layers: str = "last:1"
    bits: int = 3
    ablation_mu: tuple[float, ...] = PAPER_ABLATION_MU
    ablation_n: int = 1000
    bit_widths: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    bits_n: int | None = None  # None: n_test
    sufficiency_n: int = 100  # 0: no sufficiency check
    sufficiency_rows: tuple[str, ...] = ("orig:plain", "orig:mu-q")
    sufficiency_points: float = 1.0  # the largest accepted change (points)
    lipschitz_n: int = 100  # inputs for the measured amplification (0: none)
    operator_norms: bool = True
    target_minutes: float | None = None
    # regimes that also run as the integer graph that ships (ours): the (Q) weights with int8
    # activations calibrated on `calibrate` images of the data set's train split, the
    # "(Q, int8)" rows (qrdeploy.hardening.integer; BPDA gradients, transfer and Square)
    int8_regimes: tuple[str, ...] = ()
    calibrate: int = 500
    # hardening that holds (ours, not the paper's): the stronger adversarial reference model
    # ("adv-strong", <prefix>-adversarial-strong.onnx) and its 3-bit QAT fine-tuning ("adv-qat",
    # <prefix>-adversarial-strong-qat3.onnx), scored by the adaptive suite at the profile's budget
    # against qrdeploy's pre-registered targets (qrdeploy.paper.claims.OWN_CLAIMS)
    hardening_regimes: tuple[str, ...] = ()
    hardening_eps: float = 0.3  # the eps the two models were trained and their targets set at
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    # --retrain: overrides of every reference recipe (qrdeploy.train.recipes) and of its F.L.
    # settings
    retrain: Mapping[str, Any] = field(default_factory=dict)
    retrain_feedback: Mapping[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The profile as JSON (part of every step key)."""
        d = asdict(self)
        for k in ("extra", "retrain", "retrain_feedback"):
            d[k] = dict(getattr(self, k))
        if not self.retrain and not self.retrain_feedback:  # keys of runs made before --retrain
            del d["retrain"], d["retrain_feedback"]
        return d

    def _capped(self, key: str, value: object) -> str:
        """A sample count as it runs: the steps take at most the n_test samples loaded."""
        if key.endswith("_n") and isinstance(value, int) and self.n_test is not None and \
                value > self.n_test:
            return f"{self.n_test} (asks {value}; the data loaded holds n_test = {self.n_test})"
        return str(value)

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) pairs for the report's budget table."""
        skip = ("budget", "extra", "retrain", "retrain_feedback")
        out = [(k, self._capped(k, v)) for k, v in asdict(self).items() if k not in skip]
        out += [(f"budget.{k}", str(v)) for k, v in asdict(self.budget).items()]
        out += [(f"{k} (--retrain only)", str(dict(getattr(self, k))))
                for k in ("retrain", "retrain_feedback")]
        return out


_SMOKE = Profile(
    "smoke", "mnist", "mnist-5k", "test", 8, 8,
    Budget(iter_steps=2, cw_binary_steps=1, cw_iterations=5, noise_draws=2,
           sweep_eps=(0.1, 0.3), sweep_steps=2, adaptive_steps=2, adaptive_queries=8,
           adaptive_names=("pgd-cw", "pgd-ce-t10", "square", "transfer")),
    "mnist", ablation_mu=(0.0, 255.0), ablation_n=8, bit_widths=(1, 3, 8), bits_n=50,
    sufficiency_n=8, lipschitz_n=8, operator_norms=False, target_minutes=2.0,
    int8_regimes=("orig",), calibrate=50, hardening_regimes=("adv-strong", "adv-qat"),
    note="CI only: a few samples and steps so that every artefact is produced; its numbers "
         "mean nothing.",
    retrain={"n_train": 96, "epochs": 1, "batch_size": 32, "attack_steps": 2, "eps_warmup": 0},
    retrain_feedback={"directions": 6, "top": 3, "rank_per_class": 2, "epochs": 1,
                      "diag_samples": 2, "bisect_steps": 2})

_QUICK = Profile(
    "quick", "mnist", "mnist-5k", "test", 500, 100,
    Budget(iter_steps=10, cw_binary_steps=2, cw_iterations=50, noise_draws=5,
           sweep_eps=(0.05, 0.1, 0.2, 0.3, 1.0), sweep_steps=10, adaptive_steps=20,
           adaptive_queries=500,
           adaptive_names=("pgd-cw", "pgd-ce-t100", "apgd-dlr", "transfer", "square")),
    "mnist", ablation_mu=(0.0, 10.0, 100.0, 255.0, 1000.0), ablation_n=200,
    bits_n=1000, sufficiency_n=100, lipschitz_n=100, target_minutes=45.0,
    int8_regimes=("orig", "adv", "fl"), hardening_regimes=("adv-strong", "adv-qat"),
    note="mnist-5k (embedded), the committed reference models, 500 test digits, reduced budgets "
         "checked by the sufficiency run (2x iterations and restarts on 100 samples); the "
         "(Q, int8) rows are the full-integer graphs of the (Q) rows; the hardening rows score "
         "the stronger adversarial model and its 3-bit QAT fine-tuning by the adaptive suite.")

#: The CIFAR-10 half on a CPU: the paper's CIFAR settings (eps in units of 1/255, μ-law on the
#: last three weight layers; the ablation maps the last layer) at the budgets of `quick`, with an
#: eps sweep that ends at eps 1 (the unbounded masking check) and fewer test images.
_QUICK_CIFAR = Profile(
    "quick-cifar", "cifar10", "cifar10-10k", "test", 250, 125,
    Budget(iter_steps=10, cw_binary_steps=2, cw_iterations=50, noise_draws=5,
           sweep_eps=tuple(e / 255 for e in (2, 4, 8, 16, 255)), sweep_steps=10,
           adaptive_steps=20, adaptive_queries=500,
           adaptive_names=("pgd-cw", "pgd-ce-t100", "apgd-dlr", "transfer", "square")),
    "cifar10", mu_layers="last:3", ablation_mu=(0.0, 10.0, 100.0, 255.0, 1000.0), ablation_n=100,
    bits_n=1245, sufficiency_n=50, lipschitz_n=50, target_minutes=45.0,
    note="cifar10-10k (embedded, docs/data-cifar10-10k.md), the committed wrn-32-1 reference "
         "models, the first 250 test images (the official test batch's first 250), the paper's "
         "CIFAR-10 settings at reduced budgets checked by the sufficiency run (2x iterations and "
         "restarts on 50 images). The full-budget run is paper-cifar.")

_PAPER_MNIST = Profile(
    "paper-mnist", "mnist", "mnist", "test", None, 200, Budget(), "mnist",
    ablation_n=1000, note="full MNIST test set from a torchvision folder (--data-root); the "
    "paper's budgets (cleverhans CW-L2 defaults) and our [DEFAULT] eps.",
    retrain={"data": "mnist"})

_PAPER_CIFAR = Profile(
    "paper-cifar", "cifar10", "cifar10", "test", 1000, 100, Budget(), "cifar10",
    mu_layers="last:3", ablation_n=1000,
    note="CIFAR-10 WRN-32-10 (BN kept), paper budgets, 1,000 test images (the paper's WB "
         "columns are multiples of 0.1 %); meant for a GPU and the full CIFAR-10 folder. The μ "
         "ablation maps the last layer only, as the paper's. quick-cifar is its CPU-sized "
         "counterpart on the embedded images.",
    # Madry's CIFAR-10 recipe shape (docs/method.md section 6; epochs ours, never run here) and
    # the F.L. fine-tuning of docs/method.md section 1, step 6 (SGD 0.01, 10 epochs, t_max 5),
    # over the cifar10 recipes (qrdeploy.train.recipes): PGD-7 training selected on its own
    # validation accuracy
    retrain={"net": "wrn-32-10", "data": "cifar10", "optimizer": "sgd", "lr": 0.1,
             "weight_decay": 2e-4, "momentum": 0.9, "batch_size": 128, "shift": 4, "flip": True,
             "epochs": 100, "eps": 8 / 255, "attack_steps": 7, "attack_step_size": 2 / 255,
             "eps_warmup": 0, "val_attack_steps": 0, "init": "madry", "threads": 0},
    retrain_feedback={"t_max": 5.0, "lr": 0.01, "epochs": 10, "rank_per_class": 150,
                      "max_ratio": 1.0})

#: The five profiles (the one documented place).
PROFILES: dict[ProfileName, Profile] = {
    ProfileName.SMOKE: _SMOKE,
    ProfileName.QUICK: _QUICK,
    ProfileName.QUICK_CIFAR: _QUICK_CIFAR,
    ProfileName.PAPER_MNIST: _PAPER_MNIST,
    ProfileName.PAPER_CIFAR: _PAPER_CIFAR,
}


def get_profile(name: str | ProfileName) -> Profile:
    """The named profile; ConfigError naming the choices otherwise."""
    try:
        return PROFILES[ProfileName(name)]
    except ValueError:
        raise ConfigError(f"unknown profile {name!r}; choose one of "
                          f"{', '.join(p.value for p in ProfileName)}") from None
