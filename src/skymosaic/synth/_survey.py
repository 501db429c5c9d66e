"""Synthetic surveys: a grid of overlapping frames of a `TruthSky` with known gains and offsets.

Frame model, per channel ``c`` (this is the contract tests elsewhere rely on)::

    data[c] = gain[c] * (truth[c] + sky_level + gradient) + offset[c] + noise

* ``truth`` is `TruthSky.render` on the frame's own WCS (flux per pixel, ADU).
* ``sky_level`` is the same constant for every frame and channel; ``gradient`` is a plane of
  zero mean over the frame, ``sky_level * sky_gradient`` peak-to-peak per frame width along
  a random direction, plus (``sky_curvature > 0``) a random quadratic form in the frame's
  own normalised coordinates reaching ``sky_level * sky_curvature`` at its corners or edges
  (see `SynthFrame.sky_model`): light pollution and moonlight fixed to the sensor.
* ``gain`` multiplies sky and sky background alike (a transparency/exposure/QE factor);
  ``offset`` is an additive pedestal applied after the gain (bias, unsubtracted sky).
  Hence a least-squares fit ``data ≈ s * truth + b`` over a frame recovers ``s = gain`` and
  ``b = gain * sky_level + offset`` (exactly when ``sky_gradient=0``).
* ``noise`` is Gaussian with standard deviation ``noise_sigma`` in data units (after gain).

Then NaN corner triangles, hot pixels and satellite trails are applied as documented in
`make_survey`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic.synth._sky import TruthSky, _tan_deproject, celestial_wcs, make_truth_sky

__all__ = ["Survey", "SynthFrame", "make_survey", "write_survey"]

logger = logging.getLogger(__name__)

_DATE0 = datetime(2024, 3, 15, 21, 0, 0)


@dataclass(eq=False)
class SynthFrame:
    """One synthetic exposure and everything that was injected into it.

    Attributes
    ----------
    data : ndarray
        float32 (C, H, W) for `make_survey` frames (NaN = no data); uint16 (H, W) raw Bayer
        for `make_seestar_frames`.
    wcs : astropy.wcs.WCS
        The true WCS of the frame (also when the header carries none).
    gain, offset : ndarray (C,)
        Per-channel gain and offset of the frame model (see the module docstring).
    header : astropy.io.fits.Header
        FITS header as it would be written.
    name : str
        Frame identifier, unique within a survey.
    sky_level : float
        Sky level before the gain (ADU).
    sky_gradient : (float, float)
        ``(gx, gy)``: sky gradient before the gain, ADU per pixel along x and y, zero at
        the frame centre.
    sky_quadratic : (float, float, float)
        ``(a, b, c)``: the quadratic sky term ``a u^2 + b u v + c v^2`` before the gain (ADU),
        with ``u, v`` the pixel coordinates scaled to [-1, 1] across the frame.
    pointing : (int, int)
        ``(iy, ix)`` grid pointing; ``exposure`` is the repeat index at that pointing.
    rotation_deg : float
        Position angle of the frame.
    hot_pixels : ndarray (K, 2) int
        ``(y, x)`` of injected hot pixels.
    has_trail : bool
        Whether a satellite trail was added; ``trail`` gives ``(x0, y0, angle_deg, peak)``.
    nan_corners : list of str
        Corners (``"y0x0"``, ``"y0x1"``, ``"y1x0"``, ``"y1x1"``) blanked with NaN.
    bayer_pattern : str or None
        Bayer pattern of raw frames, e.g. ``"GRBG"``.
    """

    data: np.ndarray
    wcs: WCS
    gain: np.ndarray
    offset: np.ndarray
    header: fits.Header
    name: str
    sky_level: float = 0.0
    sky_gradient: tuple[float, float] = (0.0, 0.0)
    sky_quadratic: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pointing: tuple[int, int] = (0, 0)
    exposure: int = 0
    rotation_deg: float = 0.0
    hot_pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    has_trail: bool = False
    trail: tuple[float, float, float, float] | None = None
    nan_corners: list[str] = field(default_factory=list)
    bayer_pattern: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the frame."""
        return int(self.data.shape[-2]), int(self.data.shape[-1])

    def sky_model(self) -> np.ndarray:
        """The sky before the gain, ``sky_level + gradient (+ quadratic)``, float32 (H, W)."""
        h, w = self.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        gx, gy = self.sky_gradient
        sky = (
            np.float32(self.sky_level)
            + np.float32(gx) * (xx - (w - 1) / 2)
            + np.float32(gy) * (yy - (h - 1) / 2)
        )
        a, b, c = self.sky_quadratic
        if a or b or c:
            u = xx * np.float32(2.0 / max(w - 1, 1)) - 1
            v = yy * np.float32(2.0 / max(h - 1, 1)) - 1
            sky = sky + np.float32(a) * u * u + np.float32(b) * u * v + np.float32(c) * v * v
        return sky.astype(np.float32)


