"""Raw one-shot-colour Bayer frames shaped like ZWO Seestar S50 sub-exposures.

Model of a raw sub (uint16, (H, W) = (1920, 1080), Bayer GRBG: row 0 = G R G R ...,
row 1 = B G B G ...), at each photosite of colour ``c``::

    raw = clip(round(bias + response[c] * (truth[c] + sky[c]) + noise), 0, 65535)

``truth`` is the colour `TruthSky` rendered on the frame WCS (ADU), ``sky`` a white-ish sky
level, ``response = (R, G, B)`` the relative sensitivity of the filtered photosites
(G highest), ``noise`` Gaussian with variance ``read_noise**2 + signal`` (Poisson-like with
1 e-/ADU). `SynthFrame.gain` holds ``response`` and `SynthFrame.offset` holds
``bias + response * sky`` (both per channel R, G, B).
"""

from __future__ import annotations

import logging
import math
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from skymosaic.synth._sky import TruthSky, _tan_deproject, celestial_wcs, make_truth_sky
from skymosaic.synth._survey import SynthFrame, _atomic_write

__all__ = ["SEESTAR_PIXEL_SCALE_ARCSEC", "SEESTAR_RESPONSE", "make_seestar_frames",
           "write_seestar_frames"]

logger = logging.getLogger(__name__)

#: 2.9 um pixels at 250 mm focal length.
SEESTAR_PIXEL_SCALE_ARCSEC = 206.264806 * 2.9 / 250.0
_WCS_MODES = ("header", "sidecar", "none")
#: R, G, B photosite sensitivity relative to G (the green cast of a raw OSC frame).
SEESTAR_RESPONSE = (0.72, 1.0, 0.62)
_RESPONSE = np.array(SEESTAR_RESPONSE)
_DATE0 = datetime(2024, 4, 2, 22, 15, 0)


def _bayer_channel_map(h: int, w: int) -> np.ndarray:
    """(H, W) int array of the colour index (0=R, 1=G, 2=B) of each GRBG photosite."""
    cmap = np.empty((h, w), dtype=np.int8)
    cmap[0::2, 0::2] = 1
    cmap[0::2, 1::2] = 0
    cmap[1::2, 0::2] = 2
    cmap[1::2, 1::2] = 1
    return cmap


