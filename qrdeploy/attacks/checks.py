"""Validation of attack settings (ConfigError) and of the data an attack is called on (DataError),
and the repr shared by attack configs (it names them in reports and test ids).

Every message is one line: what was expected, what arrived, and the fix."""

from __future__ import annotations

import math
from dataclasses import fields
from enum import Enum
from typing import Any

import numpy as np

from qrdeploy.core.arrays import Array, to_numpy
from qrdeploy.core.losses import Loss
from qrdeploy.core.markdown import eps_text
from qrdeploy.errors import ConfigError, DataError


class Config:
    """Base of the attack configs (frozen dataclasses declared with repr=False)."""

    def __repr__(self) -> str:
        def show(v: object) -> str:
            return repr(v.value) if isinstance(v, Enum) else repr(v)

        names = [f.name for f in fields(self)]  # type: ignore[arg-type]
        args = ", ".join(f"{n}={show(getattr(self, n))}" for n in names)
        return f"{type(self).__name__}({args})"

    def describe(self) -> str:
        """'PGD: eps 0.1, step 0.0025, steps 100, ...', the settings as a reader wants them (no
        quotes, enum values, booleans in lower case, an eps or step of whole 255ths as 8/255)."""
        def show(name: str, v: object) -> str:
            if isinstance(v, Enum):
                return str(v.value)
            if isinstance(v, bool):
                return str(v).lower()
            if isinstance(v, float) and name in ("eps", "step"):
                return eps_text(v, digits=6)
            return f"{v:.6g}" if isinstance(v, float) else str(v)

        parts = ", ".join(f"{f.name} {show(f.name, getattr(self, f.name))}"
                          for f in fields(self))  # type: ignore[arg-type]
        return f"{type(self).__name__}: {parts}"

    def cost(self) -> float:
        """Model evaluations per sample at most (a forward and backward pass counts 1), for
        progress estimates only; the attacks override it."""
        return 1.0


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def check_eps(
    name: str, eps: float, upper: float | None = 1.0, field: str = "eps", hint: str = ""
) -> None:
    """A finite number in [0, upper] (inputs live in [0, 1], so an L-inf eps above 1 means
    nothing); `hint` ends the message with an example of a sensible value."""
    ok = _is_number(eps) and math.isfinite(eps) and eps >= 0 and (upper is None or eps <= upper)
    if not ok:
        where = f"in [0, {upper:g}]" if upper is not None else ">= 0"
        hint = hint or f"{field} is in pixel units of [0, 1] inputs, e.g. {field}=8/255"
        raise ConfigError(f"{name}: {field} must be a number {where}, got {eps!r}; {hint}")


def check_positive(name: str, field: str, value: float) -> None:
    """A finite number > 0."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: {field} must be a finite number > 0, got {value!r}")


def check_count(name: str, field: str, value: int, minimum: int = 1) -> None:
    """An integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name}: {field} must be an integer >= {minimum}, got {value!r}")


def check_loss(name: str, loss: Loss | str, temperature: float) -> Loss:
    """The loss as a Loss enum; a temperature other than 1 is only meaningful for CE_T."""
    try:
        enum = Loss(loss)
    except ValueError:
        choices = ", ".join(m.value for m in Loss)
        raise ConfigError(f"{name}: loss must be one of {choices}, got {loss!r}") from None
    check_positive(name, "temperature", temperature)
    if temperature != 1.0 and enum is not Loss.CE_T:
        raise ConfigError(
            f"{name}: temperature={temperature} has no effect with loss {enum.value}; "
            f"use loss='ce-t' or leave temperature at 1"
        )
    return enum


def check_batch(x: Array, y: Array, num_classes: int) -> np.ndarray:
    """Check x (N, C, H, W) floating in [0, 1] and labels y (N,) in [0, K); return y on the host."""
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[0] == 0:
        raise DataError(f"x must be a non-empty (N, C, H, W) batch, got shape {shape}; add axes")
    xh = to_numpy(x)
    if not np.issubdtype(xh.dtype, np.floating):
        raise DataError(f"x must be floating point in [0, 1], got dtype {xh.dtype}; divide by 255")
    if not (np.isfinite(xh).all() and xh.min() >= 0.0 and xh.max() <= 1.0):
        raise DataError(
            f"x must lie in [0, 1], got values in [{xh.min()}, {xh.max()}]; rescale the inputs"
        )
    yh = to_numpy(y)
    if yh.shape != (shape[0],) or not np.issubdtype(yh.dtype, np.integer):
        raise DataError(
            f"y must be {shape[0]} integer labels of shape ({shape[0]},), got shape {yh.shape} "
            f"dtype {yh.dtype}; pass class indices, not one-hot vectors"
        )
    if yh.min() < 0 or yh.max() >= num_classes:
        raise DataError(
            f"labels must lie in [0, {num_classes - 1}] for a {num_classes}-class model, got "
            f"[{yh.min()}, {yh.max()}]; check the data set matches the model"
        )
    return yh.astype(np.int64)
