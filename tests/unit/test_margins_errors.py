"""Bad feedback-learning and margin settings give one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from qrdeploy.errors import ConfigError, DataError
from qrdeploy.margins import search as mg
from qrdeploy.margins.criteria import CriteriaConfig, margin_criteria


@pytest.mark.parametrize(
    "kwargs,match",
    [({"rounds": 0}, "feedback rounds must be >= 1"), ({"top": 65}, r"top must be in \[1, "),
     ({"seeds": (1, 2)}, "seeds must be 3 counts"), ({"alpha": (2.0, 1.5)}, "alpha must be"),
     ({"t0": 0.0}, "need 0 < t0 <= t_max"), ({"max_ratio": 0.0}, "max_ratio must be > 0"),
     ({"max_drop": 2.0}, r"max_drop must be in \[0, 1\]"), ({"lr": 0.0}, "learning rate")],
    ids=["rounds", "top", "seeds", "alpha", "t0", "ratio", "drop", "lr"],
)
def test_bad_feedback_settings(kwargs: dict[str, object], match: str) -> None:
    from qrdeploy.train.config import FeedbackConfig

    with pytest.raises(ConfigError, match=match):
        FeedbackConfig(**kwargs)  # type: ignore[arg-type]


def test_feedback_needs_a_source_checkpoint() -> None:
    from qrdeploy.train.config import TrainConfig

    with pytest.raises(ConfigError, match="give the standard model's checkpoint, e.g. --from"):
        TrainConfig(method="feedback")  # type: ignore[arg-type]


def test_feedback_is_not_a_loop_hook() -> None:
    pytest.importorskip("torch")
    from qrdeploy.train import methods
    from qrdeploy.train.config import TrainConfig

    with pytest.raises(ConfigError, match="train_feedback"):
        methods.hooks(TrainConfig(method="feedback", from_checkpoint="a.safetensors"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs,match",
    [({"t0": 2.0, "t_max": 1.0}, "need 0 < t0 <= t_max"),
     ({"bisect_steps": -1}, "bisect_steps must be >= 0")],
    ids=["t0", "bisect"],
)
def test_bad_search(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        mg.SearchConfig(**kwargs)  # type: ignore[arg-type]


class _Const:
    num_classes = 2

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), 2), np.float32)


def test_directions_of_the_wrong_shape() -> None:
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(DataError, match="draw one set per sample"):
        mg.directional_margins(_Const(), x, np.zeros(2, np.int64), np.zeros((3, 5, 1, 4, 4)))


def test_criteria_settings_and_unlabelled_data() -> None:
    from qrdeploy.data.datasets import Dataset

    with pytest.raises(ConfigError, match=r"top must be in \[1, directions=8\]"):
        CriteriaConfig(directions=8, top=9)
    ds = Dataset("npz", "test", np.zeros((2, 1, 4, 4), np.float32), None, 2)
    with pytest.raises(DataError, match="the criteria need labelled data"):
        margin_criteria(_Const(), ds)  # type: ignore[arg-type]
