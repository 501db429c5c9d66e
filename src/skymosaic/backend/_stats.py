"""Array-API NaN-aware order statistics and outlier rejection along the frame axis.

The device implementations of `skymosaic.stack._reject` (whose NumPy kernels use
flat-index gathers and in-place scatters that the array API does not have). Same
definitions, same edge rules, per pixel:

* NaN = no data: never counted, never rejected; a pixel without valid samples gives NaN.
* median: mean (in float64) of the two middle valid samples for an even count.
* percentile: linear interpolation between order statistics (NumPy's default method).
* kappa-sigma / winsorized: keep ``median - kappa_low sigma <= x <= median + kappa_high
  sigma`` among the kept samples (bounds compared in the samples' dtype); a pixel starts
  with >= 3 valid samples, stops when nothing changes, when the bounds would empty it,
  or when fewer than 3 samples remain; winsorized sigma is ``1.134 std`` of the samples
  clamped at ``median +- 1.5 sigma``, iterated until it changes by <= 0.05 % (max 10).
* linear fit: line through value against rank of the kept sorted samples, sigma = mean
  absolute residual; pixels with more than 4 kept samples.
* min/max: drop the ``n_low`` lowest and ``n_high`` highest (stable by frame order)
  when more than ``n_low + n_high`` samples are valid.

Loops stop early on ``bool(xp.any(active))``: one scalar read from the device per
iteration, never an array transfer.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

__all__ = ["count_rejected", "nanmedian", "nanpercentile", "reject"]

_MIN_SIGMA = 3
_MIN_LINEAR = 4
_WINSOR_LIMIT = 1.5
_WINSOR_CORRECTION = 1.134
_WINSOR_TOL = 5e-4
_WINSOR_MAX_INNER = 10


def _sorted(xp: Any, values: Any) -> tuple[Any, Any]:
    """Values sorted along axis 0 with NaN last (as +inf) and the valid count per pixel."""
    valid = ~xp.isnan(values)
    filled = xp.where(
        valid, values, xp.asarray(float("inf"), dtype=values.dtype, device=device_of(values))
    )
    return xp.sort(filled, axis=0), xp.sum(xp.astype(valid, xp.int64), axis=0)


def _at(xp: Any, s: Any, idx: Any) -> Any:
    """``s[idx[p], p]`` for every pixel p (``idx`` clipped into the frame axis)."""
    idx = xp.clip(idx, 0, s.shape[0] - 1)
    return xp.take_along_axis(s, idx[None, ...], axis=0)[0, ...]


def _median_sorted(xp: Any, s: Any, n: Any) -> Any:
    """float64 median of the first ``n`` sorted samples (NaN where ``n == 0``)."""
    lo = xp.astype(_at(xp, s, (n - 1) // 2), xp.float64)
    hi = xp.astype(_at(xp, s, n // 2), xp.float64)
    return xp.where(n > 0, 0.5 * (lo + hi), xp.nan)


def nanmedian(values: Any) -> Any:
    """Median along axis 0 ignoring NaN, in ``values.dtype`` (NaN where no valid sample)."""
    xp = array_namespace(values)
    s, n = _sorted(xp, values)
    return xp.astype(_median_sorted(xp, s, n), values.dtype)


def nanpercentile(values: Any, q: float) -> Any:
    """``q``-th percentile along axis 0 ignoring NaN (linear interpolation), float64."""
    xp = array_namespace(values)
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    s, n = _sorted(xp, values)
    last = xp.clip(n - 1, 0, None)
    pos = xp.astype(last, xp.float64) * (q / 100.0)
    lo_i = xp.astype(xp.floor(pos), xp.int64)
    hi_i = xp.minimum(lo_i + 1, last)
    has = n > 0
    lo = xp.where(has, xp.astype(_at(xp, s, lo_i), xp.float64), 0.0)  # no inf - inf
    hi = xp.where(has, xp.astype(_at(xp, s, hi_i), xp.float64), 0.0)
    frac = pos - xp.astype(lo_i, xp.float64)
    return xp.where(has, lo + frac * (hi - lo), xp.nan)


# ------------------------------------------------------------------ rejection
def _kept_stats(xp: Any, values: Any, kept: Any) -> tuple[Any, Any, Any, Any]:
    """Sorted kept samples, their count, float64 median and population std."""
    s, n = _sorted(xp, xp.where(kept, values, xp.nan))
    med = _median_sorted(xp, s, n)
    x64 = xp.where(kept, xp.astype(values, xp.float64), 0.0)
    cnt = xp.astype(xp.clip(n, 1, None), xp.float64)
    mean = xp.sum(x64, axis=0) / cnt
    dev = xp.where(kept, x64 - mean, 0.0)
    std = xp.sqrt(xp.sum(dev * dev, axis=0) / cnt)
    return s, n, med, std


def _winsorized_sigma(xp: Any, values: Any, kept: Any, n: Any, *, med: Any, sigma: Any) -> Any:
    """Robust sigma of the kept samples winsorized at ``med +- 1.5 sigma`` (see module)."""
    x64 = xp.astype(values, xp.float64)
    cnt = xp.astype(xp.clip(n, 1, None), xp.float64)
    active = sigma > 0
    for _ in range(_WINSOR_MAX_INNER):
        if not bool(xp.any(active)):
            break
        lo, hi = med - _WINSOR_LIMIT * sigma, med + _WINSOR_LIMIT * sigma
        clamped = xp.where(kept, xp.clip(x64, lo, hi), 0.0)
        mean = xp.sum(clamped, axis=0) / cnt
        dev = xp.where(kept, clamped - mean, 0.0)
        new = _WINSOR_CORRECTION * xp.sqrt(xp.sum(dev * dev, axis=0) / cnt)
        converged = xp.abs(new - sigma) <= _WINSOR_TOL * sigma
        sigma = xp.where(active, new, sigma)
        active = active & ~converged
    return sigma


def _clip(
    xp: Any, values: Any, *, kappa_low: float, kappa_high: float, max_iter: int, winsorize: bool
) -> Any:
    valid = ~xp.isnan(values)
    kept = valid
    n_valid = xp.sum(xp.astype(valid, xp.int64), axis=0)
    active = n_valid >= _MIN_SIGMA
    for _ in range(max_iter):
        if not bool(xp.any(active)):
            break
        _, n, med, sigma = _kept_stats(xp, values, kept)
        if winsorize:
            sigma = _winsorized_sigma(xp, values, kept, n, med=med, sigma=sigma)
        lo = xp.astype(med - kappa_low * sigma, values.dtype)
        hi = xp.astype(med + kappa_high * sigma, values.dtype)
        new_kept = kept & (values >= lo) & (values <= hi)
        new_n = xp.sum(xp.astype(new_kept, xp.int64), axis=0)
        update = active & (new_n > 0) & (new_n != n)
        kept = xp.where(update, new_kept, kept)
        active = update & (new_n >= _MIN_SIGMA)
    return valid & ~kept


def _argsorted(xp: Any, values: Any) -> tuple[Any, Any, Any]:
    """Stable sort along axis 0 (NaN last): sorted values, valid mask, inverse permutation."""
    valid = ~xp.isnan(values)
    filled = xp.where(
        valid, values, xp.asarray(float("inf"), dtype=values.dtype, device=device_of(values))
    )
    order = xp.argsort(filled, axis=0, stable=True)
    s = xp.take_along_axis(values, order, axis=0)
    inverse = xp.argsort(order, axis=0, stable=True)
    return s, ~xp.isnan(s), inverse


def _rank(xp: Any, values: Any) -> Any:
    """Frame rank 0..N-1 broadcast to the shape of ``values``."""
    shape = (values.shape[0],) + (1,) * (values.ndim - 1)
    return xp.reshape(xp.arange(values.shape[0], device=device_of(values)), shape)


def _linear_fit(xp: Any, values: Any, *, kappa_low: float, kappa_high: float, max_iter: int) -> Any:
    s, valid, inverse = _argsorted(xp, values)
    kept = valid
    n_all = xp.sum(xp.astype(valid, xp.int64), axis=0)
    shift = xp.where(n_all > 0, xp.astype(_at(xp, s, (n_all - 1) // 2), xp.float64), 0.0)
    y_all = xp.astype(s, xp.float64) - shift
    active = n_all > _MIN_LINEAR
    for _ in range(max_iter):
        if not bool(xp.any(active)):
            break
        k = kept
        y = xp.where(k, y_all, 0.0)
        j = xp.astype(xp.cumulative_sum(xp.astype(k, xp.int64), axis=0) - 1, xp.float64)
        nf = xp.astype(xp.sum(xp.astype(k, xp.int64), axis=0), xp.float64)
        sx = nf * (nf - 1) / 2
        sxx = (nf - 1) * nf * (2 * nf - 1) / 6
        sy = xp.sum(y, axis=0)
        sxy = xp.sum(xp.where(k, j * y, 0.0), axis=0)
        den = nf * sxx - sx * sx
        slope = (nf * sxy - sx * sy) / xp.where(active, den, 1.0)
        icpt = (sy - slope * sx) / xp.clip(nf, 1.0, None)
        resid = y - (icpt + slope * j)
        sigma = xp.sum(xp.where(k, xp.abs(resid), 0.0), axis=0) / xp.clip(nf, 1.0, None)
        out = k & active & ((resid < -kappa_low * sigma) | (resid > kappa_high * sigma))
        n_out = xp.sum(xp.astype(out, xp.int64), axis=0)
        kept = k & ~out
        active = active & (n_out > 0) & (nf - xp.astype(n_out, xp.float64) > _MIN_LINEAR)
    return xp.take_along_axis(valid & ~kept, inverse, axis=0)


def _minmax(xp: Any, values: Any, *, n_low: int, n_high: int) -> Any:
    _, valid, inverse = _argsorted(xp, values)
    n = xp.sum(xp.astype(valid, xp.int64), axis=0)
    rank = _rank(xp, values)
    rejected = valid & (n > n_low + n_high) & ((rank < n_low) | (rank >= n - n_high))
    return xp.take_along_axis(rejected, inverse, axis=0)


def reject(
    values: Any,
    *,
    method: str,
    kappa_low: float = 3.0,
    kappa_high: float = 3.0,
    max_iter: int = 5,
    n_low: int = 1,
    n_high: int = 1,
) -> Any:
    """Rejection mask (True = valid sample rejected) of ``values`` ``(N, ...)`` on its device.

    Arguments are validated by `skymosaic.stack._reject.reject`, which dispatches here
    for non-NumPy arrays; see the module docstring for the definitions.
    """
    xp = array_namespace(values)
    if method == "none":
        return xp.zeros(values.shape, dtype=xp.bool, device=device_of(values))
    if method == "minmax":
        return _minmax(xp, values, n_low=n_low, n_high=n_high)
    if method == "linear_fit":
        return _linear_fit(
            xp, values, kappa_low=kappa_low, kappa_high=kappa_high, max_iter=max_iter
        )
    if method in ("kappa_sigma", "winsorized"):
        return _clip(
            xp,
            values,
            kappa_low=kappa_low,
            kappa_high=kappa_high,
            max_iter=max_iter,
            winsorize=method == "winsorized",
        )
    raise ValueError(f"unknown rejection method {method!r}")


def count_rejected(mask: Any) -> Any:
    """Rejected samples per frame and channel: ``(N, C, ...)`` mask -> ``(N, C)`` int64."""
    xp = array_namespace(mask)
    n = mask.shape[0]
    c = mask.shape[1] if mask.ndim >= 2 else 1
    flat = xp.reshape(xp.astype(mask, xp.int64), (n, c, -1))
    return xp.sum(flat, axis=2)