@dataclass(eq=False)
class Survey:
    """A set of synthetic frames and the sky they were drawn from."""

    frames: list[SynthFrame]
    truth: TruthSky
    center: tuple[float, float] = (150.0, 2.0)
    pixel_scale_arcsec: float = 2.0

    def truth_image(self, wcs: WCS, shape: tuple[int, int]) -> np.ndarray:
        """The exact truth on any grid (float32 (C, H, W)); see `TruthSky.render`."""
        return self.truth.render(wcs, shape)

    def mosaic_grid(
        self, *, pixel_scale_arcsec: float | None = None, margin_px: int = 2
    ) -> tuple[WCS, tuple[int, int]]:
        """A north-up TAN grid centred on the survey that covers every frame.

        Returns
        -------
        (WCS, (H, W))
        """
        scale = self.pixel_scale_arcsec if pixel_scale_arcsec is None else pixel_scale_arcsec
        probe = celestial_wcs((1, 1), center=self.center, pixel_scale_arcsec=scale)
        xs, ys = [], []
        for f in self.frames:
            h, w = f.shape
            cx = np.array([-0.5, w - 0.5, w - 0.5, -0.5])
            cy = np.array([-0.5, -0.5, h - 0.5, h - 0.5])
            x, y = probe.world_to_pixel_values(*f.wcs.pixel_to_world_values(cx, cy))
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        half_w = max(abs(x.min()), abs(x.max())) + margin_px
        half_h = max(abs(y.min()), abs(y.max())) + margin_px
        shape = (2 * math.ceil(half_h) + 1, 2 * math.ceil(half_w) + 1)
        return celestial_wcs(shape, center=self.center, pixel_scale_arcsec=scale), shape


def _validate_survey_args(**kw) -> None:
    if kw["n_x"] < 1 or kw["n_y"] < 1:
        raise ValueError(f"n_x and n_y must be >= 1, got n_x={kw['n_x']!r}, n_y={kw['n_y']!r}")
    shape = kw["frame_shape"]
    if len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"frame_shape must be (H, W) with sizes >= 8, got {shape!r}")
    if not 0.0 <= kw["overlap"] < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {kw['overlap']!r}")
    if kw["channels"] not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {kw['channels']!r}")
    if kw["frames_per_pointing"] < 1:
        raise ValueError(f"frames_per_pointing must be >= 1, got {kw['frames_per_pointing']!r}")
    for name in ("pixel_scale_arcsec",):
        if not kw[name] > 0:
            raise ValueError(f"{name} must be > 0, got {kw[name]!r}")
    for name in ("rotation_deg", "jitter_px", "noise_sigma", "sky_gradient", "sky_curvature",
                 "hot_pixels"):
        if kw[name] < 0:
            raise ValueError(f"{name} must be >= 0, got {kw[name]!r}")
    for name in ("gain_range", "offset_range"):
        lo, hi = kw[name]
        if lo > hi:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {kw[name]!r}")
    if not kw["gain_range"][0] > 0:
        raise ValueError(f"gain_range must be positive, got {kw['gain_range']!r}")
    if not 0.0 <= kw["satellite_prob"] <= 1.0:
        raise ValueError(f"satellite_prob must be in [0, 1], got {kw['satellite_prob']!r}")
    response = kw["channel_response"]
    if response is not None and (len(response) != kw["channels"]
                                 or not all(r > 0 for r in response)):
        raise ValueError(f"channel_response must be {kw['channels']} positive value(s), "
                         f"got {response!r}")
    truth = kw["truth"]
    if truth is not None and not isinstance(truth, TruthSky):
        raise TypeError(f"truth must be a TruthSky or None, got {type(truth).__name__}")


