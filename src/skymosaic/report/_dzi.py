"""A Deep Zoom (DZI) tile pyramid of the stretched mosaic, written by streaming.

Layout (Microsoft Deep Zoom, what OpenSeadragon reads): ``NAME.dzi`` (XML: tile size,
overlap, format, full size) and ``NAME_files/<level>/<col>_<row>.<fmt>``. Level ``L`` is
the image shrunk by ``2**(max_level - L)`` (sizes rounded up), level ``max_level =
ceil(log2(max(W, H)))`` is full resolution and level 0 is one pixel. A tile is
``tile_size`` pixels plus ``overlap`` pixels on each side that has a neighbour. Row 0 is
the top of the image (north up for a north-up mosaic): FITS row 0 is the bottom, so the
FITS rows are read from the last one down.

Memory: the full-resolution level is built from bands of FITS rows (a multiple of the
tile size, sized by the memory budget); every band is stretched (`apply_stretch`, which is
block-independent), cut into tiles, and shrunk 2 x 2 into an 8-bit memory-mapped image of
the next level in a temporary folder. Each coarser level is then cut and shrunk the same
way from its memory map. So the pyramid of a mosaic of any size takes a few bands of
memory and a third of its 8-bit size of temporary disk.

Coarser levels are 2 x 2 means of the finer stretched level (display averaging, not a
re-stretch of binned data); a lone last row or column is averaged with itself.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skymosaic.io._stretch import StretchParams, apply_stretch, to_uint
from skymosaic.report._mosaic import MosaicFile, band_rows

__all__ = ["DziPyramid", "write_dzi"]

#: Bytes per value and per row of a full-resolution band: the float32 read and its
#: stretched copy, the arcsinh temporaries, the 8-bit tile source and the 2 x 2 mean.
_FULL_BYTES = 28
#: The same for a coarser level read from its 8-bit memory map.
_LEVEL_BYTES = 12
_FORMATS = {"jpg": [cv2.IMWRITE_JPEG_QUALITY], "png": [cv2.IMWRITE_PNG_COMPRESSION]}


@dataclass(frozen=True)
class DziPyramid:
    """What `write_dzi` wrote: the descriptor, the tile folder and the pyramid's geometry."""

    dzi_path: Path
    tiles_dir: Path
    width: int
    height: int
    tile_size: int
    overlap: int
    format: str
    max_level: int
    n_tiles: int

    def tile_source(self, relative_to: Path) -> dict:
        """The inline OpenSeadragon tile source (a DZI descriptor as JSON: file:// pages
        cannot fetch the XML), with the tile URL relative to ``relative_to``."""
        url = os.path.relpath(self.tiles_dir, relative_to).replace(os.sep, "/") + "/"
        return {"Image": {"xmlns": "http://schemas.microsoft.com/deepzoom/2008", "Url": url,
                          "Format": self.format, "Overlap": str(self.overlap),
                          "TileSize": str(self.tile_size),
                          "Size": {"Width": str(self.width), "Height": str(self.height)}}}


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """``(w, h)`` of every DZI level, from level 0 (1 x 1) to full resolution."""
    max_level = math.ceil(math.log2(max(width, height, 1)))
    return [(math.ceil(width / 2 ** (max_level - k)), math.ceil(height / 2 ** (max_level - k)))
            for k in range(max_level + 1)]


