"""Reading a written mosaic (``mosaic.fits``) a band of rows at a time.

The report never loads the science mosaic whole: `MosaicFile` reads sections of the FITS
(`astropy.io.fits` ``section``: only the requested rows leave the disk) and offers the same
``open``/``read_rows`` pair as the on-disk coadd store, so the preview's binning
(`skymosaic.io._stream.binned_plane`) runs on it unchanged.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic.io._stream import binned_plane

__all__ = ["MosaicFile", "band_rows", "binning_for"]

#: FITS extension of each plane `read_rows` knows (the names of the coadd store).
_PLANES = {"data": 0, "weight": "WEIGHT", "coverage": "COVERAGE"}


class MosaicFile:
    """A mosaic FITS written by skymosaic, read by bands of rows (data (C, H, W) float32).

    Parameters
    ----------
    path : path
        ``mosaic.fits``: a 2-D (mono) or (3, H, W) primary image with a celestial WCS,
        optional ``WEIGHT`` and ``COVERAGE`` extensions.

    Raises
    ------
    ValueError
        When the file holds no 2-D or 3-D image or no celestial WCS (the message names it).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        # no memmap: a section is then read into its own small array; through a memory map
        # every page the sections touched stays in the process's resident set (measured:
        # +250 MiB for a 240 MiB mosaic under a 64 MiB budget, against +60 MiB without)
        self._hdul = fits.open(self.path, memmap=False, lazy_load_hdus=True)
        header = self._hdul[0].header
        naxis = header.get("NAXIS", 0)
        if naxis not in (2, 3):
            self.close()
            raise ValueError(f"{self.path}: the primary HDU is not a 2-D or 3-D image "
                             f"(NAXIS = {naxis})")
        c = header["NAXIS3"] if naxis == 3 else 1
        self.shape = (int(c), int(header["NAXIS2"]), int(header["NAXIS1"]))
        self.wcs = WCS(header, naxis=2).celestial
        if not self.wcs.has_celestial:
            self.close()
            raise ValueError(f"{self.path}: no celestial WCS in the primary header")
        self.header = header

    def __enter__(self) -> MosaicFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._hdul.close()

    def has(self, name: str) -> bool:
        """Whether plane ``name`` (``data``, ``weight``, ``coverage``) is in the file."""
        ext = _PLANES[name]
        return ext == 0 or ext in self._hdul

    def open(self, name: str) -> SimpleNamespace:
        """The shape of plane ``name`` (what `binned_plane` asks of a store)."""
        return SimpleNamespace(shape=self.shape if name == "data" else self.shape[1:])

    def read_rows(self, name: str, y0: int, y1: int) -> np.ndarray:
        """FITS rows ``[y0, y1)`` of ``name`` as native float32: (C, n, W) or (n, W)."""
        hdu = self._hdul[_PLANES[name]]
        block = np.asarray(hdu.section[..., y0:y1, :], dtype=np.float32)
        if name == "data" and block.ndim == 2:
            block = block[None]
        return block

    def binned(self, name: str, factor: int, *, memory_budget: int) -> np.ndarray:
        """Plane ``name`` binned ``factor`` x ``factor`` (as the preview bins it)."""
        return binned_plane(self, name, factor, memory_budget=memory_budget)  # type: ignore[arg-type]


def band_rows(width: int, bytes_per_value: int, memory_budget: int, *, multiple: int = 1,
              share: int = 4) -> int:
    """Rows of a streamed band: ``width * bytes_per_value`` bytes a row within
    ``memory_budget / share``, a multiple of ``multiple`` and at least ``multiple``."""
    rows = memory_budget // share // max(1, width * bytes_per_value)
    return max(multiple, (rows // multiple) * multiple) if multiple > 1 else max(1, rows)


def binning_for(shape: tuple[int, int, int], max_values: float) -> int:
    """Smallest integer binning of a (C, H, W) plane that leaves at most ``max_values``."""
    c, h, w = shape
    f = max(1, math.floor(math.sqrt(c * h * w / max_values)))
    while c * math.ceil(h / f) * math.ceil(w / f) > max_values:
        f += 1
    return f
