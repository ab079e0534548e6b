"""The user cache folder: transfer sets crafted on a source model, shared by every run.

A transfer set depends only on (source model sha256, data, attack settings, seed), never on the
victim, so `qrdeploy attack` keeps it in one folder per user instead of beside each output:
a second run in a new folder, or on another hardened model, reuses it.

- Where: `$QRDEPLOY_CACHE` when set, else `$XDG_CACHE_HOME/qrdeploy` (default
  `~/.cache/qrdeploy`; on Windows `%LOCALAPPDATA%\\qrdeploy`). `QRDEPLOY_CACHE=off` turns it off
  (sets are crafted in memory on every run).
- Size: at most `$QRDEPLOY_CACHE_SIZE` (default 2G; suffixes K, M, G) per kind of entry; after
  each write the least recently used files go first. An entry is a plain npz file whose name
  is a hash of its settings; deleting the folder at any time is safe.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from qrdeploy.errors import ConfigError

DEFAULT_SIZE = 2 * 1024**3
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def cache_root() -> Path | None:
    """The user cache folder (not created here), or None when QRDEPLOY_CACHE=off."""
    env = os.environ.get("QRDEPLOY_CACHE", "").strip()
    if env.lower() in ("off", "none", "0"):
        return None
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "qrdeploy"
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "qrdeploy"


def cache_dir(kind: str) -> Path | None:
    """The folder of one kind of entry ('transfer'), or None when the cache is off."""
    root = cache_root()
    return None if root is None else root / kind


def size_limit() -> int:
    """QRDEPLOY_CACHE_SIZE in bytes: '500M', '2G', '1048576'."""
    raw = os.environ.get("QRDEPLOY_CACHE_SIZE", "").strip().upper().removesuffix("B")
    if not raw:
        return DEFAULT_SIZE
    unit = raw[-1] if raw[-1] in _UNITS else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"QRDEPLOY_CACHE_SIZE={os.environ['QRDEPLOY_CACHE_SIZE']!r} is not a "
                          "size; write e.g. 500M or 2G")
    return int(value * _UNITS[unit])


def trim(folder: Path, limit: int | None = None, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used files of `folder` until it holds at most `limit` bytes
    (default size_limit()); `keep` (the entry just written) is never deleted. Returns the
    deleted files. Files another process deletes meanwhile are skipped."""
    limit = size_limit() if limit is None else limit
    entries = []
    for p in folder.glob("*"):
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file():
            entries.append((max(st.st_atime, st.st_mtime), st.st_size, p))
    total = sum(size for _, size, _ in entries)
    deleted = []
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if keep is not None and p == keep:
            continue
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        deleted.append(p)
    return deleted


def touch(path: Path) -> None:
    """Mark an entry as used now (its mtime), so trim() keeps it longest."""
    with contextlib.suppress(OSError):
        os.utime(path)
