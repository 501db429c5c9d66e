"""`assemble_tiles`: photometrically matched, multi-resolution blended grid mosaic.

valid masks -> overlap graph -> pairwise regressions -> global gain/offset per tile and
channel -> SWarp-like background matching (the photometry engine,
`skymosaic.photometry.normalize_tiles`) -> blending (`skymosaic.blend.blend_tiles`:
Laplacian pyramid, feathering for overlaps too narrow for a pyramid) -> placement.

Every step has a safe fallback, announced by one ``[GRID]`` warning: a failed photometric
solve is retried offset-only (gains fixed to 1), then skipped; a failed blend becomes a
plain weighted mean. Output pixels that no tile covers are NaN.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from skymosaic._tiles import PlacedTile
from skymosaic.backend import Backend
from skymosaic.blend import BLEND_METHODS, blend_tiles
from skymosaic.photometry import PhotometryOptions, normalize_tiles

__all__ = ["GRID_BLENDS", "AssembleResult", "assemble_tiles", "weighted_mean"]

logger = logging.getLogger(__name__)

#: Assemblies of `assemble_tiles` (``grid.blend``): those of `skymosaic.blend.blend_tiles`,
#: or a plain weighted mean (`weighted_mean`, also the fallback of a failed blend).
GRID_BLENDS = (*BLEND_METHODS, "mean")
BlendMethod = Literal[GRID_BLENDS]  # type: ignore[valid-type]


@dataclass
class AssembleResult:
    """The assembled canvas and what was done.

    Attributes
    ----------
    data : ndarray, (C, H, W) float32
        The mosaic; NaN where no tile has data.
    weight : ndarray, (H, W) float32
        Sum of the tiles' weights (coverage).
    report : dict
        Counts, the photometry report, the blending used, timings (``run.json`` "grid").
    """

    data: np.ndarray
    weight: np.ndarray
    report: dict = field(default_factory=dict)


def weighted_mean(tiles: Sequence[PlacedTile],
                  canvas_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Plain weighted mean of placed tiles (the last-resort assembly); NaN where uncovered."""
    h, w = canvas_shape
    n_ch = tiles[0].data.shape[0]
    num = np.zeros((n_ch, h, w), np.float64)
    den = np.zeros((h, w), np.float64)
    for t in tiles:
        th, tw = t.data.shape[1:]
        y0, x0 = max(t.y0, 0), max(t.x0, 0)
        y1, x1 = min(t.y0 + th, h), min(t.x0 + tw, w)
        if y1 <= y0 or x1 <= x0:
            continue
        sl = (slice(y0 - t.y0, y1 - t.y0), slice(x0 - t.x0, x1 - t.x0))
        d = t.data[:, sl[0], sl[1]]
        wt = (np.ones(d.shape[1:], np.float64) if t.weight is None
              else np.asarray(t.weight[sl], np.float64))
        ok = np.all(np.isfinite(d), axis=0) & np.isfinite(wt) & (wt > 0)
        wt = np.where(ok, wt, 0.0)
        num[:, y0:y1, x0:x1] += np.where(ok, d, 0.0) * wt
        den[y0:y1, x0:x1] += wt
    with np.errstate(invalid="ignore", divide="ignore"):
        data = np.where(den > 0, num / den, np.nan).astype(np.float32)
    return data, den.astype(np.float32)


def _photometry(tiles: list[PlacedTile], options: PhotometryOptions,
                report: dict) -> list[PlacedTile]:
    """Photometric matching with the offset-only and no-correction fallbacks."""
    out, rep = normalize_tiles(tiles, config=options)
    if rep.status == "ok":
        report["photometry"] = rep.to_dict()
        report["photometry_mode"] = "gain+offset"
        return out
    logger.warning("[GRID] photometric solve failed (%s); retrying offset-only (gains fixed to 1)",
                   "; ".join(rep.warnings) or rep.status)
    offset_only = dataclasses.replace(options, gain_from="none")
    out, rep = normalize_tiles(tiles, config=offset_only)
    if rep.status == "ok":
        report["photometry"] = rep.to_dict()
        report["photometry_mode"] = "offset-only"
        return out
    logger.warning("[GRID] offset-only solve failed too; tiles are assembled without correction")
    report["photometry"] = rep.to_dict()
    report["photometry_mode"] = "none"
    return list(tiles)


