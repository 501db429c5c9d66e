"""The display stretch: linear mosaic to display values in [0, 1], fitted once, applied anywhere.

Two steps, so that a preview, a 16-bit TIFF and the tiles of a deep-zoom viewer of the same
mosaic all show the same values:

``fit_stretch(sample, *, options=None, color=None) -> StretchParams``
    Fitted ONCE on a sample of the whole mosaic: the binned preview plane
    (`skymosaic.io._stream.binned_plane`, the plane `write_preview_from_disk` draws), shape
    (C, H, W), NaN = no data. Deterministic (fixed subsampling, no random numbers).
``apply_stretch(block, params) -> ndarray float32 in [0, 1]``
    Any (C, h, w) block of the mosaic, at full resolution or binned. A pure per-pixel map:
    the result of a pixel depends on that pixel's value and ``params`` only, so blocks can
    be cut anywhere, processed in any order or on any machine and give the same values as
    the whole image (no-data, NaN, gives 0). It runs on the host (NumPy) for every backend,
    so CPU and GPU runs give the same picture by construction.

The map, per channel ``c`` (`StretchParams` holds every number in it)::

    x = scale[c] * data + offset[c]                  # colour calibration (photometry._color)
    t = max(x - black[c], 0) / (white[c] - black[c])  # shadows clipped, white point 1
    y = asinh(t / beta) / asinh(1 / beta)              # curve "asinh" (default), or
    y = mtf(m, min(t, 1))                              # curve "mtf" (PixInsight's STF)

in the manner of PixInsight's screen transfer function and Siril's autostretch:

* **Shadows.** ``black`` = sky median - ``shadow_clip`` x the sky's normalised MAD
  (1.4826 MAD), both measured on the colour-calibrated sample; the default 2.8 is
  PixInsight's. Pixels below it show black.
* **Midtones.** The curve's one free parameter (``beta`` of the asinh, or the midtones
  balance ``m`` of the rational midtones transfer function ``mtf(m, t) = (m - 1) t /
  ((2 m - 1) t - m)``) is solved so that the sky median lands at ``target_background``
  of full scale (0.15 by default; PixInsight's STF uses 0.25).
* **Highlights.** ``white`` is the ``highlight_percentile`` of the calibrated sample (the
  brightest pixel by default), so nothing in the sample is clipped. The asinh curve is
  logarithmic far above ``beta``: galaxy cores and bright stars keep their structure over
  several decades instead of saturating (the MTF, steep at the sky, flattens them: choose it
  for faint nebulosity). Pixels of a full-resolution block brighter than the sample's white
  (star peaks that the binning averaged down) are clipped at 1. A sample without bright
  sources (the sky would sit above the target even on a linear map) gets its white point
  raised until the sky is at the target.

Linked: after the colour calibration the channels share one sky level, so the black
point, white point and curve are one for all channels (the channel means of the medians
and MADs, as PixInsight's linked STF): colours keep their calibrated ratios.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from skymosaic.config import Config

__all__ = [
    "STRETCH_CURVES",
    "ColorMap",
    "StretchOptions",
    "StretchParams",
    "apply_stretch",
    "fit_stretch",
    "to_uint",
]

#: Display curves: asinh (highlights compressed logarithmically) or PixInsight's MTF.
STRETCH_CURVES = ("asinh", "mtf")

_MAD_TO_SIGMA = 1.482602218505602
#: Largest number of pixels per channel the fit reads (a fixed stride: deterministic).
_SAMPLE_PIXELS = 4_000_000
#: asinh softening used when the sky is already at or above the target (the curve is linear).
_LINEAR_BETA = 1e6


class ColorMap(Protocol):
    """A per-channel affine colour calibration, ``scale[c] * x + offset[c]``
    (`skymosaic.photometry.ColorCalibration` is one)."""

    @property
    def scale(self) -> Sequence[float]: ...

    @property
    def offset(self) -> Sequence[float]: ...


@dataclass(frozen=True)
class StretchOptions:
    """The strength of the display stretch (config ``[color]``).

    Attributes
    ----------
    target_background : float
        Display level of the sky median, fraction of full scale, in (0, 0.5].
    shadow_clip : float
        Black point, in normalised MADs below the sky median (>= 0).
    curve : {"asinh", "mtf"}
        Display curve (see the module docstring).
    highlight_percentile : float
        Percentile of the calibrated sample that maps to full scale (100 = its maximum).
    """

    target_background: float = 0.15
    shadow_clip: float = 2.8
    curve: Literal["asinh", "mtf"] = "asinh"
    highlight_percentile: float = 100.0

    @classmethod
    def from_config(cls, config: Config) -> StretchOptions:
        """The display stretch of the ``[color]`` section."""
        c = config.color
        return cls(target_background=c.target_background, shadow_clip=c.shadow_clip,
                   curve=c.curve, highlight_percentile=c.highlight_percentile)

    def __post_init__(self) -> None:
        if not 0.0 < self.target_background <= 0.5:
            raise ValueError(
                f"target_background must be in (0, 0.5], got {self.target_background!r}"
            )
        if not self.shadow_clip >= 0.0:
            raise ValueError(f"shadow_clip must be >= 0, got {self.shadow_clip!r}")
        if self.curve not in STRETCH_CURVES:
            raise ValueError(f"curve must be one of {STRETCH_CURVES}, got {self.curve!r}")
        if not 50.0 < self.highlight_percentile <= 100.0:
            raise ValueError(
                f"highlight_percentile must be in (50, 100], got {self.highlight_percentile!r}"
            )


@dataclass(frozen=True)
class StretchParams:
    """Everything `apply_stretch` needs, per channel (C = 1 or 3); JSON-ready via `to_dict`.

    Attributes
    ----------
    scale, offset : tuple of float
        Colour calibration applied first (`skymosaic.photometry.ColorCalibration`);
        ones and zeros without one.
    black, white : tuple of float
        Black and white points of the calibrated data (equal over channels: linked).
    midtones : tuple of float
        The curve's parameter per channel: ``beta`` (asinh) or ``m`` (mtf), in units of
        ``white - black``.
    curve : str
        ``"asinh"`` or ``"mtf"``.
    sky : float
        Sky median of the calibrated sample (informative).
    """

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    black: tuple[float, ...]
    white: tuple[float, ...]
    midtones: tuple[float, ...]
    curve: str = "asinh"
    sky: float = float("nan")

    @property
    def channels(self) -> int:
        return len(self.scale)

    def to_dict(self) -> dict:
        return {
            "curve": self.curve,
            "scale": list(self.scale),
            "offset": list(self.offset),
            "black": list(self.black),
            "white": list(self.white),
            "midtones": list(self.midtones),
            "sky": self.sky,
        }

    @classmethod
    def from_dict(cls, d: dict) -> StretchParams:
        return cls(
            tuple(d["scale"]),
            tuple(d["offset"]),
            tuple(d["black"]),
            tuple(d["white"]),
            tuple(d["midtones"]),
            str(d["curve"]),
            float(d.get("sky", float("nan"))),
        )


def _subsample(plane: np.ndarray) -> np.ndarray:
    """The finite values of ``plane`` (H, W), every k-th (a fixed stride) beyond the cap."""
    flat = plane.reshape(-1)
    step = max(1, flat.size // _SAMPLE_PIXELS)
    values = flat[::step]
    return values[np.isfinite(values)].astype(np.float64)


def fit_stretch(
    sample: np.ndarray, *, options: StretchOptions | None = None, color: ColorMap | None = None
) -> StretchParams:
    """Fit the display stretch of a mosaic on ``sample`` (see the module docstring).

    Parameters
    ----------
    sample : ndarray, shape (C, H, W)
        The whole mosaic or its binned preview plane, linear, NaN = no data.
    options : StretchOptions, optional
        Strength of the stretch.
    color : ColorMap, optional
        A colour calibration (`skymosaic.photometry.ColorCalibration`), applied before the
        statistics (and by `apply_stretch`); ``None``: no calibration.

    Returns
    -------
    StretchParams

    Raises
    ------
    ValueError
        When ``sample`` is not (C, H, W), or ``color`` has another number of channels.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = (100 + rng.normal(0, 5, (1, 64, 64))).astype(np.float32)
    >>> p = fit_stretch(img)
    >>> round(float(np.median(apply_stretch(img, p))), 2)
    0.15
    """
    options = options or StretchOptions()
    if sample.ndim != 3:
        raise ValueError(f"sample must be (C, H, W), got shape {sample.shape}")
    c = sample.shape[0]
    scale, offset = (1.0,) * c, (0.0,) * c
    if color is not None:
        if len(color.scale) != c:
            raise ValueError(f"colour calibration has {len(color.scale)} channels, the sample {c}")
        scale, offset = tuple(map(float, color.scale)), tuple(map(float, color.offset))
    values = []
    for k in range(c):
        v = _subsample(np.asarray(sample[k]))
        values.append(v * np.float32(scale[k]) + np.float32(offset[k]))
    if min(v.size for v in values) == 0:  # nothing to fit: a plain [0, 1] map
        return StretchParams(
            scale, offset, (0.0,) * c, (1.0,) * c, (_LINEAR_BETA,) * c, options.curve, float("nan")
        )
    medians = [float(np.median(v)) for v in values]
    mads = [
        _MAD_TO_SIGMA * float(np.median(np.abs(v - m)))
        for v, m in zip(values, medians, strict=True)
    ]
    sky, sigma = float(np.mean(medians)), float(np.mean(mads))
    low = min(float(v.min()) for v in values)
    black = max(sky - options.shadow_clip * sigma, low)
    white = max(float(np.percentile(v, options.highlight_percentile)) for v in values)
    if not white > black:
        white = black + max(abs(black), 1.0)
    t_sky = (sky - black) / (white - black)
    if options.curve == "asinh" and t_sky > options.target_background:
        # a low-contrast sample (no stars): the asinh cannot darken, so widen the range
        white = black + (sky - black) / options.target_background
        t_sky = options.target_background
    mid = _solve_midtones(options.curve, t_sky, options.target_background)
    return StretchParams(scale, offset, (black,) * c, (white,) * c, (mid,) * c, options.curve, sky)


def _asinh_curve(t, beta: float):
    return np.arcsinh(t / beta) / math.asinh(1.0 / beta)


def _mtf(m: float, t):
    return (m - 1.0) * t / ((2.0 * m - 1.0) * t - m)


def _solve_midtones(curve: str, t_sky: float, target: float) -> float:
    """The curve parameter that maps ``t_sky`` to ``target`` (linear when it is brighter)."""
    if curve == "mtf":
        if not 0.0 < t_sky < 1.0:
            return 0.5  # m = 0.5 is the identity
        m = t_sky * (target - 1.0) / (2.0 * t_sky * target - target - t_sky)
        return float(np.clip(m, 1e-9, 1.0 - 1e-9))
    if not 0.0 < t_sky < target:
        return _LINEAR_BETA  # t_sky = target: the linear map
    # asinh(t/b)/asinh(1/b) falls from 1 (b -> 0) to t (b -> inf): bisect in log b
    lo, hi = math.log(1e-12), math.log(_LINEAR_BETA)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(_asinh_curve(t_sky, math.exp(mid))) > target:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def apply_stretch(block: np.ndarray, params: StretchParams) -> np.ndarray:
    """Display values in [0, 1] of a (C, h, w) block (see the module docstring).

    Per pixel and deterministic: any tiling of a mosaic gives the values of the whole;
    NaN (no data) gives 0.

    Raises
    ------
    ValueError
        When ``block`` is not (C, h, w) with the channels of ``params``.
    """
    if block.ndim != 3 or block.shape[0] != params.channels:
        raise ValueError(f"block must be ({params.channels}, h, w), got shape {block.shape}")
    out = np.empty(block.shape, np.float32)
    for k in range(params.channels):
        x = np.asarray(block[k], np.float32) * np.float32(params.scale[k]) + np.float32(
            params.offset[k]
        )
        span = params.white[k] - params.black[k]
        t = np.maximum((x.astype(np.float64) - params.black[k]) / span, 0.0)
        if params.curve == "mtf":
            y = _mtf(params.midtones[k], np.minimum(t, 1.0))
        else:
            y = _asinh_curve(t, params.midtones[k])
        y = np.clip(y, 0.0, 1.0)
        out[k] = np.where(np.isfinite(y), y, 0.0)
    return out


def to_uint(display: np.ndarray, bits: int = 8) -> np.ndarray:
    """Display values in [0, 1] as rounded unsigned integers of ``bits`` (8 or 16)."""
    top = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.round(np.clip(display, 0.0, 1.0) * top).astype(dtype)
