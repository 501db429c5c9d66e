"""Colour calibration of a linear RGB mosaic: background neutralisation and white balance.

A one-shot-colour camera (a Seestar S50's GRBG sensor, say) records the sky and the stars
through filters of different sensitivity: green is the strongest, so a linear mosaic that
goes straight to the screen is green. This module measures, once per mosaic, one scale and
one offset per channel::

    calibrated[c] = scale[c] * data[c] + offset[c]

* **White balance (scale).** Unsaturated, unblended stars are found with sep on the
  background-subtracted luminance; their aperture fluxes are summed in every channel (local
  annulus background, so a star on a galaxy or a gradient is measured alike). Each star's
  colour is its flux vector over its mean flux, ``q[c] = f[c] / mean(f)``; the robust
  (sigma-clipped) mean of the ``q`` of all stars is taken as white, ``w``, and
  ``scale[c] = mean(w) / w[c]``, which leaves the mean star brightness over the channels
  unchanged. One scale per channel, never per star: the spread of the star colours (red
  and blue stars) is kept. With ``star_color`` (default ``(1, 1, 1)``) the mean star is
  given that colour instead of white: ``scale[c] = t[c] / w[c]`` with ``t`` the star colour
  normalised to mean 1. That is how a G2V-like white reference is configured offline: the
  mean colour of the field's stars in a G2V (solar) white balance, measured once per
  camera and kind of field (docs/colour.md).
* **Background neutralisation (offset).** The sky level of each channel is the
  sigma-clipped median of the pixels outside the detected sources (stars and extended
  objects, dilated so their faint wings are out too); ``offset[c]`` moves every scaled
  sky level to their mean, so the three skies agree and their mean level is kept.

The calibration is measured on the binned preview plane (`skymosaic.io._stream.binned_plane`:
a mean of pixels, so aperture sums scale by the binning area alike in every channel and the
colour ratios are unchanged), which bounds its memory whatever the mosaic size. Mono data
have no colour: `measure_color` returns ``None``. The result is linear (an affine map per
channel): the science mosaic stays linear when it is applied (``color.mode = "apply"``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from skymosaic.config import Config

__all__ = ["COLOR_MODES", "COLOR_WHITE", "ColorCalibration", "ColorOptions", "measure_color"]

logger = logging.getLogger(__name__)

#: What becomes of the calibration (``color.mode``): recorded (preview and TIFF only),
#: applied (also to the science FITS) or not measured.
COLOR_MODES = ("record", "apply", "off")
#: White references: the robust mean colour of the stars, or none (background only).
COLOR_WHITE = ("stars", "none")

_MAD_TO_SIGMA = 1.482602218505602


@dataclass(frozen=True)
class ColorOptions:
    """How `measure_color` finds the sky and the stars.

    Attributes
    ----------
    white : {"stars", "none"}
        White reference: ``"stars"`` the robust mean star colour; ``"none"`` scales 1
        (background neutralisation only).
    detect_sigma : float
        Source detection threshold on the luminance, in sky sigmas.
    min_stars : int
        Fewest good stars for a white balance; with fewer the scales stay 1 (a warning).
    max_stars : int
        Brightest good stars used (bounds the time on dense fields).
    saturation : float or None
        Data level above which a star's peak counts as saturated; ``None``: 70 % of the
        brightest pixel of the channel.
    clip_sigma : float
        Clipping threshold of the robust sky median and the robust mean star colour.
    star_color : tuple of float
        The colour (R, G, B, any scale) the robust mean star gets after the white balance;
        ``(1, 1, 1)``: white.
    """

    white: Literal["stars", "none"] = "stars"
    detect_sigma: float = 5.0
    min_stars: int = 10
    max_stars: int = 3000
    saturation: float | None = None
    clip_sigma: float = 3.0
    star_color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def from_config(cls, config: Config) -> ColorOptions:
        """The colour calibration of the ``[color]`` section."""
        c = config.color
        return cls(white=c.white, min_stars=c.min_stars, star_color=tuple(c.star_color))

    def __post_init__(self) -> None:
        if len(self.star_color) != 3 or not all(
            math.isfinite(v) and v > 0 for v in self.star_color
        ):
            raise ValueError(f"star_color must be 3 positive numbers, got {self.star_color!r}")
        if self.white not in COLOR_WHITE:
            raise ValueError(f"white must be one of {COLOR_WHITE}, got {self.white!r}")
        if not self.detect_sigma > 0:
            raise ValueError(f"detect_sigma must be > 0, got {self.detect_sigma!r}")
        if self.min_stars < 1:
            raise ValueError(f"min_stars must be >= 1, got {self.min_stars!r}")


@dataclass(frozen=True)
class ColorCalibration:
    """A per-channel affine colour calibration, ``scale[c] * data[c] + offset[c]``.

    Attributes
    ----------
    scale, offset : tuple of float
        The calibration, per channel (R, G, B).
    sky : tuple of float
        Sky level of each channel before the calibration (sigma-clipped, sources masked).
    sky_noise : tuple of float
        Robust sky noise of each channel before the calibration.
    white : tuple of float
        Mean star colour before the calibration (``q`` averaging 1 over the channels);
        ``(1, 1, 1)`` without a white balance.
    n_stars : int
        Stars in the white reference.
    status : str
        ``"ok"``, or why the white balance was left out (the offsets are still set).
    """

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    sky: tuple[float, ...]
    sky_noise: tuple[float, ...]
    white: tuple[float, ...]
    n_stars: int
    status: str = "ok"

    @classmethod
    def identity(cls, channels: int, status: str) -> ColorCalibration:
        one, zero = (1.0,) * channels, (0.0,) * channels
        return cls(
            one, zero, (float("nan"),) * channels, (float("nan"),) * channels, one, 0, status
        )

    def apply(self, block: np.ndarray) -> np.ndarray:
        """``scale[c] * block[c] + offset[c]`` in float32 (NaN stays NaN), shape (C, h, w)."""
        scale = np.asarray(self.scale, np.float32)[:, None, None]
        offset = np.asarray(self.offset, np.float32)[:, None, None]
        return np.asarray(block, np.float32) * scale + offset

    def to_dict(self) -> dict:
        return {
            "scale": list(self.scale),
            "offset": list(self.offset),
            "sky": list(self.sky),
            "sky_noise": list(self.sky_noise),
            "white": list(self.white),
            "n_stars": self.n_stars,
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ColorCalibration:
        return cls(
            tuple(d["scale"]),
            tuple(d["offset"]),
            tuple(d["sky"]),
            tuple(d["sky_noise"]),
            tuple(d["white"]),
            int(d["n_stars"]),
            str(d.get("status", "ok")),
        )

    def header_cards(self, mode: str) -> dict:
        """FITS cards recording the calibration (``CLRMODE``, ``CLRSCLn``, ``CLROFFn``, ...)."""
        cards: dict = {
            "CLRMODE": (mode, "colour calibration: record, apply (skymosaic)"),
            "CLRNSTAR": (self.n_stars, "stars in the colour white reference"),
        }
        for c, (s, o, sky) in enumerate(
            zip(self.scale, self.offset, self.sky, strict=True), start=1
        ):
            cards[f"CLRSCL{c}"] = (float(s), f"colour scale of channel {c}: scale*x+offset")
            cards[f"CLROFF{c}"] = (float(o), f"colour offset of channel {c}")
            cards[f"CLRSKY{c}"] = (
                float(sky) if np.isfinite(sky) else 0.0,
                f"sky level of channel {c}",
            )
        return cards


def measure_color(
    data: np.ndarray, *, options: ColorOptions | None = None
) -> ColorCalibration | None:
    """Measure the background neutralisation and white balance of a linear RGB mosaic.

    Parameters
    ----------
    data : ndarray, shape (3, H, W)
        Linear mosaic (or its binned preview plane), NaN = no data. Mono data (C = 1) are
        not calibrated.
    options : ColorOptions, optional

    Returns
    -------
    ColorCalibration or None
        ``None`` for mono data; the identity (with ``status`` saying why) when no sky can
        be measured.

    Raises
    ------
    ValueError
        When ``data`` is not (C, H, W) with C = 1 or 3.
    """
    options = options or ColorOptions()
    if data.ndim != 3 or data.shape[0] not in (1, 3):
        raise ValueError(f"data must be (C, H, W) with C = 1 or 3, got shape {data.shape}")
    if data.shape[0] == 1:
        return None
    planes = np.asarray(data, np.float32)
    valid = np.isfinite(planes).all(axis=0)
    if valid.sum() < 100:
        return ColorCalibration.identity(3, "too few valid pixels")
    lum = np.where(valid, planes.mean(axis=0), 0.0)
    residual, rms = _background_residual(lum, valid)
    objs, segmap = _detect(residual, valid, rms, options.detect_sigma)
    sky_mask = valid & ~_source_mask(segmap, residual, rms)
    if sky_mask.sum() < 100:
        return ColorCalibration.identity(3, "too few sky pixels")
    sky, noise = zip(
        *(_clipped_median(planes[c][sky_mask], options.clip_sigma) for c in range(3)), strict=True
    )
    white, n_stars, status = np.ones(3), 0, "ok"
    target = np.ones(3)
    if options.white == "stars":
        white, n_stars, status = _white_from_stars(planes, valid, objs, noise, options)
        if status == "ok":
            target = np.asarray(options.star_color, float)
            target = target / target.mean()
    scale = float(np.mean(white)) * target / white
    scaled_sky = scale * np.asarray(sky)
    offset = float(np.mean(scaled_sky)) - scaled_sky
    calibration = ColorCalibration(
        scale=tuple(float(v) for v in scale),
        offset=tuple(float(v) for v in offset),
        sky=tuple(float(v) for v in sky),
        sky_noise=tuple(float(v) for v in noise),
        white=tuple(float(v) for v in white),
        n_stars=int(n_stars),
        status=status,
    )
    logger.info(
        "colour calibration: scales %s, offsets %s, sky %s, %d star(s) (%s)",
        _fmt(scale),
        _fmt(offset),
        _fmt(sky),
        n_stars,
        status,
    )
    return calibration


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _background_residual(lum: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
    """The luminance minus its sep mesh background (0 outside ``valid``) and its global rms."""
    import sep  # noqa: PLC0415 - optional at import time of the photometry package

    img = np.ascontiguousarray(lum, dtype=np.float64)
    h, w = img.shape
    mesh = int(np.clip(min(h, w) // 8, 16, 128))
    back = sep.Background(img, mask=np.ascontiguousarray(~valid), bw=mesh, bh=mesh, fw=3, fh=3)
    residual = np.where(valid, img - back.back(), 0.0)
    rms = float(back.globalrms)
    if not np.isfinite(rms) or rms <= 0:
        rms = float(_MAD_TO_SIGMA * np.median(np.abs(residual[valid] - np.median(residual[valid]))))
    return residual, max(rms, 1e-12)


def _detect(residual: np.ndarray, valid: np.ndarray, rms: float, sigma: float):
    """sep sources of the background-subtracted luminance and their segmentation map."""
    import sep  # noqa: PLC0415

    sep.set_extract_pixstack(max(300_000, residual.size // 2))
    sep.set_sub_object_limit(4096)
    objs, segmap = sep.extract(
        np.ascontiguousarray(residual),
        sigma,
        err=rms,
        mask=np.ascontiguousarray(~valid),
        minarea=5,
        deblend_cont=0.005,
        clean=True,
        segmentation_map=True,
    )
    return objs, segmap


def _source_mask(segmap: np.ndarray, residual: np.ndarray, rms: float) -> np.ndarray:
    """Detected sources dilated by 3 px, plus the faint extended wings: pixels of the
    smoothed residual above three sigmas of the smoothed noise (a lower threshold would
    mask the upward noise fluctuations of the sky too and bias its median low)."""
    mask = ndimage.binary_dilation(segmap > 0, iterations=3)
    smooth = ndimage.gaussian_filter(residual, 2.0)
    # a Gaussian of sigma 2 px averages about 4 pi sigma^2 = 50 pixels of white noise
    mask |= smooth > 3.0 * rms / np.sqrt(4.0 * np.pi * 4.0)
    return ndimage.binary_dilation(mask, iterations=2)


def _clipped_median(values: np.ndarray, clip: float, max_iter: int = 5) -> tuple[float, float]:
    """Median and robust sigma of ``values`` after iterative ``clip``-sigma clipping."""
    v = values[np.isfinite(values)].astype(np.float64)
    keep = np.ones(v.size, bool)
    for _ in range(max_iter):
        med = np.median(v[keep])
        sig = _MAD_TO_SIGMA * np.median(np.abs(v[keep] - med))
        new = np.abs(v - med) <= clip * max(sig, 1e-12)
        if new.sum() < 10 or np.array_equal(new, keep):
            break
        keep = new
    med = float(np.median(v[keep]))
    return med, float(_MAD_TO_SIGMA * np.median(np.abs(v[keep] - med)))


def _white_from_stars(
    planes: np.ndarray, valid: np.ndarray, objs, noise, options: ColorOptions
) -> tuple[np.ndarray, int, str]:
    """The robust mean colour of the good stars, their number and a status."""
    good = _good_stars(planes, valid, objs, options)
    if good.size == 0 or len(good) < options.min_stars:
        status = f"{len(good)} good star(s), fewer than {options.min_stars}: no white balance"
        logger.warning("colour calibration: %s (background neutralised only)", status)
        return np.ones(3), len(good), status
    radius = float(np.clip(3.0 * np.median(np.sqrt(good["a"] * good["b"])), 2.5, 30.0))
    flux = np.stack([_aperture(planes[c], valid, good, radius) for c in range(3)], axis=1)
    err = np.asarray(noise)[None, :] * np.sqrt(np.pi) * radius
    ok = np.all(np.isfinite(flux), axis=1) & np.all(flux > 10.0 * err, axis=1)
    if ok.sum() < options.min_stars:
        status = (f"{int(ok.sum())} star(s) with SNR > 10 in every channel, "
                  f"fewer than {options.min_stars}")
        logger.warning("colour calibration: %s: no white balance", status)
        return np.ones(3), int(ok.sum()), status
    q = flux[ok] / flux[ok].mean(axis=1, keepdims=True)
    keep = np.ones(len(q), bool)
    for _ in range(5):
        centre = np.median(q[keep], axis=0)
        spread = _MAD_TO_SIGMA * np.median(np.abs(q[keep] - centre), axis=0)
        new = np.all(np.abs(q - centre) <= options.clip_sigma * np.maximum(spread, 1e-6), axis=1)
        if new.sum() < options.min_stars or np.array_equal(new, keep):
            break
        keep = new
    white = q[keep].mean(axis=0)
    return white / white.mean(), int(keep.sum()), "ok"


def _good_stars(planes: np.ndarray, valid: np.ndarray, objs, options: ColorOptions):
    """Unblended, untruncated, unsaturated, compact sources wholly on valid data."""
    if len(objs) == 0:
        return objs
    h, w = valid.shape
    ix = np.clip(np.round(objs["x"]).astype(int), 0, w - 1)
    iy = np.clip(np.round(objs["y"]).astype(int), 0, h - 1)
    inside = ndimage.distance_transform_edt(np.pad(valid, 1))[1:-1, 1:-1]
    size = np.sqrt(np.abs(objs["a"] * objs["b"]))
    compact = (objs["a"] / np.maximum(objs["b"], 1e-6) < 2.0) & (size < 4.0 * np.median(size))
    ok = (objs["flag"] == 0) & compact & (inside[iy, ix] > 4.0 * size + 4.0)
    for c in range(3):
        level = options.saturation
        if level is None:
            level = 0.7 * float(np.nanmax(planes[c]))
        peak = ndimage.maximum_filter(np.where(valid, planes[c], -np.inf), size=5)[iy, ix]
        ok &= peak < level
    good = objs[ok]
    return np.sort(good, order="flux")[::-1][: options.max_stars]


def _aperture(image: np.ndarray, valid: np.ndarray, objs, radius: float) -> np.ndarray:
    """Aperture sums of ``image`` at the sources, minus the mean of an annulus of 2-3 radii."""
    import sep  # noqa: PLC0415

    img = np.ascontiguousarray(np.where(valid, image, 0.0), dtype=np.float64)
    flux, _, flag = sep.sum_circle(
        img,
        np.asarray(objs["x"], np.float64),
        np.asarray(objs["y"], np.float64),
        radius,
        mask=np.ascontiguousarray(~valid),
        bkgann=(2.0 * radius, 3.0 * radius),
        subpix=5,
    )
    return np.where(flag == 0, flux, np.nan)
