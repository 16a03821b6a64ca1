"""Seed statistics of the study: mean ± std over seeds, and "better by more than the seed
spread" (issue 17's rule)."""

from __future__ import annotations

import math

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; NaN with fewer than 2 values)."""
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def fmt(values: list[float], digits: int = 4) -> str:
    """``mean ± std`` (``digits`` significant digits of the mean, 2 of the std); ``—`` when
    empty."""
    m, s = mean_std(values)
    if not values:
        return "—"
    if not math.isfinite(m):
        return str(m)
    return f"{m:.{digits}g}" + ("" if math.isnan(s) else f" ± {s:.2g}")


def beats(new: list[float], old: list[float], lower: bool) -> bool:
    """``new`` better than ``old`` by more than the larger seed spread (std over seeds)."""
    if len(new) < 2 or len(old) < 2:
        return False
    (mn, sn), (mo, so) = mean_std(new), mean_std(old)
    gap = (mo - mn) if lower else (mn - mo)
    return bool(gap > max(sn, so))
