"""Mosaic quality metrics against a known truth (all NaN-aware).

Conventions: images are (C, H, W) or (H, W) float arrays, NaN = no data. A ``mask`` is a
boolean (H, W) array where True marks pixels to *exclude* (photutils convention).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import sep
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage
from scipy.spatial import cKDTree

from skymosaic.synth._sky import TruthSky, _tan_project

__all__ = [
    "coverage_fraction",
    "fit_affine",
    "frame_border_mask",
    "residual_map",
    "residual_rms",
    "seam_score",
    "star_flux_scatter",
]

logger = logging.getLogger(__name__)

_MAD_TO_SIGMA = 1.4826
_MEDIAN_CHI2_1 = 0.45493642  # median of a chi-square with one degree of freedom


def _as_chw(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (C, H, W) or (H, W), got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _pair(mosaic: Any, truth: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and return (mosaic, truth, valid) with valid (C, H, W)."""
    m, t = _as_chw(mosaic, "mosaic"), _as_chw(truth, "truth")
    if m.shape[1:] != t.shape[1:]:
        raise ValueError(f"mosaic {m.shape} and truth {t.shape} differ in (H, W)")
    if t.shape[0] != m.shape[0]:
        if t.shape[0] != 1:
            raise ValueError(f"mosaic has {m.shape[0]} channels, truth {t.shape[0]}")
        t = np.broadcast_to(t, m.shape)
    valid = np.isfinite(m) & np.isfinite(t)
    if mask is not None:
        mk = np.asarray(mask, dtype=bool)
        if mk.shape != m.shape[1:]:
            raise ValueError(f"mask shape {mk.shape} does not match image (H, W) {m.shape[1:]}")
        valid &= ~mk[None]
    return m, t, valid


