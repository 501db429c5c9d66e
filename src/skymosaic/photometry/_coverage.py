"""Two-pass coverage renormalisation (off by default in the pipeline).

After a first coadd, the coverage map (summed weight per canvas pixel) has steps where
tiles begin and end. If the tiles' weights are not proportional to their true
signal-to-noise (e.g. exposure-based weights on tiles of different transparency), these
steps print as faint seams. The second pass rescales each tile by how much its footprint
sits on locally lower or higher coverage than its smooth surroundings::

    ratio(p) = G_sigma * coverage (p) / coverage(p)            (normalised, NaN-aware blur)
    gain_k   = clip(mean_{p in valid footprint of k} ratio(p), clip)

Uniform coverage gives exactly 1 for every tile; the clip bounds the correction.
Tiles are then re-coadded with ``gain_k`` applied. This is a heuristic seam suppressor,
not a photometric calibration, which is why it is opt-in.

The ratio map is computed by `coverage_ratio`, written against the array API: with a
device `~skymosaic.backend.Backend` the coverage goes to the device once, is blurred
there (the array-API twin of SciPy's ``gaussian_filter``) and the ratio comes back to the
host once; the per-tile means run on the host, where the placed tiles are.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from skymosaic._tiles import PlacedTile
from skymosaic.backend import Backend, gaussian_filter, to_host
from skymosaic.photometry._masks import valid_mask

__all__ = ["coverage_gains", "coverage_ratio"]

logger = logging.getLogger(__name__)


def coverage_ratio(coverage: Any, sigma_px: float) -> Any:
    """``G_sigma * coverage / coverage`` (float64, NaN where not covered), on any backend.

    The blur is a normalised convolution -- the blur of the covered region only -- so the
    edges of the covered area are not darkened.
    """
    xp = array_namespace(coverage)
    cov = xp.astype(coverage, xp.float64)
    covered = xp.isfinite(cov) & (cov > 0)
    filled = xp.where(covered, cov, 0.0)
    norm = gaussian_filter(xp.astype(covered, xp.float64), sigma_px)
    blurred = gaussian_filter(filled, sigma_px)
    good = covered & (norm > 0)
    ratio = blurred / xp.where(good, norm, 1.0) / xp.where(good, filled, 1.0)
    return xp.where(good, ratio, xp.nan)


def coverage_gains(
    coverage: np.ndarray,
    tiles: list[PlacedTile],
    *,
    sigma_px: float = 32.0,
    clip: tuple[float, float] = (0.8, 1.25),
    eps: float | None = None,
    backend: Backend | None = None,
) -> np.ndarray:
    """Per-tile scalar gains from blurred coverage over coverage.

    Parameters
    ----------
    coverage : ndarray, shape (H, W)
        Summed weight of the first-pass coadd; 0 or NaN = not covered.
    tiles : list of PlacedTile
        Tiles placed on the same canvas.
    sigma_px : float
        Gaussian blur sigma in canvas pixels.
    clip : (float, float)
        Allowed gain range.
    eps : float or None
        `valid_mask` epsilon for the tile footprints (default finite only).
    backend : Backend, optional
        Where the ratio map is computed (default: the host). A device fault falls back to
        the host (see `Backend.run`).

    Returns
    -------
    ndarray, shape (N,)
        1.0 for tiles with no covered valid pixel on the canvas.

    Raises
    ------
    ValueError
        On a non 2-D coverage, non-positive ``sigma_px`` or a bad ``clip``.
    """
    cov = to_host(coverage)
    if cov.ndim != 2:
        raise ValueError(f"coverage must be 2-D (H, W), got shape {cov.shape}")
    if not sigma_px > 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px!r}")
    lo, hi = clip
    if not 0 < lo <= 1 <= hi:
        raise ValueError(f"clip must satisfy 0 < low <= 1 <= high, got {clip!r}")
    cov = np.asarray(cov, dtype=np.float64)
    if backend is None:
        ratio = coverage_ratio(cov, sigma_px)
    else:
        ratio = backend.run(
            "coverage_renorm",
            lambda _rows: to_host(coverage_ratio(backend.to_device(cov), sigma_px)),
            lambda: coverage_ratio(cov, sigma_px),
        )
    gains = np.ones(len(tiles))
    for k, t in enumerate(tiles):
        sl = t.canvas_slices(cov.shape)
        if sl is None:
            continue
        (cy, cx), (ty, tx) = sl
        foot = np.asarray(valid_mask(t.data, eps=eps))[ty, tx]
        vals = ratio[cy, cx][foot]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            gains[k] = float(np.clip(vals.mean(), lo, hi))
    return gains