def make_survey(
    *,
    n_x: int = 3,
    n_y: int = 3,
    frame_shape: tuple[int, int] = (256, 256),
    overlap: float = 0.3,
    pixel_scale_arcsec: float = 2.0,
    center: tuple[float, float] = (150.0, 2.0),
    channels: int = 1,
    frames_per_pointing: int = 1,
    rotation_deg: float = 2.0,
    jitter_px: float = 4.0,
    gain_range: tuple[float, float] = (0.9, 1.1),
    channel_response: tuple[float, ...] | None = None,
    offset_range: tuple[float, float] = (0.0, 50.0),
    noise_sigma: float = 5.0,
    sky_level: float = 100.0,
    sky_gradient: float = 0.02,
    sky_curvature: float = 0.0,
    nan_corners: bool = True,
    hot_pixels: int = 0,
    satellite_prob: float = 0.0,
    sip: bool = False,
    fwhm_arcsec: float = 5.0,
    seed: int = 0,
    truth: TruthSky | None = None,
) -> Survey:
    """Simulate a grid survey of overlapping frames with known gains and offsets.

    Pointings lie on an ``n_y`` x ``n_x`` grid, x (columns) towards the west (RA
    decreasing, as on a north-up image), neighbouring frames sharing the fraction
    ``overlap`` of their width/height. Each pointing gets ``frames_per_pointing``
    exposures, each with its own random jitter, rotation, gain, offset, gradient and noise.
    The frame model is documented in the module docstring of `skymosaic.synth._survey`.

    Parameters
    ----------
    n_x, n_y : int
        Pointings along x and y.
    frame_shape : (int, int)
        ``(H, W)`` of every frame.
    overlap : float
        Fractional overlap of neighbouring pointings, in [0, 1).
    pixel_scale_arcsec : float
        Frame pixel scale.
    center : (float, float)
        ``(ra, dec)`` of the survey centre in degrees.
    channels : int
        1 or 3; gains and offsets are drawn independently per channel.
    frames_per_pointing : int
        Repeated exposures per pointing (for stacking).
    rotation_deg : float
        Maximum absolute rotation; each frame draws uniformly in ``[-rotation_deg, +]``.
    jitter_px : float
        Standard deviation of the pointing jitter in pixels (each axis).
    gain_range, offset_range : (float, float)
        Uniform ranges of the per-frame, per-channel gain and offset.
    channel_response : tuple of float, optional
        Per-channel sensitivity multiplying every frame's gain (a one-shot-colour camera's
        filters, e.g. `SEESTAR_RESPONSE` = (0.72, 1.0, 0.62): a green cast of sky and
        stars alike); ``None``: 1. `SynthFrame.gain` includes it.
    noise_sigma : float
        Gaussian noise standard deviation, in data units.
    sky_level : float
        Sky before the gain (ADU per pixel).
    sky_gradient : float
        Peak-to-peak sky change across one frame width, as a fraction of ``sky_level``.
    sky_curvature : float
        Largest absolute value of each frame's random quadratic sky term at the frame's
        corners and edge midpoints, as a fraction of ``sky_level`` (0: planes only); see
        `SynthFrame.sky_quadratic`.
    nan_corners : bool
        If true, frames rotated by more than 0.1 degree get NaN right triangles at one or two
        random corners (as zero-filled borders of derotated frames); recorded in
        `SynthFrame.nan_corners`.
    hot_pixels : int
        Number of hot pixels per frame, set to ``gain*sky + offset + U(2000, 20000)`` in all
        channels; recorded in `SynthFrame.hot_pixels`.
    satellite_prob : float
        Probability that a frame gets a straight satellite trail (Gaussian profile, sigma
        1 px, peak ``gain * U(200, 1000)``).
    sip : bool
        Give each frame WCS a random SIP distortion of about 1 px at the corners.
    fwhm_arcsec : float
        PSF FWHM of the default truth (ignored when ``truth`` is given).
    seed : int
        Seed of ``np.random.default_rng``; the default truth uses the same seed.
    truth : TruthSky, optional
        Sky to observe; default: `make_truth_sky` over the survey area plus margin.

    Returns
    -------
    Survey

    Raises
    ------
    ValueError, TypeError
        On invalid arguments (checked before any work).

    Examples
    --------
    >>> s = make_survey(n_x=2, n_y=1, frame_shape=(64, 64), seed=3)
    >>> len(s.frames), s.frames[0].data.shape
    (2, (1, 64, 64))
    """
    _validate_survey_args(**locals())
    rng = np.random.default_rng(seed)
    h, w = frame_shape
    step_x = w * pixel_scale_arcsec * (1.0 - overlap)
    step_y = h * pixel_scale_arcsec * (1.0 - overlap)
    if truth is None:
        diag = math.hypot(h, w) * pixel_scale_arcsec
        size = (
            ((n_x - 1) * step_x + diag + 8 * jitter_px * pixel_scale_arcsec) / 3600.0 * 1.05,
            ((n_y - 1) * step_y + diag + 8 * jitter_px * pixel_scale_arcsec) / 3600.0 * 1.05,
        )
        truth = make_truth_sky(center=center, size_deg=size, pixel_scale_arcsec=pixel_scale_arcsec,
                               channels=channels, fwhm_arcsec=fwhm_arcsec, seed=seed)
    spec = _FrameSpec(
        shape=(h, w), pixel_scale_arcsec=pixel_scale_arcsec, channels=channels,
        gain_range=gain_range, response=channel_response, offset_range=offset_range,
        noise_sigma=noise_sigma,
        sky_level=sky_level, sky_gradient=sky_gradient, sky_curvature=sky_curvature,
        nan_corners=nan_corners,
        hot_pixels=hot_pixels, satellite_prob=satellite_prob, sip=sip,
    )
    frames: list[SynthFrame] = []
    for iy in range(n_y):
        for ix in range(n_x):
            for k in range(frames_per_pointing):
                xi = -(ix - (n_x - 1) / 2.0) * step_x
                eta = (iy - (n_y - 1) / 2.0) * step_y
                jx, jy = rng.normal(0.0, jitter_px, 2) * pixel_scale_arcsec
                ra, dec = _tan_deproject(xi + jx, eta + jy, *center)
                frame = _observe(
                    truth, spec, rng, center=(float(ra), float(dec)),
                    rotation=float(rng.uniform(-rotation_deg, rotation_deg)),
                    name=f"r{iy:02d}c{ix:02d}e{k:02d}", pointing=(iy, ix), exposure=k,
                )
                frame.header = _frame_header(frame, channels=channels, index=len(frames))
                frames.append(frame)
    logger.info("synthetic survey: %d frames of %s, %d channel(s)", len(frames), frame_shape,
                channels)
    return Survey(frames=frames, truth=truth, center=(float(center[0]), float(center[1])),
                  pixel_scale_arcsec=float(pixel_scale_arcsec))


