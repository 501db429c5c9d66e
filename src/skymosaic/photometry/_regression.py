"""Pairwise photometric relations: robust errors-in-variables line fits.

Two images of the same sky, ``x`` (reference) and ``y``, are related by
``y ≈ gain * x + offset``. Both are noisy, so ordinary least squares of ``y`` on ``x``
is biased toward a zero slope by the noise in ``x`` (regression dilution). We fit a
Deming line instead (errors in both variables, known noise ratio
``delta = sigma_y**2 / sigma_x**2``) inside an iterative sigma-clipping loop that removes
pixels off the line (moved stars, satellite trails, hot pixels).

The public entry point `fit_linear_relation` is also used by the stacking engine for
per-frame linear-fit normalisation; keep its signature stable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from skymosaic._tiles import PlacedTile

__all__ = [
    "PairRelation",
    "Relation",
    "estimate_noise",
    "fit_linear_relation",
    "fit_overlap",
    "pairwise_relations",
    "subtract_background",
]

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


@dataclass(frozen=True)
class PairRelation:
    """The relation of tile ``j`` versus tile ``i`` (``T_j ≈ a*T_i + c``) in one channel."""

    i: int
    j: int
    channel: int
    relation: Relation
    n_overlap: int

    @property
    def gain_weight(self) -> float:
        """Inverse variance of ``log(gain)``; 0 unless the relation status is ``ok``."""
        rel = self.relation
        if rel.status != "ok" or not np.isfinite(rel.gain_err) or rel.gain_err <= 0:
            return 0.0
        return float((rel.gain / rel.gain_err) ** 2)

    @property
    def level_weight(self) -> float:
        """Inverse variance of the level ``y_ref``; 0 for failed relations."""
        rel = self.relation
        if rel.status == "failed" or not np.isfinite(rel.level_err) or rel.level_err <= 0:
            return 0.0
        return float(1.0 / rel.level_err**2)


#: Pixel lag of the differences used to measure noise (see `estimate_noise`).
NOISE_LAG = 3


def estimate_noise(image: np.ndarray, *, mask: np.ndarray | None = None) -> float:
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

    Returns
    -------
    float
        The noise sigma, or NaN when fewer than 10 difference pairs exist.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim < 2:
        raise ValueError(f"estimate_noise needs an image with ndim >= 2, got shape {img.shape}")
    if mask is not None:
        img = np.where(np.broadcast_to(mask, img.shape), img, np.nan)
    lag = NOISE_LAG if img.shape[-1] > NOISE_LAG else 1
    diff = (img[..., lag:] - img[..., :-lag]).ravel()
    diff = diff[np.isfinite(diff)]
    if diff.size < 10:
        return float("nan")
    return float(_MAD_TO_SIGMA * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))


def _robust_sigma(values: np.ndarray) -> float:
    return float(_MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


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
        return 1.0, float(np.median(y - x))
    slopes = dy[keep] / dx[keep]
    w = w[keep]
    order = np.argsort(slopes)
    cw = np.cumsum(w[order])
    slope = float(slopes[order][np.searchsorted(cw, 0.5 * cw[-1])])
    return slope, float(np.median(y - slope * x))


def _clipped_median(d: np.ndarray, clip_sigma: float, max_iter: int) -> tuple[float, float, np.ndarray]:
    """Iteratively sigma-clipped median of ``d``: ``(median, robust sigma, kept mask)``."""
    keep = np.ones(d.size, dtype=bool)
    for _ in range(max(max_iter, 1)):
        med = np.median(d[keep])
        s = _robust_sigma(d[keep])
        new = np.abs(d - med) <= clip_sigma * s if s > 0 else np.ones_like(keep)
        if np.array_equal(new, keep) or not new.any():
            break
        keep = new
    return float(np.median(d[keep])), _robust_sigma(d[keep]), keep


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
    x_ref = float(np.median(x[keep]))
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
        disagree beyond their errors, and (2) given a floor: the relative model error
        (`_model_error`: residual variance beyond the noise that grows with the signal,
        as two resamplings of a star at different sub-pixel phases leave) divided by the
        square root of the effective number of regions that carry the gain.

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
    signal = np.abs(xv - np.median(xv))
    fitted = False
    for _ in range(int(max_iter)):
        resid = yv - gain * xv - offset
        s = _robust_sigma(resid[keep])
        scale = np.sqrt(s * s + (rel_tolerance * gain * signal) ** 2)
        new = np.abs(resid - np.median(resid[keep])) <= clip_sigma * scale if s > 0 else keep
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
    signal2 = (gain * (x - np.median(x))) ** 2
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
    var_s = (np.maximum(var_r, 0.0) / var_t[usable] + (sx * sy) ** 2 / var_t[usable] ** 2) / count[usable]
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
        else:
            delta = (sy / sx) ** 2 if sx > 0 else np.inf
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
        var_gain = var_gain * max(birge, 1.0) ** 2 + (_model_error(resid, x, gain, sx, sy) * gain) ** 2 / n_eff
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


def detrend(image: np.ndarray, valid: np.ndarray, order: int = 1) -> np.ndarray:
    """``image`` minus its least-squares polynomial surface over ``valid`` (NaN elsewhere).

    A *linear* operation: applied to two images related by ``y = a*x + b + plane``, it
    gives ``detrend(y) = a * detrend(x)`` exactly (a least-squares projection leaves
    nothing of a plane), so the gain is unchanged while the sky gradients, which differ
    between exposures, are gone. Nebulosity beyond a plane stays and still constrains the
    gain. (A non-linear background estimate, such as a clipped mesh, would not preserve
    the relation: its bias depends on the noise.)
    """
    img = np.asarray(image, dtype=np.float64)
    yy, xx = np.nonzero(valid)
    if yy.size < 10:
        return np.where(valid, img - (np.nanmedian(img[valid]) if yy.size else 0.0), np.nan)
    h, w = img.shape
    u, v = (xx - 0.5 * w) / max(w, 1), (yy - 0.5 * h) / max(h, 1)
    cols = [np.ones_like(u)]
    for k in range(1, order + 1):
        cols += [u ** (k - j) * v**j for j in range(k + 1)]
    design = np.stack(cols, axis=1)
    coef, *_ = np.linalg.lstsq(design, img[yy, xx], rcond=None)
    out = np.full(img.shape, np.nan)
    out[yy, xx] = img[yy, xx] - design @ coef
    return out


def subtract_background(image: np.ndarray, valid: np.ndarray, mesh: int) -> np.ndarray:
    """``image`` minus its mesh background (sep, sources clipped), NaN outside ``valid``.

    What is left are compact sources (stars, galaxy cores) on a zero sky: sky gradients and
    smooth nebulosity, which differ between exposures for reasons other than the gain
    (airglow, moonlight, flat-field residuals), are gone. A mesh of a few times the PSF
    width keeps the stars; the 3x3 median filter of the mesh rejects meshes dominated by a
    bright star. Images smaller than a mesh use one mesh.
    """
    import sep  # noqa: PLC0415 - optional at import time of the photometry package

    img = np.ascontiguousarray(np.where(valid, image, 0.0), dtype=np.float64)
    h, w = img.shape
    bw, bh = max(2, min(int(mesh), w)), max(2, min(int(mesh), h))
    try:
        back = sep.Background(img, mask=np.ascontiguousarray(~valid), bw=bw, bh=bh, fw=3, fh=3).back()
    except Exception as err:
        logger.debug("mesh background failed (%s): subtracting the median", err)
        back = np.median(img[valid]) if valid.any() else 0.0
    return np.where(valid, img - back, np.nan)


def _sky_noise(image: np.ndarray, valid: np.ndarray) -> float:
    """`estimate_noise` with the sources masked (crowded fields inflate the plain estimate)."""
    sigma = estimate_noise(image, mask=valid)
    for _ in range(2):
        if not np.isfinite(sigma) or sigma <= 0:
            break
        level = np.nanmedian(np.where(valid, image, np.nan))
        bright = ndimage.binary_dilation(np.abs(np.where(valid, image, level) - level) > 3 * sigma,
                                         iterations=2)
        sky = valid & ~bright
        if np.count_nonzero(sky) < 0.2 * np.count_nonzero(valid):
            break
        sigma = estimate_noise(image, mask=sky)
    return sigma


def _detect(hx: np.ndarray, hy: np.ndarray, valid: np.ndarray, sx: float, sy: float, *,
            threshold: float, max_stars: int):
    """Compact sources of two background-subtracted images (sep), brightest first.

    Detected on ``hx/sx + hy/sy``, so neither image's noise decides alone which stars
    enter (a one-sided selection would bias the slope). Sources whose core is not inside
    ``valid`` are dropped. Returns a sep object array (possibly empty).
    """
    import sep  # noqa: PLC0415

    det = np.ascontiguousarray(np.where(valid, hx / sx + hy / sy, 0.0), dtype=np.float64)
    try:
        objs = sep.extract(det, threshold * np.sqrt(2.0), mask=np.ascontiguousarray(~valid),
                           minarea=4, deblend_cont=0.005, clean=True)
    except Exception as err:
        logger.debug("source extraction failed (%s)", err)
        return np.empty(0, dtype=[("x", "f8"), ("y", "f8"), ("a", "f8"), ("b", "f8"), ("flux", "f8")])
    if len(objs) == 0:
        return objs
    objs = np.sort(objs, order="flux")[::-1][:max_stars]
    fwhm = 2.3548 * float(np.median(np.sqrt(np.abs(objs["a"] * objs["b"]))))
    inside = ndimage.distance_transform_edt(np.pad(valid, 1))[1:-1, 1:-1]
    iy = np.clip(np.round(objs["y"]).astype(int), 0, valid.shape[0] - 1)
    ix = np.clip(np.round(objs["x"]).astype(int), 0, valid.shape[1] - 1)
    return objs[inside[iy, ix] > max(fwhm, 1.5)]


def _psf_size_ratio(objs, hx: np.ndarray, hy: np.ndarray, valid: np.ndarray) -> float:
    """Median ratio of the half-light radii of the 30 brightest sources, ``y`` over ``x``.

    Measured at the same positions with the same masks, so crowding and the overlap's edges
    affect both images alike: the ratio says whether the seeing (or the resampling) made
    one image's stars wider. NaN with fewer than 3 sources.
    """
    import sep  # noqa: PLC0415

    objs = objs[:30]
    if len(objs) < 3:
        return float("nan")
    rmax = np.full(len(objs), max(5.0, 5.0 * float(np.median(np.sqrt(np.abs(objs["a"] * objs["b"]))))))
    mask = np.ascontiguousarray(~valid)
    radii = []
    for h in (hx, hy):
        img = np.ascontiguousarray(np.where(valid, h, 0.0), dtype=np.float64)
        radii.append(sep.flux_radius(img, objs["x"], objs["y"], rmax, 0.5, mask=mask, subpix=5)[0])
    good = np.isfinite(radii[0]) & np.isfinite(radii[1]) & (radii[0] > 0) & (radii[1] > 0)
    return float(np.median(radii[1][good] / radii[0][good])) if np.count_nonzero(good) >= 3 else float("nan")


def _star_fluxes(objs, hx: np.ndarray, hy: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Aperture fluxes (radius 3 FWHM, >= 3 px) of ``objs`` in both images.

    The aperture holds nearly all the flux whatever the PSF, so a sharper image in one
    exposure does not change the ratio. Both sums run over the same valid pixels, so an
    aperture cut by the overlap's edge still compares like with like.
    Returns ``(flux_x, flux_y, aperture area)``.
    """
    import sep  # noqa: PLC0415

    if len(objs) == 0:
        return np.empty(0), np.empty(0), 0.0
    fwhm = 2.3548 * float(np.median(np.sqrt(np.abs(objs["a"] * objs["b"]))))
    radius = max(3.0, 3.0 * fwhm)
    mask = np.ascontiguousarray(~valid)
    fluxes = []
    for h in (hx, hy):
        img = np.ascontiguousarray(np.where(valid, h, 0.0), dtype=np.float64)
        fluxes.append(sep.sum_circle(img, objs["x"], objs["y"], radius, mask=mask, subpix=5)[0])
    return fluxes[0], fluxes[1], float(np.pi * radius * radius)


