"""Small statistics shared by the measurements."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with ``fraction`` at or below.

    With 200 samples, p99 is the second largest: one sample may be worse.
    """
    if not values:
        raise ValueError("No values to take a percentile of.")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
