"""Cached, resumable steps for `qrdeploy reproduce` (docs/design.md, decision 7).

A `Step` has a name, settings and input files; its key is the sha256 of the name, the settings
and the sha256 of every input file. Its outputs live in `<root>/steps/<name>-<key16>/`:
the body writes into a temporary folder, a `manifest.json` with the sha256 of every output file
is written last, and the folder is renamed into place, so a finished folder is complete or
absent. A rerun verifies the manifest and reuses the folder; a folder whose files no longer match
is logged as corrupt and rerun. A body that wants to resume after a kill keeps its partial state
in its `work` folder (`<root>/steps/.work/<name>-<key16>/`), which survives until it succeeds.

Every decision is appended to `<root>/steps.log` (JSON lines) and kept in `StepCache.events`.
A step that runs heads its progress lines with its name, and its end is logged with the time it
took and the run's time so far (a reused step is silent: it takes no time).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from qrdeploy.core.fileio import alive, atomic_write_text, sha256_file
from qrdeploy.core.progress import Span, duration, spanning
from qrdeploy.errors import ConfigError

log = logging.getLogger(__name__)

STEPS = "steps"
MANIFEST = "manifest.json"
LOG = "steps.log"
#: The kinds of step a --force pattern may name (its part before the first dot).
KINDS = ("train", "harden", "attack", "lipschitz", "bits", "ablation", "sufficiency")
FORMAT = 1


class Status(StrEnum):
    RAN = "ran"
    REUSED = "reused"
    FORCED = "forced"
    CORRUPT = "rerun-corrupt"


@dataclass(frozen=True)
class Step:
    """One unit of the pipeline; `body(out, work)` writes its outputs into `out`."""

    name: str
    settings: Mapping[str, Any]
    inputs: Mapping[str, Path]
    body: Callable[[Path, Path], None]


@dataclass(frozen=True)
class StepEvent:
    name: str
    key: str
    status: Status
    seconds: float  # in this run (0 when reused)
    computed_seconds: float | None = None  # what computing the step took (from its manifest)


def check_force(patterns: Sequence[str], kinds: Sequence[str] = KINDS) -> tuple[str, ...]:
    """--force patterns (fnmatch on step names, e.g. 'attack.orig.q' or 'attack.*'); each must
    be able to match a step of one of `kinds`."""
    for p in patterns:
        kind = p.split(".", 1)[0]
        if not any(fnmatch.fnmatch(k, kind) for k in kinds):
            raise ConfigError(f"--force {p!r} names no step; step names start with one of "
                              f"{', '.join(KINDS)} (e.g. --force attack.orig.q)")
    return tuple(patterns)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


class StepCache:
    """Runs steps under <root>/steps, reusing finished ones."""

    def __init__(self, root: Path, force: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.steps = self.root / STEPS
        self.force = tuple(force)
        self.events: list[StepEvent] = []
        self.t0 = time.monotonic()

    def key(self, step: Step) -> str:
        inputs = {k: sha256_file(p) for k, p in sorted(step.inputs.items())}
        text = _canonical({"format": FORMAT, "name": step.name, "settings": step.settings,
                           "inputs": inputs})
        return hashlib.sha256(text.encode()).hexdigest()

    def run(self, step: Step) -> Path:
        """The finished output folder of `step`, reused or (re)computed."""
        key = self.key(step)
        final = self.steps / f"{step.name}-{key[:16]}"
        forced = any(fnmatch.fnmatch(step.name, p) for p in self.force)
        state = verify(final)
        if state == "ok" and not forced:
            self._log(step.name, key, Status.REUSED, 0.0, _computed_seconds(final))
            return final
        status = Status.FORCED if forced else (Status.CORRUPT if state == "corrupt" else
                                               Status.RAN)
        t0 = time.perf_counter()
        with spanning(Span(label=f"step {step.name}")):
            self._compute(step, key, final)
        seconds = time.perf_counter() - t0
        self._log(step.name, key, status, seconds, seconds)
        ran = sum(e.status is not Status.REUSED for e in self.events)
        log.info("step %s done in %s (so far: %d computed, %d reused; %s)", step.name,
                 duration(seconds), ran, len(self.events) - ran,
                 duration(time.monotonic() - self.t0))
        return final

    def _compute(self, step: Step, key: str, final: Path) -> None:
        work = self.steps / ".work" / final.name
        tmp = self.steps / f".tmp-{final.name}-{os.getpid()}"
        _remove_dead_tmp(self.steps, final.name)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        step.body(tmp, work)
        seconds = round(time.perf_counter() - t0, 3)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p)
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "step": step.name, "key": key,
                    "settings": json.loads(_canonical(step.settings)), "files": files,
                    "seconds": seconds}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        shutil.rmtree(work, ignore_errors=True)

    def _log(self, name: str, key: str, status: Status, seconds: float,
             computed: float | None) -> None:
        ev = StepEvent(name, key, status, seconds, computed)
        self.events.append(ev)
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"step": name, "key": key, "status": status.value,
                           "seconds": round(seconds, 3)})
        with open(self.root / LOG, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _computed_seconds(folder: Path) -> float | None:
    """The compute time a finished step's manifest records (None for older manifests)."""
    try:
        value = json.loads((folder / MANIFEST).read_text("utf-8")).get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _remove_dead_tmp(steps: Path, name: str) -> None:
    """Remove the unfinished output folders of `name` left by killed runs (the writer's pid is in
    the folder name; a live writer's folder is left alone)."""
    prefix = f".tmp-{name}-"
    for tmp in steps.glob(f"{prefix}*") if steps.is_dir() else ():
        pid = tmp.name[len(prefix):]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def verify(folder: Path) -> str:
    """'ok', 'missing' or 'corrupt' (manifest unreadable, or a file missing or changed)."""
    mpath = folder / MANIFEST
    if not folder.exists():
        return "missing"
    try:
        files = json.loads(mpath.read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "corrupt"
    for rel, digest in files.items():
        p = folder / rel
        if not p.is_file() or sha256_file(p) != digest:
            return "corrupt"
    return "ok"
