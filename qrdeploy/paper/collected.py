"""What the steps of `qrdeploy reproduce` produced, collected for its report and figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdeploy.evaluation.results import Results
from qrdeploy.paper.cache import StepEvent
from qrdeploy.paper.profiles import Profile


@dataclass
class Collected:
    """Everything the report reads, by row ('regime:form') or regime."""

    profile: Profile
    seed: int
    models: dict[str, Path | None]
    missing: dict[str, str] = field(default_factory=dict)  # regime (or row) -> why not run
    data_note: str | None = None
    n: int = 0
    results: dict[str, Results] = field(default_factory=dict)
    lipschitz: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    bits: dict[str, dict[str, Any]] = field(default_factory=dict)
    ablation: dict[str, dict[str, Any]] = field(default_factory=dict)
    sufficiency: dict[str, dict[str, Results]] = field(default_factory=dict)
    events: list[StepEvent] = field(default_factory=list)
    wall_seconds: float = 0.0
    retrained: bool = False
