"""Robust errors-in-variables line fits: ``y ≈ gain * x + offset`` between two noisy images.

Both images are noisy, so ordinary least squares of ``y`` on ``x`` is biased toward a zero
slope by the noise in ``x`` (regression dilution). We fit a Deming line instead (errors in
both variables, known noise ratio ``delta = sigma_y**2 / sigma_x**2``) inside an iterative
sigma-clipping loop that removes pixels off the line (moved stars, satellite trails, hot
pixels), with honest errors (`_group_scatter`, `_model_error`).

`fit_linear_relation` is also used by the stacking engine for per-frame linear-fit
normalisation; keep its signature stable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from skymosaic._stats import median as _median

__all__ = ["NOISE_LAG", "NOISE_MAX_VALUES", "Relation", "estimate_noise", "fit_linear_relation"]

logger = logging.getLogger(__name__)

_MAD_TO_SIGMA = 1.482602218505602
RelationStatus = Literal["ok", "offset_only", "failed"]


@dataclass(frozen=True)
class Relation:
    """A fitted relation ``y ≈ gain * x + offset`` between two images.

    Attributes
    ----------
    gain, offset : float
        The line. ``offset_only`` relations have ``gain == 1``; ``failed`` ones (1, 0).
    gain_err, offset_err : float
        One-sigma uncertainties (``inf`` when not constrained).
    n_used : int
        Points kept after outlier rejection.
    residual_rms : float
        Robust RMS of ``y - gain*x - offset`` over the kept points.
    status : {"ok", "offset_only", "failed"}
        ``ok``: gain and offset fitted; ``offset_only``: the data do not constrain a gain
        (too little dynamic range relative to noise), the gain is fixed to 1 and the
        offset is the median difference; ``failed``: too few points.
    reason : str
        Why the status is not ``ok`` (empty when ok).
    x_ref, y_ref : float
        A point on the line at the typical level of the data (means for ``ok``,
        medians for ``offset_only``). The global solve enforces agreement there, which
        decorrelates offsets from gains.
    level_err : float
        Uncertainty of ``y_ref`` given ``x_ref``.
    sigma_x, sigma_y : float
        Per-point noise used for the noise ratio.
    dynamic_range : float
        Signal spread in ``x`` over its noise, ``sqrt(var(x) - sigma_x**2) / sigma_x``.
    """

    gain: float
    offset: float
    gain_err: float
    offset_err: float
    n_used: int
    residual_rms: float
    status: RelationStatus
    reason: str = ""
    x_ref: float = 0.0
    y_ref: float = 0.0
    level_err: float = float("inf")
    sigma_x: float = float("nan")
    sigma_y: float = float("nan")
    dynamic_range: float = 0.0


#: Share of a line's relative model error (`_model_error`) that reaches its slope, per
#: effective region (see `fit_linear_relation`). The model error measures how far star
#: profiles resampled at different sub-pixel phases differ (1-2 % of the signal after
#: lanczos3 at FWHM 2.5 px); the pixels of one star disagree in both directions (core
#: and wings), so its slope moves by less: 0.15-0.35 of it on the pairs resting on one
#: bright star of bench_phase5 surveys (0.1-0.5 % pair-gain biases). With the whole model
#: error as the error (share 1) the pair errors were 2-3 times too large (median |pull|
#: 0.3), which weighed the pairs by how bright their brightest star was rather than by
#: how well they measure the gain.
MODEL_ERROR_SHARE = 0.3

#: Pixel lag of the differences used to measure noise (see `estimate_noise`).
NOISE_LAG = 3
#: Differences `estimate_noise` uses at most (a row stride beyond).
NOISE_MAX_VALUES = 2**17


def estimate_noise(image: np.ndarray, *, mask: np.ndarray | None = None,
                   max_values: int | None = NOISE_MAX_VALUES) -> float:
    """Robust per-pixel noise of an image from differences of pixels 3 apart.

    ``1.4826 * MAD(diff) / sqrt(2)`` along the last axis: smooth sky and sparse stars
    barely affect it. The lag of 3 pixels (not 1) matters: resampling and debayering
    correlate neighbouring pixels, and differences of adjacent pixels then underestimate
    the noise (by ~40% after a bilinear resampling), which makes pure sky look like signal
    and lets the dynamic-range test accept gains fitted to noise. At 3 px the correlation
    left by any of our kernels is below 1%.

    Parameters
    ----------
    image : ndarray, shape (..., H, W)
        Pixel values; NaN are ignored.
    mask : ndarray of bool, optional
        True where the pixel may be used (broadcast against ``image``).
    max_values : int or None
        Use at most about this many differences: every k-th row of a larger image (a fixed
        stride, so the estimate is a function of the image alone). The MAD of 2**17
        differences is within 0.4 % (one sigma) of the whole image's, and the two medians
        over them cost a quarter of those over a 1080 x 400 px overlap (the photometry runs
        eight per overlap). None: every row.

    Returns
    -------
    float
        The noise sigma, or NaN when fewer than 10 difference pairs exist.

    Examples
    --------
    >>> import numpy as np
    >>> noise = np.random.default_rng(1).normal(100.0, 5.0, (1000, 1000))
    >>> round(estimate_noise(noise), 1), round(estimate_noise(noise, max_values=None), 1)
    (5.0, 5.0)
    """
    img = np.asarray(image)
    if img.ndim < 2:
        raise ValueError(f"estimate_noise needs an image with ndim >= 2, got shape {img.shape}")
    lag = NOISE_LAG if img.shape[-1] > NOISE_LAG else 1
    m = None if mask is None else np.broadcast_to(mask, img.shape)
    if max_values is not None and img.size > max_values and img.shape[-2] > 1:
        step = min(-(-img.size // max_values), img.shape[-2])
        img = img[..., ::step, :]
        m = None if m is None else m[..., ::step, :]
    diff = img[..., lag:] - img[..., :-lag]
    ok = np.isfinite(diff)
    if m is not None:
        ok &= m[..., lag:] & m[..., :-lag]
    # float32 medians: half the memory traffic of float64, the same sigma to 1e-7.
    diff = diff[ok].astype(np.float32, copy=False)
    if diff.size < 10:
        return float("nan")
    med = _median(diff)
    return float(_MAD_TO_SIGMA * _median(np.abs(diff - med)) / np.sqrt(2.0))


def _robust_sigma(values: np.ndarray) -> float:
    return float(_MAD_TO_SIGMA * _median(np.abs(values - _median(values))))


def _deming_slope(sxx: float, syy: float, sxy: float, delta: float) -> float:
    """Deming slope for noise-variance ratio ``delta = var(err_y) / var(err_x)``."""
    if sxy == 0.0:
        return float("nan")
    if np.isinf(delta):  # x exact: ordinary regression of y on x
        return sxy / sxx
    if delta == 0.0:  # y exact: inverse regression
        return syy / sxy
    d = syy - delta * sxx
    return (d + np.sqrt(d * d + 4.0 * delta * sxy * sxy)) / (2.0 * sxy)


def _robust_start(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Outlier-resistant first line: weighted median of random pairwise slopes.

    A pair's weight is ``max(0, min(a0 |dx|, |dy|) - 3 sqrt(2) s_y)``, with ``a0`` a rough
    scale ratio of y to x and ``s_y`` the robust spread of y (mostly noise). Only pairs where
    *both* samples change well beyond the noise (a star against sky) count, so noise in
    either variable hardly attenuates the slope, noise-only pairs (whose slopes scatter
    around 0) are ignored, and an outlier in *either* image (a trail, a hot pixel or a star
    present in only one tile: a large ``dy`` at ordinary ``dx``, or the reverse) gets no
    weight. Weighting by ``|dx|`` alone would let outliers of ``x`` pull the slope to 0.
    Without any informative pair the start is the identity line (the caller then finds
    too little dynamic range and falls back to an offset-only relation).
    """
    n = x.size
    m = min(n, 20000)
    idx_a = rng.choice(n, size=m, replace=False) if n > m else np.arange(n)
    idx_b = rng.permutation(idx_a)
    dx = x[idx_b] - x[idx_a]
    dy = y[idx_b] - y[idx_a]
    spread_x, spread_y = _robust_sigma(x), _robust_sigma(y)
    a0 = spread_y / spread_x if spread_x > 0 and spread_y > 0 else 1.0
    w = np.minimum(a0 * np.abs(dx), np.abs(dy)) - 3.0 * np.sqrt(2.0) * spread_y
    keep = (dx != 0) & (w > 0)
    if np.count_nonzero(keep) < 3:
        return 1.0, float(_median(y - x))
    slopes = dy[keep] / dx[keep]
    w = w[keep]
    order = np.argsort(slopes)
    cw = np.cumsum(w[order])
    slope = float(slopes[order][np.searchsorted(cw, 0.5 * cw[-1])])
    return slope, float(_median(y - slope * x))