@dataclass(frozen=True)
class _FrameSpec:
    """What every frame of a survey shares (the instrument and the injection settings)."""

    shape: tuple[int, int]
    pixel_scale_arcsec: float
    channels: int
    gain_range: tuple[float, float]
    response: tuple[float, ...] | None
    offset_range: tuple[float, float]
    noise_sigma: float
    sky_level: float
    sky_gradient: float
    sky_curvature: float
    nan_corners: bool
    hot_pixels: int
    satellite_prob: float
    sip: bool


def _observe(truth: TruthSky, spec: _FrameSpec, rng: np.random.Generator, *,
             center: tuple[float, float], rotation: float, name: str,
             pointing: tuple[int, int], exposure: int) -> SynthFrame:
    """One frame following the frame model (module docstring); header left empty."""
    h, w = spec.shape
    wcs = celestial_wcs(spec.shape, center=center, pixel_scale_arcsec=spec.pixel_scale_arcsec,
                        rotation_deg=rotation)
    if spec.sip:
        wcs = _add_sip(wcs, spec.shape, rng)
    gain = rng.uniform(spec.gain_range[0], spec.gain_range[1], spec.channels)
    gain = (gain * (1.0 if spec.response is None else np.asarray(spec.response))).astype(np.float32)
    offset = rng.uniform(spec.offset_range[0], spec.offset_range[1], spec.channels).astype(
        np.float32)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    g = spec.sky_level * spec.sky_gradient / w
    quad = (0.0, 0.0, 0.0)
    if spec.sky_curvature > 0:
        q = rng.normal(0.0, 1.0, 3)
        peak = max(abs(q[0] + q[1] + q[2]), abs(q[0] - q[1] + q[2]), abs(q[0]), abs(q[2])) or 1.0
        quad = tuple(float(v) for v in q * (spec.sky_level * spec.sky_curvature / peak))
    frame = SynthFrame(
        data=np.empty((spec.channels, h, w), np.float32), wcs=wcs, gain=gain, offset=offset,
        header=fits.Header(), name=name, sky_level=float(spec.sky_level),
        sky_gradient=(g * math.cos(phi), g * math.sin(phi)), sky_quadratic=quad, pointing=pointing,
        exposure=exposure, rotation_deg=rotation,
    )
    sky = frame.sky_model()
    truth_img = truth.render(wcs, spec.shape, channels=spec.channels)
    for c in range(spec.channels):
        frame.data[c] = gain[c] * (truth_img[c] + sky) + offset[c]
    frame.data += rng.normal(0.0, spec.noise_sigma, frame.data.shape).astype(np.float32)
    if spec.hot_pixels:
        n_hot = spec.hot_pixels
        yx = np.column_stack([rng.integers(0, h, n_hot), rng.integers(0, w, n_hot)])
        level = gain[:, None] * sky[yx[:, 0], yx[:, 1]][None, :] + offset[:, None]
        frame.data[:, yx[:, 0], yx[:, 1]] = level + rng.uniform(2000, 20000, n_hot)
        frame.hot_pixels = yx
    if rng.uniform() < spec.satellite_prob:
        frame.trail = _add_trail(frame.data, rng, gain)
        frame.has_trail = True
    if spec.nan_corners and abs(rotation) > 0.1:
        frame.nan_corners = _blank_corners(frame.data, rng, rotation)
    return frame


