"""Star aperture photometry of an overlap: the gain as a ratio of source fluxes.

Used by `skymosaic.photometry.fit_overlap` to measure (or cross-check) a pair's gain from
what a PSF difference cannot fake: fluxes in apertures after a mesh background subtraction.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from skymosaic.photometry._linefit import _robust_sigma

__all__ = ["subtract_background"]

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
        back = sep.Background(img, mask=np.ascontiguousarray(~valid), bw=bw, bh=bh, fw=3, fh=3).back()
    except Exception as err:
        logger.debug("mesh background failed (%s): subtracting the median", err)
        back = np.median(img[valid]) if valid.any() else 0.0
    return np.where(valid, img - back, np.nan)


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
