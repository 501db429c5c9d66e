"""Mosaic quality metrics against a known truth (all NaN-aware).

Conventions: images are (C, H, W) or (H, W) float arrays, NaN = no data. A ``mask`` is a
boolean (H, W) array where True marks pixels to *exclude* (photutils convention).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    "BorderSteps",
    "border_step_ratio",
    "coverage_fraction",
    "fit_affine",
    "frame_border_mask",
    "large_scale_residual",
    "residual_map",
    "residual_rms",
    "seam_score",
    "star_color_scatter",
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
    with a missing pixel in the aperture or the annulus's box are dropped. With
    ``ratio = f_mosaic / f_truth`` and ``s = median(ratio)`` (the global scale), the result is
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
    ratio = _star_ratios(mosaic, wcs, truth, channels=(channel,), select=channel,
                         aperture_arcsec=aperture_arcsec, max_stars=max_stars, min_flux=min_flux,
                         max_flux=max_flux, truth_image=truth_image, min_stars=min_stars)[0]
    return _robust_scatter(ratio)


def star_color_scatter(
    mosaic: Any,
    wcs: WCS,
    truth: TruthSky,
    *,
    reference: int = 1,
    aperture_arcsec: float | None = None,
    max_stars: int = 300,
    min_flux: float = 1000.0,
    max_flux: float = math.inf,
    truth_image: Any = None,
    min_stars: int = 5,
) -> float:
    """Robust scatter of star colours in the mosaic against the truth, channels averaged.

    The stars and apertures of `star_flux_scatter`, chosen by their flux in the
    ``reference`` channel (default 1: G of an RGB mosaic) and measured in every channel at
    the same positions. A star's colour error in channel ``c`` is
    ``q = (f_c / t_c) / (f_ref / t_ref)`` (``f`` mosaic, ``t`` truth aperture fluxes); with
    ``s = median(q)`` (the global colour balance, which a colour calibration sets), its scatter
    is ``1.4826 * median(|q / s - 1|)``. The result is the mean over the channels other than
    ``reference``: 0 when every star's colour is right up to one balance per channel, the
    relative error of a star's colour otherwise (a tile whose R gain is 1 % off gives its
    stars 1 % colour errors, whatever its G gain).

    Parameters
    ----------
    mosaic : array (C, H, W), C >= 2
    wcs : astropy.wcs.WCS
    truth : TruthSky
    reference : int
        The channel colours are taken against.
    truth_image : array, optional
        ``truth.render(wcs, (H, W))`` if already computed.
    min_stars : int
        Fewer usable stars (finite in every channel) raise ValueError.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        A mosaic with one channel, a reference channel out of range, or too few stars.
    """
    m = _as_chw(mosaic, "mosaic")
    if m.shape[0] < 2:
        raise ValueError(f"star_color_scatter needs a mosaic of >= 2 channels, got {m.shape[0]}")
    if not 0 <= reference < m.shape[0]:
        raise ValueError(f"reference must be in [0, {m.shape[0]}), got {reference!r}")
    ratios = _star_ratios(m, wcs, truth, channels=tuple(range(m.shape[0])), select=reference,
                          aperture_arcsec=aperture_arcsec, max_stars=max_stars, min_flux=min_flux,
                          max_flux=max_flux, truth_image=truth_image, min_stars=min_stars)
    others = [c for c in range(m.shape[0]) if c != reference]
    return float(np.mean([_robust_scatter(ratios[c] / ratios[reference]) for c in others]))


def _robust_scatter(ratio: np.ndarray) -> float:
    s = float(np.median(ratio))
    return _MAD_TO_SIGMA * float(np.median(np.abs(ratio / s - 1.0)))


def _star_ratios(
    mosaic: Any, wcs: WCS, truth: TruthSky, *, channels: tuple[int, ...], select: int,
    aperture_arcsec: float | None, max_stars: int, min_flux: float, max_flux: float,
    truth_image: Any, min_stars: int,
) -> list[np.ndarray]:
    """Per channel of ``channels``, ``f_mosaic / f_truth`` of the same isolated stars (chosen
    by their flux in channel ``select``), usable in every one of those channels."""
    m = _as_chw(mosaic, "mosaic")
    for c in (*channels, select):
        if not 0 <= c < m.shape[0]:
            raise ValueError(f"channel must be in [0, {m.shape[0]}), got {c!r}")
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
    _, x, y = _star_candidates(
        cw, (h, w), truth, channel=select, r_out_px=r_out,
        isolation_arcsec=r_out * scale + fwhm, min_flux=min_flux, max_flux=max_flux,
    )
    x, y = _annulus_covered(m[select], x, y, r_out)
    x, y = x[: 2 * max_stars], y[: 2 * max_stars]
    if truth_image is None:
        truth_image = truth.render(cw, (h, w), channels=m.shape[0])
    t = _as_chw(truth_image, "truth_image")
    ratios, ok = [], np.ones(x.size, dtype=bool)
    for c in channels:
        f_m, bad = _aperture(m[c], x, y, radii=(r_ap, r_in, r_out))
        f_t, _ = _aperture(t[min(c, t.shape[0] - 1)], x, y, radii=(r_ap, r_in, r_out))
        ok &= ~bad & (f_t > 0) & np.isfinite(f_m)
        ratios.append(f_m / np.where(f_t > 0, f_t, 1.0))
    ratios = [r[ok][:max_stars] for r in ratios]
    if ratios[0].size < min_stars:
        raise ValueError(f"only {ratios[0].size} usable stars (need {min_stars}); lower min_flux "
                         "or min_stars, or use a larger mosaic")
    logger.debug("star ratios: %d stars, channels %s", ratios[0].size, channels)
    return ratios


def _annulus_covered(img: np.ndarray, x: np.ndarray, y: np.ndarray, r_out: float):
    """Positions whose box of half-side ``r_out`` has no NaN pixel.

    sep refuses a whole call if one object's annulus has no valid pixel (a star next to a
    NaN corner inside the mosaic's bounding box), so such stars are dropped beforehand.
    """
    h, w = img.shape
    r = math.ceil(r_out) + 1
    keep = np.zeros(x.size, dtype=bool)
    for k, (xk, yk) in enumerate(zip(x, y, strict=True)):
        ix, iy = round(float(xk)), round(float(yk))
        box = img[max(0, iy - r): min(h, iy + r + 1), max(0, ix - r): min(w, ix + r + 1)]
        keep[k] = bool(np.isfinite(box).all())
    return x[keep], y[keep]


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


# -- border steps and large-scale residual ------------------------------------------------


@dataclass(frozen=True)
class BorderSteps:
    """Result of `border_step_ratio`.

    Attributes
    ----------
    border : float
        Mean step across the footprint edges (residual units, e.g. ADU).
    control : float
        Mean of the same statistic across the control lines inside the footprints.
    ratio : float
        ``border / control`` (1 = seamless); NaN if either has no segment.
    n_border, n_control : int
        Segments (times channels) that entered each mean.
    frame_steps : tuple of float
        Mean border step of each input's own edges, in input order (NaN: no usable segment).
    """

    border: float
    control: float
    ratio: float
    n_border: int
    n_control: int
    frame_steps: tuple[float, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """Plain-type dict (JSON-ready)."""
        return {"border": self.border, "control": self.control, "ratio": self.ratio,
                "n_border": self.n_border, "n_control": self.n_control,
                "frame_steps": list(self.frame_steps)}


@dataclass(frozen=True)
class _EdgeBands:
    """Band pixels of one input's edge, in a window ``(y0, y1, x0, x1)`` of the mosaic.

    Each label array is int32 over the window: segment number + 1 inside the band, 0 elsewhere.
    """

    window: tuple[int, int, int, int]
    n_seg: int
    border_in: np.ndarray
    border_out: np.ndarray
    control_in: np.ndarray
    control_out: np.ndarray


def _edge_bands(item: Any, out_wcs: WCS, shape: tuple[int, int], *, band: int, segment: int,
                control_inset: int) -> _EdgeBands | None:
    """Segment-labelled bands either side of one input's footprint edge and control line.

    The outline is projected onto the mosaic grid, cut into pieces of ``segment`` px of
    arc length; every pixel takes the segment of its nearest outline pixel, its side from
    the filled footprint polygon and its depth from the distance to the outline. Pixels on
    the outline itself (distance < 1) belong to no band.
    """
    h, w = shape
    wcs, outlines = _frame_outline(item)
    polys = []
    for line in outlines:
        world = wcs.celestial.pixel_to_world_values(line[:, 0], line[:, 1])
        x, y = out_wcs.celestial.world_to_pixel_values(*world)
        pts = np.column_stack([x, y])
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if len(pts) >= 3:
            polys.append(_densify(pts, step=0.5))
    if not polys:
        return None
    allp = np.concatenate(polys)
    pad = control_inset + band + 2
    x0 = max(0, math.floor(allp[:, 0].min()) - pad)
    x1 = min(w, math.ceil(allp[:, 0].max()) + pad + 1)
    y0 = max(0, math.floor(allp[:, 1].min()) - pad)
    y1 = min(h, math.ceil(allp[:, 1].max()) + pad + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    wh, ww = y1 - y0, x1 - x0
    inside = np.zeros((wh, ww), dtype=np.uint8)
    labels = np.zeros((wh, ww), dtype=np.int32)
    shift = 4  # cv2 fixed-point: coordinates in 1/16 pixel
    n_seg = 0
    for pts in polys:
        local = pts - (x0, y0)
        lim = 4.0 * (wh + ww)
        fixed = np.rint(np.clip(local, -lim, lim) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(inside, [fixed], 1, shift=shift)
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(local, axis=0).T))])
        seg = n_seg + (arc // segment).astype(np.int32)
        n_seg = int(seg.max()) + 1
        ix, iy = np.rint(local[:, 0]).astype(np.int64), np.rint(local[:, 1]).astype(np.int64)
        ok = (ix >= 0) & (ix < ww) & (iy >= 0) & (iy < wh)
        labels[iy[ok], ix[ok]] = seg[ok] + 1
    if not labels.any():
        return None
    dist, (ny, nx) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    near = labels[ny, nx]
    del ny, nx
    ins = inside.astype(bool)

    def lab(sel: np.ndarray) -> np.ndarray:
        return np.where(sel, near, 0).astype(np.int32)

    return _EdgeBands(
        window=(y0, y1, x0, x1), n_seg=n_seg,
        border_in=lab(ins & (dist >= 1) & (dist <= band)),
        border_out=lab(~ins & (dist >= 1) & (dist <= band)),
        control_in=lab(ins & (dist > control_inset) & (dist <= control_inset + band)),
        control_out=lab(ins & (dist >= max(1, control_inset - band)) & (dist <= control_inset)),
    )


def _band_steps(res: np.ndarray, usable: np.ndarray, lab_in: np.ndarray, lab_out: np.ndarray,
                *, n_seg: int, need: float, min_pixels: int) -> np.ndarray:
    """|median(inside) - median(outside)| per segment; NaN where a band is not usable.

    A band is usable when it has at least ``need`` pixels in the window, 90 % of them are
    finite in the residual, and ``min_pixels`` of them are ``usable`` (finite, not masked).
    """
    finite = np.isfinite(res)
    idx = np.arange(1, n_seg + 1)
    meds = []
    ok = np.ones(n_seg, dtype=bool)
    for lab in (lab_in, lab_out):
        total = np.bincount(lab.ravel(), minlength=n_seg + 1)[1:]
        fin = np.bincount(lab[finite], minlength=n_seg + 1)[1:]
        use_lab = np.where(usable, lab, 0)
        n_use = np.bincount(use_lab.ravel(), minlength=n_seg + 1)[1:]
        ok &= (total >= need) & (fin >= 0.9 * total) & (n_use >= min_pixels)
        if not ok.any():
            return np.full(n_seg, np.nan)
        vals = np.where(usable, res, 0.0)
        meds.append(np.asarray(ndimage.median(vals, use_lab, idx), dtype=np.float64))
    step = np.abs(meds[0] - meds[1])
    step[~ok] = np.nan
    return step


def _noise_from_differences(res: np.ndarray) -> float:
    """Pixel noise of a residual from horizontal neighbour differences (robust, pooled)."""
    d = (res[:, ::4, 1:] - res[:, ::4, :-1]).ravel()
    d = d[np.isfinite(d)].astype(np.float64)
    if d.size == 0:
        raise ValueError("no pair of neighbouring valid pixels to estimate the noise from")
    return _MAD_TO_SIGMA * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)


def _star_mask(truth: np.ndarray, scale: np.ndarray, threshold: float, grow: int) -> np.ndarray:
    """Pixels where ``scale * (truth - smooth(truth))`` exceeds ``threshold``, grown ``grow`` px.

    The local background is the truth smoothed with a Gaussian of sigma 8 px, so compact
    sources (stars, galaxy cores) are masked and smooth nebulosity is not.
    """
    out = np.zeros(truth.shape[1:], dtype=bool)
    for c in range(truth.shape[0]):
        t = np.nan_to_num(truth[c], nan=float(np.nanmedian(truth[c])))
        excess = (t - ndimage.gaussian_filter(t, 8.0)) * float(abs(scale[c]))
        out |= excess > threshold
    if grow > 0 and out.any():
        out = ndimage.binary_dilation(out, iterations=grow)
    return out


def border_step_ratio(
    mosaic: Any,
    truth: Any,
    frames_or_outlines: Sequence[Any],
    wcs: WCS,
    *,
    band: int = 8,
    segment: int = 64,
    control_inset: int = 24,
    source_sigma: float | None = 3.0,
    noise_sigma: float | None = None,
    source_grow: int = 3,
    mask: Any = None,
) -> BorderSteps:
    """Mean sky step across the inputs' footprint edges over the same step inside them.

    Definition: ``r`` = `residual_map` (mosaic minus ``scale * truth + offset``, one fit
    per channel). Each input's footprint edge (its outline projected onto the mosaic grid,
    as in `frame_border_mask`) is cut into pieces of ``segment`` px; per piece and channel,
    ``step = |median(r) in the band of depth band px just inside the footprint - median(r)
    in the band just outside|``. A piece counts only where both bands lie in the mosaic's
    valid area (90 % finite) with at least ``segment * band / 8`` usable pixels each. The
    control is the same statistic across the line ``control_inset`` px inside each
    footprint (bands of depth ``band`` either side of it), where no edge of that input
    lies. ``ratio = mean(border steps) / mean(control steps)``: 1 = seamless (a perfect
    correction scores a little above 1, the noise of the medians being the same on both
    sides); a step of ``s`` along every edge adds about ``s`` to the border mean.

    Parameters
    ----------
    mosaic, truth : array (C, H, W) or (H, W)
        The truth rendered on the mosaic grid; a single-channel truth serves every channel.
    frames_or_outlines : sequence
        The inputs, as `frame_border_mask` takes them: ``(wcs, (H, W))``,
        ``(wcs, valid_mask)`` or objects with ``.wcs`` and ``.data``.
    wcs : astropy.wcs.WCS
        Mosaic WCS.
    band, segment, control_inset : int
        Band depth, segment length and control-line depth, in mosaic pixels.
    source_sigma : float or None
        Pixels where the fitted truth exceeds its local background (Gaussian sigma 8 px)
        by more than ``source_sigma * noise_sigma`` are left out of the medians (stars and
        galaxy cores; smooth nebulosity stays in), grown by ``source_grow`` px. None: no
        source mask.
    noise_sigma : float or None
        Pixel noise of the mosaic; default: estimated from neighbour differences of ``r``.
    source_grow : int
        Dilation of the source mask, in pixels (>= 0).
    mask : bool (H, W), optional
        True = exclude from the fit and from the bands.

    Returns
    -------
    BorderSteps

    Raises
    ------
    ValueError
        On invalid sizes or shapes (checked before any work).

    Examples
    --------
    >>> from skymosaic.synth import make_survey
    >>> s = make_survey(n_x=2, n_y=1, frame_shape=(96, 96), seed=1)
    >>> wcs, shape = s.mosaic_grid()
    >>> truth = s.truth.render(wcs, shape)
    >>> rng = np.random.default_rng(0)
    >>> mosaic = 2.0 * truth + 10.0 + rng.normal(0.0, 1.0, truth.shape)
    >>> res = border_step_ratio(mosaic, truth, s.frames, wcs, segment=32)
    >>> 0.5 < res.ratio < 2.0
    True
    """
    for name, val, low in (("band", band, 1), ("segment", segment, 2),
                           ("control_inset", control_inset, 1), ("source_grow", source_grow, 0)):
        if int(val) != val or val < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {val!r}")
    if control_inset <= band:
        raise ValueError(f"control_inset ({control_inset}) must exceed band ({band}): the "
                         "control bands would touch the edge")
    if source_sigma is not None and not source_sigma > 0:
        raise ValueError(f"source_sigma must be > 0 or None, got {source_sigma!r}")
    if noise_sigma is not None and not noise_sigma > 0:
        raise ValueError(f"noise_sigma must be > 0 or None, got {noise_sigma!r}")
    m, t, _ = _pair(mosaic, truth, mask)
    res = residual_map(m, t, mask=mask)
    usable = np.isfinite(res)
    if source_sigma is not None:
        noise = _noise_from_differences(res) if noise_sigma is None else float(noise_sigma)
        scale, _ = fit_affine(m, t, mask=mask)
        usable &= ~_star_mask(t, scale, source_sigma * noise, source_grow)[None]
    shape = (int(m.shape[1]), int(m.shape[2]))
    need = 0.5 * segment * band
    min_pixels = max(4, segment * band // 8)
    border, control, per_frame = [], [], []
    for item in frames_or_outlines:
        eb = _edge_bands(item, wcs, shape, band=band, segment=segment,
                         control_inset=control_inset)
        if eb is None:
            per_frame.append(math.nan)
            continue
        y0, y1, x0, x1 = eb.window
        mine = []
        for c in range(res.shape[0]):
            rc, uc = res[c, y0:y1, x0:x1], usable[c, y0:y1, x0:x1]
            kw = {"n_seg": eb.n_seg, "need": need, "min_pixels": min_pixels}
            b = _band_steps(rc, uc, eb.border_in, eb.border_out, **kw)
            k = _band_steps(rc, uc, eb.control_in, eb.control_out, **kw)
            mine.append(b[np.isfinite(b)])
            control.append(k[np.isfinite(k)])
        mine_all = np.concatenate(mine)
        border.append(mine_all)
        per_frame.append(float(mine_all.mean()) if mine_all.size else math.nan)
    b_all = np.concatenate(border) if border else np.zeros(0)
    c_all = np.concatenate(control) if control else np.zeros(0)
    b_mean = float(b_all.mean()) if b_all.size else math.nan
    c_mean = float(c_all.mean()) if c_all.size else math.nan
    ratio = b_mean / c_mean if b_all.size and c_all.size and c_mean > 0 else math.nan
    logger.debug("border_step_ratio: %d border, %d control segments", b_all.size, c_all.size)
    return BorderSteps(border=b_mean, control=c_mean, ratio=ratio, n_border=int(b_all.size),
                       n_control=int(c_all.size), frame_steps=tuple(per_frame))


def _quadratic_design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])


def large_scale_residual(
    mosaic: Any,
    truth: Any,
    *,
    block: int = 32,
    remove_quadratic: bool = False,
    mask: Any = None,
    min_valid: float = 0.5,
) -> float:
    """RMS of block medians of the residual, in units of the truth's robust sigma.

    Definition: ``r`` = `residual_map` (mosaic minus ``scale * truth + offset``, one fit
    per channel); the mosaic is cut into ``block`` x ``block`` px blocks (a partial last
    row and column of blocks dropped); blocks with at least ``min_valid`` of their pixels
    finite give ``median(r)``. With ``remove_quadratic``, the least-squares quadratic
    surface in output pixel coordinates (6 terms) is first subtracted from the block
    medians: what remains cannot be a sky surface common to all inputs. The result is
    ``sqrt(mean(median**2))`` divided by ``scale * 1.4826 * MAD(truth)`` over the valid
    pixels, per channel, then the root mean square over channels.

    Parameters
    ----------
    mosaic, truth : array (C, H, W) or (H, W)
    block : int
        Block side in pixels (>= 2).
    remove_quadratic : bool
        Remove the best-fitting global quadratic surface first.
    mask : bool (H, W), optional
        True = exclude from the fit and the medians.
    min_valid : float
        Smallest valid fraction of a block, in (0, 1].

    Returns
    -------
    float

    Raises
    ------
    ValueError
        On invalid arguments, a constant truth, or too few valid blocks (1, or 6 with
        ``remove_quadratic``).

    Examples
    --------
    >>> yy, xx = np.mgrid[0:128, 0:128]
    >>> truth = np.sin(xx / 9.0) + np.cos(yy / 7.0)
    >>> large_scale_residual(3.0 * truth + 1.0, truth) < 1e-6
    True
    """
    if int(block) != block or block < 2:
        raise ValueError(f"block must be an integer >= 2, got {block!r}")
    if not 0 < min_valid <= 1:
        raise ValueError(f"min_valid must be in (0, 1], got {min_valid!r}")
    m, t, valid = _pair(mosaic, truth, mask)
    res = residual_map(m, t, mask=mask)
    scale, _ = fit_affine(m, t, mask=mask)
    _, h, w = res.shape
    nby, nbx = h // block, w // block
    if nby * nbx == 0:
        raise ValueError(f"image {h}x{w} is smaller than one block of {block} px")
    yc, xc = np.mgrid[0:nby, 0:nbx].astype(np.float64)
    yc, xc = (yc + 0.5) * block / max(h, 1), (xc + 0.5) * block / max(w, 1)
    sq = []
    for c in range(res.shape[0]):
        tv = t[c][valid[c]].astype(np.float64)
        sigma = _MAD_TO_SIGMA * float(np.median(np.abs(tv - np.median(tv)))) * abs(scale[c])
        if not sigma > 0:
            raise ValueError(f"channel {c}: the truth has zero robust sigma")
        blocks = res[c, : nby * block, : nbx * block].reshape(nby, block, nbx, block)
        blocks = blocks.transpose(0, 2, 1, 3).reshape(nby, nbx, block * block)
        frac = np.isfinite(blocks).mean(axis=2)
        good = frac >= min_valid
        if good.sum() < (6 if remove_quadratic else 1):
            raise ValueError(f"channel {c}: only {int(good.sum())} valid block(s)")
        med = np.nanmedian(blocks[good], axis=1).astype(np.float64)
        if remove_quadratic:
            design = _quadratic_design(xc[good], yc[good])
            coef = np.linalg.lstsq(design, med, rcond=None)[0]
            med = med - design @ coef
        sq.append(float(np.mean(med**2)) / sigma**2)
    return math.sqrt(float(np.mean(sq)))
