"""Star aperture photometry of an overlap: the gain as a ratio of source fluxes.

Used by `skymosaic.photometry.fit_overlap` to measure (or cross-check) a pair's gain from
what a resampling or a PSF difference cannot fake: fluxes in apertures. The sources are
*found* on mesh-background-subtracted images (`subtract_background`, `_detect`), but their
fluxes are *measured* on the detrended images (each minus its least-squares plane,
`skymosaic.photometry.detrend`): a sum over an aperture is linear, so ``y = a x`` holds for
the fluxes exactly, whatever the source, its neighbours or the nebulosity under it. A mesh
background is not linear (its clipping depends on the noise, which the gain does not
scale): subtracted before the apertures, it made the flux ratios of faint stars scatter by
several percent beyond their noise (measured on bench_phase5 surveys).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import cv2
import numpy as np
from scipy import optimize

from skymosaic._stats import median as _median
from skymosaic.photometry._linefit import _MAD_TO_SIGMA, _deming_slope, _robust_sigma
from skymosaic.photometry._masks import distance_inside

__all__ = ["ApertureGain", "Prepared", "aperture_gain", "aperture_noise_factor",
           "prepare_sums", "psf_difference", "source_room", "subtract_background"]

logger = logging.getLogger(__name__)


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
        back = sep.Background(img, mask=np.ascontiguousarray(~valid), bw=bw, bh=bh,
                              fw=3, fh=3).back()
    except Exception as err:
        logger.debug("mesh background failed (%s): subtracting the median", err)
        back = _median(img[valid]) if valid.any() else 0.0
    return np.where(valid, img - back, np.nan)


def _detect(hx: np.ndarray, hy: np.ndarray, valid: np.ndarray, sx: float, sy: float, *,
            threshold: float, max_stars: int):
    """Compact sources of two background-subtracted images (sep), brightest first.

    Detected on ``hx/sx + hy/sy``, so neither image's noise decides alone which stars
    enter (a one-sided selection would bias the slope). Sources on the edge of ``valid``
    are kept (the apertures take whole ones only, `_cut`). Returns a sep object array
    (possibly empty).
    """
    import sep  # noqa: PLC0415

    det = np.ascontiguousarray(np.where(valid, hx / sx + hy / sy, 0.0), dtype=np.float64)
    try:
        objs = sep.extract(det, threshold * np.sqrt(2.0), mask=np.ascontiguousarray(~valid),
                           minarea=4, deblend_cont=0.005, clean=True)
    except Exception as err:
        logger.debug("source extraction failed (%s)", err)
        return np.empty(0,
                        dtype=[("x", "f8"), ("y", "f8"), ("a", "f8"), ("b", "f8"), ("flux", "f8")])
    if len(objs) == 0:
        return objs
    return np.sort(objs, order="flux")[::-1][:max_stars]


class ApertureGain(NamedTuple):
    """A pair gain from aperture fluxes (`aperture_gain`)."""

    gain: float  #: NaN when not measured (see ``reason``)
    gain_err: float  #: one sigma, the noise of the fluxes scaled by the Birge ratio
    n_used: int  #: sources kept after clipping
    birge: float  #: sqrt(chi2 / dof) of the kept sources about the line (>= 0)
    radius: float  #: aperture radius (px)
    reason: str  #: why ``gain`` is NaN (empty otherwise)
    kappa: float = 1.0  #: aperture noise factor used (`aperture_noise_factor`)
    max_snr: float = 0.0  #: largest aperture signal-to-noise in x of the sources considered


def _fwhm(objs, valid: np.ndarray, room: np.ndarray | None = None) -> float:
    """Median FWHM (px) of the 30 brightest whole sources from their second moments (sep
    ``a``, ``b``); NaN without sources."""
    whole = objs[~_cut(objs, valid, 3.0, room)] if len(objs) else objs
    top = (whole if len(whole) else objs)[:30]
    if not len(top):
        return float("nan")
    return 2.3548 * float(_median(np.sqrt(np.abs(top["a"] * top["b"]))))


class Prepared(NamedTuple):
    """The planes of an overlap's aperture sums, made once (`prepare_sums`): each image
    float64, contiguous and 0 outside ``valid``, the valid pixels as ones, and the mask."""

    x: np.ndarray
    y: np.ndarray
    ones: np.ndarray
    mask: np.ndarray  #: ``~valid``, contiguous


def prepare_sums(dx: np.ndarray, dy: np.ndarray, valid: np.ndarray) -> Prepared:
    """`Prepared` planes for `aperture_gain` and `psf_difference` (which otherwise make them
    at each of their sums: two thirds of their time on a Seestar-size overlap)."""
    ok = np.asarray(valid, dtype=bool)
    return Prepared(np.ascontiguousarray(np.where(ok, dx, 0.0), dtype=np.float64),
                    np.ascontiguousarray(np.where(ok, dy, 0.0), dtype=np.float64),
                    np.ascontiguousarray(ok, dtype=np.float64), np.ascontiguousarray(~ok))


def _sums(image: np.ndarray, valid: np.ndarray, x, y, radius: float) -> np.ndarray:
    """Sums of ``image`` over the valid pixels of circles of ``radius`` at ``(x, y)``."""
    return _plane_sums(np.ascontiguousarray(np.where(valid, image, 0.0), dtype=np.float64),
                       np.ascontiguousarray(~valid), x, y, radius)


def _plane_sums(plane: np.ndarray, mask: np.ndarray, x, y, radius: float) -> np.ndarray:
    """`_sums` of a plane already made for sep (float64, contiguous, 0 where ``mask``)."""
    import sep  # noqa: PLC0415

    return sep.sum_circle(plane, np.asarray(x, np.float64), np.asarray(y, np.float64), radius,
                          mask=mask, subpix=5)[0]


def source_room(objs, valid: np.ndarray) -> np.ndarray:
    """Distance (px) from each source's centre pixel to the nearest pixel not in ``valid``
    (the outside of the image counting as invalid): one distance transform for all the
    aperture radii an overlap's fits try (`_cut`)."""
    if not len(objs):
        return np.zeros(0)
    inside = distance_inside(valid)
    iy = np.clip(np.round(objs["y"]).astype(int), 0, valid.shape[0] - 1)
    ix = np.clip(np.round(objs["x"]).astype(int), 0, valid.shape[1] - 1)
    return inside[iy, ix]


