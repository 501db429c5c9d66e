"""Exports that the next tool opens: a linear FITS for Siril/PixInsight and a 16-bit TIFF.

``NAME_linear.fits`` (`write_linear_fits`)
    One HDU, float32, linear, scaled to [0, 1] by one affine map for every channel
    (``(x - low) / (high - low)``, ``low``/``high`` the smallest and largest valid value of
    the mosaic, recorded as ``LINLOW``/``LINHIGH``), so colour ratios above the common
    offset are kept. No data is 0 (Siril's statistics do not skip NaN); which pixels are
    data is in ``NAME_linear_mask.fits`` beside it (uint8 (H, W): 1 data, 0 none), not in a
    second HDU, so Siril's ``load`` opens the image without a question. Rows are in FITS
    order (row 0 at the bottom, as Siril and PixInsight read FITS), colour as a
    NAXIS3 = 3 cube in R, G, B order, the celestial WCS in the header.
``NAME.tif`` (`write_tiff`)
    16-bit, the display stretch of the preview (`skymosaic.io._stretch.apply_stretch`,
    colour calibration included) at full resolution, rows top-down (row 0 at the top, as
    photo editors show it), RGB with an embedded sRGB ICC profile (when Pillow is
    installed), tiled 256 x 256 and written tile by tile.

Both read the mosaic a block of rows at a time through a `RowSource` (the on-disk coadd
store or an array), so neither needs the whole mosaic in memory.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic.io._stretch import ColorMap, StretchParams, apply_stretch, to_uint
from skymosaic.io._writer import atomic_path, mosaic_header

__all__ = ["EXPORT_FORMATS", "ArraySource", "RowSource", "linear_range", "write_linear_fits",
           "write_tiff"]

logger = logging.getLogger(__name__)

#: Extra products (``output.export``): siril = `write_linear_fits`, tiff = `write_tiff`.
EXPORT_FORMATS = ("siril", "tiff")

#: TIFF tile side (px): 256 is what libtiff and photo editors handle best.
_TILE = 256


class RowSource(Protocol):
    """A (C, H, W) mosaic read a block of rows at a time."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)``, float32 (C, y1 - y0, W), NaN = no data."""
        ...


class ArraySource:
    """A `RowSource` over an in-memory (C, H, W) array."""

    def __init__(self, data: np.ndarray) -> None:
        if data.ndim != 3:
            raise ValueError(f"data must be (C, H, W), got shape {data.shape}")
        self.data = data

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.data.shape
        return int(c), int(h), int(w)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return np.asarray(self.data[:, y0:y1], np.float32)


