"""Phase 5 photometric matching: solve a gain and a sky surface per input and channel.

Each overlap of two sources (master tiles or frames) is measured **at full resolution**,
one overlap at a time, in the first source's own pixel frame: its pixels as they are, the
second resampled onto them (one resampling per overlap, and one of the two images
uninterpolated); their valid pixels give the pair relations (`overlap_relations`:
star-aperture or detrended-pixel gains) and the star-masked sky samples
(`skymosaic.photometry.sky_samples`, mapped into each source's own pixel frame through its
WCS). Only a bounded window of overlaps is in flight (`ordered_window`, sized by the memory
budget), so the budget changes how long this takes, never what it finds. The photometry
engine then solves everything at once (`skymosaic.photometry.solve_corrections`: gains per
channel, then every source's sky surface), and the solved ``gain * x + S(x, y)`` is attached
to each source: the coadd applies it while resampling, so no corrected copy of any tile is
ever held.

The sources are placed for the fits with the ``"strict"`` edge rule whatever the coadd's
(`skymosaic.reproject.resample`): every placed value is interpolated between real pixels,
so no edge value extrapolated over the outer half pixel (``"half"``, the coadd's default)
repeats a star's core into an overlap regression. The coverage renormalisation only uses
the placed footprints, not their values, and so places the sources with the coadd's rule:
each footprint is then exactly where the coadd applies the resulting gain.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from skymosaic._surface import SkySurface
from skymosaic._tiles import PlacedTile
from skymosaic.assemble._coadd import CoaddOptions, ordered_window, resample_source, source_bbox
from skymosaic.assemble._sources import ImageSource
from skymosaic.photometry import (
    PhotometryOptions,
    PhotometryReport,
    bbox_candidate_pairs,
    coverage_gains,
    overlap_block,
    overlap_relations,
    sky_samples,
    solve_corrections,
    to_samples,
    valid_mask,
)
from skymosaic.reproject._grid import OutputGrid

__all__ = ["MatchResult", "binned_grid", "match_sources", "place_sources", "renormalise_coverage"]

logger = logging.getLogger(__name__)


@dataclass
class MatchResult:
    """The engine's report, the binning used (1: the overlaps are measured at full
    resolution) and the corrections now set on the sources."""

    report: PhotometryReport
    binning: int
    gains: np.ndarray  # (N, C)
    offsets: np.ndarray  # (N, C), background shift included
    surfaces: np.ndarray | None = None  # (N, C, M) sky-surface coefficients

    def counts(self) -> dict:
        """The solve's outcome for run.json: status, overlaps, relations by status, sky
        surface and warnings (classic mode's ``photometry``, grid mode's
        ``frame_photometry``)."""
        rep = self.report
        return {"status": rep.status, "n_overlaps": rep.n_overlaps,
                "relations_ok": rep.n_relations_ok,
                "relations_offset_only": rep.n_relations_offset_only,
                "relations_failed": rep.n_relations_failed, "sky_surface": rep.sky_surface,
                "warnings": list(rep.warnings)}


def binned_grid(grid: OutputGrid, factor: int) -> OutputGrid:
    """The output grid with pixels ``factor`` times larger, covering the same sky."""
    if factor == 1:
        return grid
    wcs = grid.wcs.deepcopy()
    # Binned pixel (0, 0) covers fine pixels 0..factor-1: its centre is at (factor-1)/2.
    wcs.wcs.crpix = [(c - 0.5) / factor + 0.5 for c in grid.wcs.wcs.crpix]
    if wcs.wcs.has_cd():
        wcs.wcs.cd = grid.wcs.wcs.cd * factor
    else:
        wcs.wcs.cdelt = np.asarray(grid.wcs.wcs.cdelt) * factor
    wcs.wcs.set()
    h, w = grid.shape
    return OutputGrid(wcs=wcs, shape=(math.ceil(h / factor), math.ceil(w / factor)))


def _binning(sources: Sequence[ImageSource], grid: OutputGrid, budget: int) -> int:
    """Smallest integer binning that keeps all placed tiles within a quarter of the budget."""
    total = 0
    for s in sources:
        b = source_bbox(s, grid)
        if b is not None:
            total += (b[1] - b[0]) * (b[3] - b[2]) * (s.shape[0] + 2) * 4
    allowed = max(budget // 4, 1)
    return max(1, math.ceil(math.sqrt(total / allowed))) if total > allowed else 1


def place_sources(
    sources: Sequence[ImageSource], grid: OutputGrid, options: CoaddOptions
) -> list[PlacedTile | None]:
    """Resample every source onto its cutout of ``grid`` (None where it has no pixel)."""

    def one(k: int) -> PlacedTile | None:
        s = sources[k]
        bbox = source_bbox(s, grid)
        res = None if bbox is None else resample_source(_uncorrected(s), grid, bbox, options)
        if res is None:
            return None
        (y0, _, x0, _), data, weight = res
        return PlacedTile(data, y0, x0, weight=weight, tile_id=s.name)

    with ThreadPoolExecutor(max_workers=options.n_threads) as pool:
        return list(pool.map(one, range(len(sources))))


def _uncorrected(source: ImageSource) -> ImageSource:
    """The source without any photometric correction (the solve starts from raw values)."""
    if source.gain is None and source.offset is None and source.surface is None:
        return source
    return dataclasses.replace(source, gain=None, offset=None, surface=None)


def _overlap_cut(a: tuple[int, int, int, int],
                 b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    y0, y1 = max(a[0], b[0]), min(a[1], b[1])
    x0, x1 = max(a[2], b[2]), min(a[3], b[3])
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None


def _source_frame(source: ImageSource, grid: OutputGrid):
    """The map from output pixels ``(x, y)`` to the source's normalised frame ``(u, v)``
    (`skymosaic.SkySurface`), through both WCS."""
    _, h, w = source.shape

    def to_uv(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sx, sy = source.wcs.world_to_pixel_values(*grid.wcs.pixel_to_world_values(x, y))
        return (np.asarray(sx) * (2.0 / max(w - 1, 1)) - 1.0,
                np.asarray(sy) * (2.0 / max(h - 1, 1)) - 1.0)

    return to_uv


def _native_frame(source: ImageSource):
    """The map from the source's own pixels ``(x, y)`` to its normalised frame ``(u, v)``."""
    _, h, w = source.shape

    def to_uv(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(x) * (2.0 / max(w - 1, 1)) - 1.0,
                np.asarray(y) * (2.0 / max(h - 1, 1)) - 1.0)

    return to_uv


