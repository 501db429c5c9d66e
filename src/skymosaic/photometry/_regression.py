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

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from skymosaic._tiles import PlacedTile

__all__ = [
    "PairRelation",
    "Relation",
    "estimate_noise",
    "fit_linear_relation",
    "pairwise_relations",
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
    d = y - x
    keep = np.ones(d.size, dtype=bool)
    for _ in range(max(max_iter, 1)):
        med = np.median(d[keep])
        s = _robust_sigma(d[keep])
        new = np.abs(d - med) <= clip_sigma * s if s > 0 else np.ones_like(keep)
        if np.array_equal(new, keep):
            break
        keep = new
    n = int(np.count_nonzero(keep))
    med = float(np.median(d[keep]))
    s = _robust_sigma(d[keep])
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
    if xv.size < min_points:
        return _failed(f"{xv.size} valid points < min_points={min_points}", int(xv.size))
    sx = None if sigma_x is None or not np.isfinite(sigma_x) else float(sigma_x)
    sy = None if sigma_y is None or not np.isfinite(sigma_y) else float(sigma_y)

    rng = np.random.default_rng(12345)
    gain, offset = _robust_start(xv, yv, rng)
    keep = np.ones(xv.size, dtype=bool)
    signal = np.abs(xv - np.median(xv))
    for _ in range(int(max_iter)):
        resid = yv - gain * xv - offset
        s = _robust_sigma(resid[keep])
        scale = np.sqrt(s * s + (rel_tolerance * gain * signal) ** 2)
        new = np.abs(resid - np.median(resid[keep])) <= clip_sigma * scale if s > 0 else keep
        if np.count_nonzero(new) < min_points:
            break
        keep = new
        gain, offset, sx_eff, sy_eff = _deming_fit(xv[keep], yv[keep], sx, sy, gain)
        if not np.isfinite(gain) or gain <= 0:
            break
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
    )


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
) -> Relation:
    """Uncertainties (Fuller 1987, known noise ratio) and the dynamic-range decision."""
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
) -> list[PairRelation]:
    """Fit ``T_j ≈ a*T_i + c`` on every overlap and channel.

    Pixels valid in both tiles are used; noise is measured on each tile's overlap
    patch (`estimate_noise`), then at most ``max_samples`` pixels are drawn at random
    (seeded per pair, so results do not depend on the order of overlaps).

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
    out: list[PairRelation] = []
    for ov in overlaps:
        ti, tj = tiles[ov.i], tiles[ov.j]
        y0, y1, x0, x1 = ov.bbox
        si = (slice(y0 - ti.y0, y1 - ti.y0), slice(x0 - ti.x0, x1 - ti.x0))
        sj = (slice(y0 - tj.y0, y1 - tj.y0), slice(x0 - tj.x0, x1 - tj.x0))
        both = masks[ov.i][si] & masks[ov.j][sj]
        flat = np.flatnonzero(both)
        rng = np.random.default_rng([seed, ov.i, ov.j])
        if flat.size > max_samples:
            flat = np.sort(rng.choice(flat, size=max_samples, replace=False))
        for c in chans:
            pi = np.asarray(ti.data[c][si], dtype=np.float64)
            pj = np.asarray(tj.data[c][sj], dtype=np.float64)
            rel = fit_linear_relation(
                pi.ravel()[flat],
                pj.ravel()[flat],
                sigma_x=_finite_or_none(estimate_noise(pi, mask=both)),
                sigma_y=_finite_or_none(estimate_noise(pj, mask=both)),
                min_points=min_points,
                min_dynamic_range=min_dynamic_range,
                clip_sigma=clip_sigma,
            )
            if rel.status != "ok":
                logger.debug(
                    "pair (%d, %d) channel %d: %s (%s)", ov.i, ov.j, c, rel.status, rel.reason
                )
            out.append(PairRelation(ov.i, ov.j, c, rel, int(np.count_nonzero(both))))
    return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
