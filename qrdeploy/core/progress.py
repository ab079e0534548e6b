"""Progress bars on stderr (tqdm), silenced by --quiet or QRDEPLOY_QUIET=1."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def quiet() -> bool:
    return os.environ.get("QRDEPLOY_QUIET", "") not in ("", "0")


def progress(items: Iterable[T], desc: str, total: int | None = None, **kw: Any) -> Iterator[T]:
    """Wrap an iterable in a progress bar unless quiet."""
    if quiet():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)
