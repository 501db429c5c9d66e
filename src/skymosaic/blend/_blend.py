"""Seamless blending of placed tiles: multi-band (Burt & Adelson) or Gaussian feathering.

Algorithm (``method="pyramid"``), per connected cluster of tiles whose boxes overlap:

1. Every tile gets a blend mask ``m_i = clip(d_i / ramp_px, 0, 1)``, ``d_i`` the Euclidean
   distance to the nearest invalid pixel of the tile (its NaN pixels and its box edge; the
   canvas edge is not an edge). ``m_i`` is 0 exactly where the tile has no data.
2. A common fill image ``F`` is built: the feathered composite ``sum m_i T_i / sum m_i``,
   its holes filled by `masked_gaussian_pyramid` (push-pull). Each tile is extended with
   ``F`` outside its valid pixels, so tiles that agree on their overlaps have identical
   band-pass levels there and blend to exactly that image.
3. Band k of tile i at full resolution is ``B_ik = E^k(L_ik)`` (``L_ik`` its Laplacian level,
   ``E`` the exact-size expand). The band weight is the Gaussian-reduced mask expanded
   back, times the mask itself, normalised per pixel over the tiles:
   ``a_ik = m_i E^k(G_k(m_i)) / sum_j m_j E^k(G_k(m_j))``. So at every level the weights
   of all N tiles sum to 1 wherever any tile is valid (never pairwise averages), are 0
   where the tile has no data, and vary continuously. Output: ``sum_k sum_i a_ik B_ik``.
4. Pixels covered by exactly one tile are copied from it bit for bit; pixels covered by no
   tile are NaN.

All tiles of a cluster use pyramids whose sampling grids are aligned on the canvas
(window origins are multiples of ``2 ** (levels - 1)``) and whose windows extend
``2 ** (levels + 1)`` px (the reach of the pyramid) past the tile, so band values do not
depend on where a window starts. Memory per cluster is about ``(2 C + 2)`` region-sized
float32 arrays plus each tile's pyramids (``4/3 (C + 1)`` window sizes): a cluster works
on the sub-canvas of its tiles' union box, not on the full canvas. A fully connected grid
is one cluster, so its sub-canvas is the whole mosaic (see the module docs).

``method="feather"`` (also used automatically when the overlaps are narrower than a
2-level pyramid needs) uses ``a_i = m_i G_sigma(m_i) / sum_j m_j G_sigma(m_j)`` at full
resolution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as device_of

from skymosaic._tiles import PlacedTile
from skymosaic.backend import Backend, to_host
from skymosaic.blend._pyramid import (
    expand_to_base,
    gaussian_pyramid,
    laplacian_pyramid,
    levels_for_overlap,
    masked_gaussian_pyramid,
    pyramid_shapes,
)
from skymosaic.photometry._overlaps import bbox_candidate_pairs

__all__ = ["BLEND_METHODS", "BlendResult", "band_weights", "blend_tiles", "distance_ramp",
           "feather_weights"]

logger = logging.getLogger(__name__)

#: Methods of `blend_tiles`: multi-resolution (Burt & Adelson) blending or Gaussian feathering.
BLEND_METHODS = ("pyramid", "feather")
#: Added to expanded weights so a valid pixel never gets an all-zero denominator.
_TINY = np.float32(1e-12)
#: Pyramid depth used to fill the holes of the common fill image.
_FILL_LEVELS_MAX = 12


@dataclass(frozen=True)
class BlendResult:
    """Output of `blend_tiles`.

    Attributes
    ----------
    data : ndarray, (C, H, W) float32
        Blended canvas; NaN where no tile has data.
    weight : ndarray, (H, W) float32
        Sum of the tiles' weights (1 per valid pixel when a tile has no weight), i.e. the
        coverage; 0 where no tile has data.
    n_pyramid, n_feather : int
        Number of overlapping tile pairs blended with the pyramid / by feathering.
    levels_used : int
        Largest number of pyramid levels used by any cluster (0 if none used a pyramid).
    n_clusters : int
        Number of connected clusters of overlapping tiles (single tiles included).
    """

    data: np.ndarray
    weight: np.ndarray
    n_pyramid: int
    n_feather: int
    levels_used: int
    n_clusters: int


@dataclass
class _Placed:
    """The in-canvas part of one tile (internal)."""

    index: int
    bbox: tuple[int, int, int, int]  # clamped canvas box, end-exclusive
    data: np.ndarray  # (C, h, w) float32 view
    valid: np.ndarray  # (h, w) bool


# ------------------------------------------------------------------------ weight maps
def distance_ramp(valid: np.ndarray, *, ramp_px: float) -> np.ndarray:
    """Blend mask rising from 0 at the invalid pixels to 1 at ``ramp_px`` px inside.

    Parameters
    ----------
    valid : ndarray of bool, (H, W)
        Where the tile has data. The array border is *not* treated as an edge (a tile
        clipped by the canvas keeps full weight there).
    ramp_px : float
        Ramp length in pixels (> 0).

    Returns
    -------
    ndarray, (H, W) float32
        ``clip(d / ramp_px, 0, 1)``, ``d`` the Euclidean distance to the nearest invalid
        pixel (>= 1 on valid pixels, so every valid pixel has a positive mask).
    """
    v = np.asarray(valid)
    if v.ndim != 2:
        raise ValueError(f"valid must be a 2-D mask, got shape {v.shape}")
    if not np.isfinite(ramp_px) or ramp_px <= 0:
        raise ValueError(f"ramp_px must be finite and > 0, got {ramp_px!r}")
    if not v.any():
        return np.zeros(v.shape, np.float32)
    if v.all():
        return np.ones(v.shape, np.float32)
    dist = cv2.distanceTransform(v.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(dist / np.float32(ramp_px), 0, 1).astype(np.float32)


def _raw_band_weights(ramp: np.ndarray, levels: int) -> list[np.ndarray]:
    """Unnormalised full-resolution band weights ``m * (E^k(G_k(m)) + tiny)``, k = 0..levels-1."""
    shapes = pyramid_shapes(ramp.shape, levels)
    gauss = gaussian_pyramid(ramp, levels)
    return [ramp * (expand_to_base(g, shapes) + _TINY) for g in gauss]


def _normalise(raw: Sequence[np.ndarray]) -> list[np.ndarray]:
    total = np.sum(raw, axis=0, dtype=np.float32)
    ok = total > 0
    return [np.divide(r, total, out=np.zeros_like(r), where=ok) for r in raw]


def _check_masks(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    arrs = [np.asarray(m, dtype=np.float32) for m in masks]
    if not arrs:
        raise ValueError("masks is empty")
    shape = arrs[0].shape
    for i, a in enumerate(arrs):
        if a.ndim != 2 or a.shape != shape:
            raise ValueError(f"masks[{i}] has shape {a.shape}, expected 2-D {shape}")
        if not np.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"masks[{i}] must be finite and >= 0")
    return arrs


def band_weights(masks: Sequence[np.ndarray], levels: int) -> list[list[np.ndarray]]:
    """Per-level blend weights of N tiles on a common canvas (as used by `blend_tiles`).

    Parameters
    ----------
    masks : sequence of ndarray, (H, W)
        Blend masks (e.g. `distance_ramp`), 0 where a tile has no data.
    levels : int
        Number of pyramid levels.

    Returns
    -------
    list of list of ndarray
        ``w[k][i]``: float32 (H, W) weight of tile i in band k. For every k,
        ``sum_i w[k][i] == 1`` wherever any mask is > 0, and all are 0 elsewhere.
    """
    arrs = _check_masks(masks)
    raw = [_raw_band_weights(m, levels) for m in arrs]
    return [_normalise([r[k] for r in raw]) for k in range(len(raw[0]))]


def _raw_feather_weight(ramp: np.ndarray, sigma: float) -> np.ndarray:
    smooth = cv2.GaussianBlur(ramp, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return ramp * (smooth + _TINY)


def feather_weights(masks: Sequence[np.ndarray], *, sigma: float) -> list[np.ndarray]:
    """Gaussian feathering weights: ``m_i G_sigma(m_i)`` normalised over the tiles.

    Returns float32 (H, W) weights summing to 1 wherever any mask is > 0, 0 elsewhere.
    """
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")
    return _normalise([_raw_feather_weight(m, sigma) for m in _check_masks(masks)])


# --------------------------------------------------------------------------- geometry
def _prepare(tiles: Sequence[PlacedTile], canvas_shape: tuple[int, int]) -> list[_Placed]:
    placed = []
    for i, tile in enumerate(tiles):
        sl = tile.canvas_slices(canvas_shape)
        if sl is None:
            logger.debug("tile %r lies outside the canvas; skipped", tile.tile_id)
            continue
        (cy, cx), (ty, tx) = sl
        data = tile.data[:, ty, tx].astype(np.float32, copy=False)
        valid = np.asarray(np.isfinite(data).all(axis=0))
        if tile.weight is not None:
            w = tile.weight[ty, tx]
            valid &= np.isfinite(w) & (w > 0)
        if not valid.any():
            logger.debug("tile %r has no valid pixel on the canvas; skipped", tile.tile_id)
            continue
        placed.append(_Placed(i, (cy.start, cy.stop, cx.start, cx.stop), data, valid))
    return placed


def _intersect(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    y0, y1 = max(a[0], b[0]), min(a[1], b[1])
    x0, x1 = max(a[2], b[2]), min(a[3], b[3])
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def _clusters(placed: Sequence[_Placed]) -> list[list[int]]:
    """Connected components (indices into ``placed``) of intersecting boxes."""
    parent = list(range(len(placed)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(placed)), key=lambda i: placed[i].bbox[0])
    for n, i in enumerate(order):  # sweep on rows: only boxes starting before y1 can touch
        for j in order[n + 1 :]:
            if placed[j].bbox[0] >= placed[i].bbox[1]:
                break
            if _intersect(placed[i].bbox, placed[j].bbox) is not None:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(placed)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _local(p: _Placed, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    """Slices of tile ``p``'s arrays covering canvas ``box`` (inside ``p.bbox``)."""
    return slice(box[0] - p.bbox[0], box[1] - p.bbox[0]), slice(
        box[2] - p.bbox[2], box[3] - p.bbox[2]
    )


