"""Writing a mosaic that lives on disk (`skymosaic.assemble.DiskMosaic`) block by block.

The FITS is streamed (`astropy.io.fits.StreamingHDU`): header, then the science rows plane by
plane, then the WEIGHT and COVERAGE extensions, each read from the ``.npy`` files a block of
rows at a time, so writing never needs the whole mosaic in memory. The file is the same as
`skymosaic.io.write_mosaic` writes from arrays (same header, same extensions, float32).
Previews and diagnostics of such a mosaic are drawn from an integer-binned copy
(`binned_plane`) small enough for the memory budget.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic.assemble._coadd import DiskMosaic
from skymosaic.io._stretch import ColorMap, StretchOptions, StretchParams
from skymosaic.io._writer import atomic_path, mosaic_header, write_preview

__all__ = ["StoreSource", "binned_plane", "preview_binning", "preview_plane",
           "write_mosaic_from_disk",
           "write_preview_from_disk"]

#: Rows per streamed block: a quarter of the budget for the block and its big-endian copy.
_STREAM_SHARE = 8


def _virtual(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` that takes no memory (to let astropy build a header)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=shape,
                                           strides=(0,) * len(shape))


def _rows_per_block(width: int, budget: int) -> int:
    return max(1, budget // _STREAM_SHARE // (width * 4 * 2))


class StoreSource:
    """The ``data`` of a `DiskMosaic` as a `skymosaic.io._export.RowSource`."""

    def __init__(self, store: DiskMosaic) -> None:
        self.store = store
        arr = store.open("data")
        c, h, w = arr.shape
        del arr
        self._shape = (int(c), int(h), int(w))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.store.read_rows("data", y0, y1).astype(np.float32, copy=False)


def _stream(path: Path, header: fits.Header, planes: Sequence[tuple[str, int | None]],
            store: DiskMosaic,
            rows: int, color: ColorMap | None = None) -> None:
    """Append one HDU: ``header`` then every (array name, channel) plane, ``rows`` at a time
    (data planes mapped by ``color``: ``scale[c] * x + offset[c]`` in float32)."""
    with open(path, "ab+") as fh:  # an open file: astropy refuses to append to an empty path
        hdu = fits.StreamingHDU(fh, header)
        for name, channel in planes:
            arr = store.open(name)
            height = arr.shape[-2]
            del arr
            for y0 in range(0, height, rows):
                block = store.read_rows(name, y0, min(height, y0 + rows))
                if channel is not None:
                    block = block[channel]
                    if color is not None:
                        block = (block.astype(np.float32) * np.float32(color.scale[channel])
                                 + np.float32(color.offset[channel]))
                hdu.write(block.astype(">f4"))
        hdu.close()


def write_mosaic_from_disk(
    path: str | os.PathLike,
    store: DiskMosaic,
    wcs: WCS,
    *,
    memory_budget: int,
    history: Sequence[str] = (),
    cards: dict | None = None,
    color: ColorMap | None = None,
) -> Path:
    """Write the mosaic held in ``store`` as the science FITS, streaming blocks of rows.

    Parameters
    ----------
    path : path
        Destination (``.fits``); replaced atomically.
    store : DiskMosaic
        ``data`` (C, H, W), ``weight`` and ``coverage`` (H, W) on disk.
    wcs : astropy.wcs.WCS
        The celestial WCS of the output grid.
    memory_budget : int
        Bytes; the streamed blocks use at most an eighth of it.
    history, cards
        As in `skymosaic.io.write_mosaic`.
    color : ColorMap, optional
        A colour calibration applied to the data (``color.mode = "apply"``): each value
        becomes ``float32(scale[c]) * x + float32(offset[c])`` in float32.
    """
    data = store.open("data")
    c, h, w = data.shape
    del data
    science_shape = (h, w) if c == 1 else (c, h, w)
    header = fits.PrimaryHDU(_virtual(science_shape),
                             header=mosaic_header(wcs, history=history, cards=cards)).header
    wcs_header = wcs.to_header(relax=True)
    rows = _rows_per_block(w, memory_budget)
    with atomic_path(path, suffix=".fits") as tmp:
        _stream(tmp, header, [("data", ch) for ch in range(c)], store, rows, color)
        for name, ext in (("weight", "WEIGHT"), ("coverage", "COVERAGE")):
            ext_header = fits.ImageHDU(_virtual((h, w)), header=wcs_header, name=ext).header
            _stream(tmp, ext_header, [(name, None)], store, rows)
    return Path(path)


def preview_binning(shape: tuple[int, int, int], *, max_size: int, memory_budget: int) -> int:
    """Integer binning of a (C, H, W) mosaic so that its preview fits ``max_size`` and the
    stretch (about 8 float32 copies of the binned planes) half the budget (it runs after the
    coadd, when nothing else of the run is resident)."""
    c, h, w = shape
    by_size = math.ceil(max(h, w) / max_size)
    by_memory = math.ceil(math.sqrt(h * w * c * 4 * 8 / max(memory_budget // 2, 1)))
    return max(1, by_size, by_memory)


def binned_plane(store: DiskMosaic, name: str, factor: int, *, memory_budget: int) -> np.ndarray:
    """``name`` (``data`` (C, H, W) or ``weight`` (H, W)) binned ``factor`` x ``factor``.

    A binned pixel is the mean of its valid (finite) pixels where more than half are
    valid, NaN elsewhere (as `skymosaic.io.stretch_preview` treats no-data when shrinking).
    """
    arr = store.open(name)
    shape = arr.shape
    del arr
    h, w = shape[-2:]
    hb, wb = math.ceil(h / factor), math.ceil(w / factor)
    out = np.full((*shape[:-2], hb, wb), np.nan, np.float32)
    step = factor * max(1, _rows_per_block(w, memory_budget) // factor)
    for y0 in range(0, h, step):
        block = store.read_rows(name, y0, min(h, y0 + step)).astype(np.float32)
        rows = block.shape[-2]
        padded = np.full((*shape[:-2], math.ceil(rows / factor) * factor, wb * factor), np.nan,
                         np.float32)
        padded[..., :rows, :w] = block
        boxes = padded.reshape(*shape[:-2], -1, factor, wb, factor)
        count = np.isfinite(boxes).sum(axis=(-3, -1))
        mean = np.nansum(boxes, axis=(-3, -1)) / np.maximum(count, 1)
        valid = count > 0.5 * factor * factor
        b0 = y0 // factor
        out[..., b0:b0 + mean.shape[-2], :] = np.where(valid, mean, np.nan)
    return out


def preview_plane(store: DiskMosaic, *, max_size: int, memory_budget: int) -> np.ndarray:
    """The plane a preview of ``store`` is drawn from (and its stretch fitted on): the
    mosaic binned by `preview_binning`, or the mosaic itself when no binning is needed."""
    data = store.open("data")
    shape = data.shape
    del data
    factor = preview_binning(shape, max_size=max_size, memory_budget=memory_budget)
    if factor == 1:
        return store.read_rows("data", 0, shape[1]).astype(np.float32, copy=False)
    return binned_plane(store, "data", factor, memory_budget=memory_budget)


def write_preview_from_disk(path: str | os.PathLike, store: DiskMosaic, *, max_size: int,
                            memory_budget: int, options: StretchOptions | None = None,
                            color: ColorMap | None = None, params: StretchParams | None = None,
                            plane: np.ndarray | None = None) -> Path:
    """The stretched PNG preview of the mosaic in ``store`` (see `write_preview`).

    ``plane`` is `preview_plane` of ``store`` when the caller has it already; the stretch
    is fitted on it (`skymosaic.io._stretch.fit_stretch`) unless ``params`` is given.
    """
    if plane is None:
        plane = preview_plane(store, max_size=max_size, memory_budget=memory_budget)
    return write_preview(path, plane, max_size=max_size, options=options, color=color,
                         params=params)
