"""Output-to-input pixel mapping through two WCS, on a coarse grid (SWarp's approach).

Evaluating ``wcs_in.world_to_pixel(wcs_out.pixel_to_world(x, y))`` for every output pixel
is what makes astropy-based reprojection slow (SIP inversion is iterative). The mapping is
smooth, so we evaluate it exactly on a coarse grid of nodes and interpolate it with a bicubic
spline. The interpolation error is *measured*, not assumed: the exact transform is also
evaluated at the centre of every grid cell (where a spline error is largest) and the grid is
refined until the largest error is below ``tolerance`` pixels.

Evaluating the bicubic spline on every output pixel is itself the costliest step (about
10 ns per pixel and map, holding the GIL). The spline is therefore evaluated on the output
pixels whose row and column are multiples of `DENSE_STEP` and interpolated bilinearly in
between; that second interpolation is measured the same way (spline against bilinear value
at the centre of every fine cell) and its error is added to ``max_error``. When the sum
would exceed the tolerance, the spline is evaluated on every pixel instead. The fine nodes
are multiples of `DENSE_STEP` of the output grid, not of the cutout (the spline is fitted
over the cutout grown to them), so that two cutouts of one mosaic (blocks of rows, say)
interpolate a pixel between the same nodes.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.interpolate import RectBivariateSpline

__all__ = ["PixelMap", "exact_pixel_map", "pixel_map"]

logger = logging.getLogger(__name__)

#: The finest grid tried before falling back to the exact transform on every pixel.
MIN_STEP = 4
#: Spacing, in output pixels, of the spline samples interpolated linearly to every pixel.
DENSE_STEP = 8


@dataclass(frozen=True)
class PixelMap:
    """Input-pixel coordinates of every pixel of an output cutout.

    ``x[i, j], y[i, j]`` are the 0-based input pixel coordinates of output pixel
    ``(y0 + i, x0 + j)``. ``max_error`` is the largest measured difference from the exact
    transform (pixels); ``step`` the grid spacing used (0 = exact on every pixel).
    """

    x: np.ndarray
    y: np.ndarray
    y0: int
    x0: int
    step: int
    max_error: float


def _transform(wcs_out: WCS, wcs_in: WCS, xs: np.ndarray,
               ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # points far outside a projection give NaN, handled
        world = wcs_out.pixel_to_world_values(xs, ys)
        xi, yi = wcs_in.world_to_pixel_values(*world)
    return np.asarray(xi, dtype=np.float64), np.asarray(yi, dtype=np.float64)


def exact_pixel_map(wcs_out: WCS, wcs_in: WCS, cutout: tuple[int, int, int, int]) -> PixelMap:
    """The exact mapping on every pixel of ``cutout = (y0, y1, x0, x1)`` (reference, slow)."""
    y0, y1, x0, x1 = cutout
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    xi, yi = _transform(wcs_out, wcs_in, xx, yy)
    return PixelMap(xi.astype(np.float32), yi.astype(np.float32), y0, x0, 0, 0.0)


def _nodes(start: int, stop: int, step: int) -> np.ndarray:
    """Grid nodes covering [start, stop - 1] with spacing <= step, ends included."""
    length = stop - start
    # At least 4 nodes (a cubic spline) when the axis is that long.
    n = max(min(4, length), int(np.ceil((length - 1) / step)) + 1)
    return np.linspace(start, stop - 1, n)


def pixel_map(
    wcs_out: WCS,
    wcs_in: WCS,
    cutout: tuple[int, int, int, int],
    *,
    tolerance: float = 0.01,
    step: int = 64,
) -> PixelMap:
    """Map output pixels of ``cutout`` to input pixel coordinates, within ``tolerance`` px.

    Parameters
    ----------
    wcs_out, wcs_in : astropy.wcs.WCS
        Celestial WCS of the output grid and of the input frame (SIP distortion included).
    cutout : tuple of int
        ``(y0, y1, x0, x1)``, end-exclusive, in output pixels.
    tolerance : float
        Largest allowed difference from the exact transform, in input pixels.
    step : int
        Initial grid spacing in output pixels; halved until the tolerance holds.

    Returns
    -------
    PixelMap
        float32 coordinate arrays of the cutout's shape. Output pixels whose sky position
        has no input pixel (beyond a projection's horizon) are NaN.

    Raises
    ------
    ValueError
        For an empty cutout or non-positive tolerance/step.
    """
    y0, y1, x0, x1 = (int(v) for v in cutout)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty cutout {cutout}")
    if tolerance <= 0 or step < 1:
        raise ValueError(f"tolerance must be > 0 and step >= 1, got {tolerance}, {step}")
    h, w = y1 - y0, x1 - x0
    if h * w <= 4096:  # tiny cutouts: the exact transform is as cheap as the grid
        return exact_pixel_map(wcs_out, wcs_in, cutout)
    # the region the spline covers: the cutout, grown to the fine nodes when they are used
    dense = min(h, w) > 2 * DENSE_STEP
    fy0, fy1 = _aligned(y0, y1) if dense else (y0, y1)
    fx0, fx1 = _aligned(x0, x1) if dense else (x0, x1)
    while step >= MIN_STEP:
        gy, gx = _nodes(fy0, fy1, step), _nodes(fx0, fx1, step)
        xi, yi = _transform(wcs_out, wcs_in, *np.meshgrid(gx, gy))
        if not (np.all(np.isfinite(xi)) and np.all(np.isfinite(yi))):
            break  # a horizon crosses the cutout: a spline cannot represent it
        ky, kx = min(3, len(gy) - 1), min(3, len(gx) - 1)
        # RectBivariateSpline's first axis is our y: its "kx" is the degree along y.
        sx = RectBivariateSpline(gy, gx, xi, kx=ky, ky=kx)
        sy = RectBivariateSpline(gy, gx, yi, kx=ky, ky=kx)
        # Check at cell centres, where the interpolation error of a spline peaks.
        cy, cx = 0.5 * (gy[1:] + gy[:-1]), 0.5 * (gx[1:] + gx[:-1])
        ex, ey = _transform(wcs_out, wcs_in, *np.meshgrid(cx, cy))
        err = np.hypot(sx(cy, cx) - ex, sy(cy, cx) - ey)
        max_err = float(np.nanmax(err)) if err.size else 0.0
        if np.isfinite(max_err) and max_err <= tolerance:
            room = tolerance - max_err if dense else -1.0
            x, y, dense_err = _densify(sx, sy, (y0, y1, x0, x1), (fy0, fy1, fx0, fx1), room)
            return PixelMap(x, y, y0, x0, step, max_err + dense_err)
        step //= 2
    logger.debug("mapping of cutout %s needs the exact transform", cutout)
    return exact_pixel_map(wcs_out, wcs_in, cutout)


def _aligned(start: int, stop: int) -> tuple[int, int]:
    """``[start, stop)`` grown so that both ends are multiples of `DENSE_STEP`."""
    last = stop - 1 + (-(stop - 1)) % DENSE_STEP
    return start - start % DENSE_STEP, last + 1


def _upsample(values: np.ndarray) -> np.ndarray:
    """Rows ``values[i]`` at rows ``i * DENSE_STEP``, interpolated linearly to every row in
    between (one broadcast expression, in the dtype of ``values``)."""
    n = values.shape[0]
    t = np.arange(DENSE_STEP, dtype=values.dtype) / values.dtype.type(DENSE_STEP)
    out = np.empty(((n - 1) * DENSE_STEP + 1, *values.shape[1:]), dtype=values.dtype)
    body = out[:-1].reshape((n - 1, DENSE_STEP, *values.shape[1:]))
    np.multiply((values[1:] - values[:-1])[:, None], t[None, :, None], out=body)
    body += values[:-1, None]
    out[-1] = values[-1]
    return out


def _densify(
    sx: RectBivariateSpline,
    sy: RectBivariateSpline,
    cutout: tuple[int, int, int, int],
    fitted: tuple[int, int, int, int],
    room: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Both splines on every pixel of ``cutout``, float32, and the error added on the way.

    ``fitted`` is the region the splines cover; with ``room >= 0`` its ends must be
    multiples of `DENSE_STEP` (`_aligned`). The splines are then evaluated on those nodes
    and interpolated bilinearly, provided that adds at most ``room`` pixels of error
    (measured at the fine cells' centres); otherwise (or with ``room < 0``) they are
    evaluated on every pixel and the added error is 0.
    """
    y0, y1, x0, x1 = cutout
    fy0, fy1, fx0, fx1 = fitted
    if room >= 0:
        gy = np.arange(fy0, fy1, DENSE_STEP, dtype=np.float64)
        gx = np.arange(fx0, fx1, DENSE_STEP, dtype=np.float64)
        cy, cx = gy[:-1] + 0.5 * DENSE_STEP, gx[:-1] + 0.5 * DENSE_STEP
        nodes = sx(gy, gx), sy(gy, gx)
        centre_err = [
            0.25 * (v[:-1, :-1] + v[1:, :-1] + v[:-1, 1:] + v[1:, 1:]) - spline(cy, cx)
            for v, spline in zip(nodes, (sx, sy), strict=True)
        ]
        err = float(np.max(np.hypot(*centre_err)))
        if err <= room:
            # along x on the node rows (small, float64), then along y to every row
            crop = np.s_[y0 - fy0 : y1 - fy0, x0 - fx0 : x1 - fx0]
            x, y = (_upsample(_upsample(v.T).T.astype(np.float32))[crop] for v in nodes)
            return np.ascontiguousarray(x), np.ascontiguousarray(y), err
    ry = np.arange(y0, y1, dtype=np.float64)
    rx = np.arange(x0, x1, dtype=np.float64)
    return sx(ry, rx).astype(np.float32), sy(ry, rx).astype(np.float32), 0.0
