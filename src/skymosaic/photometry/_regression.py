"""Pairwise photometric relations of overlapping tiles.

`fit_overlap` relates two images of one overlap (the gain from detrended pixels via
`skymosaic.photometry.fit_linear_relation` or from star aperture fluxes via
`skymosaic.photometry._stars`, whichever is the more precise; the level from the raw
pixels); `pairwise_relations` runs it on every overlap and channel.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from skymosaic._stats import median as _median
from skymosaic._tiles import PlacedTile
from skymosaic.photometry._linefit import (
    NOISE_MAX_VALUES,
    Relation,
    _clipped_median,
    _failed,
    _offset_only,
    estimate_noise,
    fit_linear_relation,
)
from skymosaic.photometry._masks import grow_mask, valid_mask
from skymosaic.photometry._stars import (
    ApertureGain,
    _detect,
    _fwhm,
    aperture_gain,
    prepare_sums,
    psf_difference,
    source_room,
    subtract_background,
)

__all__ = ["PairRelation", "Sources", "detrend", "find_sources", "fit_overlap", "overlap_relations",
           "pairwise_relations"]

logger = logging.getLogger(__name__)


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
    ok = np.asarray(valid, dtype=bool)
    n_valid = int(np.count_nonzero(ok))
    if n_valid < 10:
        return np.where(ok, img - (_median(img[ok]) if n_valid else 0.0), np.nan)
    h, w = img.shape
    u, v = (np.arange(w) - 0.5 * w) / max(w, 1), (np.arange(h) - 0.5 * h) / max(h, 1)
    terms = [(k - j, j) for k in range(order + 1) for j in range(k + 1)]  # u^a v^b
    # The normal equations from moments: sum over valid pixels of u^a v^b (and of
    # image * u^a v^b) is Vpow^T @ mask @ Upow, one pass over the image; u and v lie in
    # [-0.5, 0.5], so the (at most 10 x 10) system is well conditioned.
    upow = u[:, None] ** np.arange(2 * order + 1)  # (w, 2 order + 1)
    vpow = v[:, None] ** np.arange(2 * order + 1)
    masked = np.where(ok, img, 0.0)
    m_mask = vpow.T @ ok.astype(np.float64) @ upow  # [b, a]: sum of u^a v^b
    m_img = vpow.T @ masked @ upow
    normal = np.array([[m_mask[b1 + b2, a1 + a2] for a2, b2 in terms] for a1, b1 in terms])
    rhs = np.array([m_img[b, a] for a, b in terms])
    coef = np.linalg.lstsq(normal, rhs, rcond=None)[0]
    cm = np.zeros((order + 1, order + 1))  # [b, a]: the coefficient of u^a v^b
    for c, (a, b) in zip(coef, terms, strict=True):
        cm[b, a] = c
    surface = vpow[:, : order + 1] @ cm @ upow[:, : order + 1].T  # one product, not 6 outers
    return np.where(ok, img - surface, np.nan)


def _sky_noise(image: np.ndarray, valid: np.ndarray) -> tuple[float, np.ndarray]:
    """`estimate_noise` with the sources masked (crowded fields inflate the plain estimate),
    and the pixels it was measured on."""
    sigma = estimate_noise(image, mask=valid)
    sky = valid
    level = None
    for _ in range(2):
        if not np.isfinite(sigma) or sigma <= 0:
            break
        if level is None:  # the same for both passes; rows strided as the noise's
            step = max(1, min(-(-image.size // NOISE_MAX_VALUES), image.shape[0]))
            level = _median(image[::step][valid[::step]])
        bright = grow_mask(np.abs(np.where(valid, image, level) - level) > 3 * sigma, 2)
        if np.count_nonzero(valid & ~bright) < 0.2 * np.count_nonzero(valid):
            break
        sky = valid & ~bright
        sigma = estimate_noise(image, mask=sky)
    return sigma, sky


@dataclass(frozen=True)
class Sources:
    """The compact sources of one overlap (`find_sources`): found once, measured in every
    channel."""

    objs: np.ndarray  #: sep objects (``x``, ``y``, ``a``, ``b``, ``flux``), brightest first
    room: np.ndarray  #: each one's distance to the edge of the valid pixels (`source_room`)
    fwhm: float  #: median FWHM (px) of the brightest whole ones; NaN without sources


def find_sources(x: np.ndarray, y: np.ndarray, valid: np.ndarray, *, sigma_x: float,
                 sigma_y: float, mesh: int = 16, threshold: float = 3.0,
                 max_stars: int = 20000) -> Sources:
    """The sources of two images of one overlap: detected on ``x/sigma_x + y/sigma_y``
    after each image's mesh background (`_detect`), so neither image alone decides which
    stars enter."""
    hx, hy = subtract_background(x, valid, mesh), subtract_background(y, valid, mesh)
    objs = _detect(hx, hy, valid, sigma_x, sigma_y, threshold=threshold, max_stars=max_stars)
    room = source_room(objs, valid)
    return Sources(objs, room, _fwhm(objs, valid, room))


#: Aperture radii of the star fluxes, in FWHM: the gain, and the wide cross-check that tells
#: whether the two images' PSFs differ (`fit_overlap`).
APERTURE_FWHM = 1.5
WIDE_APERTURE_FWHM = 2.5


def fit_overlap(
    x: np.ndarray,
    y: np.ndarray,
    valid: np.ndarray,
    *,
    gain_from: Literal["auto", "stars", "pixels", "none"] = "auto",
    detrend_order: int = 1,
    gain_mesh: int = 16,
    min_stars: int = 5,
    star_threshold: float = 3.0,
    star_snr: float = 5.0,
    max_gain_error: float = 0.1,
    max_samples: int = 20000,
    rng: np.random.Generator | None = None,
    min_points: int = 50,
    min_dynamic_range: float = 1.0,
    clip_sigma: float = 3.0,
    max_iter: int = 5,
    sources: Sources | None = None,
) -> Relation:
    """Relation ``y ≈ gain * x + offset`` of two images of the same overlap.

    The **gain** comes from what the sky gradients cannot fake. Both images first lose
    their least-squares plane (`detrend`, a linear operation: ``y = a x + b + plane``
    becomes ``y' = a x'`` exactly).

    * ``pixels``: a Deming line (`fit_linear_relation`) through the detrended pixels.
      Fitted on the raw pixels the line also follows the sky: each exposure has its own
      gradient, and a gradient that lines up with faint nebulosity in a narrow overlap
      tilts the line by several percent while its formal error says a fraction of a
      percent (measured on a synthetic survey: pair gains 2-17% off; after detrending,
      within their errors). The pixels weigh each star by its squared profile, so a line
      carried by bright stars compares their peaks, which two resamplings at different
      sub-pixel phases leave a few percent apart: pair gains 0.1-0.5 % off where the
      formal error says 0.02-0.05 % (measured on bench_phase5 surveys). The stated error
      is the formal one, scaled by the Birge ratio of the slopes of square cells (regions
      that disagree), with a share of the measured model error added in quadrature
      (`fit_linear_relation`, ``groups``).
    * ``stars``: errors-in-variables line through the origin of the aperture fluxes
      (radius 1.5 FWHM, on the detrended images: linear) of the sources found on both
      images (`skymosaic.photometry._stars.aperture_gain`). A sum over an aperture is not
      moved by how the resampling shaped a star, and its error is measured, not assumed.
      The flux ratios of the same sources at 2.5 FWHM check the seeing
      (`skymosaic.photometry._stars.psf_difference`): when they differ from those at 1.5
      FWHM by more than 3 sigmas, the images' PSFs differ and the wide aperture's gain
      is used (a pixel fit compares peak heights, which follow the seeing: on 2MASS M17
      tiles from different scans pixel gains were 0.945-0.98 where the zero points agree
      to 0.25 %).
    * ``auto`` (default): the aperture gain when the sources give one within `STARS_ENOUGH`
      (0.1 %); else (too few stars) the pixel fit too, and the gain with the smaller stated
      error, except that the aperture gain is used whenever the PSFs differ or the pixel
      gain is more than 3 combined sigmas from it. The pair's ``reason`` says which was used.

    Too little signal (dynamic range, or fewer than ``min_stars`` sources of S/N >=
    ``star_snr`` for ``stars``) gives ``offset_only``. The **level** (``x_ref``, ``y_ref``
    and ``offset``) comes from the raw pixels: the clipped median of ``y - gain * x``, so
    the global solve matches the sky as it is.

    Parameters
    ----------
    x, y : ndarray, shape (H, W)
        The two images on the same pixels (``x`` is the reference).
    valid : ndarray of bool, shape (H, W)
        Pixels valid in both.
    gain_from : {"auto", "stars", "pixels", "none"}
        How the gain is measured (above); ``none``: offset-only relations.
    detrend_order : int
        Order of the polynomial surface removed before the gain fits (-1: none).
    gain_mesh : int
        Background mesh (px) subtracted before source detection (not from the fluxes).
    min_stars : int
        Fewest usable sources for an aperture gain.
    star_threshold : float
        Detection threshold in sigma of the two images' combined noise.
    star_snr : float
        Smallest mean aperture signal-to-noise of a source used for the gain.
    max_gain_error : float
        Largest relative gain error of a usable gain; a looser one (a handful of faint
        stars, a line resting on one star) says nothing the prior does not: the relation
        becomes offset-only.
    max_samples : int
        Random pixels used by the pixel fit and the level (and most sources kept,
        brightest first).
    rng : numpy.random.Generator, optional
        For the sampling (default: seeded, reproducible).
    min_points, min_dynamic_range, clip_sigma, max_iter
        As in `fit_linear_relation` (``clip_sigma`` and ``max_iter`` also clip sources).
    sources : Sources, optional
        The overlap's sources when the caller found them already (`overlap_relations`
        finds those of a colour overlap once, on the sum of its channels); else found here
        (`find_sources`).

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
    (noise_x, sky_x), (noise_y, sky_y) = _sky_noise(dx, both), _sky_noise(dy, both)
    sigma_x, sigma_y = _finite_or_none(noise_x), _finite_or_none(noise_y)
    xs, ys = xa.ravel()[flat], ya.ravel()[flat]
    objs, fwhm, room = None, float("nan"), None
    if sigma_x and sigma_y:
        if sources is None:
            sources = find_sources(xa, ya, both, sigma_x=sigma_x, sigma_y=sigma_y,
                                   mesh=gain_mesh, threshold=star_threshold,
                                   max_stars=max_samples)
        objs, room, fwhm = sources.objs, sources.room, sources.fwhm
    star_rel, psf_note = None, ""
    if gain_from in ("stars", "auto") and objs is not None:
        star_rel, psf_note = _star_relation(
            dx, dy, both, objs, room, fwhm=fwhm, sigma_x=sigma_x, sigma_y=sigma_y,
            sky=sky_x & sky_y, rng=rng, min_stars=min_stars, min_snr=star_snr,
            clip_sigma=clip_sigma, max_iter=max_iter)
        star_rel = _bounded(star_rel, max_gain_error, "aperture")
    rel = star_rel
    if (gain_from == "pixels" or star_rel is None
            or (gain_from == "auto" and not _enough_stars(star_rel))):
        pix_rel = fit_linear_relation(
            dx.ravel()[flat], dy.ravel()[flat], sigma_x=sigma_x, sigma_y=sigma_y,
            min_points=min_points, min_dynamic_range=min_dynamic_range, clip_sigma=clip_sigma,
            max_iter=max_iter, groups=_cell_labels(both.shape, flat.size).ravel()[flat],
        )
        pix_rel = _bounded(pix_rel, max_gain_error, "pixel")
        rel = _choose(star_rel, pix_rel, psf_note)
    elif gain_from == "auto" and not psf_note:
        rel = dataclasses.replace(rel, reason=(
            f"aperture gain used: +-{rel.gain_err / rel.gain:.2%} ({rel.n_used} sources); "
            f"no pixel fit"))
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


