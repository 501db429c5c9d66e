"""The output grid: an optimal celestial WCS over all inputs, or one given by the user."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

__all__ = ["PROJECTIONS", "ROTATIONS", "OutputGrid", "grid_from_header", "optimal_grid"]

#: Orientations of `optimal_grid` (``output.rotation``): north up, or the minimum-area rectangle.
ROTATIONS = ("north", "auto")
#: FITS projections offered for the output grid (``output.projection``).
PROJECTIONS = ("TAN", "SIN", "ZEA", "STG", "ARC", "CAR")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputGrid:
    """A celestial WCS and the (H, W) shape of the output image."""

    wcs: WCS
    shape: tuple[int, int]

    @property
    def pixel_scale_arcsec(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.wcs.pixel_scale_matrix)))) * 3600.0

    def to_dict(self) -> dict:
        ra, dec = self.wcs.wcs.crval
        return {
            "shape": list(self.shape),
            "projection": self.wcs.wcs.ctype[0][5:8],
            "center_deg": [float(v) for v in self.wcs.pixel_to_world_values(
                (self.shape[1] - 1) / 2, (self.shape[0] - 1) / 2)],
            "crval_deg": [float(ra), float(dec)],
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "rotation_deg": _rotation_deg(self.wcs),
        }


def _rotation_deg(wcs: WCS) -> float:
    m = wcs.pixel_scale_matrix
    return float(np.degrees(np.arctan2(m[1, 0], m[1, 1])))


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _make_wcs(center: tuple[float, float], scale_deg: float, angle_rad: float,
              projection: str) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = [f"RA---{projection}", f"DEC--{projection}"]
    wcs.wcs.crval = list(center)
    wcs.wcs.crpix = [1.0, 1.0]
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    # East to the left (RA increases to -x), north up, then rotated by angle.
    wcs.wcs.cd = scale_deg * np.array([[-c, s], [s, c]])
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set()
    return wcs


def optimal_grid(
    footprints: Sequence[np.ndarray],
    *,
    pixel_scale_arcsec: float,
    rotation: str = "north",
    projection: str = "TAN",
    max_pixels: float = 2e10,
) -> OutputGrid:
    """The smallest grid of a given scale that covers every footprint.

    Parameters
    ----------
    footprints : sequence of ndarray, shape (K, 2)
        Sky points (RA, Dec in degrees) on the edges of every input.
    pixel_scale_arcsec : float
        Output pixel scale.
    rotation : {"north", "auto"}
        ``"north"``: north up, east left. ``"auto"``: rotated to minimise the area
        (minimum-area bounding rectangle in the tangent plane), choosing of the equivalent
        angles the one closest to north-up.
    projection : str
        FITS projection code (``TAN``, ``SIN``, ``CAR``, ...), centred on the inputs.
    max_pixels : float
        Refuse grids larger than this (almost always a wrong WCS among the inputs).

    Raises
    ------
    ValueError
        For no footprints, a bad scale or rotation, or a grid over ``max_pixels``.
    """
    if not footprints:
        raise ValueError("no footprints to build an output grid from")
    if not (pixel_scale_arcsec > 0 and np.isfinite(pixel_scale_arcsec)):
        raise ValueError(f"pixel_scale_arcsec must be a positive number, got {pixel_scale_arcsec}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    pts = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1, 2) for f in footprints])
    mean = _unit(pts[:, 0], pts[:, 1]).mean(axis=0)
    center = (
        float(np.degrees(np.arctan2(mean[1], mean[0])) % 360.0),
        float(np.degrees(np.arctan2(mean[2], np.hypot(mean[0], mean[1])))),
    )
    scale = pixel_scale_arcsec / 3600.0
    angle = 0.0
    if rotation == "auto":
        probe = _make_wcs(center, scale, 0.0, projection)
        xy = np.stack(probe.world_to_pixel_values(pts[:, 0], pts[:, 1]), axis=1).astype(np.float32)
        (_, _), (_, _), deg = cv2.minAreaRect(xy)
        deg = ((deg + 45.0) % 90.0) - 45.0  # equivalent rectangle angle closest to 0
        angle = np.radians(deg)
    wcs = _make_wcs(center, scale, angle, projection)
    x, y = wcs.world_to_pixel_values(pts[:, 0], pts[:, 1])
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        far = float(np.degrees(np.arccos(np.clip(
            _unit(pts[:, 0], pts[:, 1]) @ (mean / np.linalg.norm(mean)), -1.0, 1.0))).max())
        raise ValueError(
            f"the inputs span more than a hemisphere of the {projection} projection (a corner "
            f"{far:.1f} deg from their centre) and cannot be drawn on one output grid: mosaic "
            "the targets separately (targets.split = true), or check the inputs' WCS"
        )
    xmin, xmax, ymin, ymax = np.min(x), np.max(x), np.min(y), np.max(y)
    width, height = int(np.ceil(xmax - xmin)) + 1, int(np.ceil(ymax - ymin)) + 1
    if width * height > max_pixels:
        raise ValueError(
            f"output grid of {width} x {height} pixels exceeds {max_pixels:.3g}: an input WCS "
            "is probably wrong, or set a coarser pixel scale"
        )
    # Centre the points' bounding box on the grid (equal margins on both sides); FITS
    # CRPIX is 1-based, the pixel coordinates above are 0-based.
    mx = (width - 1 - (xmax - xmin)) / 2.0
    my = (height - 1 - (ymax - ymin)) / 2.0
    wcs.wcs.crpix = [1.0 - xmin + mx, 1.0 - ymin + my]
    wcs.wcs.set()
    return OutputGrid(wcs=wcs, shape=(height, width))


def grid_from_header(path: str | os.PathLike) -> OutputGrid:
    """A user-given output grid: a FITS file or a text header with a celestial WCS and NAXIS1/2.

    Raises
    ------
    ValueError
        If the header has no celestial WCS or no NAXIS1/NAXIS2 (the message names the file).
    """
    path = os.fspath(path)
    try:
        header = fits.getheader(path)
    except OSError:
        try:
            header = fits.Header.fromtextfile(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read an output header from {path}: {err}") from err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise ValueError(f"output header {path} has no celestial WCS")
    missing = [key for key in ("NAXIS1", "NAXIS2") if key not in header]
    if missing:
        raise ValueError(f"output header {path} lacks {' and '.join(missing)} (the output size)")
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    if min(shape) < 1:
        raise ValueError(f"output header {path} gives an empty shape {shape}")
    return OutputGrid(wcs=wcs.celestial, shape=shape)