def fit_affine(mosaic: Any, truth: Any, *, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``mosaic ≈ scale * truth + offset``, per channel.

    Parameters
    ----------
    mosaic, truth : array (C, H, W) or (H, W)
        Same (H, W); a single-channel truth is used for every mosaic channel.
    mask : bool array (H, W), optional
        True = exclude. Pixels NaN in either image are always excluded.

    Returns
    -------
    scale, offset : ndarray (C,) float64

    Raises
    ------
    ValueError
        On mismatched shapes, or a channel with fewer than 2 valid pixels or a constant
        truth.
    """
    m, t, valid = _pair(mosaic, truth, mask)
    scale = np.empty(m.shape[0])
    offset = np.empty(m.shape[0])
    for c in range(m.shape[0]):
        tv = t[c][valid[c]].astype(np.float64)
        mv = m[c][valid[c]].astype(np.float64)
        if tv.size < 2:
            raise ValueError(f"channel {c}: {tv.size} pixel(s) valid in both images, need >= 2")
        tm, mm = tv.mean(), mv.mean()
        var = np.mean((tv - tm) ** 2)
        if not var > 0:
            raise ValueError(f"channel {c}: truth is constant over the valid pixels")
        scale[c] = np.mean((tv - tm) * (mv - mm)) / var
        offset[c] = mm - scale[c] * tm
    return scale, offset


def residual_map(mosaic: Any, truth: Any, *, mask: Any = None) -> np.ndarray:
    """``mosaic - (scale * truth + offset)`` with the `fit_affine` solution.

    Returns
    -------
    ndarray (C, H, W) float32
        NaN where either input is NaN or ``mask`` is True.
    """
    m, t, valid = _pair(mosaic, truth, mask)
    scale, offset = fit_affine(m, t, mask=mask)
    res = m - (scale[:, None, None] * t + offset[:, None, None]).astype(np.float32)
    res[~valid] = np.nan
    return res.astype(np.float32, copy=False)


def residual_rms(mosaic: Any, truth: Any, *, mask: Any = None, relative: bool = False) -> float:
    """Robust RMS of the `residual_map`, all channels pooled.

    Defined as ``sqrt(median(r**2) / 0.4549)``: equal to the RMS for Gaussian residuals
    (0.4549 is the median of chi-square with 1 d.o.f.), insensitive to a few outliers, and
    about zero, so a residual bias counts too.

    Parameters
    ----------
    relative : bool
        Divide by the dynamic range of the fitted truth, ``p99.9 - p0.1`` of
        ``scale * truth + offset`` over the valid pixels (a scale-free number).

    Returns
    -------
    float
    """
    m, t, valid = _pair(mosaic, truth, mask)
    res = residual_map(m, t, mask=mask)
    r = res[np.isfinite(res)]
    if r.size == 0:
        raise ValueError("no pixel is valid in both mosaic and truth")
    rms = math.sqrt(float(np.median(r.astype(np.float64) ** 2)) / _MEDIAN_CHI2_1)
    if not relative:
        return rms
    scale, offset = fit_affine(m, t, mask=mask)
    fitted = (scale[:, None, None] * t + offset[:, None, None])[valid]
    lo, hi = np.percentile(fitted, [0.1, 99.9])
    if not hi > lo:
        raise ValueError("the fitted truth has no dynamic range (p99.9 == p0.1)")
    return rms / float(hi - lo)


def coverage_fraction(mosaic: Any) -> float:
    """Fraction of output pixels finite in every channel."""
    m = _as_chw(mosaic, "mosaic")
    if m.shape[1] * m.shape[2] == 0:
        raise ValueError(f"mosaic is empty, shape {m.shape}")
    return float(np.mean(np.all(np.isfinite(m), axis=0)))


def _densify(points: np.ndarray, step: float = 1.0) -> np.ndarray:
    """Closed polygon (N, 2) -> points spaced at most ``step`` along every edge."""
    out = []
    nxt = np.roll(points, -1, axis=0)
    for p, q in zip(points, nxt, strict=True):
        k = max(1, math.ceil(float(np.hypot(*(q - p))) / step))
        t = np.arange(k)[:, None] / k
        out.append(p + t * (q - p))
    return np.concatenate(out)


def _frame_outline(item: Any) -> tuple[WCS, list[np.ndarray]]:
    """Outline(s) of a frame's valid region in its own pixel coordinates (x, y)."""
    if hasattr(item, "wcs") and hasattr(item, "data"):
        data = np.asarray(item.data)
        valid = np.all(np.isfinite(data), axis=0) if data.ndim == 3 else np.isfinite(data)
        item = (item.wcs, valid)
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise ValueError(f"each frame must be (wcs, shape), (wcs, valid_mask) or a frame "
                         f"object, got {type(item).__name__}")
    wcs, second = item
    if isinstance(second, np.ndarray) and second.ndim == 2:
        cs, _ = cv2.findContours(second.astype(np.uint8), cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_SIMPLE)
        return wcs, [_densify(c[:, 0, :].astype(np.float64)) for c in cs if len(c) >= 2]
    h, w = (int(v) for v in second)
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    return wcs, [_densify(corners, step=2.0)]


def frame_border_mask(
    frames: Sequence[Any], out_wcs: WCS, out_shape: tuple[int, int], *, width: int = 2
) -> np.ndarray:
    """Output pixels within ``width`` pixels of any input frame's footprint edge.

    Parameters
    ----------
    frames : sequence
        Each item is ``(wcs, (H, W))`` (the whole frame rectangle), ``(wcs, valid_mask)``
        with a bool (H, W) mask (the outline of the valid region, e.g. NaN corners cut
        off), or an object with ``.wcs`` and ``.data`` (such as `SynthFrame`; valid =
        finite in every channel).
    out_wcs : astropy.wcs.WCS
        Output grid WCS.
    out_shape : (int, int)
        Output ``(H, W)``.
    width : int
        Half-width of the border band in output pixels (>= 0).

    Returns
    -------
    ndarray bool (H, W)
    """
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width!r}")
    if len(out_shape) != 2 or min(out_shape) < 1:
        raise ValueError(f"out_shape must be (H, W) with positive sizes, got {out_shape!r}")
    h, w = int(out_shape[0]), int(out_shape[1])
    canvas = np.zeros((h, w), dtype=np.uint8)
    shift = 4  # cv2 fixed-point: coordinates in 1/16 pixel
    for item in frames:
        wcs, outlines = _frame_outline(item)
        for line in outlines:
            world = wcs.celestial.pixel_to_world_values(line[:, 0], line[:, 1])
            x, y = out_wcs.celestial.world_to_pixel_values(*world)
            pts = np.column_stack([x, y])
            pts = pts[np.all(np.isfinite(pts), axis=1)]
            pts = np.clip(pts, -4.0 * (h + w), 4.0 * (h + w))
            if len(pts) < 2:
                continue
            fixed = np.rint(pts * (1 << shift)).astype(np.int32)
            cv2.polylines(canvas, [fixed], isClosed=True, color=1, thickness=1, shift=shift)
    if not canvas.any():
        return canvas.astype(bool)
    dist = ndimage.distance_transform_edt(canvas == 0)
    return dist <= width


def _nan_smooth(img: np.ndarray, sigma: float, *, min_support: float = 0.98) -> np.ndarray:
    """Normalised-convolution Gaussian smoothing.

    NaN stays NaN, and so do pixels whose kernel sees less than ``min_support`` of valid
    weight (next to missing data the average of fewer pixels is noisier, which would
    bias the seam score at the mosaic's outer edge).
    """
    valid = np.isfinite(img)
    if sigma <= 0:
        return img.astype(np.float64)
    num = ndimage.gaussian_filter(np.where(valid, img, 0.0).astype(np.float64), sigma,
                                  mode="constant")
    den = ndimage.gaussian_filter(valid.astype(np.float64), sigma, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~valid | (den < min_support)] = np.nan
    return out


