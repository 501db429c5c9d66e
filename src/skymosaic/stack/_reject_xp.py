"""Outlier rejection along the frame axis, written once on the array API: the definition.

Every function takes ``values`` shaped ``(N, ...)`` (N registered, normalised samples per
pixel, NaN where a frame has no usable data) in any array-API namespace (NumPy, CuPy,
array-api-strict) and returns a boolean mask of the same shape on the same device, True
where a *valid* sample is rejected. Per pixel:

* NaN = no data: never counted, never rejected.
* kappa-sigma / winsorized: keep ``median - kappa_low sigma <= x <= median + kappa_high
  sigma`` among the kept samples (bounds compared in the samples' dtype); a pixel starts
  with >= `MIN_SAMPLES_SIGMA` valid samples, stops when nothing changes, when the bounds
  would empty it, or when fewer than `MIN_SAMPLES_SIGMA` samples remain; the winsorized
  sigma is ``1.134 std`` of the samples clamped at ``median +- 1.5 sigma``, iterated until
  it changes by <= 0.05 % (at most 10 times).
* linear fit: a line through value against rank of the kept sorted samples, sigma = mean
  absolute residual; pixels with more than `MIN_SAMPLES_LINEAR` kept samples.
* min/max: drop the ``n_low`` lowest and ``n_high`` highest (stable by frame order) when
  more than ``n_low + n_high`` samples are valid.

Each statistic is per pixel, so a pixel's result does not depend on the other pixels of
the chunk. Loops stop early on ``bool(xp.any(active))``: one scalar read from the device
per iteration, never an array transfer.

`skymosaic.stack._reject` dispatches here, except for NumPy arrays where its host fast
path (`skymosaic.stack._reject_numpy`, same definitions, measured 2-7x faster) exists;
``tests/test_stack.py`` checks both give identical masks.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from skymosaic.backend import median_of_sorted, sort_nan_last, take_rank

__all__ = [
    "MIN_SAMPLES_LINEAR",
    "MIN_SAMPLES_SIGMA",
    "WINSOR_CORRECTION",
    "WINSOR_LIMIT",
    "WINSOR_MAX_INNER",
    "WINSOR_TOL",
    "clip",
    "count_rejected",
    "linear_fit",
    "minmax",
    "none",
]

#: Fewer valid samples than this at a pixel: sigma-based methods leave the pixel alone.
MIN_SAMPLES_SIGMA = 3
#: Linear-fit clipping needs more points than a line has parameters (Siril uses 4 too).
MIN_SAMPLES_LINEAR = 4
#: Winsorization limit (in sigma) and the factor that makes the winsorized standard
#: deviation of a Gaussian unbiased (Huber 1981; the value Siril and PixInsight use),
#: the relative change of sigma that stops its iteration, and the most iterations.
WINSOR_LIMIT = 1.5
WINSOR_CORRECTION = 1.134
WINSOR_TOL = 5e-4
WINSOR_MAX_INNER = 10


def _kept_stats(xp: Any, values: Any, kept: Any) -> tuple[Any, Any, Any]:
    """Count, float64 median and population std of the kept samples."""
    s, n = sort_nan_last(xp.where(kept, values, xp.nan))
    med = median_of_sorted(s, n)
    x64 = xp.where(kept, xp.astype(values, xp.float64), 0.0)
    cnt = xp.astype(xp.clip(n, 1, None), xp.float64)
    mean = xp.sum(x64, axis=0) / cnt
    dev = xp.where(kept, x64 - mean, 0.0)
    std = xp.sqrt(xp.sum(dev * dev, axis=0) / cnt)
    return n, med, std


def _winsorized_sigma(xp: Any, values: Any, kept: Any, n: Any, *, med: Any, sigma: Any) -> Any:
    """Robust sigma of the kept samples winsorized at ``med +- 1.5 sigma`` (see module)."""
    x64 = xp.astype(values, xp.float64)
    cnt = xp.astype(xp.clip(n, 1, None), xp.float64)
    active = sigma > 0
    for _ in range(WINSOR_MAX_INNER):
        if not bool(xp.any(active)):
            break
        lo, hi = med - WINSOR_LIMIT * sigma, med + WINSOR_LIMIT * sigma
        clamped = xp.where(kept, xp.clip(x64, lo, hi), 0.0)
        mean = xp.sum(clamped, axis=0) / cnt
        dev = xp.where(kept, clamped - mean, 0.0)
        new = WINSOR_CORRECTION * xp.sqrt(xp.sum(dev * dev, axis=0) / cnt)
        converged = xp.abs(new - sigma) <= WINSOR_TOL * sigma
        sigma = xp.where(active, new, sigma)
        active = active & ~converged
    return sigma


def clip(
    values: Any, *, kappa_low: float, kappa_high: float, max_iter: int, winsorize: bool
) -> Any:
    """Kappa-sigma (``winsorize=False``) or winsorized sigma clipping (see module)."""
    xp = array_namespace(values)
    valid = ~xp.isnan(values)
    kept = valid
    n_valid = xp.sum(xp.astype(valid, xp.int64), axis=0)
    active = n_valid >= MIN_SAMPLES_SIGMA
    for _ in range(max_iter):
        if not bool(xp.any(active)):
            break
        n, med, sigma = _kept_stats(xp, values, kept)
        if winsorize:
            sigma = _winsorized_sigma(xp, values, kept, n, med=med, sigma=sigma)
        lo = xp.astype(med - kappa_low * sigma, values.dtype)
        hi = xp.astype(med + kappa_high * sigma, values.dtype)
        new_kept = kept & (values >= lo) & (values <= hi)
        new_n = xp.sum(xp.astype(new_kept, xp.int64), axis=0)
        update = active & (new_n > 0) & (new_n != n)
        kept = xp.where(update, new_kept, kept)
        active = update & (new_n >= MIN_SAMPLES_SIGMA)
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


def linear_fit(values: Any, *, kappa_low: float, kappa_high: float, max_iter: int) -> Any:
    """Linear-fit clipping of the sorted samples (see module)."""
    xp = array_namespace(values)
    s, valid, inverse = _argsorted(xp, values)
    kept = valid
    n_all = xp.sum(xp.astype(valid, xp.int64), axis=0)
    shift = xp.where(n_all > 0, xp.astype(take_rank(s, (n_all - 1) // 2), xp.float64), 0.0)
    y_all = xp.astype(s, xp.float64) - shift
    active = n_all > MIN_SAMPLES_LINEAR
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
        active = active & (n_out > 0) & (nf - xp.astype(n_out, xp.float64) > MIN_SAMPLES_LINEAR)
    return xp.take_along_axis(valid & ~kept, inverse, axis=0)


def minmax(values: Any, *, n_low: int, n_high: int) -> Any:
    """Drop the ``n_low`` lowest and ``n_high`` highest valid samples (see module)."""
    xp = array_namespace(values)
    _, valid, inverse = _argsorted(xp, values)
    n = xp.sum(xp.astype(valid, xp.int64), axis=0)
    shape = (values.shape[0],) + (1,) * (values.ndim - 1)
    rank = xp.reshape(xp.arange(values.shape[0], device=device_of(values)), shape)
    rejected = valid & (n > n_low + n_high) & ((rank < n_low) | (rank >= n - n_high))
    return xp.take_along_axis(rejected, inverse, axis=0)


def none(values: Any) -> Any:
    """No rejection: an all-False mask."""
    xp = array_namespace(values)
    return xp.zeros(values.shape, dtype=xp.bool, device=device_of(values))


def count_rejected(mask: Any) -> Any:
    """Rejected samples per frame and channel: ``(N, C, ...)`` mask -> ``(N, C)`` int64
    (``(N,)`` mask -> ``(N, 1)``)."""
    xp = array_namespace(mask)
    n = mask.shape[0]
    c = mask.shape[1] if mask.ndim >= 2 else 1
    flat = xp.reshape(xp.astype(mask, xp.int64), (n, c, -1))
    return xp.sum(flat, axis=2)
