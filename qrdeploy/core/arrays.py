"""Array-API helpers shared by the attacks, so one code path serves numpy arrays and torch tensors.

Only standard array-API calls (through array_api_compat) touch the caller's arrays; bookkeeping
(masks, margins, row indices) is plain numpy on the host. Nothing here imports torch."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

Array = Any  # a numpy ndarray or a torch tensor; the protocol keeps the caller's namespace


def namespace(*arrays: Array) -> ModuleType:
    """The array-API namespace shared by `arrays` (numpy or torch, wrapped by array_api_compat)."""
    return array_api_compat.array_namespace(*arrays)


def to_numpy(a: Array) -> np.ndarray:
    """A host numpy copy of `a` (detached from autograd when `a` is a torch tensor)."""
    if array_api_compat.is_torch_array(a):
        return np.asarray(a.detach().cpu().numpy())
    return np.asarray(a)


def from_numpy(a: np.ndarray, like: Array) -> Array:
    """`a` in the namespace and on the device of `like` (dtype kept)."""
    xp = namespace(like)
    return xp.asarray(a, device=array_api_compat.device(like))


def take_rows(a: Array, rows: np.ndarray) -> Array:
    """a[rows] along axis 0; `rows` is a host int array or bool mask."""
    idx = np.flatnonzero(rows) if rows.dtype == np.bool_ else rows
    xp = namespace(a)
    return xp.take(a, from_numpy(idx.astype(np.int64), a), axis=0)


def put_rows(full: Array, pos: np.ndarray, rows: Array) -> Array:
    """A copy of `full` whose rows `pos` are replaced by `rows` (a scatter built from take)."""
    n = full.shape[0]
    src = np.arange(len(pos), n + len(pos), dtype=np.int64)  # row p of full sits at len(pos) + p
    src[pos] = np.arange(len(pos), dtype=np.int64)
    xp = namespace(full)
    return take_rows(xp.concat([rows, full], axis=0), src)


def project(x: Array, lo: Array, hi: Array) -> Array:
    """x clipped elementwise into [lo, hi] (the eps ball intersected with [0, 1])."""
    xp = namespace(x)
    return xp.minimum(xp.maximum(x, lo), hi)


def margins(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """max_{j != y} z_j - z_y per row (N,) float64; > 0 means the sample is misclassified."""
    z = z.astype(np.float64)
    rows = np.arange(len(y))
    other = z.copy()
    other[rows, y] = -np.inf
    return np.asarray(other.max(axis=1) - z[rows, y])