def _cut(objs, valid: np.ndarray, radius: float, room: np.ndarray | None = None) -> np.ndarray:
    """True for the sources whose circle of ``radius`` is not wholly on ``valid``
    (``room``: their `source_room`, computed here when not given).

    Two resamplings conserve a star's flux, not the flux of a part of it: an aperture cut
    by the edge of an overlap measures the profile difference as well as the gain. (A
    pixel fit has the same weakness: one bright star on the edge set a pair gain 0.85 %
    off, at 5 times its error, on bench_phase5 RGB seed 3; leaving such stars out of the
    pixel fits cost more than it gained on narrow overlaps.)
    """
    room = source_room(objs, valid) if room is None else room
    return room <= radius + 1.0


def _clear_of(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of ``mask`` whose distance to every pixel not in it (and to the outside of the
    image) exceeds ``radius``: ``distance_inside(mask) > radius``, computed as an erosion by
    the disc of pixel offsets with ``dx**2 + dy**2 <= radius**2`` (the same pixels, a
    few times faster than the distance transform)."""
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (xx * xx + yy * yy <= radius * radius).astype(np.uint8)
    eroded = cv2.erode(np.ascontiguousarray(mask, dtype=np.uint8), disc,
                       borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return eroded.astype(bool)


#: Radius (px) of the random apertures that measure the aperture noise factor: beyond the
#: few-pixel correlation length of the resampling kernels, inside most sky patches.
_KAPPA_RADIUS = 3.0


def aperture_noise_factor(diff: np.ndarray, sky: np.ndarray, noise2: float,
                          rng: np.random.Generator, n_apertures: int = 400) -> float:
    """``kappa``: variance of an aperture sum of ``diff`` over ``area * noise2`` (1: white noise).

    Resampling correlates neighbouring pixels, so a sum over an aperture has more variance
    than ``area * sigma**2`` with the per-pixel ``sigma`` (1.1-1.2 after lanczos3, more after
    a bilinear kernel, 1 after binning). Measured, not assumed: the robust spread of sums
    over circles of 3 px at random positions of ``diff = y - g0 x`` (the sources cancel)
    that lie wholly on ``sky`` (no source pixel: their residuals, from the few-percent
    profile differences of two resamplings, would count as noise). Estimating the
    correlation from pixel differences at small lags instead was measured too unstable
    (0.5-1.7 on one survey). 1 with fewer than 30 such positions.
    """
    if not noise2 > 0:
        return 1.0
    cand = np.flatnonzero(_clear_of(sky, _KAPPA_RADIUS + 1.0).ravel())
    if cand.size < 30:
        return 1.0
    pick = rng.choice(cand, size=min(n_apertures, cand.size), replace=False)
    yy, xx = np.unravel_index(pick, sky.shape)
    spread = _robust_sigma(_sums(diff, sky, xx, yy, _KAPPA_RADIUS))
    kappa = spread * spread / (np.pi * _KAPPA_RADIUS**2 * noise2)
    return float(np.clip(kappa, 0.5, 10.0)) if np.isfinite(kappa) else 1.0


#: Relative flux error of a source that no noise explains, added in quadrature to each
#: source's noise: the brightest sources (S/N > 1000) of bench_phase5 surveys scatter by
#: 0.1 % about the true ratio where their noise says 0.06 %, at 1.2 and at 2.5 FWHM alike
#: (how each frame sampled the star). Without it one bright star takes all the weight.
SOURCE_ERROR = 1e-3


def _effective_chi2(log_gain: float, *args) -> float:
    """``sum (fy - g fx)**2 / (area (vy + g**2 vx) + (err g fx)**2)`` at ``g = exp(log_gain)``;
    ``args = (fx, fy, area, vx, vy, err)``."""
    fx, fy, area, vx, vy, err = args
    g = float(np.exp(log_gain))
    return float(np.sum((fy - g * fx) ** 2 / (area * (vy + g * g * vx) + (err * g * fx) ** 2)))


def _line_through_origin(fx: np.ndarray, fy: np.ndarray, area: np.ndarray, vx: float, vy: float, *,
                         clip_sigma: float, max_iter: int, min_stars: int,
                         source_error: float = SOURCE_ERROR,
                         ) -> tuple[float, float, np.ndarray, float]:
    """Errors-in-variables line ``fy = g fx`` through the origin, clipped.

    Source ``k`` has flux variances ``vx * area_k`` and ``vy * area_k`` and a relative
    error ``source_error`` of its own; the line minimises the effective-variance sum
    ``sum (fy - g fx)**2 / (area (vy + g**2 vx) + (source_error g fx)**2)`` (no intercept:
    the fluxes of detrended images have none), started from the Deming slope of the sums
    weighted by ``1 / area``. Sources beyond ``clip_sigma`` robust sigmas of the normalised
    residuals are dropped (a saturated star, a variable star, a cosmic ray). Returns
    ``(gain, gain_err, kept, birge)``; the error is scaled by the Birge ratio when the
    sources scatter more than stated.
    """
    keep = np.ones(fx.size, dtype=bool)
    delta = vy / vx if vx > 0 else np.inf

    def variance(g: float) -> np.ndarray:
        return area * (vy + g * g * vx) + (source_error * g * fx) ** 2

    gain, z = float("nan"), np.zeros(fx.size)
    for _ in range(max(int(max_iter), 1)):
        w = 1.0 / area[keep]
        start = _deming_slope(float(np.sum(w * fx[keep] ** 2)), float(np.sum(w * fy[keep] ** 2)),
                              float(np.sum(w * fx[keep] * fy[keep])), delta)
        if not (np.isfinite(start) and start > 0):
            return float("nan"), float("inf"), keep, float("nan")
        res = optimize.minimize_scalar(
            _effective_chi2, args=(fx[keep], fy[keep], area[keep], vx, vy, source_error),
            bounds=(np.log(start) - 0.2, np.log(start) + 0.2), method="bounded",
            options={"xatol": 1e-9})
        gain = float(np.exp(res.x))
        z = (fy - gain * fx) / np.sqrt(variance(gain))
        new = _reclip(z, keep, clip_sigma, min_stars)
        if new is None:
            break
        keep = new
    birge = _birge(z, keep)
    # var(g) = 1 / sum(t**2 / V), t the true x flux (t**2 estimated as fx**2 - its noise)
    info = float(np.sum(np.maximum(fx[keep] ** 2 - area[keep] * vx, 0.0) / variance(gain)[keep]))
    if not info > 0:
        return float("nan"), float("inf"), keep, birge
    return gain, float(np.sqrt(1.0 / info)) * max(birge, 1.0), keep, birge


def aperture_gain(
    dx: np.ndarray,
    dy: np.ndarray,
    valid: np.ndarray,
    objs,
    *,
    sigma_x: float,
    sigma_y: float,
    radius: float,
    sky: np.ndarray | None = None,
    min_stars: int = 5,
    min_snr: float = 5.0,
    clip_sigma: float = 3.0,
    max_iter: int = 5,
    rng: np.random.Generator | None = None,
    room: np.ndarray | None = None,
    prepared: Prepared | None = None,
) -> ApertureGain:
    """The gain ``y/x`` of two detrended images from aperture fluxes of the sources ``objs``.

    Sums over circles of ``radius`` at the sources found by `_detect` whose circle lies
    wholly on ``valid`` (`_cut`; ``room``, their `source_room`, saves the distance
    transform when the caller has it; ``prepared``, the planes of `prepare_sums`, saves
    making them again); sources whose mean signal-to-noise is below ``min_snr``
    are left out (symmetric in the two images, so the selection does not bias the line).
    The noise of a sum is ``kappa * area * sigma**2`` (``kappa`` measured on the ``sky``
    pixels of ``y - g0 x``: `aperture_noise_factor`) plus `SOURCE_ERROR`, and the gain is
    the clipped errors-in-variables line through the origin (`_line_through_origin`). The
    stated error is the noise of the fluxes, times the Birge ratio of the kept sources when
    they scatter beyond it: over 14 bench_phase5 surveys (about 900 pairs), the pair gains
    of `fit_overlap` lie at an rms of 1.0 stated error from the true ratios.

    A small aperture (`fit_overlap` uses 1.5 FWHM) holds most of a source's signal for a
    fraction of the sky noise of a large one, and is insensitive to the few-percent
    differences of the star profiles that two resamplings at different sub-pixel phases
    leave (which bias a pixel fit); it does depend on the seeing: `fit_overlap` compares it
    with a wide aperture.
    """
    nan = float("nan")
    if len(objs) < min_stars:
        return ApertureGain(nan, float("inf"), len(objs), nan, radius,
                            f"{len(objs)} sources < min_stars={min_stars}")
    whole = ~_cut(objs, valid, radius, room)
    p = prepare_sums(dx, dy, valid) if prepared is None else prepared
    area, fx, fy = (_plane_sums(plane, p.mask, objs["x"], objs["y"], radius)
                    for plane in (p.ones, p.x, p.y))
    root = np.sqrt(np.maximum(area, 1e-12))  # a source with no valid pixel is not whole
    snr = 0.5 * (fx / (sigma_x * root) + fy / (sigma_y * root))
    sel = (snr >= min_snr) & whole
    max_snr = float(np.max(fx[whole] / (sigma_x * root[whole]), initial=0.0))
    if np.count_nonzero(sel) < min_stars:
        return ApertureGain(nan, float("inf"), int(np.count_nonzero(sel)), nan, radius,
                            f"{np.count_nonzero(sel)} sources with S/N >= {min_snr:g} < "
                            f"min_stars={min_stars}", 1.0, max_snr)
    fx, fy, area = fx[sel], fy[sel], area[sel]
    g0 = float(np.sum(fy) / np.sum(fx)) if np.sum(fx) > 0 else 1.0
    kappa = aperture_noise_factor(dy - g0 * dx, valid if sky is None else sky & valid,
                                  sigma_y**2 + (g0 * sigma_x) ** 2,
                                  rng if rng is not None else np.random.default_rng(0))
    gain, err, keep, birge = _line_through_origin(
        fx, fy, area, kappa * sigma_x**2, kappa * sigma_y**2, clip_sigma=clip_sigma,
        max_iter=max_iter, min_stars=min_stars)
    n = int(np.count_nonzero(keep))
    if not np.isfinite(gain):
        return ApertureGain(nan, float("inf"), n, birge, radius,
                            "aperture fluxes give no positive gain", kappa, max_snr)
    return ApertureGain(gain, err, n, birge, radius, "", kappa, max_snr)


def psf_difference(dx: np.ndarray, dy: np.ndarray, valid: np.ndarray, objs, *, sigma_x: float,
                   sigma_y: float, radii: tuple[float, float], kappa: float = 1.0,
                   min_snr: float = 20.0, min_stars: int = 5, clip_sigma: float = 3.0,
                   room: np.ndarray | None = None,
                   prepared: Prepared | None = None) -> tuple[float, float, float, int]:
    """Do the two images have one PSF? A curve-of-growth test on the same sources.

    Per source wholly inside both radii and of S/N >= ``min_snr`` in the wide one,
    ``d = ln(fy/fx)`` at the wide radius minus at the narrow one: 0 (within the noise of
    the annulus between the radii) when the profiles are alike, of one sign for all
    sources when one image's stars are wider, and scattered when neighbours' light enters
    the annulus (crowding) in proportions that the wider PSF changes. Returns the clipped
    weighted mean of ``d``, its error (scaled by the Birge ratio), ``chi2 / n`` of ``d``
    about 0 over the same sources (1 for one PSF) and the number of sources;
    ``(nan, inf, nan, n)`` with fewer than ``min_stars``. Comparing the two radii's gains
    instead, each with its own error, missed a 0.3 % seeing bias where crowding made the
    wide aperture's gain noisy.
    """
    whole = ~_cut(objs, valid, radii[1], room) if len(objs) else np.zeros(0, dtype=bool)
    if np.count_nonzero(whole) < min_stars:
        return float("nan"), float("inf"), float("nan"), int(np.count_nonzero(whole))
    x, y = objs["x"][whole], objs["y"][whole]
    p = prepare_sums(dx, dy, valid) if prepared is None else prepared
    (fx1, fy1), (fx2, fy2) = ((_plane_sums(p.x, p.mask, x, y, r),
                               _plane_sums(p.y, p.mask, x, y, r)) for r in radii)
    ring = kappa * np.pi * (radii[1] ** 2 - radii[0] ** 2)
    snr = np.minimum(fx2 / (sigma_x * np.sqrt(kappa * np.pi * radii[1] ** 2)),
                     fy2 / (sigma_y * np.sqrt(kappa * np.pi * radii[1] ** 2)))
    sel = (snr >= min_snr) & (fx1 > 0) & (fy1 > 0)
    if np.count_nonzero(sel) < min_stars:
        return float("nan"), float("inf"), float("nan"), int(np.count_nonzero(sel))
    d = np.log(fy2[sel] / fx2[sel]) - np.log(fy1[sel] / fx1[sel])
    var = ring * (sigma_x**2 / fx2[sel] ** 2 + sigma_y**2 / fy2[sel] ** 2)
    keep = np.ones(d.size, dtype=bool)
    mean, z = 0.0, np.zeros(d.size)
    for _ in range(5):
        w = 1.0 / var[keep]
        mean = float(np.sum(w * d[keep]) / np.sum(w))
        z = (d - mean) / np.sqrt(var)
        new = _reclip(z, keep, clip_sigma, min_stars)
        if new is None:
            break
        keep = new
    n = int(np.count_nonzero(keep))
    birge = _birge(z, keep)
    chi2 = float(np.mean(d[keep] ** 2 / var[keep]))
    return mean, float(max(birge, 1.0) / np.sqrt(np.sum(1.0 / var[keep]))), chi2, n


def _reclip(
    z: np.ndarray, keep: np.ndarray, clip_sigma: float, min_stars: int
) -> np.ndarray | None:
    """The sources kept by one clipping pass on the pulls ``z`` (MAD scale of the kept ones,
    at least 1), or None when nothing changes or fewer than ``min_stars`` would be left."""
    scale = max(_MAD_TO_SIGMA * float(_median(np.abs(z[keep]))), 1.0)
    new = np.abs(z) <= clip_sigma * scale
    if np.array_equal(new, keep) or np.count_nonzero(new) < min_stars:
        return None
    return new


def _birge(z: np.ndarray, keep: np.ndarray) -> float:
    """Birge ratio of the kept pulls (1 with fewer than two)."""
    n = int(np.count_nonzero(keep))
    return float(np.sqrt(np.sum(z[keep] ** 2) / (n - 1))) if n > 1 else 1.0