def _star_relation(dx, dy, both, objs, room, *, fwhm: float, sigma_x: float, sigma_y: float,
                   sky: np.ndarray, rng: np.random.Generator, min_stars: int, min_snr: float,
                   clip_sigma: float, max_iter: int) -> tuple[Relation, str]:
    """The aperture gain of `fit_overlap` as a `Relation` (level not set yet), and a note
    (non-empty when the wide aperture was used because the PSFs differ)."""
    prepared = prepare_sums(dx, dy, both)

    def gain_at(radius: float) -> ApertureGain:
        return aperture_gain(dx, dy, both, objs, sigma_x=sigma_x, sigma_y=sigma_y, radius=radius,
                             sky=sky, rng=rng, min_stars=min_stars, min_snr=min_snr,
                             clip_sigma=clip_sigma, max_iter=max_iter, room=room,
                             prepared=prepared)

    radius = max(APERTURE_FWHM * fwhm, 2.0) if np.isfinite(fwhm) else 2.0
    res = gain_at(radius)
    note = ""
    if np.isfinite(res.gain):
        wide_r = max(WIDE_APERTURE_FWHM * fwhm, radius + 2.0)
        diff, diff_err, chi2, n = psf_difference(
            dx, dy, both, objs, sigma_x=sigma_x, sigma_y=sigma_y, radii=(radius, wide_r),
            kappa=res.kappa, min_stars=min_stars, clip_sigma=clip_sigma, room=room,
            prepared=prepared)
        if abs(diff) > 3.0 * diff_err or chi2 > 1.0 + 4.0 * np.sqrt(2.0 / max(n, 1)):
            note = (f"PSFs differ (the flux ratios change by {diff:+.2%} +- {diff_err:.2%}, chi2/n "
                    f"{chi2:.1f}, from {radius:.1f} to {wide_r:.1f} px): wide aperture gain used")
            res = gain_at(wide_r)
    ok = bool(np.isfinite(res.gain))
    return Relation(
        gain=res.gain if ok else 1.0, offset=0.0, gain_err=res.gain_err if ok else float("inf"),
        offset_err=float("inf"), n_used=res.n_used, residual_rms=res.birge,
        status="ok" if ok else "offset_only", reason=note if ok else res.reason,
        sigma_x=sigma_x, sigma_y=sigma_y, dynamic_range=res.max_snr), note


