"""Counter-based randomness for attacks, keyed by (seed, attack name, sample index, stream).

Every sample draws from its own numpy Philox stream: the key is (seed, a stable 64-bit hash of the
attack name) and the counter's two high words are (stream, sample index), where `stream` numbers
the restart or draw. The counter's low words advance as numbers are drawn, so streams never overlap.
A sample's noise therefore does not depend on the batch it sits in, the batch size, or the point
where an interrupted run resumed. Noise is drawn in numpy float64 and returned as float32; callers
holding torch tensors convert it (see `to_namespace`).

Two attacks with the same name share streams on purpose (common random numbers): PGD at eps 0.1 and
0.3 start from the same uniform draw scaled by eps, which keeps eps sweeps monotone in expectation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from qrdeploy.errors import ConfigError, DataError

_U64 = 2**64


def check_seed(seed: int) -> int:
    """The seed as an int in [0, 2**64), else ConfigError."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < _U64:
        raise ConfigError(f"seed must be an integer in [0, 2**64), got {seed!r}; e.g. --seed 0")
    return int(seed)


def name_hash(name: str) -> int:
    """A 64-bit hash of `name` that is stable across processes (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def sample_generator(seed: int, name: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one sample: Philox keyed by (seed, name), counter (0, 0, stream, index)."""
    key = np.array([check_seed(seed), name_hash(name)], dtype=np.uint64)
    counter = np.array([0, 0, stream, index], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


def check_indices(indices: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    """Global sample indices (n,) int64 >= 0; arange(n) when None."""
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer) or (idx < 0).any():
        raise DataError(
            f"indices must be {n} non-negative integers (one per sample), got shape {idx.shape} "
            f"dtype {idx.dtype}; pass the samples' positions in the data set"
        )
    return idx.astype(np.int64)


def uniform(
    seed: int, name: str, indices: np.ndarray, stream: int, shape: tuple[int, ...], bound: float
) -> np.ndarray:
    """U[-bound, bound] noise (N, *shape) float32, row i drawn from sample indices[i]'s stream."""
    gens = (sample_generator(seed, name, int(i), stream) for i in indices)
    rows = [g.uniform(-bound, bound, shape) for g in gens]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, *shape), np.float32)


def normal(
    seed: int, name: str, indices: np.ndarray, stream: int, shape: tuple[int, ...], scale: float
) -> np.ndarray:
    """N(0, scale^2) noise (N, *shape) float32, row i drawn from sample indices[i]'s stream."""
    gens = (sample_generator(seed, name, int(i), stream) for i in indices)
    rows = [g.normal(0.0, scale, shape) for g in gens]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, *shape), np.float32)


def l2_ball(
    seed: int, name: str, indices: np.ndarray, stream: int, shape: tuple[int, ...], radius: float
) -> np.ndarray:
    """Points uniform in the L2 ball of `radius` (N, *shape) float32: a Gaussian direction scaled
    to radius * u ** (1 / D), u ~ U[0, 1), D = prod(shape); row i from indices[i]'s stream."""
    dim = int(np.prod(shape))
    rows = []
    for i in indices:
        gen = sample_generator(seed, name, int(i), stream)
        d = gen.normal(size=shape)
        norm = max(float(np.sqrt((d * d).sum())), 1e-300)
        rows.append(d / norm * radius * gen.uniform() ** (1.0 / dim))
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, *shape), np.float32)
