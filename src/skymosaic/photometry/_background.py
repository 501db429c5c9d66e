"""Sky background estimation and overlap-based background matching.

Order of operations (see `skymosaic.photometry.normalize_tiles`): background matching
runs **after** the global gain/offset solve, on the corrected tiles. The solve makes
tiles agree at each overlap's mean level, stars included; matching then removes what is
left in the *sky* (star-clipped) level, optionally with a tilt (``plane=True``,
Montage ``mBgModel`` style).

Choice: corrections are measured on overlaps only. For each overlapping pair the
sigma-clipped median (or clipped plane fit) of the pixel difference ``T_j - T_i`` is a
relative sky step; per-tile additive corrections ``delta`` are solved on the overlap
graph (``delta_i - delta_j = D_ij``, mean gauge per connected component) with the same
robust sparse solver as the offsets. Real sky differences between regions that do not
overlap are therefore never erased, and disconnected groups keep their relative level.
Finally one common constant per channel moves the median tile background to
``target`` (``"median"``: the current median, i.e. no global change).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import sep
from astropy.stats import sigma_clipped_stats
from scipy.ndimage import binary_dilation

from skymosaic._tiles import PlacedTile
from skymosaic.photometry._masks import valid_mask
from skymosaic.photometry._overlaps import Overlap, find_overlaps
from skymosaic.photometry._solve import _Edges, _solve_graph

__all__ = [
    "BackgroundEstimate",
    "BackgroundMatch",
    "apply_background_match",
    "estimate_background",
    "match_backgrounds",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackgroundEstimate:
    """Per-channel sky level and noise; ``map`` (C, H, W) only for ``method="mesh"``."""

    level: np.ndarray
    rms: np.ndarray
    map: np.ndarray | None = None


def _clipped(values: np.ndarray, sigma: float, maxiters: int) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:
        return float(values[0]), 0.0
    _, med, std = sigma_clipped_stats(values, sigma=sigma, maxiters=maxiters)
    return float(med), float(std)


def estimate_background(
    data: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    method: str = "clipped_median",
    sigma: float = 3.0,
    maxiters: int = 5,
    box_size: int = 64,
    filter_size: int = 3,
) -> BackgroundEstimate:
    """Robust sky level per channel of ``(C, H, W)`` data.

    Parameters
    ----------
    data : ndarray, shape (C, H, W)
        NaN pixels are ignored.
    mask : ndarray of bool, shape (H, W), optional
        True where pixels must be ignored (photutils convention: sources, bad pixels).
    method : {"clipped_median", "mesh"}
        ``clipped_median``: astropy sigma-clipped median and std of all usable pixels.
        ``mesh``: `sep.Background` on a ``box_size`` mesh, run twice with pixels above
        3 sigma (dilated by 2 px) masked as sources; ``level`` is sep's global
        background and ``map`` the smooth background image.
    sigma, maxiters : float, int
        Clipping parameters (``clipped_median``).
    box_size, filter_size : int
        Mesh and median-filter sizes (``mesh``).

    Returns
    -------
    BackgroundEstimate
        NaN level/rms for a channel without usable pixels.

    Raises
    ------
    ValueError
        On a bad shape, mask shape, or method.
    """
    if getattr(data, "ndim", None) != 3:
        raise ValueError(f"data must be shaped (C, H, W), got {getattr(data, 'shape', None)}")
    if mask is not None and np.shape(mask) != data.shape[1:]:
        raise ValueError(f"mask shape {np.shape(mask)} does not match image {data.shape[1:]}")
    if method not in ("clipped_median", "mesh"):
        raise ValueError(f"method must be 'clipped_median' or 'mesh', got {method!r}")
    arr = np.asarray(data, dtype=np.float64)
    bad = np.zeros(arr.shape[1:], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    n_ch = arr.shape[0]
    level, rms = np.full(n_ch, np.nan), np.full(n_ch, np.nan)
    if method == "clipped_median":
        for c in range(n_ch):
            vals = arr[c][~bad & np.isfinite(arr[c])]
            level[c], rms[c] = _clipped(vals, sigma, maxiters)
        return BackgroundEstimate(level, rms)
    maps = np.full(arr.shape, np.nan)
    for c in range(n_ch):
        img = arr[c]
        m = bad | ~np.isfinite(img)
        if np.all(m):
            continue
        filled = np.ascontiguousarray(np.where(m, 0.0, img))
        bw = min(box_size, img.shape[1])
        bh = min(box_size, img.shape[0])
        bkg = sep.Background(filled, mask=m, bw=bw, bh=bh, fw=filter_size, fh=filter_size)
        src = binary_dilation(filled - bkg.back() > 3.0 * bkg.rms(), iterations=2) & ~m
        bkg = sep.Background(filled, mask=m | src, bw=bw, bh=bh, fw=filter_size, fh=filter_size)
        level[c], rms[c] = bkg.globalback, bkg.globalrms
        maps[c] = bkg.back()
    return BackgroundEstimate(level, rms, maps)


@dataclass(frozen=True)
class BackgroundMatch:
    """Additive per-tile corrections; add `correction` to a tile (its sky plane is minus it).

    Attributes
    ----------
    offsets : ndarray, shape (N, C)
        Constant part, evaluated at the canvas reference point ``origin``.
    slopes : ndarray, shape (N, C, 2) or None
        ``(d/dx, d/dy)`` per ``scale`` pixels, only with ``plane=True``.
    levels : ndarray, shape (N, C)
        Measured sigma-clipped sky level of each tile before matching.
    target : ndarray, shape (C,)
        The median tile sky level after matching.
    origin : tuple of float
        ``(y, x)`` canvas reference point of the planes; ``scale`` their length unit.
    """

    offsets: np.ndarray
    slopes: np.ndarray | None
    levels: np.ndarray
    target: np.ndarray
    origin: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0

    def correction(self, k: int, tile: PlacedTile) -> np.ndarray:
        """Float32 array to add to tile ``k``: (C, h, w), or (C, 1, 1) without planes."""
        off = self.offsets[k][:, None, None]
        if self.slopes is None:
            return off.astype(np.float32)
        h, w = tile.shape
        xs = (np.arange(w) + tile.x0 - self.origin[1]) / self.scale
        ys = (np.arange(h) + tile.y0 - self.origin[0]) / self.scale
        sx, sy = self.slopes[k, :, 0], self.slopes[k, :, 1]
        return (
            off + sx[:, None, None] * xs[None, None, :] + sy[:, None, None] * ys[None, :, None]
        ).astype(np.float32)


def _pair_difference(tiles, ov: Overlap, masks, c: int, plane: bool, origin, scale, sigma):
    """Clipped median, or clipped plane fit, of ``T_j - T_i`` on the overlap.

    Returns ``(coef, weights, centre)`` or None: ``coef = (level, d/dX, d/dY)`` with the
    level at the overlap centre ``centre = (X, Y)`` (normalised canvas coordinates), so
    the three are nearly uncorrelated, and their inverse variances ``weights``.
    """
    ti, tj = tiles[ov.i], tiles[ov.j]
    y0, y1, x0, x1 = ov.bbox
    si = (slice(y0 - ti.y0, y1 - ti.y0), slice(x0 - ti.x0, x1 - ti.x0))
    sj = (slice(y0 - tj.y0, y1 - tj.y0), slice(x0 - tj.x0, x1 - tj.x0))
    both = masks[ov.i][si] & masks[ov.j][sj]
    diff = np.asarray(tj.data[c][sj], np.float64) - np.asarray(ti.data[c][si], np.float64)
    ys, xs = np.nonzero(both)
    d = diff[ys, xs]
    if d.size < 10:
        return None
    med, std = _clipped(d, sigma, 5)
    keep = np.abs(d - med) <= sigma * std if std > 0 else np.ones(d.size, bool)
    n = int(np.count_nonzero(keep))
    var = max(std, 1e-12) ** 2
    gx = (xs[keep] + x0 - origin[1]) / scale
    gy = (ys[keep] + y0 - origin[0]) / scale
    centre = (float(gx.mean()), float(gy.mean()))
    if not plane:
        return np.array([med, 0.0, 0.0]), np.array([n / var, 0.0, 0.0]), centre
    dx, dy = gx - centre[0], gy - centre[1]
    design = np.stack([np.ones(n), dx, dy], axis=1)
    coef = np.linalg.lstsq(design, d[keep], rcond=None)[0]
    weights = np.array([n, float(dx @ dx), float(dy @ dy)]) / var
    return coef, weights, centre


def match_backgrounds(
    tiles: list[PlacedTile],
    *,
    target: str | float = "median",
    plane: bool = False,
    overlaps: list[Overlap] | None = None,
    masks: list[np.ndarray] | None = None,
    sigma: float = 3.0,
    min_pixels: int = 100,
) -> BackgroundMatch:
    """Solve additive sky corrections that remove background steps on overlaps.

    Parameters
    ----------
    tiles : list of PlacedTile
        Usually already gain/offset corrected.
    target : "median" or float
        Final median tile sky level per channel (``"median"`` keeps the current one).
    plane : bool
        Also solve a tilt per tile (plane in canvas coordinates, Montage style).
    overlaps : list of Overlap, optional
        Reused when given, else found with `find_overlaps` (``min_pixels``).
    masks : list of ndarray of bool, optional
        Per-tile valid masks (default `valid_mask` with ``eps=None``: after offsets, sky
        values may be legitimately <= 0).
    sigma : float
        Clipping threshold for levels and differences.
    min_pixels : int
        Minimum common valid pixels of an overlap.

    Returns
    -------
    BackgroundMatch

    Raises
    ------
    ValueError
        On a bad ``target`` or ``sigma``.
    """
    if not (target == "median" or (isinstance(target, (int, float)) and np.isfinite(target))):
        raise ValueError(f"target must be 'median' or a finite number, got {target!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    n = len(tiles)
    n_ch = tiles[0].data.shape[0] if tiles else 0
    if masks is None:
        masks = [np.asarray(valid_mask(t.data, eps=None)) for t in tiles]
    if overlaps is None:
        overlaps = find_overlaps(tiles, min_pixels=min_pixels, masks=masks)
    boxes = np.array([t.bbox for t in tiles], dtype=np.float64).reshape(-1, 4)
    origin = (float(boxes[:, 0].min()), float(boxes[:, 2].min())) if n else (0.0, 0.0)
    scale = (
        float(max(boxes[:, 1].max() - origin[0], boxes[:, 3].max() - origin[1], 1.0)) if n else 1.0
    )
    levels = np.array(
        [estimate_background(t.data, mask=~m).level for t, m in zip(tiles, masks, strict=True)]
    )
    levels = levels.reshape(n, n_ch)
    coefs = np.zeros((n, n_ch, 3))
    for c in range(n_ch):
        fits = [
            _pair_difference(tiles, ov, masks, c, plane, origin, scale, sigma) for ov in overlaps
        ]
        ok = [k for k, f in enumerate(fits) if f is not None and f[1][0] > 0]
        coefs[:, c, :] = _solve_planes(n, [overlaps[k] for k in ok], [fits[k] for k in ok], plane)
    centre = (
        np.array(
            [[(b[2] + b[3]) / 2 - origin[1], (b[0] + b[1]) / 2 - origin[0]] for b in boxes]
        ).reshape(n, 2)
        / scale
    )
    at_centre = coefs[..., 0].copy()
    if plane:
        at_centre += coefs[..., 1] * centre[:, None, 0] + coefs[..., 2] * centre[:, None, 1]
    with np.errstate(all="ignore"):
        tgt = np.nanmedian(levels, axis=0) if target == "median" else np.full(n_ch, float(target))
        shift = tgt - np.nanmedian(levels + at_centre, axis=0) if n else tgt
    shift = np.where(np.isfinite(shift), shift, 0.0)
    offsets = coefs[..., 0] + shift[None, :]
    slopes = coefs[..., 1:3] if plane else None
    return BackgroundMatch(offsets, slopes, levels, tgt, origin, scale)


def _solve_planes(n: int, overlaps: list[Overlap], fits: list, plane: bool) -> np.ndarray:
    """Per-tile additive planes ``(p0, pX, pY)`` (origin-referred) from pair differences.

    Slopes first (``pX_i - pX_j = e1`` etc.), then the levels at each overlap centre with
    the slopes fixed: ``p0_i - p0_j = e0 - (pX_i - pX_j) X_c - (pY_i - pY_j) Y_c``.
    """
    out = np.zeros((n, 3))
    if not overlaps:
        return out
    ii = np.array([o.i for o in overlaps], dtype=np.int64)
    jj = np.array([o.j for o in overlaps], dtype=np.int64)
    coef = np.array([f[0] for f in fits])
    wts = np.array([f[1] for f in fits])
    cen = np.array([f[2] for f in fits])
    if plane:
        for p in (1, 2):
            out[:, p] = _solve_graph(
                n, _Edges(ii, jj, coef[:, p], wts[:, p]), ref=None, prior_weight=0.0, robust_iter=3
            )[0]
    rhs = coef[:, 0] - (out[ii, 1] - out[jj, 1]) * cen[:, 0] - (out[ii, 2] - out[jj, 2]) * cen[:, 1]
    out[:, 0] = _solve_graph(
        n, _Edges(ii, jj, rhs, wts[:, 0]), ref=None, prior_weight=0.0, robust_iter=3
    )[0]
    return out


def apply_background_match(tiles: list[PlacedTile], match: BackgroundMatch) -> list[PlacedTile]:
    """New tiles with ``match.correction`` added (NaN stays NaN; weights shared)."""
    out = []
    for k, t in enumerate(tiles):
        data = (t.data + match.correction(k, t)).astype(np.float32, copy=False)
        out.append(PlacedTile(data, t.y0, t.x0, t.weight, t.tile_id, dict(t.meta)))
    return out
