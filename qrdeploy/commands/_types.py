"""argparse number types, one factory for all: a value out of range is a usage error (exit 2)
that says what was expected. Imports nothing but the standard library, so the CLI's top level
can use them."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def _ranged(convert: Callable[[str], N], fits: Callable[[N], bool], expected: str,
            out_of_range: str) -> Callable[[str], N]:
    """An argparse type: `convert` the text, then require `fits`; anything else is a usage
    error (exit 2) saying what was `expected` ('{value}' in `out_of_range` is the value)."""
    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not fits(value):
            raise argparse.ArgumentTypeError(out_of_range.format(value=text))
        return value
    return parse


#: a count: an integer >= 1
positive_int = _ranged(int, lambda v: v >= 1, "a whole number >= 1", "must be >= 1, got {value}")
#: a thread count: an integer >= 0 (0: the runtime's own choice)
non_negative_int = _ranged(int, lambda v: v >= 0, "a whole number >= 0",
                           "must be >= 0, got {value}")
#: --seed: what numpy's and qrdeploy's counter-based streams take, an integer in [0, 2**64)
seed_value = _ranged(int, lambda v: 0 <= v < 2**64, "a whole number >= 0",
                     "must be a whole number in [0, 2**64), got {value}")
#: --bits: a whole number in 1..8
bit_width = _ranged(int, lambda v: 1 <= v <= 8, "a bit width 1..8",
                    "bits must be in 1..8, got {value}")
#: a rate, a scale, a mu or a time limit: a finite number > 0
positive_float = _ranged(float, lambda v: 0 < v < math.inf, "a number > 0",
                         "must be a finite number > 0, got {value}")
#: a tolerance: a finite number >= 0
non_negative_float = _ranged(float, lambda v: 0 <= v < math.inf, "a number >= 0",
                             "must be a finite number >= 0, got {value}")