def _add_trail(data: np.ndarray, rng: np.random.Generator, gain: np.ndarray):
    _, h, w = data.shape
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
    angle = rng.uniform(0.0, 180.0)
    peak = rng.uniform(200.0, 1000.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = math.radians(angle)
    dist = (xx - x0) * math.sin(t) - (yy - y0) * math.cos(t)
    profile = np.float32(peak) * np.exp(-0.5 * dist * dist)
    data += gain[:, None, None] * profile[None]
    return (float(x0), float(y0), float(angle), float(peak))


def _blank_corners(data: np.ndarray, rng: np.random.Generator, rotation: float) -> list[str]:
    """NaN right triangles at one or two corners, legs as a derotated frame would show."""
    _, h, w = data.shape
    names = ["y0x0", "y0x1", "y1x0", "y1x1"]
    chosen = sorted(rng.choice(4, size=int(rng.integers(1, 3)), replace=False).tolist())
    yy, xx = np.mgrid[0:h, 0:w]
    tan = math.tan(math.radians(max(abs(rotation), 1.0)))
    for i in chosen:
        ly = max(3.0, rng.uniform(0.3, 0.6) * h)  # leg along the y edge
        lx = max(3.0, ly * tan * w / h * 4.0)  # leg along the x edge
        dy = yy if names[i][1] == "0" else (h - 1 - yy)
        dx = xx if names[i][3] == "0" else (w - 1 - xx)
        data[:, dy / ly + dx / lx < 1.0] = np.nan
    return [names[i] for i in chosen]


def _add_sip(wcs: WCS, shape: tuple[int, int], rng: np.random.Generator) -> WCS:
    """Return a copy of ``wcs`` with a random 2nd+3rd order SIP of ~1 px at the corners."""
    h, w = shape
    hdr = wcs.to_header()
    hdr["CTYPE1"] = hdr["CTYPE1"] + "-SIP"
    hdr["CTYPE2"] = hdr["CTYPE2"] + "-SIP"
    r = 0.5 * math.hypot(h, w)
    terms = [(2, 0), (1, 1), (0, 2), (3, 0), (2, 1), (1, 2), (0, 3)]
    gu, gv = np.meshgrid(np.linspace(-w / 2, w / 2, 21), np.linspace(-h / 2, h / 2, 21))
    u, v = gu.ravel(), gv.ravel()
    coeffs: dict[str, dict[tuple[int, int], float]] = {}
    for axis in "AB":
        raw = {t: rng.normal() / r ** (sum(t)) for t in terms}
        corner = max(abs(sum(c * (sx * w / 2) ** p * (sy * h / 2) ** q
                             for (p, q), c in raw.items()))
                     for sx in (-1, 1) for sy in (-1, 1))
        coeffs[axis] = {t: c * rng.uniform(0.8, 1.2) / corner for t, c in raw.items()}
    du = sum(c * u**p * v**q for (p, q), c in coeffs["A"].items())
    dv = sum(c * u**p * v**q for (p, q), c in coeffs["B"].items())
    # Inverse polynomial (AP, BP) fitted on the distorted coordinates, orders 1..3.
    big_u, big_v = u + du, v + dv
    inv_terms = [(p, q) for p in range(4) for q in range(4) if 1 <= p + q <= 3]
    design = np.column_stack([big_u**p * big_v**q for p, q in inv_terms])
    ap = np.linalg.lstsq(design, -du, rcond=None)[0]
    bp = np.linalg.lstsq(design, -dv, rcond=None)[0]
    for axis in "AB":
        hdr[f"{axis}_ORDER"] = 3
        for (p, q), c in coeffs[axis].items():
            hdr[f"{axis}_{p}_{q}"] = c
    for axis, sol in (("AP", ap), ("BP", bp)):
        hdr[f"{axis}_ORDER"] = 3
        for (p, q), c in zip(inv_terms, sol, strict=True):
            hdr[f"{axis}_{p}_{q}"] = float(c)
    return WCS(hdr)


def _frame_header(frame: SynthFrame, *, channels: int, index: int) -> fits.Header:
    hdr = frame.wcs.to_header(relax=True)
    hdr["EXPTIME"] = (60.0, "[s] exposure time")
    hdr["FILTER"] = ("L" if channels == 1 else "RGB", "filter")
    date = _DATE0 + timedelta(seconds=70.0 * index)
    hdr["DATE-OBS"] = (date.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], "UTC start of exposure")
    hdr["OBJECT"] = ("SYNTH", "synthetic survey")
    hdr["FRAMEID"] = (frame.name, "synthetic frame name")
    hdr["SYNROT"] = (frame.rotation_deg, "[deg] synthetic frame rotation")
    return hdr


