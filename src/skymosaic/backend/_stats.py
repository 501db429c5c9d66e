"""Array-API NaN-aware order statistics along the frame axis.

The device implementations (and building blocks) of the statistics that need a sort:
per pixel, along axis 0,

* NaN = no data: never counted; a pixel without valid samples gives NaN.
* median: mean (in float64) of the two middle valid samples for an even count.
* percentile: linear interpolation between order statistics (NumPy's default method).

`sort_nan_last`, `take_rank` and `median_of_sorted` are public so that the algorithm
packages write their order statistics once on the array API (the outlier rejection of
`skymosaic.stack` is built on them).
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

__all__ = ["median_of_sorted", "nanmedian", "nanpercentile", "sort_nan_last", "take_rank"]


def sort_nan_last(values: Any) -> tuple[Any, Any]:
    """Values sorted along axis 0 with NaN last (as +inf) and the valid count per pixel.

    Examples
    --------
    >>> import numpy as np
    >>> s, n = sort_nan_last(np.array([[3.0, np.nan], [1.0, 2.0]]))
    >>> s.tolist(), n.tolist()
    ([[1.0, 2.0], [3.0, inf]], [2, 1])
    """
    xp = array_namespace(values)
    valid = ~xp.isnan(values)
    filled = xp.where(
        valid, values, xp.asarray(float("inf"), dtype=values.dtype, device=device_of(values))
    )
    return xp.sort(filled, axis=0), xp.sum(xp.astype(valid, xp.int64), axis=0)


def take_rank(s: Any, idx: Any) -> Any:
    """``s[idx[p], p]`` for every pixel p (``idx`` clipped into the frame axis)."""
    xp = array_namespace(s, idx)
    idx = xp.clip(idx, 0, s.shape[0] - 1)
    return xp.take_along_axis(s, idx[None, ...], axis=0)[0, ...]


def median_of_sorted(s: Any, n: Any) -> Any:
    """float64 median of the first ``n`` samples of ``s`` sorted along axis 0 (NaN where
    ``n == 0``)."""
    xp = array_namespace(s, n)
    lo = xp.astype(take_rank(s, (n - 1) // 2), xp.float64)
    hi = xp.astype(take_rank(s, n // 2), xp.float64)
    return xp.where(n > 0, 0.5 * (lo + hi), xp.nan)


def nanmedian(values: Any) -> Any:
    """Median along axis 0 ignoring NaN, in ``values.dtype`` (NaN where no valid sample)."""
    xp = array_namespace(values)
    s, n = sort_nan_last(values)
    return xp.astype(median_of_sorted(s, n), values.dtype)


def nanpercentile(values: Any, q: float) -> Any:
    """``q``-th percentile along axis 0 ignoring NaN (linear interpolation), float64."""
    xp = array_namespace(values)
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    s, n = sort_nan_last(values)
    last = xp.clip(n - 1, 0, None)
    pos = xp.astype(last, xp.float64) * (q / 100.0)
    lo_i = xp.astype(xp.floor(pos), xp.int64)
    hi_i = xp.minimum(lo_i + 1, last)
    has = n > 0
    lo = xp.where(has, xp.astype(take_rank(s, lo_i), xp.float64), 0.0)  # no inf - inf
    hi = xp.where(has, xp.astype(take_rank(s, hi_i), xp.float64), 0.0)
    frac = pos - xp.astype(lo_i, xp.float64)
    return xp.where(has, lo + frac * (hi - lo), xp.nan)