def assemble_tiles(
    tiles: Sequence[PlacedTile],
    canvas_shape: tuple[int, int],
    *,
    photometry: PhotometryOptions | None = None,
    blend: BlendMethod = "pyramid",
    levels: int | None = None,
    feather_sigma: float = 2.0,
    backend: Backend | None = None,
) -> AssembleResult:
    """Assemble grid tiles into one seamless mosaic.

    Parameters
    ----------
    tiles : sequence of PlacedTile
        Stacked tiles on the canvas (origins and optional weight maps); NaN = no data.
    canvas_shape : (int, int)
        ``(H, W)`` of the mosaic.
    photometry : PhotometryOptions, optional
        Options of the photometric matching; None skips it.
    blend : {"pyramid", "feather", "mean"}
        Multi-resolution blending, Gaussian feathering, or a plain weighted mean.
    levels : int, optional
        Pyramid levels (default: from the overlap width, see `skymosaic.blend`).
    feather_sigma : float
        Smoothing of the feathering masks, px.
    backend : Backend, optional
        Where the blending pyramids run (`skymosaic.backend`; default: the CPU).

    Returns
    -------
    AssembleResult

    Raises
    ------
    ValueError
        When ``tiles`` is empty or the channel counts differ.
    """
    tiles = list(tiles)
    if not tiles:
        raise ValueError("assemble_tiles needs at least one tile")
    n_ch = {t.data.shape[0] for t in tiles}
    if len(n_ch) != 1:
        raise ValueError(f"tiles have different channel counts: {sorted(n_ch)}")
    report: dict = {"n_tiles": len(tiles), "blend_requested": blend}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if photometry is not None and len(tiles) > 1:
        corrected = _photometry(tiles, photometry, report)
        ph = report["photometry"]
        logger.info("[GRID] %d tiles, %d overlaps", len(tiles), ph.get("n_overlaps", 0))
        logger.info("[GRID] regressions: %d ok, %d offset-only, %d failed",
                    ph.get("n_relations_ok", 0), ph.get("n_relations_offset_only", 0),
                    ph.get("n_relations_failed", 0))
        applied = report["photometry_mode"] != "none" and photometry.background
        report["background_matching"] = bool(applied)
        logger.info("[GRID] background matching %s", "applied" if applied else "not applied")
    else:
        corrected = tiles
        report["photometry_mode"] = "none"
        report["background_matching"] = False
        logger.info("[GRID] %d tiles; photometric matching off", len(tiles))
    timings["photometry"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    data = weight = None
    if blend in BLEND_METHODS and len(corrected) > 1:
        try:
            res = blend_tiles(corrected, canvas_shape, method=blend, levels=levels,
                              feather_sigma=feather_sigma, backend=backend)
            data, weight = res.data, res.weight
            report.update(blend=blend, n_pyramid=res.n_pyramid, n_feather=res.n_feather,
                          levels_used=res.levels_used)
            logger.info("[GRID] blending: %d overlaps with the pyramid (%d levels), %d feathered",
                        res.n_pyramid, res.levels_used, res.n_feather)
        except (ValueError, MemoryError, ArithmeticError) as err:
            logger.warning("[GRID] %s blending failed (%s); falling back to a weighted mean",
                           blend, err)
    if data is None:
        data, weight = weighted_mean(corrected, canvas_shape)
        report.update(blend="mean", n_pyramid=0, n_feather=0, levels_used=0)
        if blend == "mean" or len(corrected) == 1:
            logger.info("[GRID] blending: weighted mean")
    timings["blend"] = time.perf_counter() - t1
    report["timings"] = timings
    return AssembleResult(data, weight, report)