def _flux_ratio_gain(
    fx: np.ndarray, fy: np.ndarray, ex, ey, *,
    min_snr: float, min_stars: int, clip_sigma: float, max_iter: int,
) -> tuple[float, float, int, float, str]:
    """Gain ``fy/fx`` of matched aperture fluxes: a clipped weighted mean of log ratios.

    ``u_k = ln(fy_k / fx_k)`` has variance ``(ex/fx)**2 + (ey/fy)**2`` from the noise, plus
    an intrinsic scatter ``tau**2`` (estimated from the spread) that stops the brightest
    stars from dominating: unlike a line fit, where the few brightest points have all the
    leverage, a saturated or non-linear bright star (its ratio is off) is one clipped
    point. Stars enter when their mean signal-to-noise in both images is >= ``min_snr``
    (a symmetric cut: the log-ratio bias of a noisy ``fx`` and of a noisy ``fy`` cancel).
    Returns ``(gain, gain_err, n_used, rms of u, reason)``; ``gain`` is NaN with a reason
    when fewer than ``min_stars`` stars qualify.
    """
    ex, ey = np.broadcast_to(ex, fx.shape), np.broadcast_to(ey, fy.shape)
    snr = 0.5 * (fx / ex + fy / ey)
    sel = (snr >= min_snr) & (fx > 0) & (fy > 0)
    if np.count_nonzero(sel) < min_stars:
        return float("nan"), float("inf"), int(np.count_nonzero(sel)), float("nan"), (
            f"{np.count_nonzero(sel)} sources with S/N >= {min_snr:g} < min_stars={min_stars}")
    u = np.log(fy[sel] / fx[sel])
    var = (ex[sel] / fx[sel]) ** 2 + (ey[sel] / fy[sel]) ** 2
    keep = np.ones(u.size, dtype=bool)
    mean, err, tau2 = float(np.median(u)), float("inf"), 0.0
    for _ in range(max(int(max_iter), 1)):
        spread = _robust_sigma(u[keep])
        tau2 = max(spread * spread - float(np.median(var[keep])), 0.0)
        w = 1.0 / (var + tau2)
        scale = np.sqrt(var + tau2)
        new = np.abs(u - mean) <= clip_sigma * scale
        if np.count_nonzero(new) < min_stars:
            break
        keep = new
        mean = float(np.sum(w[keep] * u[keep]) / np.sum(w[keep]))
        err = float(1.0 / np.sqrt(np.sum(w[keep])))
    n = int(np.count_nonzero(keep))
    if not np.isfinite(err):
        return float("nan"), float("inf"), n, float("nan"), "flux ratios too scattered to clip"
    gain = float(np.exp(mean))
    return gain, gain * err, n, _robust_sigma(u[keep]), ""


