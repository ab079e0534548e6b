"""Resumable state files: named numpy arrays saved atomically under a settings key.

A long run saves its per-sample arrays after every batch. The file stores the key (a sha256 of
everything the numbers depend on) and those settings as JSON beside the arrays. A file whose key,
names, shapes or dtypes do not match what the run expects, or that cannot be read at all, is
reported and ignored, so a run restarts cleanly instead of mixing numbers from different settings.
Written with qrdeploy.core.fileio's atomic rename, a SIGKILL leaves either the previous complete
file or the new one."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qrdeploy.core.fileio import atomic_write

log = logging.getLogger(__name__)
KEY = "__key__"
SETTINGS = "__settings__"

Layout = Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]  # name -> (shape, dtype)


def settings_key(settings: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of `settings` (sorted keys, no whitespace)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StateFile:
    """Arrays of one run at `path` (None: nothing is saved, every run starts afresh), keyed by
    the sha256 of `settings`, which are also stored as readable JSON (`__settings__`)."""

    def __init__(self, path: Path | None, settings: Mapping[str, Any]) -> None:
        self.path = path
        self.settings = json.dumps(settings, sort_keys=True, default=str)
        self.key = settings_key(settings)

    def load(self, layout: Layout) -> dict[str, np.ndarray]:
        """The saved arrays when they match `key` and `layout` exactly, else {} (logged)."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files if name != SETTINGS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            return self._discard(f"it cannot be read ({type(exc).__name__})")
        if str(arrays.pop(KEY, "")) != self.key:
            return self._discard("it belongs to other settings or another model")
        if set(arrays) != set(layout):
            return self._discard("its arrays are not the ones this run needs")
        for name, (shape, dtype) in layout.items():
            if arrays[name].shape != shape or arrays[name].dtype != dtype:
                return self._discard(f"array {name!r} has the wrong shape or dtype")
        return arrays

    def _discard(self, why: str) -> dict[str, np.ndarray]:
        log.warning("state file %s ignored: %s; starting again", self.path, why)
        return {}

    def save(self, arrays: Mapping[str, np.ndarray]) -> None:
        if self.path is None:
            return

        def write(tmp: Path) -> None:
            payload: dict[str, Any] = {KEY: np.array(self.key),
                                       SETTINGS: np.array(self.settings), **arrays}
            with open(tmp, "wb") as fh:  # a file handle: np.savez would append .npz to a path
                np.savez(fh, **payload)

        atomic_write(self.path, write)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