#: ``auto``: an aperture gain at least this precise (relative error) is used without a pixel
#: fit. Between resampled inputs a pixel fit's model error is of this size or more (star
#: profiles at different sub-pixel phases, see `fit_overlap`), so it would not be chosen,
#: and skipping it saves a tenth of the pair's time (on bench_seams' 30-frame survey 85 of
#: 89 pairs took the aperture gain when both ran). On inputs that share one pixel grid the
#: pixel fit can be the more precise: at 0.5 % instead of 0.1 % here, the gains of
#: ``test_recovers_known_gains_and_offsets`` were 2-4 times further from the truth.
STARS_ENOUGH = 0.001


def _enough_stars(star_rel: Relation) -> bool:
    """``auto``: is the aperture gain usable and precise enough to skip the pixel fit?"""
    return star_rel.status == "ok" and star_rel.gain_err <= STARS_ENOUGH * star_rel.gain


def _choose(star_rel: Relation | None, pix_rel: Relation, psf_note: str) -> Relation:
    """``auto``: the aperture gain when the PSFs differ, when it is the more precise or
    when the pixel gain is more than 3 combined sigmas from it; else the pixel gain."""
    if star_rel is None or star_rel.status != "ok":
        return pix_rel
    if pix_rel.status != "ok" or psf_note:
        return star_rel
    es, ep = star_rel.gain_err / star_rel.gain, pix_rel.gain_err / pix_rel.gain
    if es <= ep:
        return dataclasses.replace(star_rel, reason=(
            f"aperture gain used: +-{es:.2%} ({star_rel.n_used} sources) against the pixel "
            f"fit's +-{ep:.2%}"))
    if abs(np.log(pix_rel.gain / star_rel.gain)) > 3.0 * np.hypot(es, ep):
        return dataclasses.replace(star_rel, reason=(
            f"pixel fit {pix_rel.gain:.4f} disagrees with aperture fluxes {star_rel.gain:.4f}: "
            f"aperture gain used"))
    return pix_rel


