"""Per-frame quality figures and session-relative frame selection.

Classic mode stacks thousands of short subs; a few of them are taken through
clouds, with lost guiding, in twilight or with the Moon rising.  This module
measures a handful of robust figures per frame (:func:`measure_quality`) and
rejects the frames that stand out from *their own session*
(:func:`select_frames`).  All thresholds are relative to the session's median
and MAD, never absolute numbers, so the same settings work for a Seestar S50 and
a survey camera.

FWHM method
-----------
The FWHM of a star is ``2 * r50`` where ``r50`` is the radius of the circle that
encloses half of the star's flux within ``rmax`` (``sep.flux_radius`` on the
background-subtracted image, other detections masked out through the
segmentation map).  For a circular Gaussian of width ``sigma`` the half-light
radius is ``sigma * sqrt(2 ln 2)``, so ``2 * r50 = 2.3548 * sigma`` is exactly
its FWHM.  Unlike the isophotal second moments (``a``, ``b``), which only see
the pixels above the detection threshold and therefore shrink for faint stars,
the half-light radius does not depend on the threshold.  Elongation is the
isophotal ``a / b``: the isophote of an elliptical Gaussian is an ellipse of the
same axis ratio, so the ratio is unbiased even where ``a`` and ``b`` are not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sep

if TYPE_CHECKING:
    from skymosaic.config import Config

__all__ = [
    "FrameQuality",
    "QualitySettings",
    "Selection",
    "measure_quality",
    "select_frames",
]

logger = logging.getLogger(__name__)

#: 1.4826 * MAD estimates the standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826
#: Gaussian FWHM / sigma.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

_BOX = 64  # background mesh, px: several star widths, smaller than nebulae gradients
_FILTER = 3  # median filter of the background mesh, in meshes
_MINAREA = 5  # px above threshold for a detection
_MAX_ROUND = 3.0  # a/b above this: galaxy, trail or blend; not used for the FWHM
_MIN_FWHM = 1.0  # px; narrower detections are hot pixels or cosmic rays
_SAT_FRACTION = 0.98  # peak above this fraction of the saturation level = saturated


@dataclass(frozen=True)
class FrameQuality:
    """Quality figures of one frame.

    Attributes
    ----------
    background : float
        Global sky level (sep ``globalback``), in image units; NaN if no data.
    noise : float
        Global sky noise (sep ``globalrms``), in image units; NaN if no data.
    n_stars : int
        Number of detections above ``detect_sigma * noise`` (hot pixels and
        cosmic rays narrower than 1 px excluded).
    fwhm : float
        Median FWHM of clean stars, pixels; NaN when there are none.
    elongation : float
        Median ``a / b`` of clean stars; NaN when there are none.
    """

    background: float
    noise: float
    n_stars: int
    fwhm: float
    elongation: float

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as a JSON-friendly dict (NaN becomes None)."""
        return {k: _json_float(v) for k, v in asdict(self).items()}


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _luminance(image: np.ndarray) -> np.ndarray:
    """Return the (H, W) float32 plane used for measurement, NaN kept."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        # plain channel mean: NaN in any channel makes the pixel invalid, as the
        # project-wide valid mask requires.
        return np.ascontiguousarray(arr.mean(axis=0, dtype=np.float32), dtype=np.float32)
    # always a copy: NaN pixels are overwritten before sep sees them
    return np.array(arr, dtype=np.float32, order="C", copy=True)


def _validate_image(image: Any, mask: Any, detect_sigma: float, max_stars: int) -> None:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[0] not in (1, 3)):
        raise ValueError(
            f"image must be (H, W) or (C, H, W) with C in (1, 3); got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"image must be a real numeric array; got dtype {arr.dtype}")
    if min(arr.shape[-2:]) < 8:
        raise ValueError(f"image is too small to measure: shape {arr.shape}")
    if mask is not None and np.shape(mask) != arr.shape[-2:]:
        raise ValueError(
            f"mask must have the image's (H, W) shape {arr.shape[-2:]}; got {np.shape(mask)}"
        )
    if not (math.isfinite(detect_sigma) and detect_sigma > 0):
        raise ValueError(f"detect_sigma must be a positive number; got {detect_sigma!r}")
    if isinstance(max_stars, bool) or not isinstance(max_stars, (int, np.integer)) or max_stars < 1:
        raise ValueError(f"max_stars must be a positive integer; got {max_stars!r}")


def _extract(data: np.ndarray, bad: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """Run sep.extract; on a pixel-buffer overflow retry at a higher threshold."""
    for attempt in range(4):
        try:
            return sep.extract(
                data,
                thresh * 2.0**attempt,
                mask=bad,
                minarea=_MINAREA,
                deblend_nthresh=32,
                deblend_cont=0.005,
                segmentation_map=True,
            )
        except Exception as err:  # sep raises a bare Exception for buffer overflows
            if "pixel buffer full" not in str(err) and "object" not in str(err):
                raise
            logger.warning(
                "source extraction overflowed at %.3g (%s); retrying at twice the threshold",
                thresh * 2.0**attempt,
                err,
            )
    raise RuntimeError("source extraction overflowed even at 8x the detection threshold")


def _saturation_level(data: np.ndarray, valid: np.ndarray, saturation: float | None) -> float:
    """Return the saturation level, or +inf when there is no clipped plateau."""
    if saturation is not None:
        return float(saturation)
    top = float(np.max(data[valid]))
    # a clipped sensor shows a plateau: several pixels at exactly the maximum
    return top if np.count_nonzero(data[valid] == top) >= 3 else math.inf


def measure_quality(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    detect_sigma: float = 5.0,
    max_stars: int = 500,
    saturation: float | None = None,
) -> FrameQuality:
    """Measure background, noise, star count, FWHM and elongation of a frame.

    Parameters
    ----------
    image : ndarray
        (H, W) or (C, H, W) with C in (1, 3); colour frames are measured on the
        channel mean. NaN marks no data.
    mask : ndarray of bool, optional
        (H, W), True where a pixel must be ignored (in addition to NaN).
    detect_sigma : float, optional
        Detection threshold in units of the global sky noise.
    max_stars : int, optional
        FWHM and elongation are measured on at most this many of the
        brightest clean stars (the count ``n_stars`` is not capped).
    saturation : float, optional
        Saturation level in image units. By default a plateau of at least 3
        pixels at the image maximum is taken as the saturation level.

    Returns
    -------
    FrameQuality
        A frame without stars (or without data) gives ``n_stars=0`` and NaN
        FWHM and elongation; it never raises for that.

    Raises
    ------
    ValueError
        If the image shape, the mask shape, ``detect_sigma`` or ``max_stars``
        is invalid.
    TypeError
        If the image is not numeric.

    Notes
    -----
    Stars used for FWHM and elongation exclude saturated detections, those
    touching the image or no-data edge, blends truncated by deblending,
    hot-pixel-like detections (FWHM < 1 px) and, for the FWHM only, very
    elongated ones (``a/b > 3``: galaxies, trails). See the module docstring
    for the FWHM definition.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q = measure_quality(rng.normal(100.0, 5.0, (128, 128)).astype(np.float32))
    >>> q.n_stars, round(q.background), round(q.noise)
    (0, 100, 5)
    """
    _validate_image(image, mask, detect_sigma, max_stars)
    data = _luminance(image)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    valid = ~bad
    if np.count_nonzero(valid) < _MINAREA:
        logger.warning("frame has no valid pixels; quality is undefined")
        return FrameQuality(math.nan, math.nan, 0, math.nan, math.nan)

    sat = _saturation_level(data, valid, saturation)
    data[bad] = 0.0  # masked for sep; the value only has to be finite
    height, width = data.shape
    bkg = sep.Background(
        data, mask=bad, bw=min(_BOX, width), bh=min(_BOX, height), fw=_FILTER, fh=_FILTER
    )
    background, noise = float(bkg.globalback), float(bkg.globalrms)
    if np.ptp(data[valid]) == 0:  # sep reports rms 1 for a constant image
        noise = 0.0
    if not (math.isfinite(noise) and noise > 0):
        return FrameQuality(background, noise, 0, math.nan, math.nan)

    sub = data - bkg.back(dtype=np.float32)
    sub[bad] = 0.0
    objects, segmap = _extract(sub, bad, detect_sigma * noise)
    if len(objects) == 0:
        return FrameQuality(background, noise, 0, math.nan, math.nan)
    fwhm_all, keep = _star_widths(sub, bad, objects, segmap)
    real = fwhm_all >= _MIN_FWHM  # hot pixels and cosmics are not stars
    n_stars = int(np.count_nonzero(real | ~np.isfinite(fwhm_all)))
    clean = keep & real & (objects["peak"] + bkg.globalback < _SAT_FRACTION * sat)
    fwhm, elong = _robust_shape(objects, fwhm_all, clean, max_stars)
    logger.debug(
        "quality: back=%.4g rms=%.4g stars=%d (clean %d) fwhm=%.3g elong=%.3g",
        background,
        noise,
        n_stars,
        int(clean.sum()),
        fwhm,
        elong,
    )
    return FrameQuality(background, noise, n_stars, fwhm, elong)


def _star_widths(
    sub: np.ndarray, bad: np.ndarray, objects: np.ndarray, segmap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the FWHM (2 * half-light radius) of each detection and a 'clean' flag."""
    height, width = sub.shape
    x, y = objects["x"], objects["y"]
    a = np.maximum(objects["a"], 0.5)
    # the aperture must hold the whole star: isophotal a underestimates faint
    # stars, so be generous; the segmentation map masks the neighbours.
    rmax = np.clip(6.0 * a, 6.0, 60.0)
    seg_id = np.arange(1, len(objects) + 1, dtype=np.int32)
    r50, flag = sep.flux_radius(
        sub, x, y, rmax, 0.5, mask=bad, segmap=segmap, seg_id=seg_id, subpix=5
    )
    fwhm = 2.0 * np.asarray(r50, dtype=np.float64)
    inside = (x - rmax >= 0) & (y - rmax >= 0) & (x + rmax <= width - 1) & (y + rmax <= height - 1)
    blended = (objects["flag"] & (sep.OBJ_TRUNC | sep.OBJ_MERGED)) != 0
    # APER_HASMASKED is also set by the neighbours masked through the segmap,
    # so test the no-data mask on its own: a star next to a NaN edge is cut.
    aper_bad = (np.asarray(flag) & sep.APER_TRUNC) != 0
    if bad.any():
        n_bad, _, _ = sep.sum_circle(bad.astype(np.float32), x, y, rmax, subpix=1)
        aper_bad |= np.asarray(n_bad) > 0
    keep = inside & ~blended & ~aper_bad & np.isfinite(fwhm) & (objects["b"] > 0)
    return fwhm, keep