def write_dzi(
    mosaic: MosaicFile,
    dest: str | os.PathLike,
    params: StretchParams,
    *,
    memory_budget: int,
    name: str = "mosaic",
    tile_size: int = 254,
    overlap: int = 1,
    fmt: str = "jpg",
    quality: int = 90,
    progress: Callable[[int, int], None] | None = None,
    threads: int = 1,
) -> DziPyramid:
    """Write the DZI pyramid of ``mosaic`` stretched with ``params`` into ``dest``.

    Parameters
    ----------
    mosaic : MosaicFile
        The science mosaic (read a band of rows at a time).
    dest : path
        Folder of ``NAME.dzi`` and ``NAME_files/``; an existing pyramid of that name is
        replaced once the new one is complete.
    params : StretchParams
        The display stretch (`fit_stretch` on the binned preview plane).
    memory_budget : int
        Bytes; a band uses at most a quarter of it (but never less than one tile row).
    tile_size, overlap : int
        Tile size without overlap (254 + 2 x 1 = 256 px images) and overlap in pixels.
    fmt : ``"jpg"`` or ``"png"``
        Tile format (png is lossless: the deepest level is then exactly the stretch).
    quality : int
        JPEG quality (or PNG compression level 0-9 for png).
    progress : callable(done, total), optional
        Called after every band of every level.
    threads : int
        Threads that stretch a band (in row chunks) and encode its tiles (NumPy's
        ``arcsinh`` and OpenCV's encoders release the GIL); the files do not depend on it.

    Returns
    -------
    DziPyramid
    """
    if fmt not in _FORMATS:
        raise ValueError(f"DZI tile format must be one of {sorted(_FORMATS)}, got {fmt!r}")
    if not 64 <= tile_size <= 2048 or not 0 <= overlap <= 8:
        raise ValueError(f"tile_size must be 64-2048 and overlap 0-8, got {tile_size} and "
                         f"{overlap}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    c, height, width = mosaic.shape
    sizes = level_sizes(width, height)
    max_level = len(sizes) - 1
    flags = [_FORMATS[fmt][0], int(quality if fmt == "jpg" else min(quality, 9))]
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    writer = _TileWriter(tile_size, overlap, fmt, flags, pool)
    final_tiles, final_dzi = dest / f"{name}_files", dest / f"{name}.dzi"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}_files.", dir=dest))
    total = sum(math.ceil(h / tile_size) for _, h in sizes)
    done = [0]

    def tick(rows: int) -> None:
        done[0] += math.ceil(rows / tile_size)
        if progress is not None:
            progress(min(done[0], total), total)

    try:
        with tempfile.TemporaryDirectory(prefix=".dzi_levels.", dir=dest) as scratch:
            nxt = _level_map(Path(scratch), max_level - 1, sizes, c)
            rows = band_rows(width, c * _FULL_BYTES, memory_budget, multiple=tile_size)
            for r0 in range(0, height, rows):
                r1 = min(height, r0 + rows)
                band = _full_band(mosaic, r0, r1, overlap, params, pool, threads)
                writer.cut(staging / str(max_level), band, r0 - max(0, r0 - overlap), r0, r1, width,
                           height)
                core = band[r0 - max(0, r0 - overlap):][: r1 - r0]
                if nxt is not None:
                    nxt[r0 // 2: r0 // 2 + math.ceil((r1 - r0) / 2)] = to_uint(_shrink(core))
                tick(r1 - r0)
            for level in range(max_level - 1, -1, -1):
                cur, (lw, lh) = nxt, sizes[level]
                nxt = _level_map(Path(scratch), level - 1, sizes, c)
                rows = band_rows(lw, c * _LEVEL_BYTES, memory_budget, multiple=tile_size)
                for r0 in range(0, lh, rows):
                    r1 = min(lh, r0 + rows)
                    lo = max(0, r0 - overlap)
                    band = np.asarray(cur[lo:min(lh, r1 + overlap)], np.float32) / np.float32(255.0)
                    writer.cut(staging / str(level), band, r0 - lo, r0, r1, lw, lh)
                    if nxt is not None:
                        nxt[r0 // 2: r0 // 2 + math.ceil((r1 - r0) / 2)] = to_uint(
                            _shrink(band[r0 - lo:][: r1 - r0]))
                    tick(r1 - r0)
                del cur
        _write_descriptor(staging / "descriptor.dzi", width, height, tile_size, overlap, fmt)
        if final_tiles.exists():
            shutil.rmtree(final_tiles)
        os.replace(staging / "descriptor.dzi", final_dzi)
        os.replace(staging, final_tiles)
    finally:
        if pool is not None:
            pool.shutdown()
        shutil.rmtree(staging, ignore_errors=True)
    return DziPyramid(final_dzi, final_tiles, width, height, tile_size, overlap, fmt, max_level,
                      writer.count)


def _full_band(mosaic: MosaicFile, r0: int, r1: int, overlap: int, params: StretchParams,
               pool: ThreadPoolExecutor | None = None, threads: int = 1) -> np.ndarray:
    """Image rows ``[r0 - overlap, r1 + overlap)`` (clipped), stretched: (n, W, C) float32
    (in row chunks on ``pool``: the stretch is per pixel)."""
    height = mosaic.shape[1]
    lo, hi = max(0, r0 - overlap), min(height, r1 + overlap)
    block = mosaic.read_rows("data", height - hi, height - lo)[:, ::-1]  # top row first
    if pool is None or block.shape[1] < 64:
        return np.moveaxis(apply_stretch(block, params), 0, -1)
    out = np.empty((block.shape[1], block.shape[2], block.shape[0]), np.float32)
    cuts = np.linspace(0, block.shape[1], threads + 1).round().astype(int)

    def part(a: int, b: int) -> None:
        out[a:b] = np.moveaxis(apply_stretch(block[:, a:b], params), 0, -1)

    list(pool.map(lambda ab: part(*ab), itertools.pairwise(cuts.tolist())))
    return out


def _level_map(folder: Path, level: int, sizes: list[tuple[int, int]],
               channels: int) -> np.memmap | None:
    if level < 0:
        return None
    w, h = sizes[level]
    return np.lib.format.open_memmap(folder / f"level_{level}.npy", mode="w+", dtype=np.uint8,
                                     shape=(h, w, channels))


def _shrink(img: np.ndarray) -> np.ndarray:
    """2 x 2 mean of an (h, w, C) image, sizes rounded up (a lone edge averages itself)."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])


class _TileWriter:
    """Cuts bands of a level into DZI tiles and encodes them."""

    def __init__(self, tile_size: int, overlap: int, fmt: str, flags: list[int],
                 pool: ThreadPoolExecutor | None = None) -> None:
        self.tile_size, self.overlap, self.fmt, self.flags = tile_size, overlap, fmt, flags
        self.pool = pool
        self.count = 0

    def cut(self, folder: Path, band: np.ndarray, offset: int, r0: int, r1: int, width: int,
            height: int) -> None:
        """Write the tiles of rows ``[r0, r1)``; ``band[offset]`` is image row ``r0``."""
        folder.mkdir(parents=True, exist_ok=True)
        t, ov = self.tile_size, self.overlap
        img = to_uint(band)
        jobs = []
        for row in range(r0 // t, math.ceil(r1 / t)):
            y0, y1 = max(0, row * t - ov), min(height, (row + 1) * t + ov)
            for col in range(math.ceil(width / t)):
                x0, x1 = max(0, col * t - ov), min(width, (col + 1) * t + ov)
                tile = img[y0 - r0 + offset: y1 - r0 + offset, x0:x1]
                jobs.append((folder / f"{col}_{row}.{self.fmt}", tile))
        if self.pool is None:
            for path, tile in jobs:
                self._encode(path, tile)
        else:  # the band is released only once its tiles are written
            list(self.pool.map(lambda job: self._encode(*job), jobs))
        self.count += len(jobs)

    def _encode(self, path: Path, tile: np.ndarray) -> None:
        if tile.shape[-1] == 3:
            tile = cv2.cvtColor(np.ascontiguousarray(tile), cv2.COLOR_RGB2BGR)
        else:
            tile = tile[..., 0]
        ok, buf = cv2.imencode(f".{self.fmt}", np.ascontiguousarray(tile), self.flags)
        if not ok:
            raise OSError(f"could not encode DZI tile {path}")
        path.write_bytes(buf.tobytes())


def _write_descriptor(path: Path, width: int, height: int, tile_size: int, overlap: int,
                      fmt: str) -> None:
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" '
        f'Overlap="{overlap}" TileSize="{tile_size}">\n'
        f'  <Size Width="{width}" Height="{height}"/>\n</Image>\n'
    )