def _overlap_bytes(sources: Sequence[ImageSource], boxes: list, pairs: np.ndarray) -> int:
    """Peak bytes of one overlap measurement: both placed images, masks and the fits'
    temporaries (about 12 float32 planes per channel)."""
    largest = 0
    for i, j in pairs:
        cut = _overlap_cut(boxes[i], boxes[j])
        if cut is not None:
            largest = max(largest, (cut[1] - cut[0]) * (cut[3] - cut[2]))
    return largest * 4 * (12 * sources[0].shape[0] + 4)


def match_sources(
    sources: Sequence[ImageSource],
    grid: OutputGrid,
    *,
    options: CoaddOptions,
    photometry: PhotometryOptions,
    match_kernel: str = "lanczos3",
) -> MatchResult:
    """Solve and attach a gain and sky surface (or offset) per source and channel (see the
    module docstring).

    Sources that have no pixel on the grid keep (1, 0). If the engine falls back, every
    source keeps (1, 0) and the report says so (one warning was logged by the engine).
    """
    n_ch = sources[0].shape[0] if sources else 1
    n = len(sources)
    gains, offsets = np.ones((n, n_ch)), np.zeros((n, n_ch))
    boxes = [source_bbox(s, grid) for s in sources]
    index = [k for k, b in enumerate(boxes) if b is not None]
    if len(index) < 2:
        report = PhotometryReport(n_tiles=len(index), n_channels=n_ch,
                                  status="skipped: fewer than 2 inputs")
        _attach(sources, gains, offsets, None)
        return MatchResult(report, 1, gains, offsets)
    t0 = time.perf_counter()
    # The pair fits compare star profiles pixel by pixel: a bilinear resampling lowers
    # each star's peak by an amount that depends on its sub-pixel phase in each frame,
    # which biased pair gains by 2-3 % on a synthetic survey; lanczos3 keeps them within
    # their errors (see tests/test_phase5.py). The coadd keeps the user's kernel. The edge
    # rule is strict: the coadd's "half" rim repeats edge values under star cores, which
    # moved the star-rich survey's relative gains by up to 7 % (measured; bound 0.5 %).
    fit_opts = dataclasses.replace(options, kernel=match_kernel, edge="strict")
    pairs = bbox_candidate_pairs(np.array([boxes[k] for k in index]))
    pairs = np.array([(index[a], index[b]) for a, b in pairs], dtype=np.int64).reshape(-1, 2)
    position = {k: m for m, k in enumerate(index)}
    cfg = photometry
    channels = list(range(n_ch))
    surfaces_on = cfg.sky_surface != "none"

    def measure(pair: np.ndarray) -> tuple[list, list, int] | None:
        # In input i's own pixel frame: i's pixels as they are, j resampled onto them. One
        # resampling per overlap instead of two (half the cost), and the fits see i
        # uninterpolated.
        i, j = int(pair[0]), int(pair[1])
        grid_i = OutputGrid(wcs=sources[i].wcs, shape=tuple(sources[i].shape[1:]))
        cut = source_bbox(sources[j], grid_i)
        if cut is None:
            return None
        y0, y1, x0, x1 = cut
        placed = resample_source(_uncorrected(sources[j]), grid_i, cut, fit_opts)
        if placed is None:
            return None
        di = np.asarray(sources[i].read(slice(y0, y1), slice(x0, x1)), dtype=np.float32)
        dj = placed[1]
        both = np.asarray(valid_mask(di, eps=cfg.eps)) & np.asarray(valid_mask(dj, eps=cfg.eps))
        n_both = int(np.count_nonzero(both))
        if n_both < cfg.min_overlap_pixels:
            return None
        pi, pj = position[i], position[j]
        rels = overlap_relations(
            pi, pj, di, dj, both, channels, seed=cfg.seed, gain_from=cfg.gain_from,
            detrend_order=cfg.detrend_order, max_samples=cfg.max_samples, min_points=cfg.min_points,
            min_dynamic_range=cfg.min_dynamic_range,
        )
        samples = []
        if surfaces_on:
            block = overlap_block(y1 - y0, x1 - x0, cfg.surface_block)
            frame_i, frame_j = _native_frame(sources[i]), _source_frame(sources[j], grid_i)
            for c in channels:
                binned = sky_samples(di[c], dj[c], both, y0=y0, x0=x0, block=block)
                samples.append(to_samples(binned, pi, pj, c, frame_i, frame_j))
        return rels, samples, n_both

    window = max(1, min(options.n_threads + 1,
                        options.memory_budget // 2
                        // max(_overlap_bytes(sources, boxes, pairs), 1)))
    relations, samples = [], []
    n_overlaps = 0
    with ThreadPoolExecutor(max_workers=min(options.n_threads, window)) as pool:
        for found in ordered_window(pool, measure, pairs, window):
            if found is not None:
                relations.extend(found[0])
                samples.extend(found[1])
                n_overlaps += 1
    t1 = time.perf_counter()
    report = PhotometryReport(n_tiles=len(index), n_channels=n_ch)
    report.n_overlaps = n_overlaps
    if n_overlaps == 0:
        report.status = "fallback: no overlaps"
        report.warnings.append("no two inputs overlap: photometric matching skipped")
        logger.warning("photometry: no two inputs overlap by %d valid pixels; no corrections",
                       cfg.min_overlap_pixels)
        _attach(sources, gains, offsets, None)
        return MatchResult(report, 1, gains, offsets)
    g, o, surf = solve_corrections(len(index), n_ch, relations, samples, cfg, report)
    report.timings = {"overlaps_s": t1 - t0, "solve_s": time.perf_counter() - t1}
    gains[index], offsets[index] = g, o
    surfaces = None
    if surf is not None:
        surfaces = np.zeros((n, n_ch, surf.shape[2]))
        surfaces[index] = surf
    _attach(sources, gains, offsets, surfaces)
    logger.info("photometry on %d overlaps at full resolution: gains %.4f..%.4f, sky surfaces: %s",
                n_overlaps, gains.min(), gains.max(), cfg.sky_surface)
    return MatchResult(report, 1, gains, offsets, surfaces)


def _attach(sources: Sequence[ImageSource], gains: np.ndarray, offsets: np.ndarray,
            surfaces: np.ndarray | None) -> None:
    for k, s in enumerate(sources):
        s.gain, s.offset = gains[k].astype(np.float32), offsets[k].astype(np.float32)
        s.surface = None if surfaces is None else SkySurface(surfaces[k], s.shape[1:])


def renormalise_coverage(
    sources: Sequence[ImageSource],
    grid: OutputGrid,
    coverage: np.ndarray,
    *,
    options: CoaddOptions,
    sigma_px: float,
    clip: tuple[float, float],
) -> np.ndarray:
    """Second-pass scalar gains from the first pass's coverage (see `coverage_gains`).

    The sources are placed with ``options`` as given, the coadd's edge rule included: only
    their footprints are used, and they then match the coverage steps of the coadd.
    Multiplies each source's gain by its coverage gain and returns those factors.
    """
    factor = _binning(sources, grid, options.memory_budget)
    coarse = binned_grid(grid, factor)
    cov = coverage.astype(np.float32)
    if factor > 1:
        h, w = coarse.shape
        padded = np.zeros((h * factor, w * factor), np.float32)
        padded[: cov.shape[0], : cov.shape[1]] = cov
        cov = padded.reshape(h, factor, w, factor).mean(axis=(1, 3))
    placed = place_sources(sources, coarse, options)
    index = [k for k, t in enumerate(placed) if t is not None]
    factors = np.ones(len(sources))
    if index:
        g = coverage_gains(cov, [placed[k] for k in index], sigma_px=sigma_px / factor, clip=clip,
                           backend=options.backend)
        factors[index] = np.asarray(g, dtype=float).reshape(len(index), -1)[:, 0]
    for k, s in enumerate(sources):
        base = np.ones(s.shape[0], np.float32) if s.gain is None else s.gain
        s.gain = (base * factors[k]).astype(np.float32)
        if s.offset is not None:
            s.offset = (s.offset * factors[k]).astype(np.float32)
        if s.surface is not None:
            s.surface = dataclasses.replace(s.surface, coeffs=s.surface.coeffs * factors[k])
    return factors