def _bounded(rel: Relation, max_gain_error: float, what: str) -> Relation:
    """``rel`` as offset-only (gain 1, with the reason) when its relative gain error is too
    large."""
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
    detrend_order: int = 1,
    threads: int = 1,
) -> list[PairRelation]:
    """Fit ``T_j ≈ a*T_i + c`` on every overlap and channel.

    Pixels valid in both tiles are used (`fit_overlap`: the gain from the detrended pixels
    or the sources' aperture fluxes, the level from the raw pixels); at most
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
    gain_mesh, gain_from, detrend_order
        See `fit_overlap`.
    threads : int
        Pairs fitted at once (a thread pool; 0 = all cores). The results do not depend
        on it: each fit has its own seeded sampling and the list keeps the overlap order.

    Returns
    -------
    list of PairRelation
        One per overlap and channel, failed ones included (status ``failed``).
    """
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
        return overlap_relations(
            ov.i, ov.j, ti.data[:, si[0], si[1]], tj.data[:, sj[0], sj[1]], both, chans,
            seed=seed, gain_mesh=gain_mesh, gain_from=gain_from, detrend_order=detrend_order,
            max_samples=max_samples, min_points=min_points, min_dynamic_range=min_dynamic_range,
            clip_sigma=clip_sigma,
        )

    workers = threads or (os.cpu_count() or 1)
    if workers == 1 or len(overlaps) < 2:
        return [r for ov in overlaps for r in fit(ov)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for rels in pool.map(fit, overlaps) for r in rels]