def _grad_mag(img: np.ndarray) -> np.ndarray:
    """Central-difference gradient magnitude; NaN where a neighbour is missing."""
    g = np.full(img.shape, np.nan)
    gx = 0.5 * (img[1:-1, 2:] - img[1:-1, :-2])
    gy = 0.5 * (img[2:, 1:-1] - img[:-2, 1:-1])
    g[1:-1, 1:-1] = np.hypot(gx, gy)
    return g


def seam_score(
    mosaic: Any,
    truth: Any,
    border_mask: Any,
    *,
    smooth: float = 2.0,
    mask: Any = None,
    clip_percentile: float = 99.5,
) -> float:
    """How much the residual jumps across frame borders, relative to elsewhere.

    Definition: ``r`` = `residual_map` (mosaic minus the globally fitted truth, which
    removes stars, galaxies and nebula); per channel, ``r`` is smoothed with a NaN-aware
    Gaussian of sigma ``smooth`` px (pixels whose kernel support is less than 98% valid
    become NaN, so the mosaic's outer edge does not count) and its central-difference
    gradient magnitude ``g`` is taken (NaN next to missing data). ``g`` is clipped at its
    ``clip_percentile`` over all valid pixels (limits star-residual spikes). The score is
    ``mean(g[border]) / mean(g[~border])`` over valid pixels, channels pooled.
    ~1 means no seams; a step of a few noise sigmas along the borders gives >> 1.

    Parameters
    ----------
    mosaic, truth : array (C, H, W) or (H, W)
    border_mask : bool (H, W)
        E.g. from `frame_border_mask`.
    smooth : float
        Gaussian sigma in pixels (0 = no smoothing).
    mask : bool (H, W), optional
        True = exclude from the fit and the score.
    clip_percentile : float
        Upper clip of the gradient, in percent (100 = no clip).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the border or the non-border set has no valid gradient pixel.
    """
    bm = np.asarray(border_mask, dtype=bool)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth!r}")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile!r}")
    res = residual_map(mosaic, truth, mask=mask)
    if bm.shape != res.shape[1:]:
        raise ValueError(f"border_mask shape {bm.shape} does not match image {res.shape[1:]}")
    grads = np.stack([_grad_mag(_nan_smooth(r, smooth)) for r in res])
    finite = np.isfinite(grads)
    if not finite.any():
        raise ValueError("no valid gradient pixel (image too small or all NaN)")
    cap = np.percentile(grads[finite], clip_percentile)
    np.minimum(grads, cap, out=grads, where=finite)
    on = finite & bm[None]
    off = finite & ~bm[None]
    if not on.any() or not off.any():
        raise ValueError(f"need valid pixels on and off the border, got {int(on.sum())} on and "
                         f"{int(off.sum())} off")
    denom = float(grads[off].mean())
    if denom == 0:
        return math.inf if float(grads[on].mean()) > 0 else 1.0
    return float(grads[on].mean()) / denom


def _star_candidates(wcs: WCS, shape, truth: TruthSky, *, channel: int, r_out_px: float,
                     isolation_arcsec: float, min_flux: float, max_flux: float):
    """Indices and pixel positions of isolated truth stars well inside the image."""
    h, w = shape
    sxi, seta = truth.star_xi_eta
    flux = truth.star_flux[:, min(channel, truth.channels - 1)]
    cx = np.array([0, w - 1, 0, w - 1, (w - 1) / 2])
    cy = np.array([0, 0, h - 1, h - 1, (h - 1) / 2])
    fra, fdec = wcs.pixel_to_world_values(cx, cy)
    fxi, feta = _tan_project(fra, fdec, *truth.center)
    pad = 60.0
    near = ((sxi > fxi.min() - pad) & (sxi < fxi.max() + pad)
            & (seta > feta.min() - pad) & (seta < feta.max() + pad)
            & (flux >= min_flux) & (flux <= max_flux))
    idx = np.flatnonzero(near)
    if idx.size == 0:
        return idx, np.zeros(0), np.zeros(0)
    x, y = wcs.world_to_pixel_values(truth.star_ra[idx], truth.star_dec[idx])
    x, y = np.asarray(x, float), np.asarray(y, float)
    m = r_out_px + 1.0
    inside = (x > m) & (x < w - 1 - m) & (y > m) & (y < h - 1 - m)
    idx, x, y = idx[inside], x[inside], y[inside]
    tree = cKDTree(np.column_stack([sxi, seta]))
    all_flux = truth.star_flux.sum(axis=1)
    keep = np.ones(idx.size, dtype=bool)
    for k, i in enumerate(idx):
        nb = tree.query_ball_point([sxi[i], seta[i]], isolation_arcsec)
        keep[k] = not any(j != i and all_flux[j] > 0.05 * all_flux[i] for j in nb)
    order = np.argsort(-flux[idx[keep]])
    return idx[keep][order], x[keep][order], y[keep][order]


