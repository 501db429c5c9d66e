"""The overlap graph: which tiles share valid pixels, found without an O(N^2) scan.

Candidate pairs come from a vectorised sort-and-sweep on bounding boxes: boxes are
sorted by their start along one axis (the one giving fewer candidates), each box is
paired with the following boxes whose start lies before its end (``searchsorted``),
and the candidates are filtered on the other axis. Cost is O(N log N + K) for K
candidates, processed in chunks so memory stays bounded. Each surviving pair is then
measured on the pixels valid in *both* tiles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from skymosaic._tiles import PlacedTile
from skymosaic.photometry._masks import valid_mask

__all__ = ["Overlap", "bbox_candidate_pairs", "find_overlaps"]

logger = logging.getLogger(__name__)

# Candidate pairs materialised at once: 4 Mi pairs * (2 int64 + a few temporaries) keeps
# the sweep under ~200 MB even for pathological layouts (all boxes in one column).
_CHUNK_PAIRS = 4 * 1024 * 1024


@dataclass(frozen=True)
class Overlap:
    """Tiles ``i < j`` overlap on canvas box ``bbox = (y0, y1, x0, x1)`` (end-exclusive)
    with ``n_valid`` pixels valid in both."""

    i: int
    j: int
    bbox: tuple[int, int, int, int]
    n_valid: int


def _sweep_counts(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(start, kind="stable")
    s_sorted = start[order]
    stop = np.searchsorted(s_sorted, end[order], side="left")
    counts = np.maximum(stop - np.arange(start.size) - 1, 0)
    return order, counts


def bbox_candidate_pairs(boxes: np.ndarray) -> np.ndarray:
    """All pairs of boxes with a positive-area intersection.

    Parameters
    ----------
    boxes : ndarray, shape (N, 4)
        ``(y0, y1, x0, x1)`` per box, end-exclusive.

    Returns
    -------
    ndarray of int64, shape (K, 2)
        Pairs ``(i, j)`` with ``i < j``, sorted lexicographically.

    Raises
    ------
    ValueError
        If ``boxes`` is not (N, 4) or a box has ``y1 < y0`` or ``x1 < x0``.
    """
    b = np.asarray(boxes, dtype=np.int64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be shaped (N, 4), got {b.shape}")
    if np.any(b[:, 1] < b[:, 0]) or np.any(b[:, 3] < b[:, 2]):
        raise ValueError("boxes must satisfy y1 >= y0 and x1 >= x0")
    if b.shape[0] < 2:
        return np.empty((0, 2), dtype=np.int64)
    # Sweep along the axis that yields fewer candidates.
    sweeps = [(_sweep_counts(b[:, 2], b[:, 3]), 0), (_sweep_counts(b[:, 0], b[:, 1]), 2)]
    (order, counts), other = min(sweeps, key=lambda s: int(s[0][1].sum()))
    lo, hi = b[:, other], b[:, other + 1]
    found: list[np.ndarray] = []
    k = 0
    n = b.shape[0]
    csum = np.cumsum(counts)
    while k < n:
        base = csum[k - 1] if k else 0
        k_end = max(int(np.searchsorted(csum, base + _CHUNK_PAIRS, side="right")), k + 1)
        c = counts[k:k_end]
        total = int(c.sum())
        if total:
            first = np.repeat(np.arange(k, k_end), c)
            step = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
            a, m = order[first], order[first + 1 + step]
            hit = np.maximum(lo[a], lo[m]) < np.minimum(hi[a], hi[m])
            a, m = a[hit], m[hit]
            found.append(np.stack([np.minimum(a, m), np.maximum(a, m)], axis=1))
        k = k_end
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    # Empty boxes (zero width along the sweep axis) never intersect; drop zero-area ones.
    area_ok = (b[pairs[:, 0], 1] > b[pairs[:, 0], 0]) & (b[pairs[:, 1], 1] > b[pairs[:, 1], 0])
    area_ok &= (b[pairs[:, 0], 3] > b[pairs[:, 0], 2]) & (b[pairs[:, 1], 3] > b[pairs[:, 1], 2])
    pairs = pairs[area_ok]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def find_overlaps(
    tiles: list[PlacedTile],
    *,
    min_pixels: int = 100,
    masks: list[np.ndarray] | None = None,
    eps: float | None = 1e-6,
) -> list[Overlap]:
    """Overlapping tile pairs with at least ``min_pixels`` pixels valid in both.

    Parameters
    ----------
    tiles : list of PlacedTile
    min_pixels : int
        Minimum number of pixels valid in both tiles for the pair to count.
    masks : list of ndarray of bool, optional
        Per-tile valid masks; computed with `valid_mask` (``eps``) when omitted.
    eps : float or None
        Passed to `valid_mask` when masks are computed here.

    Returns
    -------
    list of Overlap
        Sorted by ``(i, j)``.

    Raises
    ------
    ValueError
        If ``min_pixels < 1`` or ``masks`` does not match ``tiles``.
    """
    if int(min_pixels) < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels!r}")
    if masks is not None and len(masks) != len(tiles):
        raise ValueError(f"got {len(masks)} masks for {len(tiles)} tiles")
    if masks is None:
        masks = [np.asarray(valid_mask(t.data, eps=eps)) for t in tiles]
    boxes = np.array([t.bbox for t in tiles], dtype=np.int64).reshape(-1, 4)
    pairs = bbox_candidate_pairs(boxes)
    out: list[Overlap] = []
    for i, j in pairs.tolist():
        ti, tj = tiles[i], tiles[j]
        y0, x0 = max(ti.y0, tj.y0), max(ti.x0, tj.x0)
        y1, x1 = min(ti.bbox[1], tj.bbox[1]), min(ti.bbox[3], tj.bbox[3])
        mi = masks[i][y0 - ti.y0 : y1 - ti.y0, x0 - ti.x0 : x1 - ti.x0]
        mj = masks[j][y0 - tj.y0 : y1 - tj.y0, x0 - tj.x0 : x1 - tj.x0]
        n_valid = int(np.count_nonzero(mi & mj))
        if n_valid >= min_pixels:
            out.append(Overlap(i, j, (y0, y1, x0, x1), n_valid))
    logger.debug("%d tiles: %d bbox candidates, %d overlaps", len(tiles), len(pairs), len(out))
    return out