def _rows(width: int, channels: int, memory_budget: int) -> int:
    """Rows per block: a sixteenth of the budget for the block and its float64 working copy."""
    return max(1, memory_budget // 16 // (width * channels * 12))


def _calibrated(block: np.ndarray, color: ColorMap | None) -> np.ndarray:
    if color is None:
        return block
    scale = np.asarray(color.scale, np.float32)[:, None, None]
    offset = np.asarray(color.offset, np.float32)[:, None, None]
    return block * scale + offset


def linear_range(
    source: RowSource, *, memory_budget: int, color: ColorMap | None = None
) -> tuple[float, float]:
    """The smallest and largest valid (finite in every channel) value of ``source``."""
    c, h, w = source.shape
    rows = _rows(w, c, memory_budget)
    low, high = math.inf, -math.inf
    for y0 in range(0, h, rows):
        block = _calibrated(source.read_rows(y0, min(h, y0 + rows)), color)
        valid = np.isfinite(block).all(axis=0)
        if valid.any():
            values = block[:, valid]
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    if not math.isfinite(low):
        return 0.0, 1.0
    return low, high if high > low else low + 1.0


def write_linear_fits(
    path: str | os.PathLike,
    source: RowSource,
    wcs: WCS,
    *,
    memory_budget: int,
    color: ColorMap | None = None,
    history: Sequence[str] = (),
    cards: dict | None = None,
) -> tuple[Path, Path]:
    """Write ``source`` as the Siril/PixInsight linear FITS and its coverage mask.

    Parameters
    ----------
    path : path
        Destination ``NAME_linear.fits``; the mask goes to ``NAME_linear_mask.fits``.
    source : RowSource
        The mosaic (as the science FITS holds it).
    wcs : astropy.wcs.WCS
        Its celestial WCS.
    memory_budget : int
        Bytes; blocks of rows use a sixteenth of it.
    color : ColorMap, optional
        A colour calibration applied before the scaling.
    history, cards
        Header provenance, as `skymosaic.io.write_mosaic`.

    Returns
    -------
    (Path, Path)
        The image and the mask.
    """
    path = Path(path)
    mask_path = path.with_name(path.stem + "_mask" + path.suffix)
    c, h, w = source.shape
    low, high = linear_range(source, memory_budget=memory_budget, color=color)
    span = np.float32(high - low)
    extra = {
        "LINLOW": (low, "0 in the image: (x-LINLOW)/(LINHIGH-LINLOW)"),
        "LINHIGH": (high, "data value at 1 in the image"),
        "MASKFILE": (mask_path.name[:40], "1 data, 0 none"),
    }
    header = mosaic_header(wcs, history=history, cards={**(cards or {}), **extra})
    header.remove("BUNIT", ignore_missing=True)
    shape = (h, w) if c == 1 else (c, h, w)
    rows = _rows(w, c, memory_budget)

    def planes() -> Iterator[np.ndarray]:
        for ch in range(c):
            for y0 in range(0, h, rows):
                block = _calibrated(source.read_rows(y0, min(h, y0 + rows)), color)
                valid = np.isfinite(block).all(axis=0)
                scaled = np.clip((block[ch] - np.float32(low)) / span, 0.0, 1.0)
                yield np.where(valid, scaled, np.float32(0.0)).astype(">f4")

    def mask() -> Iterator[np.ndarray]:
        for y0 in range(0, h, rows):
            yield np.isfinite(source.read_rows(y0, min(h, y0 + rows))).all(axis=0).astype(np.uint8)

    _stream_hdu(path, _header_for(shape, np.float32, header), planes())
    _stream_hdu(mask_path, _header_for((h, w), np.uint8, wcs.to_header(relax=True)), mask())
    return path, mask_path


def _header_for(shape: tuple[int, ...], dtype, cards: fits.Header) -> fits.Header:
    """A primary header for an image of ``shape`` and ``dtype`` with ``cards``."""
    virtual = np.lib.stride_tricks.as_strided(
        np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape)
    )
    return fits.PrimaryHDU(virtual, header=cards).header


def _stream_hdu(path: Path, header: fits.Header, blocks: Iterator[np.ndarray]) -> None:
    """One-HDU FITS file: ``header``, then the blocks in order; atomic."""
    with atomic_path(path, suffix=".fits") as tmp, open(tmp, "ab+") as fh:
        hdu = fits.StreamingHDU(fh, header)
        for block in blocks:
            hdu.write(block)
        hdu.close()


def _srgb_profile() -> bytes | None:
    try:
        from PIL import ImageCms  # noqa: PLC0415 - optional: only for the ICC tag
    except ImportError:
        logger.info("Pillow is not installed: %s", "the TIFF gets no embedded sRGB profile")
        return None
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def write_tiff(path: str | os.PathLike, source: RowSource, params: StretchParams) -> Path:
    """Write the 16-bit stretched TIFF of ``source`` (see the module docstring).

    Parameters
    ----------
    path : path
        Destination (``.tif``); replaced atomically.
    source : RowSource
        The mosaic (linear, as the science FITS holds it).
    params : StretchParams
        The display stretch (the preview's: `skymosaic.io._stretch.fit_stretch`).

    One band of 256 rows of the mosaic is held at a time.
    """
    import tifffile  # noqa: PLC0415 - only for this export

    c, h, w = source.shape
    tiles_x = math.ceil(w / _TILE)

    def tiles() -> Iterator[np.ndarray]:
        for top in range(0, h, _TILE):  # display rows [top, top + 256), FITS rows reversed
            y1 = h - top
            y0 = max(0, y1 - _TILE)
            band = source.read_rows(y0, y1)[:, ::-1]
            for tx in range(tiles_x):
                part = to_uint(apply_stretch(band[:, :, tx * _TILE : (tx + 1) * _TILE], params), 16)
                tile = np.zeros((_TILE, _TILE, c), np.uint16)
                tile[: part.shape[1], : part.shape[2]] = np.moveaxis(part, 0, -1)
                yield tile if c == 3 else tile[..., 0]

    icc = _srgb_profile() if c == 3 else None
    with atomic_path(path, suffix=".tif") as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(h, w, c) if c == 3 else (h, w),
            dtype=np.uint16,
            tile=(_TILE, _TILE),
            photometric="rgb" if c == 3 else "minisblack",
            planarconfig="contig" if c == 3 else None,
            iccprofile=icc,
            software="skymosaic",
            compression="zlib",
        )
    return Path(path)