def fit_overlap(
    x: np.ndarray,
    y: np.ndarray,
    valid: np.ndarray,
    *,
    gain_from: Literal["auto", "stars", "pixels", "none"] = "auto",
    detrend_order: int = 1,
    gain_mesh: int = 16,
    min_stars: int = 5,
    star_threshold: float = 5.0,
    star_snr: float = 20.0,
    psf_tolerance: float = 0.03,
    max_gain_error: float = 0.1,
    max_samples: int = 20000,
    rng: np.random.Generator | None = None,
    min_points: int = 50,
    min_dynamic_range: float = 1.0,
    clip_sigma: float = 3.0,
    max_iter: int = 5,
) -> Relation:
    """Relation ``y ≈ gain * x + offset`` of two images of the same overlap.

    The **gain** comes from what the sky gradients cannot fake:

    * ``pixels``: a Deming line (`fit_linear_relation`) through the pixels of the two
      images, each minus its least-squares plane (`detrend`). Fitted on the raw pixels
      the line also follows the sky: each exposure has its own gradient, and a gradient
      that lines up with faint nebulosity in a narrow overlap tilts the line by several
      percent while its formal error says a fraction of a percent (measured on a
      synthetic survey: pair gains 2-17% off; after detrending, within their errors).
    * ``stars``: a clipped weighted mean of the log ratios of aperture fluxes of the
      sources detected in both images after a mesh background subtraction
      (`_flux_ratio_gain`). Insensitive to the PSF and to a few saturated stars, but
      ~3x noisier than the pixels, which use the PSF as a matched filter.
    * ``auto`` (default): both; the pixel gain unless the stars' half-light radii differ
      by more than ``psf_tolerance`` between the images or the two gains disagree by more
      than 3 combined sigmas: then the aperture gain. A pixel fit compares peak heights,
      which follow the seeing (measured on 2MASS M17 tiles from different scans: pixel
      gains 0.945-0.98 where the zero points agree to 0.25%).

    Too little signal (dynamic range, or fewer than ``min_stars`` sources for
    ``stars``) gives ``offset_only``. The **level** (``x_ref``, ``y_ref`` and
    ``offset``) comes from the raw pixels: the clipped median of ``y - gain * x``, so the
    global solve matches the sky as it is.

    Parameters
    ----------
    x, y : ndarray, shape (H, W)
        The two images on the same pixels (``x`` is the reference).
    valid : ndarray of bool, shape (H, W)
        Pixels valid in both.
    gain_from : {"auto", "stars", "pixels", "none"}
        How the gain is measured (above); ``none``: offset-only relations.
    detrend_order : int
        Order of the polynomial surface removed before the pixel fit (-1: none).
    gain_mesh : int
        Background mesh (px) subtracted before source detection and apertures.
    min_stars : int
        Fewest usable sources for a gain (``gain_from="stars"``).
    star_threshold : float
        Detection threshold in sigma of each image's noise.
    star_snr : float
        Smallest aperture signal-to-noise of a source used for the gain.
    psf_tolerance : float
        ``auto`` uses the aperture gain when the median half-light radius ratio of the
        two images' stars differs from 1 by more than this.
    max_gain_error : float
        Largest relative gain error of a usable gain; a looser one (a handful of faint
        stars, a line resting on one star) says nothing the prior does not: the relation
        becomes offset-only.
    max_samples : int
        Random pixels used by the fits (and most sources kept, brightest first).
    rng : numpy.random.Generator, optional
        For the sampling (default: seeded, reproducible).
    min_points, min_dynamic_range, clip_sigma, max_iter
        As in `fit_linear_relation`.

    Returns
    -------
    Relation
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.shape != np.shape(valid) or xa.ndim != 2:
        raise ValueError(f"fit_overlap needs 2-D x, y and valid of one shape, got "
                         f"{xa.shape}, {ya.shape}, {np.shape(valid)}")
    both = np.asarray(valid, dtype=bool) & np.isfinite(xa) & np.isfinite(ya)
    flat = np.flatnonzero(both)
    if flat.size < min_points:
        return _failed(f"{flat.size} valid points < min_points={min_points}", int(flat.size))
    rng = rng if rng is not None else np.random.default_rng(0)
    if flat.size > max_samples:
        flat = np.sort(rng.choice(flat, size=max_samples, replace=False))
    if gain_from == "none":
        return _offset_only(xa.ravel()[flat], ya.ravel()[flat], clip_sigma, max_iter,
                            "gains disabled (offset-only)", float("nan"), float("nan"), 0.0)
    if detrend_order >= 0:
        dx, dy = detrend(xa, both, detrend_order), detrend(ya, both, detrend_order)
    else:
        dx, dy = xa, ya
    sigma_x = _finite_or_none(_sky_noise(dx, both))
    sigma_y = _finite_or_none(_sky_noise(dy, both))
    if gain_from in ("stars", "auto"):
        hx, hy = subtract_background(xa, both, gain_mesh), subtract_background(ya, both, gain_mesh)
    xs, ys = xa.ravel()[flat], ya.ravel()[flat]
    star_rel, psf_ratio = None, float("nan")
    if gain_from in ("stars", "auto") and sigma_x and sigma_y:
        objs = _detect(hx, hy, both, sigma_x, sigma_y, threshold=star_threshold, max_stars=max_samples)
        fx, fy, area = _star_fluxes(objs, hx, hy, both)
        psf_ratio = _psf_size_ratio(objs, hx, hy, both)
        ex, ey = sigma_x * np.sqrt(area), sigma_y * np.sqrt(area)
        gain, gain_err, n_stars, rms, reason = _flux_ratio_gain(
            fx, fy, ex, ey, min_snr=star_snr, min_stars=min_stars, clip_sigma=clip_sigma,
            max_iter=max_iter)
        star_rel = Relation(
            gain=gain if np.isfinite(gain) else 1.0, offset=0.0, gain_err=gain_err,
            offset_err=float("inf"), n_used=n_stars, residual_rms=rms,
            status="ok" if np.isfinite(gain) else "offset_only", reason=reason,
            sigma_x=sigma_x, sigma_y=sigma_y,
            dynamic_range=float(np.max(fx / ex)) if fx.size else 0.0)
        star_rel = _bounded(star_rel, max_gain_error, "aperture")
    rel = star_rel
    if gain_from in ("pixels", "auto") or star_rel is None:
        pix_rel = fit_linear_relation(
            dx.ravel()[flat], dy.ravel()[flat], sigma_x=sigma_x, sigma_y=sigma_y,
            min_points=min_points, min_dynamic_range=min_dynamic_range, clip_sigma=clip_sigma,
            max_iter=max_iter, groups=_cell_labels(both.shape, flat.size).ravel()[flat],
        )
        pix_rel = _bounded(pix_rel, max_gain_error, "pixel")
        rel = pix_rel
        if star_rel is not None and star_rel.status == "ok" and pix_rel.status != "ok":
            rel = star_rel
        elif star_rel is not None and star_rel.status == "ok" and abs(psf_ratio - 1.0) > psf_tolerance:
            rel = dataclasses.replace(star_rel, reason=(
                f"PSF sizes differ (half-light radius ratio {psf_ratio:.3f}): aperture gain used"))
        elif star_rel is not None and star_rel.status == "ok" and pix_rel.status == "ok":
            # Pixels compare peak heights (PSF-sensitive, led by the brightest, possibly
            # saturated stars); apertures compare fluxes. Trust the pixels only when the
            # two agree within 3 combined sigmas, else the apertures (and say so). (Taking
            # the aperture gain whenever its stated error is the smaller was measured
            # worse: star-flux scatter 0.61/0.31/0.63 % against 0.38/0.33/0.49 %,
            # bench_phase5 --channels 3.)
            diff = abs(np.log(pix_rel.gain / star_rel.gain))
            tol = 3.0 * np.hypot(pix_rel.gain_err / pix_rel.gain, star_rel.gain_err / star_rel.gain)
            if diff > tol:
                rel = dataclasses.replace(star_rel, reason=(
                    f"pixel fit {pix_rel.gain:.4f} disagrees with aperture fluxes "
                    f"{star_rel.gain:.4f}: aperture gain used"))
    if rel.status == "failed":
        return rel
    if rel.status == "offset_only":
        return _offset_only(xs, ys, clip_sigma, max_iter, rel.reason, rel.sigma_x, rel.sigma_y,
                            rel.dynamic_range)
    med, s, keep = _clipped_median(ys - rel.gain * xs, clip_sigma, max_iter)
    n = int(np.count_nonzero(keep))
    level_err = 1.2533 * s / np.sqrt(n) if s > 0 else 1e-12 * max(abs(med), 1.0)
    x_ref = float(np.mean(xs[keep]))
    return dataclasses.replace(
        rel,
        offset=med,
        offset_err=float(np.sqrt(level_err**2 + (x_ref * rel.gain_err) ** 2)),
        x_ref=x_ref,
        y_ref=rel.gain * x_ref + med,
        level_err=float(level_err),
    )


def _bounded(rel: Relation, max_gain_error: float, what: str) -> Relation:
    """``rel`` as offset-only (gain 1, with the reason) when its relative gain error is too large."""
    if rel.status != "ok" or rel.gain_err <= max_gain_error * rel.gain:
        return rel
    return dataclasses.replace(
        rel, status="offset_only", gain=1.0, gain_err=float("inf"),
        reason=f"{what} gain {rel.gain:.4g} +- {rel.gain_err:.2g} is looser than "
               f"max_gain_error={max_gain_error:g}")


def _cell_labels(shape: tuple[int, int], n_points: int, target: int = 16) -> np.ndarray:
    """A label per pixel: square cells sized so that ``n_points`` fall in ~``target`` cells."""
    cell = max(4, round(np.sqrt(max(n_points, 1) / target)))
    rows, cols = np.arange(shape[0]) // cell, np.arange(shape[1]) // cell
    return rows[:, None] * (cols[-1] + 1) + cols[None, :]


def pairwise_relations(
    tiles: list[PlacedTile],
    overlaps: list,
    *,
    channels: list[int] | None = None,
    max_samples: int = 20000,
    seed: int = 0,
    masks: list[np.ndarray] | None = None,
    min_points: int = 50,
    min_dynamic_range: float = 1.0,
    clip_sigma: float = 3.0,
    gain_mesh: int = 16,
    gain_from: str = "auto",
    threads: int = 1,
) -> list[PairRelation]:
    """Fit ``T_j ≈ a*T_i + c`` on every overlap and channel.

    Pixels valid in both tiles are used (`fit_overlap`: the gain from the compact sources
    once each patch's mesh background is removed, the level from the raw pixels); at most
    ``max_samples`` pixels are drawn at random (seeded per pair, so results do not depend
    on the order of overlaps).

    Parameters
    ----------
    tiles : list of PlacedTile
    overlaps : list of Overlap
        From `find_overlaps` (``i < j`` indices into ``tiles``).
    channels : list of int, optional
        Channels to fit (default: all).
    max_samples : int
        Random subsample size per pair and channel.
    seed : int
        Base seed.
    masks : list of ndarray of bool, optional
        Per-tile valid masks (default: `valid_mask` with its default epsilon).
    min_points, min_dynamic_range, clip_sigma
        Passed to `fit_linear_relation`.
    gain_mesh, gain_from
        See `fit_overlap`.
    threads : int
        Pairs fitted at once (a thread pool; 0 = all cores). The results do not depend
        on it: each fit has its own seeded sampling and the list keeps the overlap order.

    Returns
    -------
    list of PairRelation
        One per overlap and channel, failed ones included (status ``failed``).
    """
    from skymosaic.photometry._masks import valid_mask  # noqa: PLC0415 (avoid cycle)

    n_ch = tiles[0].data.shape[0] if tiles else 0
    chans = list(range(n_ch)) if channels is None else [int(c) for c in channels]
    for c in chans:
        if not 0 <= c < n_ch:
            raise ValueError(f"channel {c} out of range for {n_ch}-channel tiles")
    if max_samples < min_points:
        raise ValueError(f"max_samples={max_samples} must be >= min_points={min_points}")
    if masks is None:
        masks = [np.asarray(valid_mask(t.data)) for t in tiles]
    def fit(ov) -> list[PairRelation]:
        ti, tj = tiles[ov.i], tiles[ov.j]
        y0, y1, x0, x1 = ov.bbox
        si = (slice(y0 - ti.y0, y1 - ti.y0), slice(x0 - ti.x0, x1 - ti.x0))
        sj = (slice(y0 - tj.y0, y1 - tj.y0), slice(x0 - tj.x0, x1 - tj.x0))
        both = masks[ov.i][si] & masks[ov.j][sj]
        n_both = int(np.count_nonzero(both))
        found = []
        for c in chans:
            rel = fit_overlap(
                ti.data[c][si], tj.data[c][sj], both, gain_mesh=gain_mesh, gain_from=gain_from,
                max_samples=max_samples, rng=np.random.default_rng([seed, ov.i, ov.j]),
                min_points=min_points, min_dynamic_range=min_dynamic_range, clip_sigma=clip_sigma,
            )
            if rel.status != "ok":
                logger.debug("pair (%d, %d) channel %d: %s (%s)", ov.i, ov.j, c, rel.status, rel.reason)
            found.append(PairRelation(ov.i, ov.j, c, rel, n_both))
        return found

    workers = threads or (os.cpu_count() or 1)
    if workers == 1 or len(overlaps) < 2:
        return [r for ov in overlaps for r in fit(ov)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for rels in pool.map(fit, overlaps) for r in rels]


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