def overlap_relations(
    i: int, j: int, x: np.ndarray, y: np.ndarray, both: np.ndarray, channels: list[int], *,
    seed: int = 0, **fit: Any,
) -> list[PairRelation]:
    """`fit_overlap` of inputs ``i`` and ``j`` on one overlap, per channel: ``x`` and ``y``
    (C, h, w) on the same output pixels, ``both`` the pixels valid in both. The random
    subsample is seeded by ``(seed, i, j)``, so it does not depend on the order or the
    grouping of the work. The sources of a colour overlap are found once, on the sum of
    its channels (deeper than any one channel), and measured in each: a third of the
    detection work, and every channel's gain rests on the same stars."""
    n_both = int(np.count_nonzero(both))
    shared = _channel_sum_sources(x, y, both, channels, fit) if len(channels) > 1 else None
    found = []
    for c in channels:
        rel = fit_overlap(x[c], y[c], both, rng=np.random.default_rng([seed, i, j]),
                          sources=shared, **fit)
        if rel.status != "ok":
            logger.debug("pair (%d, %d) channel %d: %s (%s)", i, j, c, rel.status, rel.reason)
        found.append(PairRelation(i, j, c, rel, n_both))
    return found


#: `fit_overlap`'s keyword defaults (what `_channel_sum_sources` uses when not given).
_FIT_DEFAULTS = {name: p.default for name, p in inspect.signature(fit_overlap).parameters.items()
                 if p.default is not inspect.Parameter.empty}


def _channel_sum_sources(x: np.ndarray, y: np.ndarray, both: np.ndarray, channels: list[int],
                         fit: dict[str, Any]) -> Sources | None:
    """`find_sources` on the channel sums of ``x`` and ``y`` (None when no star gain is
    asked for, or the sums' noise cannot be measured)."""
    opts = {**_FIT_DEFAULTS, **fit}  # fit_overlap's own defaults for what is not given
    if opts["gain_from"] not in ("auto", "stars"):
        return None
    sx, sy = (np.sum(np.asarray(a, dtype=np.float64)[channels], axis=0) for a in (x, y))
    order = opts["detrend_order"]
    noise = [_sky_noise(detrend(a, both, order) if order >= 0 else a, both)[0] for a in (sx, sy)]
    if not all(np.isfinite(n) and n > 0 for n in noise):
        return None
    return find_sources(sx, sy, both, sigma_x=noise[0], sigma_y=noise[1], mesh=opts["gain_mesh"],
                        threshold=opts["star_threshold"], max_stars=opts["max_samples"])


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