def star_flux_scatter(
    mosaic: Any,
    wcs: WCS,
    truth: TruthSky,
    *,
    channel: int = 0,
    aperture_arcsec: float | None = None,
    max_stars: int = 300,
    min_flux: float = 1000.0,
    max_flux: float = math.inf,
    truth_image: Any = None,
    min_stars: int = 5,
) -> float:
    """Robust relative scatter of star aperture fluxes in the mosaic against the truth.

    Isolated truth stars (no star brighter than 5% of their flux within the annulus
    radius + 1 FWHM), fully inside the mosaic, with true flux in ``[min_flux, max_flux]`` (use
    ``max_flux`` to drop stars saturated in the inputs), brightest first, up to
    ``max_stars``, are measured with the same circular aperture (radius
    ``aperture_arcsec``, default 1.5 FWHM) and local annulus (2.5-4 FWHM) in the mosaic
    and in the truth rendered exactly on the mosaic grid, so aperture losses cancel. Stars
    with a missing pixel in the aperture are dropped. With ``ratio = f_mosaic / f_truth``
    and ``s = median(ratio)`` (the global scale), the result is
    ``1.4826 * median(|ratio / s - 1|)``.

    Parameters
    ----------
    mosaic : array (C, H, W) or (H, W)
    wcs : astropy.wcs.WCS
        Mosaic WCS.
    truth : TruthSky
    channel : int
        Mosaic channel to measure.
    truth_image : array, optional
        ``truth.render(wcs, (H, W))`` if already computed (saves time on large mosaics).
    min_stars : int
        Fewer usable stars raise ValueError.

    Returns
    -------
    float
    """
    m = _as_chw(mosaic, "mosaic")
    if not 0 <= channel < m.shape[0]:
        raise ValueError(f"channel must be in [0, {m.shape[0]}), got {channel!r}")
    if max_stars < 1 or min_stars < 1:
        raise ValueError(f"max_stars and min_stars must be >= 1, got {max_stars!r}, {min_stars!r}")
    h, w = m.shape[1:]
    cw = wcs.celestial
    scale = float(np.mean(proj_plane_pixel_scales(cw))) * 3600.0
    fwhm = truth.fwhm_arcsec
    r_ap = (1.5 * fwhm if aperture_arcsec is None else aperture_arcsec) / scale
    if not r_ap > 0:
        raise ValueError(f"aperture_arcsec must be > 0, got {aperture_arcsec!r}")
    r_in, r_out = max(2.5 * fwhm / scale, r_ap + 1.0), max(4.0 * fwhm / scale, r_ap + 3.0)
    idx, x, y = _star_candidates(
        cw, (h, w), truth, channel=channel, r_out_px=r_out,
        isolation_arcsec=r_out * scale + fwhm, min_flux=min_flux, max_flux=max_flux,
    )
    idx, x, y = idx[: 2 * max_stars], x[: 2 * max_stars], y[: 2 * max_stars]
    if truth_image is None:
        truth_image = truth.render(cw, (h, w), channels=m.shape[0])
    t = _as_chw(truth_image, "truth_image")
    t_ch = t[min(channel, t.shape[0] - 1)]
    img = m[channel]
    f_m, bad = _aperture(img, x, y, radii=(r_ap, r_in, r_out))
    f_t, _ = _aperture(t_ch, x, y, radii=(r_ap, r_in, r_out))
    ok = ~bad & (f_t > 0) & np.isfinite(f_m)
    ratio = (f_m / np.where(f_t > 0, f_t, 1.0))[ok][:max_stars]
    if ratio.size < min_stars:
        raise ValueError(f"only {ratio.size} usable stars (need {min_stars}); lower min_flux "
                         "or min_stars, or use a larger mosaic")
    s = float(np.median(ratio))
    logger.debug("star_flux_scatter: %d stars, global scale %.4f", ratio.size, s)
    return _MAD_TO_SIGMA * float(np.median(np.abs(ratio / s - 1.0)))


def _aperture(img: np.ndarray, x, y, *, radii: tuple[float, float, float]):
    """sep circular aperture sums with annulus background; returns (flux, has_masked).

    ``radii`` is ``(aperture, annulus_inner, annulus_outer)`` in pixels.
    """
    r_ap, r_in, r_out = radii
    invalid = ~np.isfinite(img)
    data = np.ascontiguousarray(np.where(invalid, 0.0, img), dtype=np.float64)
    flux, _, flags = sep.sum_circle(data, x, y, r_ap, mask=invalid, bkgann=(r_in, r_out),
                                    subpix=5)
    return np.asarray(flux), (np.asarray(flags) & sep.APER_HASMASKED) != 0