def _atomic_write(hdul: fits.HDUList, path: Path) -> None:
    """Write to a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        hdul.writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hwc_header(frame: SynthFrame) -> fits.Header:
    """Header for an (H, W, 3) array: FITS axis 1 is the channel, axes 2-3 are celestial."""
    hdr = frame.header.copy()
    wcs_hdr = frame.wcs.to_header()
    for key in wcs_hdr:
        hdr.remove(key, ignore_missing=True, remove_all=True)
    hdr["WCSAXES"] = 3
    hdr["CTYPE1"], hdr["CRPIX1"], hdr["CRVAL1"], hdr["CDELT1"] = "CHANNEL", 1.0, 0.0, 1.0
    for key, value in wcs_hdr.items():
        if key == "WCSAXES":
            continue
        if key[:2] == "PC" and "_" in key:
            i, j = key[2:].split("_")
            hdr[f"PC{int(i) + 1}_{int(j) + 1}"] = value
        elif key[-1] in "12" and key[:-1] in ("CRPIX", "CDELT", "CUNIT", "CTYPE", "CRVAL"):
            hdr[f"{key[:-1]}{int(key[-1]) + 1}"] = value
        else:
            hdr[key] = value
    return hdr


def write_survey(
    survey: Survey, directory: str | os.PathLike, *, prefix: str = "frame", layout: str = "CHW"
) -> list[Path]:
    """Write each frame of a survey as a float32 FITS file (atomically).

    Parameters
    ----------
    survey : Survey
    directory : path-like
        Created if missing.
    prefix : str
        File names are ``{prefix}_{index:04d}.fits`` in frame order.
    layout : {"CHW", "HWC"}
        Colour frames as a (3, H, W) cube (FITS NAXIS3=3; read the WCS with
        ``WCS(header, naxis=2)``, required by astropy when SIP is present), or as (H, W, 3)
        arrays (NAXIS1=3) as some tools write; then FITS axis 1 is a ``CHANNEL`` axis and
        the celestial WCS is on axes 2-3 (``WCS(header).celestial``), SIP not supported.
        Mono frames are always 2-D (H, W).

    Returns
    -------
    list of pathlib.Path
    """
    if layout not in ("CHW", "HWC"):
        raise ValueError(f"layout must be 'CHW' or 'HWC', got {layout!r}")
    if not isinstance(survey, Survey):
        raise TypeError(f"survey must be a Survey, got {type(survey).__name__}")
    if layout == "HWC" and any(f.data.shape[0] == 3 and f.wcs.sip is not None
                               for f in survey.frames):
        raise ValueError("layout='HWC' cannot carry SIP distortion (SIP needs the celestial "
                         "axes to be FITS axes 1-2); use layout='CHW' or sip=False")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(survey.frames):
        data = np.asarray(frame.data, dtype=np.float32)
        if data.shape[0] == 1:
            data = data[0]
        elif layout == "HWC":
            data = np.ascontiguousarray(np.moveaxis(data, 0, -1))
        hdr = frame.header.copy()
        if data.ndim == 3 and layout == "HWC":
            hdr = _hwc_header(frame)
        path = out / f"{prefix}_{i:04d}.fits"
        _atomic_write(fits.HDUList([fits.PrimaryHDU(data=data, header=hdr)]), path)
        paths.append(path)
    logger.info("wrote %d frames to %s", len(paths), out)
    return paths
