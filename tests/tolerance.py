"""Comparing numbers computed in different processes, thread counts or CPUs: equal within a stated tolerance.

Exact equality holds only where the arithmetic is the same by construction: the same process, the same
thread count, the same inputs. Across processes, Ray workers, thread counts or CPUs the float32 matrix
products of a forward pass reduce in another order (MKL and oneDNN split a reduction by thread count and
pick their kernels by instruction set: AVX2, AVX-512, AMX), so they round differently. One float32
rounding is 2^-24 = 6e-8 relative; a dot product of n terms reordered may move by up to about
n * 2^-24 of the sum of its terms' magnitudes, and every further layer carries that on. So:

- FLOAT32_TINY: the 3-block, width-32 test models (reductions of at most 64 terms, 3 blocks):
  64 * 6e-8 = 4e-6 per product in the worst case; 1e-5 relative covers the blocks' few products in a
  row (an AMD EPYC differed by 1.8e-8 relative between 1 and 2 threads).
- FLOAT32_EMBEDDED: the 30-block embedded model in float32 (reductions of 576-1,536 terms): 1e-5
  absolute on probabilities and on what is linear in them (means, differences, interval half-widths),
  the bound within which the fast and reference engines agree (their batches round differently the same
  way; tests/test_trace.py), and 1e-4 relative for larger quantities. Measured here: 1.1e-6 absolute on
  an interval's half-width between a Ray worker and this process.

Integers, strings and booleans are compared exactly: a tolerance is for floats only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tolerance:
    """|actual - expected| <= max(rel * |expected|, abs) for every float."""

    rel: float
    abs: float

    def holds(self, actual: float, expected: float) -> bool:
        if math.isnan(expected) or math.isnan(actual):
            return math.isnan(expected) and math.isnan(actual)
        if math.isinf(expected) or math.isinf(actual):
            return actual == expected
        return abs(actual - expected) <= max(self.rel * abs(expected), self.abs)


FLOAT32_TINY = Tolerance(rel=1e-5, abs=1e-9)
FLOAT32_EMBEDDED = Tolerance(rel=1e-4, abs=1e-5)


def assert_equal_within(actual: Any, expected: Any, tolerance: Tolerance, where: str = "result") -> None:
    """Nested dicts / lists / numbers equal, floats within `tolerance` (an AssertionError names the first difference)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key, value in expected.items():
            assert_equal_within(actual[key], value, tolerance, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{where}: length differs"
        for index, (one, other) in enumerate(zip(actual, expected)):
            assert_equal_within(one, other, tolerance, f"{where}[{index}]")
    elif isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r} is not a number"
        assert tolerance.holds(float(actual), float(expected)), (
            f"{where}: {actual!r} != {expected!r} within rel {tolerance.rel:g} / abs {tolerance.abs:g}")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