def _robust_shape(
    objects: np.ndarray, fwhm_all: np.ndarray, clean: np.ndarray, max_stars: int
) -> tuple[float, float]:
    """Median FWHM and elongation of the brightest ``max_stars`` clean stars."""
    idx = np.flatnonzero(clean)
    if idx.size == 0:
        return math.nan, math.nan
    idx = idx[np.argsort(objects["flux"][idx])[::-1][:max_stars]]
    elong = objects["a"][idx] / objects["b"][idx]
    round_ = elong <= _MAX_ROUND
    # if every star is trailed, report their width rather than nothing
    fwhm_idx = idx[round_] if np.any(round_) else idx
    return float(np.median(fwhm_all[fwhm_idx])), float(np.median(elong))


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class QualitySettings:
    """Session-relative rejection thresholds of :func:`select_frames`.

    Every threshold is relative to the session's median and robust spread
    (``1.4826 * MAD``), so no figure depends on the camera or the units.

    Attributes
    ----------
    max_background_mad, max_noise_mad, max_fwhm_mad, max_elongation_mad : float
        Reject a frame whose figure exceeds ``median + k * spread``. Only the
        high side is rejected: a darker sky, lower noise or sharper stars are
        never a reason to drop a frame.
    min_star_fraction : float
        Reject a frame with fewer stars than this fraction of the session
        median (clouds, dew, a lost target).
    max_star_mad : float
        Also reject a frame with fewer stars than ``median - k * spread``; the
        spread of star counts is at least ``sqrt(median)`` (Poisson scatter).
    mad_floor : float
        The spread is at least this fraction of the median, so a very uniform
        session does not reject frames on tiny deviations.
    min_frames : int
        Sessions with fewer frames than this reject only frames without stars.
    """

    max_background_mad: float = 5.0
    max_noise_mad: float = 5.0
    min_star_fraction: float = 0.3
    max_fwhm_mad: float = 5.0
    max_elongation_mad: float = 5.0
    max_star_mad: float = 5.0
    mad_floor: float = 0.02
    min_frames: int = 3

    @classmethod
    def from_config(cls, config: Config) -> QualitySettings:
        """The selection thresholds of the ``[quality]`` section."""
        q = config.quality
        return cls(max_background_mad=q.max_background_mad, max_noise_mad=q.max_noise_mad,
                   min_star_fraction=q.min_star_fraction, max_fwhm_mad=q.max_fwhm_mad,
                   max_elongation_mad=q.max_elongation_mad, max_star_mad=q.max_star_mad,
                   mad_floor=q.mad_floor)

    def __post_init__(self) -> None:
        for name in (
            "max_background_mad",
            "max_noise_mad",
            "max_fwhm_mad",
            "max_elongation_mad",
            "max_star_mad",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        if not (0.0 <= self.min_star_fraction < 1.0):
            raise ValueError(f"min_star_fraction must be in [0, 1); got {self.min_star_fraction!r}")
        if not (0.0 <= self.mad_floor < 1.0):
            raise ValueError(f"mad_floor must be in [0, 1); got {self.mad_floor!r}")
        if (
            isinstance(self.min_frames, bool)
            or not isinstance(self.min_frames, int)
            or self.min_frames < 1
        ):
            raise ValueError(f"min_frames must be a positive integer; got {self.min_frames!r}")


@dataclass
class Selection:
    """Result of :func:`select_frames`.

    Attributes
    ----------
    accepted : list of bool
        One flag per frame, in input order.
    reasons : dict
        Frame name -> why it was rejected (figures included), rejected frames only.
    session_stats : dict
        Session key -> figure -> ``{"median": m, "spread": s}`` used for the cuts.
    """

    accepted: list[bool]
    reasons: dict[str, str]
    session_stats: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        """Number of rejected frames."""
        return len(self.accepted) - sum(self.accepted)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict for ``run.json``."""
        return {
            "accepted": list(self.accepted),
            "reasons": dict(self.reasons),
            "session_stats": {
                s: {f: {k: _json_float(v) for k, v in d.items()} for f, d in st.items()}
                for s, st in self.session_stats.items()
            },
        }


def _median_spread(values: np.ndarray, floor: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    med = float(np.median(finite))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(finite - med)))
    return med, max(spread, floor * abs(med))


def _judge_session(
    qualities: Sequence[FrameQuality], settings: QualitySettings
) -> tuple[list[list[str]], dict[str, dict[str, float]]]:
    """Return the rejection reasons of each frame of one session, and its stats."""
    reasons: list[list[str]] = [[] for _ in qualities]
    for i, q in enumerate(qualities):
        if q.n_stars == 0:
            reasons[i].append("no stars detected")
    stats: dict[str, dict[str, float]] = {}
    if len(qualities) < settings.min_frames:
        return reasons, stats
    stars = np.array([q.n_stars for q in qualities], dtype=np.float64)
    med_stars, spread = _median_spread(stars, settings.mad_floor)
    spread = max(spread, math.sqrt(med_stars))  # counts scatter at least like Poisson
    stats["n_stars"] = {"median": med_stars, "spread": spread}
    fraction_cut = settings.min_star_fraction * med_stars
    mad_cut = med_stars - settings.max_star_mad * spread
    for i, n in enumerate(stars):
        if n == 0:
            continue
        if n < fraction_cut:
            reasons[i].append(
                f"star count {int(n)} < {settings.min_star_fraction:.0%} of session "
                f"median {med_stars:.0f} (clouds?)"
            )
        elif n < mad_cut:
            reasons[i].append(
                f"star count {int(n)} < median {med_stars:.0f} - "
                f"{settings.max_star_mad:g} MAD ({spread:.3g}) (clouds?)"
            )
    cuts = (
        ("background", "background", settings.max_background_mad, "{:.4g}", " (moon/twilight?)"),
        ("noise", "noise", settings.max_noise_mad, "{:.4g}", ""),
        ("fwhm", "FWHM", settings.max_fwhm_mad, "{:.2f} px", " (focus/guiding?)"),
        ("elongation", "elongation", settings.max_elongation_mad, "{:.2f}", " (trailing?)"),
    )
    for attr, label, k, fmt, hint in cuts:
        values = np.array([getattr(q, attr) for q in qualities], dtype=np.float64)
        med, spread = _median_spread(values, settings.mad_floor)
        stats[attr] = {"median": med, "spread": spread}
        if not math.isfinite(med):
            continue
        for j in np.flatnonzero(values > med + k * spread).tolist():
            reasons[j].append(
                f"{label} {fmt.format(values[j])} > median {fmt.format(med)} + "
                f"{k:g} MAD ({fmt.format(spread)}){hint}"
            )
    return reasons, stats


def select_frames(
    qualities: Sequence[FrameQuality],
    names: Sequence[str],
    *,
    sessions: Sequence[str] | None = None,
    settings: QualitySettings | None = None,
    **thresholds: Any,
) -> Selection:
    """Accept or reject frames relative to their session's median and MAD.

    Parameters
    ----------
    qualities : sequence of FrameQuality
        One per frame, from :func:`measure_quality`.
    names : sequence of str
        Unique frame names, used as keys of the reasons.
    sessions : sequence of str, optional
        Session (or target) key per frame; statistics are computed per session.
        By default all frames form one session.
    settings : QualitySettings, optional
        Thresholds; defaults to ``QualitySettings()``.
    **thresholds
        Field overrides of ``settings`` (``max_background_mad=5.0``,
        ``max_noise_mad=5.0``, ``min_star_fraction=0.3``, ``max_fwhm_mad=5.0``,
        ``max_elongation_mad=5.0``, ``max_star_mad=5.0``, ``mad_floor=0.02``, ``min_frames=3``).

    Returns
    -------
    Selection
        ``accepted`` per frame and ``reasons`` for each rejected frame, e.g.
        ``"FWHM 7.90 px > median 3.10 px + 5 MAD (0.12 px) (focus/guiding?)"``.

    Raises
    ------
    ValueError
        If the lengths differ, names repeat, or a threshold is invalid.
    TypeError
        If an unknown threshold keyword is given.

    Notes
    -----
    Frames without stars are always rejected. Sessions with fewer than
    ``min_frames`` frames reject nothing else: there is no session to compare to.
    """
    base = settings if settings is not None else QualitySettings()
    unknown = set(thresholds) - set(QualitySettings.__dataclass_fields__)
    if unknown:
        raise TypeError(
            f"unknown threshold(s) {sorted(unknown)}; allowed: "
            f"{sorted(QualitySettings.__dataclass_fields__)}"
        )
    cfg = QualitySettings(**{**asdict(base), **thresholds})
    if len(qualities) != len(names):
        raise ValueError(f"got {len(qualities)} qualities but {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError("frame names must be unique")
    if sessions is not None and len(sessions) != len(names):
        raise ValueError(f"got {len(sessions)} session keys for {len(names)} frames")
    keys = list(sessions) if sessions is not None else [""] * len(names)

    accepted = [True] * len(names)
    reasons: dict[str, str] = {}
    all_stats: dict[str, dict[str, dict[str, float]]] = {}
    for key in dict.fromkeys(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        why, stats = _judge_session([qualities[i] for i in members], cfg)
        all_stats[str(key)] = stats
        for i, msgs in zip(members, why, strict=False):
            if msgs:
                accepted[i] = False
                reasons[names[i]] = "; ".join(msgs)
                logger.info("rejected %s: %s", names[i], reasons[names[i]])
    logger.info("frame selection: %d of %d accepted", sum(accepted), len(accepted))
    return Selection(accepted, reasons, all_stats)