def _clipped_median(d: np.ndarray, clip_sigma: float,
                    max_iter: int) -> tuple[float, float, np.ndarray]:
    """Iteratively sigma-clipped median of ``d``: ``(median, robust sigma, kept mask)``."""
    keep = np.ones(d.size, dtype=bool)
    for _ in range(max(max_iter, 1)):
        med = _median(d[keep])
        s = _robust_sigma(d[keep])
        new = np.abs(d - med) <= clip_sigma * s if s > 0 else np.ones_like(keep)
        if np.array_equal(new, keep) or not new.any():
            break
        keep = new
    return float(_median(d[keep])), _robust_sigma(d[keep]), keep


def _offset_only(
    x: np.ndarray,
    y: np.ndarray,
    clip_sigma: float,
    max_iter: int,
    reason: str,
    sigma_x: float,
    sigma_y: float,
    dynamic_range: float,
) -> Relation:
    """Gain fixed to 1; robust offset = clipped median of ``y - x``."""
    med, s, keep = _clipped_median(y - x, clip_sigma, max_iter)
    n = int(np.count_nonzero(keep))
    err = 1.2533 * s / np.sqrt(n) if s > 0 else 1e-12 * max(abs(med), 1.0)
    x_ref = float(_median(x[keep]))
    return Relation(
        gain=1.0,
        offset=med,
        gain_err=float("inf"),
        offset_err=float(err),
        n_used=n,
        residual_rms=s,
        status="offset_only",
        reason=reason,
        x_ref=x_ref,
        y_ref=x_ref + med,
        level_err=float(err),
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        dynamic_range=dynamic_range,
    )


