"""Grid/survey mode geometry: a regular grid of overlapping tiles on one global WCS.

Every tile is a rectangle of the mosaic canvas (the global output grid): its WCS is the
canvas WCS shifted by the tile's origin, so a tile's pixels *are* mosaic pixels and the
assembly places them without a second resampling. The tile size is a factor of the median
frame field of view (in canvas pixels), neighbouring tiles overlap by a fraction of it,
the last row and column are clamped to the canvas edge, and each frame is assigned to
every tile its footprint polygon intersects. Tiles that no frame touches are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales

from skymosaic.io import FrameInfo, frame_footprint
from skymosaic.reproject import OutputGrid

__all__ = ["GridTile", "frame_polygons", "make_tile_grid", "tile_grid_of"]


@dataclass
class GridTile:
    """One tile of the survey grid.

    Attributes
    ----------
    tile_id : str
        ``grid_r{row}_c{col}``.
    row, col : int
        Position in the grid.
    bbox : (int, int, int, int)
        ``(y0, y1, x0, x1)`` on the canvas, end-exclusive, inside the canvas.
    frames : list of int
        Indices (into the frame list given to `make_tile_grid`) of the frames touching it.
    """

    tile_id: str
    row: int
    col: int
    bbox: tuple[int, int, int, int]
    frames: list[int] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.bbox[1] - self.bbox[0], self.bbox[3] - self.bbox[2]

    def to_dict(self) -> dict:
        return {"tile_id": self.tile_id, "row": self.row, "col": self.col,
                "bbox": list(self.bbox), "n_frames": len(self.frames)}


def tile_grid_of(canvas: OutputGrid, bbox: tuple[int, int, int, int]) -> OutputGrid:
    """The `OutputGrid` of a canvas rectangle: the canvas WCS with its origin moved."""
    y0, y1, x0, x1 = bbox
    wcs = canvas.wcs.deepcopy()
    wcs.wcs.crpix = [wcs.wcs.crpix[0] - x0, wcs.wcs.crpix[1] - y0]
    if wcs.sip is not None:  # SIP is relative to CRPIX: keep it consistent
        wcs.sip.crpix[:] = wcs.wcs.crpix
    wcs.pixel_shape = (x1 - x0, y1 - y0)
    return OutputGrid(wcs, (y1 - y0, x1 - x0))


def frame_polygons(frames: Sequence[FrameInfo], canvas: OutputGrid) -> list[np.ndarray]:
    """Each frame's footprint as a polygon ``(N, 2)`` of canvas pixel ``(x, y)``."""
    out = []
    for f in frames:
        sky = frame_footprint(f.wcs, f.shape[1:], samples=9)
        x, y = canvas.wcs.world_to_pixel_values(sky[:, 0], sky[:, 1])
        out.append(np.column_stack([x, y]))
    return out


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Monotone-chain convex hull of 2-D points (counter-clockwise, no repeat)."""
    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(pts) < 3:
        return pts

    def half(seq):
        chain: list[np.ndarray] = []
        for p in seq:
            while len(chain) >= 2:
                a, b = chain[-2], chain[-1]
                if (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _intersects(hull: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Separating-axis test of a convex polygon against an axis-aligned box (x0, x1, y0, y1)."""
    x0, x1, y0, y1 = box
    if (hull[:, 0].max() < x0 or hull[:, 0].min() > x1
            or hull[:, 1].max() < y0 or hull[:, 1].min() > y1):
        return False
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    edges = np.roll(hull, -1, axis=0) - hull
    for e in edges:
        n = np.array([-e[1], e[0]])
        if not np.any(n):
            continue
        ph, pc = hull @ n, corners @ n
        if ph.max() < pc.min() or pc.max() < ph.min():
            return False
    return True


def _starts(length: int, tile: int, step: float) -> list[int]:
    """Tile origins along one axis; the last tile is clamped to end at ``length``."""
    if tile >= length:
        return [0]
    n = math.ceil((length - tile) / step) + 1
    starts = [min(round(k * step), length - tile) for k in range(n)]
    return sorted(set(starts))


def make_tile_grid(
    frames: Sequence[FrameInfo],
    canvas: OutputGrid,
    *,
    tile_factor: float = 1.0,
    overlap: float = 0.3,
    min_tile_px: int = 32,
) -> list[GridTile]:
    """Lay a regular grid of overlapping tiles on ``canvas`` and assign the frames.

    Parameters
    ----------
    frames : sequence of FrameInfo
        Frames with a celestial WCS.
    canvas : OutputGrid
        The global mosaic grid.
    tile_factor : float
        Tile size as a multiple of the median frame size on the canvas (per axis).
    overlap : float
        Fraction of the tile size shared by neighbouring tiles, in [0, 0.9].
    min_tile_px : int
        Smallest tile side in pixels (tiny frames on a coarse canvas).

    Returns
    -------
    list of GridTile
        Row-major order, tiles without frames dropped.

    Raises
    ------
    ValueError
        On an empty frame list or invalid parameters.
    """
    if not frames:
        raise ValueError("make_tile_grid needs at least one frame")
    if not tile_factor > 0:
        raise ValueError(f"tile_factor must be > 0, got {tile_factor!r}")
    if not 0.0 <= overlap <= 0.9:
        raise ValueError(f"overlap must be within [0, 0.9], got {overlap!r}")
    h, w = canvas.shape
    polys = frame_polygons(frames, canvas)
    hulls = [_convex_hull(p[np.all(np.isfinite(p), axis=1)]) for p in polys]
    sizes_w = [np.ptp(p[:, 0]) for p in polys if np.all(np.isfinite(p))]
    sizes_h = [np.ptp(p[:, 1]) for p in polys if np.all(np.isfinite(p))]
    scale = canvas.pixel_scale_arcsec
    # the frame's own size on the canvas, not its bbox (a rotated frame has a larger bbox)
    px = [proj_plane_pixel_scales(f.wcs.celestial) * 3600.0 for f in frames]
    own_w = [f.width * p[0] / scale for f, p in zip(frames, px, strict=True)]
    own_h = [f.height * p[1] / scale for f, p in zip(frames, px, strict=True)]
    tile_w = max(min_tile_px, round(tile_factor * float(np.median(own_w or sizes_w))))
    tile_h = max(min_tile_px, round(tile_factor * float(np.median(own_h or sizes_h))))
    tile_w, tile_h = min(tile_w, w), min(tile_h, h)
    ys = _starts(h, tile_h, max(1.0, tile_h * (1.0 - overlap)))
    xs = _starts(w, tile_w, max(1.0, tile_w * (1.0 - overlap)))
    tiles = []
    for r, y0 in enumerate(ys):
        for c, x0 in enumerate(xs):
            bbox = (y0, y0 + tile_h, x0, x0 + tile_w)
            # pixel centres run from x0 to x0 + tile_w - 1: test the area they cover
            box = (x0 - 0.5, x0 + tile_w - 0.5, y0 - 0.5, y0 + tile_h - 0.5)
            members = [k for k, hull in enumerate(hulls)
                       if len(hull) >= 3 and _intersects(hull, box)]
            if members:
                tiles.append(GridTile(f"grid_r{r:03d}_c{c:03d}", r, c, bbox, members))
    return tiles