def _overlap_width(a: _Placed, b: _Placed) -> float | None:
    """Width (px) of the valid overlap of two tiles, or None when they share no pixel.

    The width is the inscribed diameter (twice the largest distance to the overlap's
    boundary), capped by the short side of the overlap's bounding box.
    """
    box = _intersect(a.bbox, b.bbox)
    if box is None:
        return None
    both = a.valid[_local(a, box)] & b.valid[_local(b, box)]
    if not both.any():
        return None
    rows, cols = np.nonzero(both)
    short = min(int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1)
    padded = cv2.copyMakeBorder(both.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float(min(2.0 * float(dist.max()), short))


def _window(
    bbox: tuple[int, int, int, int], margin: int, align: int, canvas_shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``bbox`` grown by ``margin``, origin aligned down to ``align``, clamped to the canvas."""
    y0 = max(0, ((bbox[0] - margin) // align) * align)
    x0 = max(0, ((bbox[2] - margin) // align) * align)
    return y0, min(canvas_shape[0], bbox[1] + margin), x0, min(canvas_shape[1], bbox[3] + margin)


def _on_window(
    p: _Placed, win: tuple[int, int, int, int], n_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tile data (NaN outside the tile) and validity on a canvas window containing it."""
    h, w = win[1] - win[0], win[3] - win[2]
    data = np.full((n_channels, h, w), np.nan, np.float32)
    valid = np.zeros((h, w), bool)
    ys = slice(p.bbox[0] - win[0], p.bbox[1] - win[0])
    xs = slice(p.bbox[2] - win[2], p.bbox[3] - win[2])
    data[:, ys, xs] = p.data
    valid[ys, xs] = p.valid
    return data, valid


def _rel(win: tuple[int, int, int, int], region: tuple[int, int, int, int]) -> tuple[slice, slice]:
    return slice(win[0] - region[0], win[1] - region[0]), slice(
        win[2] - region[2], win[3] - region[2]
    )


def _union(boxes: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return (
        min(b[0] for b in boxes),
        max(b[1] for b in boxes),
        min(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


# ---------------------------------------------------------------------- cluster blends
def _fill_image(fnum: np.ndarray, fden: np.ndarray) -> np.ndarray:
    """Feathered composite ``fnum / fden`` with its holes filled by push-pull (finite)."""
    covered = fden > 0
    comp = np.full_like(fnum, np.nan)
    np.divide(fnum, fden, out=comp, where=covered)
    if covered.all():
        return comp
    depth = min(_FILL_LEVELS_MAX, 1 + int(math.log2(max(1, min(fden.shape)))))
    filled, _ = masked_gaussian_pyramid(comp, covered, depth)
    return filled[0]


def _blend_pyramid(
    members: Sequence[_Placed],
    region: tuple[int, int, int, int],
    wins: Sequence[tuple[int, int, int, int]],
    levels: int,
    ramp_px: float,
    *,
    backend: Backend | None = None,
) -> np.ndarray:
    """Multi-band blend of one cluster on ``region``; returns the (C, h, w) blended region.

    The distance ramps and the hole fill are computed on the host (OpenCV distance
    transform); the band pyramids -- the bulk of the work -- on ``backend``'s device when
    one is given (step ``"blend"``).
    """
    n_channels = members[0].data.shape[0]
    shape = (region[1] - region[0], region[3] - region[2])
    fnum = np.zeros((n_channels, *shape), np.float32)
    fden = np.zeros(shape, np.float32)
    ramps, datas = [], []
    for p, win in zip(members, wins, strict=True):
        data, valid = _on_window(p, win, n_channels)
        ramp = distance_ramp(valid, ramp_px=ramp_px)
        rs = _rel(win, region)
        fnum[:, rs[0], rs[1]] += np.where(valid, data, np.float32(0)) * ramp
        fden[rs] += ramp
        ramps.append(ramp)
        datas.append((data, valid))
    fill = _fill_image(fnum, fden)
    del fnum, fden
    inputs = []
    for (data, valid), ramp, win in zip(datas, ramps, wins, strict=True):
        ys, xs = _rel(win, region)
        extended = fill[:, ys, xs].copy()
        np.copyto(extended, data, where=valid)
        inputs.append((extended, ramp, win))
    del fill, datas
    if backend is None:
        return _band_blend(inputs, region, levels)

    def on_device(_rows: int) -> np.ndarray:
        # host -> device once per member (image and ramp), the blended region back once
        dev = [(backend.to_device(e), backend.to_device(r), w) for e, r, w in inputs]
        return to_host(_band_blend(dev, region, levels))

    return backend.run("blend", on_device, lambda: _band_blend(inputs, region, levels))


def _band_blend(
    inputs: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]],
    region: tuple[int, int, int, int],
    levels: int,
) -> np.ndarray:
    """Band-by-band weighted sum of the members' Laplacian pyramids on ``region``.

    ``inputs`` holds each member's hole-filled image (C, h, w), its distance ramp (h, w)
    and its window; all arrays of one namespace (host or device), the result in it too.
    """
    xp = array_namespace(inputs[0][0])
    dev = device_of(inputs[0][0])
    n_channels = inputs[0][0].shape[0]
    shape = (region[1] - region[0], region[3] - region[2])
    pyramids = [(laplacian_pyramid(e, levels), gaussian_pyramid(r, levels)) for e, r, _ in inputs]
    acc = xp.zeros((n_channels, *shape), dtype=xp.float32, device=dev)
    for k in range(levels):
        num = xp.zeros_like(acc)
        den = xp.zeros(shape, dtype=xp.float32, device=dev)
        for (lap, gm), (_, ramp, win) in zip(pyramids, inputs, strict=True):
            shapes = pyramid_shapes(ramp.shape, levels)
            raw = ramp * (expand_to_base(gm[k], shapes) + float(_TINY))
            rs = _rel(win, region)
            num[:, rs[0], rs[1]] += raw * expand_to_base(lap[k], shapes)
            den[rs] += raw
        has = den > 0
        acc += xp.where(has, num / xp.where(has, den, 1.0), 0.0)
    return acc


def _blend_feather(
    members: Sequence[_Placed],
    region: tuple[int, int, int, int],
    wins: Sequence[tuple[int, int, int, int]],
    sigma: float,
    ramp_px: float,
) -> np.ndarray:
    """Gaussian-feathered blend of one cluster on ``region``."""
    n_channels = members[0].data.shape[0]
    shape = (region[1] - region[0], region[3] - region[2])
    num = np.zeros((n_channels, *shape), np.float32)
    den = np.zeros(shape, np.float32)
    for p, win in zip(members, wins, strict=True):
        data, valid = _on_window(p, win, n_channels)
        raw = _raw_feather_weight(distance_ramp(valid, ramp_px=ramp_px), sigma)
        rs = _rel(win, region)
        num[:, rs[0], rs[1]] += np.where(valid, data, np.float32(0)) * raw
        den[rs] += raw
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


@dataclass(frozen=True)
class _Options:
    levels: int | None
    method: str
    feather_sigma: float
    ramp_px: float | None
    min_size: int
    max_levels: int
    backend: Backend | None = None


def _blend_cluster(
    members: Sequence[_Placed],
    canvas_shape: tuple[int, int],
    out: np.ndarray,
    opts: _Options,
) -> tuple[int, int, int]:
    """Blend one cluster into ``out`` (overlap pixels only). Returns (n_pairs, levels, mode)."""
    # only the pairs whose boxes intersect (a sort-and-sweep, not all N(N-1)/2 pairs)
    pairs = bbox_candidate_pairs(np.array([p.bbox for p in members], dtype=np.int64))
    widths = [w for i, j in pairs if (w := _overlap_width(members[i], members[j])) is not None]
    if not widths:
        return 0, 0, 0
    if opts.method == "feather":
        levels = 1
    elif opts.levels is not None:
        levels = opts.levels
    else:
        levels = levels_for_overlap(
            float(np.median(widths)), min_size=opts.min_size, max_levels=opts.max_levels
        )
    ramp_px = opts.ramp_px if opts.ramp_px is not None else max(1.0, *widths)
    if levels >= 2:
        margin, align = 2 ** (levels + 1), 2 ** (levels - 1)
    else:
        margin, align = math.ceil(3 * opts.feather_sigma) + 1, 1
    wins = [_window(p.bbox, margin, align, canvas_shape) for p in members]
    region = _union(wins)
    if levels >= 2:
        blended = _blend_pyramid(members, region, wins, levels, ramp_px, backend=opts.backend)
    else:
        blended = _blend_feather(members, region, wins, opts.feather_sigma, ramp_px)
    count = np.zeros(blended.shape[1:], np.int32)
    for p in members:
        count[_rel(p.bbox, region)] += p.valid
    overlap = count >= 2
    view = out[:, region[0] : region[1], region[2] : region[3]]
    np.copyto(view, blended, where=overlap)
    logger.debug(
        "cluster of %d tiles: %d overlaps (widths %.0f-%.0f px), %s, %d level(s), region %s",
        len(members),
        len(widths),
        min(widths),
        max(widths),
        "pyramid" if levels >= 2 else "feather",
        levels,
        region,
    )
    return len(widths), levels, 2 if levels >= 2 else 1


# ----------------------------------------------------------------------------- public
def _validate(
    tiles: Sequence[PlacedTile],
    canvas_shape: tuple[int, int],
    out: np.ndarray | None,
    opts: _Options,
) -> tuple[tuple[int, int], int]:
    if not isinstance(tiles, Sequence) or len(tiles) == 0:
        raise ValueError(f"tiles must be a non-empty list of PlacedTile, got {tiles!r}")
    for i, t in enumerate(tiles):
        if not isinstance(t, PlacedTile):
            raise TypeError(f"tiles[{i}] must be a PlacedTile, got {type(t).__name__}")
    n_channels = {t.data.shape[0] for t in tiles}
    if len(n_channels) != 1:
        raise ValueError(
            f"tiles must all have the same number of channels, got {sorted(n_channels)}"
        )
    try:
        shape = tuple(int(s) for s in canvas_shape)
    except (TypeError, ValueError) as err:
        raise ValueError(f"canvas_shape must be (H, W) integers, got {canvas_shape!r}") from err
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"canvas_shape must be (H, W) with H, W >= 1, got {canvas_shape!r}")
    if opts.method not in BLEND_METHODS:
        raise ValueError(f"method must be one of {BLEND_METHODS}, got {opts.method!r}")
    if opts.levels is not None and (
        isinstance(opts.levels, bool)
        or not isinstance(opts.levels, (int, np.integer))
        or opts.levels < 1
    ):
        raise ValueError(f"levels must be None or an integer >= 1, got {opts.levels!r}")
    if not np.isfinite(opts.feather_sigma) or opts.feather_sigma <= 0:
        raise ValueError(f"feather_sigma must be finite and > 0, got {opts.feather_sigma!r}")
    if opts.ramp_px is not None and (not np.isfinite(opts.ramp_px) or opts.ramp_px <= 0):
        raise ValueError(f"ramp_px must be None or finite and > 0, got {opts.ramp_px!r}")
    (c,) = n_channels
    if out is not None and (
        not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (c, *shape)
    ):
        got = (getattr(out, "dtype", type(out).__name__), getattr(out, "shape", None))
        raise ValueError(f"out must be a float32 array of shape {(c, *shape)}, got {got}")
    return shape, c  # type: ignore[return-value]


def blend_tiles(
    tiles: Sequence[PlacedTile],
    canvas_shape: tuple[int, int],
    *,
    levels: int | None = None,
    method: str = "pyramid",
    feather_sigma: float = 2.0,
    ramp_px: float | None = None,
    min_size: int = 4,
    max_levels: int = 8,
    out: np.ndarray | None = None,
    backend: Backend | None = None,
) -> BlendResult:
    """Blend placed tiles into one seamless canvas.

    Only overlaps change: a pixel covered by one tile gets that tile's value exactly and a
    pixel covered by none is NaN. In overlaps, ``method="pyramid"`` blends each band of a
    Laplacian pyramid with weights that widen with the band's scale (see the module
    docstring); clusters whose overlaps are too narrow for 2 levels are feathered.

    Parameters
    ----------
    tiles : list of PlacedTile
        Tiles with the same number of channels. Tiles may extend past the canvas (they are
        clamped) or lie outside it (ignored). A pixel is valid when finite in every channel
        and, if the tile has a weight, its weight is finite and > 0.
    canvas_shape : tuple of int
        ``(H, W)`` of the output.
    levels : int, optional
        Pyramid levels for every cluster. ``None`` (default) picks
        ``levels_for_overlap(median overlap width, min_size=min_size, max_levels=max_levels)``
        per cluster. ``1`` means feathering.
    method : {"pyramid", "feather"}
        Blending method.
    feather_sigma : float
        Gaussian sigma (px) smoothing the feathering masks.
    ramp_px : float, optional
        Length of the masks' distance ramp; default: the widest overlap of the cluster, so
        every overlap is crossed by a smooth ramp.
    min_size, max_levels : int
        Passed to `levels_for_overlap` when ``levels`` is None.
    out : ndarray, optional
        float32 ``(C, H, W)`` array receiving the result (it is overwritten).
    backend : Backend, optional
        Where the band pyramids are computed (default: the host); see `skymosaic.backend`.

    Returns
    -------
    BlendResult
        Blended data, coverage weight and counts of pyramid/feathered overlaps.

    Raises
    ------
    ValueError, TypeError
        On invalid arguments (checked before any work).

    Examples
    --------
    >>> import numpy as np
    >>> from skymosaic._tiles import PlacedTile
    >>> a = PlacedTile(np.zeros((1, 8, 8), np.float32), 0, 0)
    >>> b = PlacedTile(np.ones((1, 8, 8), np.float32), 0, 12)
    >>> r = blend_tiles([a, b], (8, 20))
    >>> float(r.data[0, 0, 0]), float(r.data[0, 0, 13]), bool(np.isnan(r.data[0, 0, 10]))
    (0.0, 1.0, True)
    """
    opts = _Options(levels, method, float(feather_sigma), ramp_px, min_size, max_levels, backend)
    shape, n_channels = _validate(tiles, canvas_shape, out, opts)
    if levels is None:
        levels_for_overlap(0, min_size=min_size, max_levels=max_levels)  # validates both
    data = out if out is not None else np.empty((n_channels, *shape), np.float32)
    data.fill(np.nan)
    weight = np.zeros(shape, np.float32)
    placed = _prepare(tiles, shape)
    for p in placed:
        cs = (slice(p.bbox[0], p.bbox[1]), slice(p.bbox[2], p.bbox[3]))
        np.copyto(data[:, cs[0], cs[1]], p.data, where=p.valid)
        w = tiles[p.index].weight
        tile_w = np.float32(1) if w is None else w[_tile_slices(tiles[p.index], p)]
        weight[cs] += np.where(p.valid, tile_w, np.float32(0))
    n_pyr = n_fea = levels_used = 0
    clusters = _clusters(placed)
    for members in clusters:
        if len(members) < 2:
            continue
        n_pairs, lv, mode = _blend_cluster([placed[i] for i in members], shape, data, opts)
        if mode == 2:
            n_pyr += n_pairs
            levels_used = max(levels_used, lv)
        elif mode == 1:
            n_fea += n_pairs
    logger.info(
        "blended %d tiles in %d cluster(s): %d pyramid overlap(s), %d feathered, levels %d",
        len(placed),
        len(clusters),
        n_pyr,
        n_fea,
        levels_used,
    )
    return BlendResult(data, weight, n_pyr, n_fea, levels_used, len(clusters))


def _tile_slices(tile: PlacedTile, p: _Placed) -> tuple[slice, slice]:
    """Slices of the tile's own arrays for its clamped canvas box."""
    return (
        slice(p.bbox[0] - tile.y0, p.bbox[1] - tile.y0),
        slice(p.bbox[2] - tile.x0, p.bbox[3] - tile.x0),
    )