def _failed(reason: str, n_used: int) -> Relation:
    return Relation(
        gain=1.0,
        offset=0.0,
        gain_err=float("inf"),
        offset_err=float("inf"),
        n_used=n_used,
        residual_rms=float("nan"),
        status="failed",
        reason=reason,
    )


def _validate_fit_args(x, y, sigma_x, sigma_y, max_iter, clip_sigma, min_points, min_dr):
    if np.shape(x) != np.shape(y):
        raise ValueError(f"x and y must have the same shape, got {np.shape(x)} and {np.shape(y)}")
    for name, val in (("sigma_x", sigma_x), ("sigma_y", sigma_y)):
        if val is not None and not (np.isfinite(val) and val >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 or None, got {val!r}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    if not clip_sigma > 0:
        raise ValueError(f"clip_sigma must be > 0, got {clip_sigma!r}")
    if int(min_points) < 3:
        raise ValueError(f"min_points must be >= 3, got {min_points!r}")
    if not min_dr >= 0:
        raise ValueError(f"min_dynamic_range must be >= 0, got {min_dr!r}")


def fit_linear_relation(
    x: np.ndarray,
    y: np.ndarray,
    *,
    sigma_x: float | None = None,
    sigma_y: float | None = None,
    max_iter: int = 5,
    clip_sigma: float = 3.0,
    min_points: int = 50,
    min_dynamic_range: float = 1.0,
    rel_tolerance: float = 0.02,
    groups: np.ndarray | None = None,
) -> Relation:
    """Robust errors-in-variables fit of ``y ≈ gain * x + offset``.

    Deming regression with noise ratio ``delta = sigma_y**2 / sigma_x**2`` (unbiased when
    both ``x`` and ``y`` are noisy, unlike ordinary least squares), started from an
    outlier-resistant line and refined by iterative sigma clipping of the residuals
    ``y - gain*x - offset`` (each iteration re-selects from all points).

    Parameters
    ----------
    x, y : ndarray
        Paired samples (same shape; any NaN pair is dropped). ``x`` is the reference.
        Images (ndim >= 2) let the noise be measured from neighbouring pixels.
    sigma_x, sigma_y : float, optional
        Per-point noise. When missing: measured with `estimate_noise` for images; for
        1-D samples the noise ratio is assumed to follow the gain (equal signal-to-noise,
        ``sigma_y = gain * sigma_x``) and the scale comes from the residuals.
    max_iter : int
        Clipping iterations.
    clip_sigma : float
        Residuals beyond ``clip_sigma`` robust sigmas are rejected.
    min_points : int
        Fewer valid (or kept) points -> status ``failed`` with (1, 0).
    min_dynamic_range : float
        Required signal spread of ``x`` over its noise,
        ``sqrt(var(x) - sigma_x**2) / sigma_x``. Below it (e.g. a constant-sky
        overlap) the gain is unconstrained: status ``offset_only``, gain 1, offset the
        clipped median of ``y - x``.
    rel_tolerance : float
        Fractional model error added in quadrature to the clipping scale:
        a point is kept when ``|r| <= clip_sigma * sqrt(s**2 + (rel_tolerance * gain *
        |x - median(x)|)**2)``. Star cores of two images resampled from different
        pointings differ by a few percent of their height; without this term they are
        clipped as outliers and only sky (no dynamic range) is left to fit. Trails, hot
        pixels and stars present in only one image are far beyond it and still rejected.
    groups : ndarray of int, optional
        A label per point (same shape as ``x``): the regions of the image the points come
        from (`fit_overlap` uses square cells). The formal gain error assumes that every
        point measures one exact line independently; it was measured 5-15 times too small
        on lines carried by one bright star or by faint structure. With ``groups`` the
        error is (1) multiplied by the Birge ratio of the regions' own slopes when they
        disagree beyond their errors, and (2) given a floor: `MODEL_ERROR_SHARE` of the
        relative model error (`_model_error`: residual variance beyond the noise that
        grows with the signal, as two resamplings of a star at different sub-pixel phases
        leave; 0 for images on one pixel grid) divided by the square root of the
        effective number of regions that carry the gain.

    Returns
    -------
    Relation

    Raises
    ------
    ValueError
        On mismatched shapes or invalid options.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = rng.gamma(0.5, 40.0, 5000)
    >>> x = t + rng.normal(0, 1, t.size)
    >>> y = 1.1 * t + 5 + rng.normal(0, 1, t.size)
    >>> rel = fit_linear_relation(x, y, sigma_x=1.0, sigma_y=1.0)
    >>> rel.status, round(rel.gain, 2)
    ('ok', 1.1)
    """
    _validate_fit_args(x, y, sigma_x, sigma_y, max_iter, clip_sigma, min_points, min_dynamic_range)
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    both = np.isfinite(xa) & np.isfinite(ya)
    if xa.ndim >= 2:
        if sigma_x is None:
            sigma_x = estimate_noise(xa, mask=both)
        if sigma_y is None:
            sigma_y = estimate_noise(ya, mask=both)
    xv, yv = xa[both].ravel(), ya[both].ravel()
    gv = None if groups is None else np.asarray(groups).reshape(xa.shape)[both].ravel()
    if xv.size < min_points:
        return _failed(f"{xv.size} valid points < min_points={min_points}", int(xv.size))
    sx = None if sigma_x is None or not np.isfinite(sigma_x) else float(sigma_x)
    sy = None if sigma_y is None or not np.isfinite(sigma_y) else float(sigma_y)

    rng = np.random.default_rng(12345)
    gain, offset = _robust_start(xv, yv, rng)
    keep = np.ones(xv.size, dtype=bool)
    signal = np.abs(xv - _median(xv))
    fitted = False
    for _ in range(int(max_iter)):
        resid = yv - gain * xv - offset
        s = _robust_sigma(resid[keep])
        scale = np.sqrt(s * s + (rel_tolerance * gain * signal) ** 2)
        new = np.abs(resid - _median(resid[keep])) <= clip_sigma * scale if s > 0 else keep
        if np.count_nonzero(new) < min_points:
            break
        keep = new
        gain, offset, sx_eff, sy_eff = _deming_fit(xv[keep], yv[keep], sx, sy, gain)
        fitted = True
        if not np.isfinite(gain) or gain <= 0:
            break
    if not fitted:  # the first clip already left too few points: fit what is kept
        gain, offset, sx_eff, sy_eff = _deming_fit(xv[keep], yv[keep], sx, sy, gain)
    n = int(np.count_nonzero(keep))
    if n < min_points:
        return _failed(f"{n} points after clipping < min_points={min_points}", n)
    if not np.isfinite(gain) or gain <= 0:
        return _offset_only(
            xv,
            yv,
            clip_sigma,
            max_iter,
            "no positive correlation",
            sx or float("nan"),
            sy or float("nan"),
            0.0,
        )
    return _finish(
        xv[keep],
        yv[keep],
        gain,
        offset,
        sx_eff,
        sy_eff,
        min_dynamic_range,
        clip_sigma,
        max_iter,
        xv,
        yv,
        None if gv is None else gv[keep],
    )


def _model_error(resid: np.ndarray, x: np.ndarray, gain: float, sx: float, sy: float) -> float:
    """Relative model error ``eps`` of a line: ``var(resid) ~ s0**2 + (eps * gain * (x - sky))**2``.

    ``s0**2 = sy**2 + (gain * sx)**2`` is the noise; ``eps**2`` is the least-squares
    slope of the excess squared residuals against the squared signal (0 for an exact
    line with pure noise, a few 0.1 % for stars resampled at different sub-pixel phases).
    """
    signal2 = (gain * (x - _median(x))) ** 2
    excess = resid * resid - (sy * sy + (gain * sx) ** 2)
    denom = float(np.sum(signal2 * signal2))
    return float(np.sqrt(max(float(np.sum(signal2 * excess)) / denom, 0.0))) if denom > 0 else 0.0


def _group_scatter(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, sx: float, sy: float, min_dr: float,
    min_points: int = 10,
) -> tuple[float, float]:
    """How the line's support is spread over ``groups``: ``(birge ratio, effective groups)``.

    Each group with dynamic range of its own gets its own Deming slope (own intercept, so
    a sky difference between regions does not count) and the formal error of that slope.
    The Birge ratio ``sqrt(chi2 / dof)`` of these slopes about their weighted mean says
    whether the regions agree as well as their noise allows (1 when there are fewer than
    three such groups: nothing to compare); the effective number
    ``(sum w)**2 / sum(w**2)`` of the weights says how many regions carry the gain (1 for
    a line resting on one bright star).
    """
    _, label = np.unique(groups, return_inverse=True)
    n_groups = int(label.max()) + 1 if label.size else 0
    count = np.bincount(label, minlength=n_groups).astype(np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = (np.bincount(label, v, n_groups) / count for v in (xc, yc))
        vxx = np.bincount(label, xc * xc, n_groups) / count - mx * mx
        vyy = np.bincount(label, yc * yc, n_groups) / count - my * my
        vxy = np.bincount(label, xc * yc, n_groups) / count - mx * my
    var_t = vxx - sx * sx
    usable = np.flatnonzero((count >= min_points) & (var_t > (min_dr * sx) ** 2))
    if usable.size == 0:
        return 1.0, 1.0
    delta = (sy / sx) ** 2 if sx > 0 else np.inf
    slopes = np.array([_deming_slope(vxx[g], vyy[g], vxy[g], delta) for g in usable])
    var_r = vyy[usable] - 2.0 * slopes * vxy[usable] + slopes**2 * vxx[usable]
    var_s = (np.maximum(var_r, 0.0) / var_t[usable]
             + (sx * sy) ** 2 / var_t[usable] ** 2) / count[usable]
    ok = np.isfinite(slopes) & (var_s > 0)
    w, slopes = 1.0 / var_s[ok], slopes[ok]
    if w.size == 0:
        return 1.0, 1.0
    n_eff = float(w.sum() ** 2 / np.sum(w * w))
    if w.size < 3:
        return 1.0, n_eff
    mean = float(np.sum(w * slopes) / w.sum())
    chi2 = float(np.sum(w * (slopes - mean) ** 2))
    return float(np.sqrt(chi2 / (w.size - 1))), n_eff


def _deming_fit(
    x: np.ndarray, y: np.ndarray, sx: float | None, sy: float | None, gain0: float
) -> tuple[float, float, float, float]:
    """One Deming fit; returns ``gain, offset, sigma_x, sigma_y`` (noise as used)."""
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    # Plain reductions, not BLAS dot products: threaded BLAS is 6x slower on busy machines.
    sxx, syy, sxy = float((dx * dx).mean()), float((dy * dy).mean()), float((dx * dy).mean())
    gain = gain0
    if sx is not None and sy is not None:
        if sx == 0 and sy == 0:  # noise-free: every ratio gives the exact line
            delta = 1.0
        elif sx > 0:
            delta = (sy / sx) ** 2
        else:
            delta = np.inf
        gain = _deming_slope(sxx, syy, sxy, delta)
    else:
        # A noise is unknown: assume equal signal-to-noise (sigma_y = gain * sigma_x),
        # i.e. delta = gain**2, and iterate to a fixed point.
        for _ in range(50):
            new = _deming_slope(sxx, syy, sxy, gain * gain)
            converged = not np.isfinite(new) or abs(new - gain) <= 1e-12 * abs(new)
            gain = new
            if converged:
                break
    offset = my - gain * mx
    if not np.isfinite(gain):
        return gain, offset, float("nan"), float("nan")
    if sx is None or sy is None:
        var_r = float(np.var(dy - gain * dx))
        if sx is None and sy is None:
            sx = np.sqrt(var_r / (2.0 * gain * gain))
            sy = gain * sx
        elif sx is None:
            sx = sy / gain
        else:
            sy = gain * sx
    return float(gain), float(offset), float(sx), float(sy)


def _finish(
    x: np.ndarray,
    y: np.ndarray,
    gain: float,
    offset: float,
    sx: float,
    sy: float,
    min_dr: float,
    clip_sigma: float,
    max_iter: int,
    x_all: np.ndarray,
    y_all: np.ndarray,
    groups: np.ndarray | None = None,
) -> Relation:
    """Uncertainties (Fuller 1987, known noise ratio; with ``groups``, scaled by the
    regions' Birge ratio plus the measured model error per effective region, see
    `fit_linear_relation`) and the dynamic-range decision."""
    n = x.size
    mx = float(x.mean())
    var_x = float(np.var(x))
    var_t = var_x - sx * sx
    dr = float(np.sqrt(max(var_t, 0.0)) / sx) if sx > 0 else float("inf")
    if dr < min_dr or var_t <= 0:
        return _offset_only(
            x_all,
            y_all,
            clip_sigma,
            max_iter,
            f"dynamic range {dr:.3g} < min_dynamic_range={min_dr:g}",
            sx,
            sy,
            dr,
        )
    resid = y - gain * x - offset
    var_r = float(np.var(resid))
    rms = _robust_sigma(resid)
    # V(gain) = (var_r / var_t + sx^2 sy^2 / var_t^2) / n ; V(level at mean) = var_r / n.
    var_gain = (var_r / var_t + (sx * sy) ** 2 / var_t**2) / n
    if groups is not None:
        birge, n_eff = _group_scatter(x, y, groups, sx, sy, min_dr)
        model = MODEL_ERROR_SHARE * _model_error(resid, x, gain, sx, sy) * gain
        var_gain = var_gain * max(birge, 1.0) ** 2 + model**2 / n_eff
    level_var = max(var_r / n, 1e-24)
    return Relation(
        gain=gain,
        offset=offset,
        gain_err=float(np.sqrt(var_gain)),
        offset_err=float(np.sqrt(level_var + mx * mx * var_gain)),
        n_used=int(n),
        residual_rms=rms,
        status="ok",
        reason="",
        x_ref=mx,
        y_ref=float(y.mean()),
        level_err=float(np.sqrt(level_var)),
        sigma_x=float(sx),
        sigma_y=float(sy),
        dynamic_range=dr,
    )
