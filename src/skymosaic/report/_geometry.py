"""Geometry the viewer needs: a sky lookup grid for the cursor, outlines, overlaps.

Cursor RA/Dec. The page cannot run WCSLIB, and the mosaic may use any projection
skymosaic writes (TAN, SIN, ZEA, STG, ARC, CAR) or a user's header (with distortions).
So the report ships a lookup grid: the unit vectors of the sky positions of a regular
grid of pixel nodes, computed with astropy. The page interpolates the three components
bilinearly and normalises the vector (`sky_at` is the same formula in Python): unit
vectors have no wrap at RA = 0/360 and no singularity at the poles. The node spacing is
halved until the interpolation error, checked at 3 x 3 points of every cell against
astropy, is below ``tolerance`` pixels (0.01 px by default), up to 257 x 257 nodes.

Outlines are sky positions along a frame's edge mapped into mosaic pixels (0-based FITS
x, y); overlaps of two outlines are clipped with Sutherland-Hodgman (the outlines of
frames and tiles are convex quadrilaterals on the sky, very nearly so in pixels).
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

__all__ = ["SkyGrid", "clip_polygon", "outline_pixels", "polygon_area", "sky_grid"]

_MAX_NODES = 257


class SkyGrid:
    """Unit vectors of the sky at pixel nodes ``x = k * step``, ``y = l * step``."""

    def __init__(self, step: float, vectors: np.ndarray) -> None:
        self.step = float(step)
        self.vectors = vectors  # (ny, nx, 3)

    def to_dict(self) -> dict:
        ny, nx, _ = self.vectors.shape
        return {"step": self.step, "nx": nx, "ny": ny,
                "v": np.round(self.vectors.reshape(-1), 10).tolist()}

    def sky_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RA, Dec (deg) at 0-based pixel positions, interpolated as the page does."""
        ny, nx, _ = self.vectors.shape
        fx = np.asarray(x, float) / self.step  # extrapolated half a pixel beyond the nodes
        fy = np.asarray(y, float) / self.step
        i0 = np.clip(np.floor(fx).astype(int), 0, nx - 2)
        j0 = np.clip(np.floor(fy).astype(int), 0, ny - 2)
        tx, ty = (fx - i0)[..., None], (fy - j0)[..., None]
        v = self.vectors
        vec = ((1 - tx) * (1 - ty) * v[j0, i0] + tx * (1 - ty) * v[j0, i0 + 1]
               + (1 - tx) * ty * v[j0 + 1, i0] + tx * ty * v[j0 + 1, i0 + 1])
        vec /= np.linalg.norm(vec, axis=-1, keepdims=True)
        ra = np.degrees(np.arctan2(vec[..., 1], vec[..., 0])) % 360.0
        dec = np.degrees(np.arcsin(np.clip(vec[..., 2], -1, 1)))
        return ra, dec


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _nodes(wcs: WCS, shape: tuple[int, int], step: float) -> SkyGrid:
    h, w = shape
    nx, ny = int(np.ceil((w - 1) / step)) + 1, int(np.ceil((h - 1) / step)) + 1
    xs, ys = np.meshgrid(np.arange(max(nx, 2)) * step, np.arange(max(ny, 2)) * step)
    ra, dec = wcs.pixel_to_world_values(xs, ys)
    return SkyGrid(step, _unit(np.asarray(ra), np.asarray(dec)))


def sky_grid(wcs: WCS, shape: tuple[int, int], *, tolerance: float = 0.01) -> SkyGrid:
    """The coarsest lookup grid whose interpolated positions are within ``tolerance``
    pixels of astropy's (at the cell centres), or the 257 x 257 node grid.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        The mosaic's celestial WCS.
    shape : (H, W)
        The mosaic's size.
    tolerance : float
        Largest error allowed, in pixels.
    """
    h, w = shape
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))  # deg / px
    step = float(max(h, w, 2) - 1)
    while True:
        grid = _nodes(wcs, shape, step)
        ny, nx, _ = grid.vectors.shape
        if max(nx, ny) >= _MAX_NODES or step <= 1.0:
            return grid
        # 3 x 3 points a cell: the centre alone misses the error of conformal projections
        # (STG: harmonic coordinates, whose bilinear error vanishes at the centre)
        frac = np.array([0.25, 0.5, 0.75])
        cx, cy = np.meshgrid((np.arange(nx - 1)[:, None] + frac).ravel() * step,
                             (np.arange(ny - 1)[:, None] + frac).ravel() * step)
        ra, dec = grid.sky_at(cx, cy)
        true = _unit(*wcs.pixel_to_world_values(cx, cy))
        err = np.degrees(np.linalg.norm(_unit(ra, dec) - true, axis=-1))  # chord ~ angle
        err = np.where(np.isfinite(err), err, np.inf)  # off the projection: refine
        if err.max() / scale <= tolerance:
            return grid
        step /= 2.0


def outline_pixels(footprint_deg: np.ndarray, wcs: WCS) -> np.ndarray | None:
    """A sky outline (K, 2) RA/Dec in degrees as mosaic pixel positions (K, 2) x, y, or
    None where a point does not map (behind the projection)."""
    ra, dec = np.asarray(footprint_deg, float).T
    x, y = wcs.world_to_pixel_values(ra, dec)
    xy = np.stack([x, y], axis=1)
    return xy if np.isfinite(xy).all() else None


def polygon_area(poly: np.ndarray) -> float:
    """Signed area (shoelace) of a (K, 2) polygon."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def clip_polygon(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """The part of polygon ``subject`` inside the convex polygon ``clip`` (Sutherland-
    Hodgman); an empty (0, 2) array when they do not intersect."""
    if polygon_area(clip) < 0:
        clip = clip[::-1]
    out = [tuple(p) for p in subject]
    for k in range(len(clip)):
        if not out:
            break
        a, b = clip[k], clip[(k + 1) % len(clip)]
        pts, out = out, []

        def inside(p, a=a, b=b):
            return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0

        def cross(p, q, a=a, b=b):
            d1 = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
            d2 = (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0])
            t = d1 / (d1 - d2)
            return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))

        for i, p in enumerate(pts):
            q = pts[i - 1]
            if inside(p):
                if not inside(q):
                    out.append(cross(q, p))
                out.append(p)
            elif inside(q):
                out.append(cross(q, p))
    return np.asarray(out, float).reshape(-1, 2)