def make_seestar_frames(
    n: int,
    *,
    truth: TruthSky | None = None,
    center: tuple[float, float] = (189.0, 41.1),
    seed: int = 0,
    shape: tuple[int, int] = (1920, 1080),
    dither_deg: float = 0.02,
    field_rotation_deg: float = 1.0,
    wcs_mode: str = "header",
    sky_level: float = 400.0,
    bias: float = 200.0,
    read_noise: float = 8.0,
    object_name: str = "M 106",
) -> list[SynthFrame]:
    """Simulate ``n`` raw Seestar S50 sub-exposures of one target.

    Parameters
    ----------
    n : int
        Number of frames (>= 1).
    truth : TruthSky, optional
        Colour sky (channels=3); default: `make_truth_sky` around ``center`` covering the
        frames, at the Seestar pixel scale (~2.39"/px), seeded with ``seed``.
    center : (float, float)
        ``(ra, dec)`` of the target in degrees (header RA/DEC).
    seed : int
        Seed of ``np.random.default_rng``.
    shape : (int, int)
        ``(H, W)``; both must be even (whole Bayer cells).
    dither_deg : float
        Standard deviation of the pointing offset of each frame, per axis.
    field_rotation_deg : float
        Maximum absolute frame rotation (alt-az field rotation), uniform per frame.
    wcs_mode : {"header", "sidecar", "none"}
        Whether ``frame.header`` carries the WCS cards ("header") or not (the others);
        ``frame.wcs`` always holds the true WCS.
    sky_level, bias, read_noise : float
        Sky (ADU, before the photosite response), bias pedestal and read noise.
    object_name : str
        OBJECT header value.

    Returns
    -------
    list of SynthFrame
        ``data`` is uint16 (H, W), ``bayer_pattern`` is ``"GRBG"``; ``gain`` is the
        per-channel response, ``offset`` is ``bias + response * sky_level`` (R, G, B).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if len(shape) != 2 or shape[0] % 2 or shape[1] % 2 or min(shape) < 2:
        raise ValueError(f"shape must be (H, W) with positive even sizes, got {shape!r}")
    if wcs_mode not in _WCS_MODES:
        raise ValueError(f"wcs_mode must be one of {_WCS_MODES}, got {wcs_mode!r}")
    if dither_deg < 0 or field_rotation_deg < 0:
        raise ValueError(f"dither_deg and field_rotation_deg must be >= 0, got {dither_deg!r}, "
                         f"{field_rotation_deg!r}")
    if truth is not None and truth.channels != 3:
        raise ValueError(f"truth must have 3 channels for colour frames, got {truth.channels}")
    rng = np.random.default_rng(seed)
    scale = SEESTAR_PIXEL_SCALE_ARCSEC
    h, w = shape
    if truth is None:
        side = (math.hypot(h, w) * scale / 3600.0 + 6.0 * dither_deg) * 1.05
        truth = make_truth_sky(center=center, size_deg=(side, side), pixel_scale_arcsec=scale,
                               channels=3, fwhm_arcsec=5.0, seed=seed)
    cmap = _bayer_channel_map(h, w)
    frames = []
    for i in range(int(n)):
        dxi, deta = rng.normal(0.0, dither_deg * 3600.0, 2)
        ra, dec = _tan_deproject(dxi, deta, float(center[0]), float(center[1]))
        rot = float(rng.uniform(-field_rotation_deg, field_rotation_deg))
        wcs = celestial_wcs(shape, center=(float(ra), float(dec)), pixel_scale_arcsec=scale,
                            rotation_deg=rot)
        colour = truth.render(wcs, shape, channels=3)
        signal = np.take_along_axis(colour, cmap[None].astype(np.intp), axis=0)[0]
        resp = _RESPONSE[cmap].astype(np.float32)
        signal = resp * (signal + np.float32(sky_level))
        noise = rng.standard_normal(shape).astype(np.float32)
        noise *= np.sqrt(np.float32(read_noise**2) + np.maximum(signal, 0.0))
        raw = np.clip(np.rint(signal + np.float32(bias) + noise), 0, 65535).astype(np.uint16)
        hdr = _seestar_header(center, object_name, index=i, wcs=wcs if wcs_mode == "header"
                              else None)
        frames.append(SynthFrame(
            data=raw, wcs=wcs, gain=_RESPONSE.astype(np.float32),
            offset=(bias + _RESPONSE * sky_level).astype(np.float32), header=hdr,
            name=f"Light_{object_name.replace(' ', '')}_10.0s_IRCUT_{i:04d}",
            sky_level=float(sky_level), exposure=i, rotation_deg=rot, bayer_pattern="GRBG",
        ))
    logger.info("synthetic Seestar: %d raw frames %s, wcs_mode=%s", n, shape, wcs_mode)
    return frames


def _seestar_header(center, object_name: str, *, index: int, wcs) -> fits.Header:
    hdr = fits.Header()
    date = _DATE0 + timedelta(seconds=10.5 * index)
    cards = [
        ("INSTRUME", "Seestar S50", "instrument"),
        ("TELESCOP", "Seestar S50", "telescope"),
        ("OBJECT", object_name, "target"),
        ("EXPTIME", 10.0, "[s] exposure time"),
        ("DATE-OBS", date.strftime("%Y-%m-%dT%H:%M:%S.%f"), "UTC start of exposure"),
        ("FILTER", "IRCUT", "filter"),
        ("BAYERPAT", "GRBG", "Bayer pattern"),
        ("XBAYROFF", 0, "X offset of Bayer array"),
        ("YBAYROFF", 0, "Y offset of Bayer array"),
        ("FOCALLEN", 250, "[mm] focal length"),
        ("XPIXSZ", 2.9, "[um] pixel size X"),
        ("YPIXSZ", 2.9, "[um] pixel size Y"),
        ("XBINNING", 1, "binning X"),
        ("YBINNING", 1, "binning Y"),
        ("GAIN", 80, "sensor gain setting"),
        ("CCD-TEMP", 21.5, "[C] sensor temperature"),
        ("IMAGETYP", "Light", "frame type"),
        ("RA", float(center[0]), "[deg] target right ascension"),
        ("DEC", float(center[1]), "[deg] target declination"),
    ]
    for key, value, comment in cards:
        hdr[key] = (value, comment)
    if wcs is not None:
        hdr.update(wcs.to_header())
    return hdr


def _strip_wcs(hdr: fits.Header, frame: SynthFrame) -> fits.Header:
    hdr = hdr.copy()
    for key in frame.wcs.to_header():
        hdr.remove(key, ignore_missing=True, remove_all=True)
    return hdr


def write_seestar_frames(
    frames: list[SynthFrame], directory: str | os.PathLike, *, wcs_mode: str = "header"
) -> list[Path]:
    """Write raw Seestar frames as uint16 FITS (BZERO=32768), atomically.

    Parameters
    ----------
    frames : list of SynthFrame
        From `make_seestar_frames`.
    directory : path-like
        Created if missing; files are ``{frame.name}.fits``.
    wcs_mode : {"header", "sidecar", "none"}
        "header": WCS cards in the frame header; "sidecar": no WCS in the frame, a
        header-only ``{stem}.wcs`` FITS file next to it (as astrometry.net writes);
        "none": no WCS anywhere (RA/DEC keys only).

    Returns
    -------
    list of pathlib.Path
        The frame files (not the sidecars).
    """
    if wcs_mode not in _WCS_MODES:
        raise ValueError(f"wcs_mode must be one of {_WCS_MODES}, got {wcs_mode!r}")
    for f in frames:
        if f.data.dtype != np.uint16 or f.data.ndim != 2:
            raise ValueError(f"frame {f.name!r}: expected uint16 (H, W) raw data, got "
                             f"{f.data.dtype} {f.data.shape}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in frames:
        hdr = _strip_wcs(f.header, f)
        if wcs_mode == "header":
            hdr.update(f.wcs.to_header())
        path = out / f"{f.name}.fits"
        _atomic_write(fits.HDUList([fits.PrimaryHDU(data=f.data, header=hdr)]), path)
        if wcs_mode == "sidecar":
            side = fits.PrimaryHDU(header=f.wcs.to_header())
            side.header["IMAGEW"] = (f.data.shape[1], "image width")
            side.header["IMAGEH"] = (f.data.shape[0], "image height")
            _atomic_write(fits.HDUList([side]), path.with_suffix(".wcs"))
        paths.append(path)
    logger.info("wrote %d Seestar frames to %s (wcs_mode=%s)", len(paths), out, wcs_mode)
    return paths
