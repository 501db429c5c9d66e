"""Photometric normalisation of placed tiles: masks -> overlaps -> relations and sky samples
-> gains -> sky surfaces (or offsets and background matching), with a JSON-ready report.

`solve_corrections` is the engine's core, shared by the in-memory path (`normalize_tiles`:
grid mode's tiles) and the streamed Phase 5 path (`skymosaic.assemble.match_sources`,
which measures each overlap at full resolution and never holds all inputs at once).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from skymosaic._surface import SURFACE_ORDERS, SkySurface, surface_terms
from skymosaic._tiles import PlacedTile
from skymosaic.photometry._background import apply_background_match, match_backgrounds
from skymosaic.photometry._masks import valid_mask
from skymosaic.photometry._overlaps import find_overlaps
from skymosaic.photometry._regression import pairwise_relations
from skymosaic.photometry._solve import apply_gains_offsets, solve_gains_offsets
from skymosaic.photometry._surfaces import (
    SkySamples,
    overlap_block,
    sky_samples,
    solve_sky_surfaces,
    to_samples,
)

__all__ = ["GAIN_SOURCES", "SKY_SURFACES", "PhotometryOptions", "PhotometryReport",
           "normalize_tiles", "solve_corrections", "tile_sky_samples"]

#: The ``sky_surface`` choices: a surface order, or ``none`` (offsets from the pair levels
#: and optional background matching, the engine before sky surfaces).
SKY_SURFACES = (*reversed(SURFACE_ORDERS), "none")
#: Where the pair gains come from (``photometry.gain_from``): the more precise of the two,
#: detrended overlap pixels, star aperture fluxes, or none (gains fixed to 1).
GAIN_SOURCES = ("auto", "pixels", "stars", "none")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhotometryOptions:
    """Options of `normalize_tiles` (validated on construction).

    Attributes
    ----------
    gauge : "mean" or int
        Mean log-gain/offset 0 per component, or a reference tile kept at (1, 0).
    prior_weight : float
        Weak prior toward (1, 0), relative to the median pair weight.
    robust_iter : int
        Robust re-weighting iterations of the global solve.
    min_overlap_pixels : int
        Pixels valid in both tiles for a pair to be used.
    max_samples : int
        Random pixels per pair and channel for the pairwise fit.
    min_points : int
        Minimum points of a pairwise fit.
    min_dynamic_range : float
        Signal spread / noise below which a pair is offset-only.
    eps : float or None
        `valid_mask` epsilon for the input tiles (None: finite only, sky-subtracted data).
    sky_surface : {"quadratic", "plane", "constant", "none"}
        Per-input sky surface solved with the gains (`skymosaic.photometry._surfaces`);
        ``none``: one offset per input from the pair levels, then background matching.
    surface_block : int
        Size (output pixels) of the star-masked sky blocks the surfaces are fitted to
        (smaller on overlaps narrower than 4 blocks: `overlap_block`).
    surface_ridge : float
        Weight of the smallest-surface regularisation, relative to the data.
    background : bool
        With ``sky_surface="none"``: overlap-based background matching after the solve.
    background_target : "median" or float
        Final median sky level per channel ("median": the inputs' own).
    gain_from : {"auto", "pixels", "stars", "none"}
        How pair gains are measured (see `skymosaic.photometry.fit_overlap`); ``none``
        solves offsets only.
    threads : int
        Pairs fitted in parallel (0 = all cores); the result does not depend on it.
    seed : int
        Seed of the pixel sampling.
    """

    gauge: str | int = "mean"
    prior_weight: float = 1e-3
    robust_iter: int = 3
    min_overlap_pixels: int = 100
    max_samples: int = 20000
    min_points: int = 50
    min_dynamic_range: float = 1.0
    eps: float | None = 1e-6
    sky_surface: str = "quadratic"
    surface_block: int = 32
    surface_ridge: float = 1e-6
    background: bool = True
    background_target: str | float = "median"
    gain_from: str = "auto"
    threads: int = 0
    seed: int = 0

    @classmethod
    def from_config(cls, config) -> PhotometryOptions:
        """The options of a `skymosaic.config.Config` (its ``[photometry]`` section and
        ``input.valid_min`` as the valid-pixel epsilon)."""
        cfg, vmin = config.photometry, config.input.valid_min
        return cls(
            gauge=cfg.gauge, prior_weight=cfg.prior_weight, robust_iter=cfg.robust_iter,
            min_overlap_pixels=cfg.min_overlap_pixels, max_samples=cfg.max_samples,
            background=cfg.background, sky_surface=cfg.sky_surface, surface_block=cfg.surface_block,
            surface_ridge=cfg.surface_ridge, gain_from=cfg.gain_from,
            threads=config.run.threads,
            eps=vmin if vmin is not None and math.isfinite(vmin) else None,
        )

    def __post_init__(self) -> None:
        if not (self.gauge == "mean" or (isinstance(self.gauge, int) and self.gauge >= 0)):
            raise ValueError(f"gauge must be 'mean' or a tile index >= 0, got {self.gauge!r}")
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise ValueError(f"prior_weight must be finite and >= 0, got {self.prior_weight!r}")
        for name in ("robust_iter", "threads", "min_overlap_pixels", "max_samples", "min_points"):
            val = getattr(self, name)
            if not isinstance(val, int) or val < (0 if name in ("robust_iter", "threads") else 1):
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if self.max_samples < self.min_points:
            raise ValueError(f"max_samples={self.max_samples} < min_points={self.min_points}")
        if not self.min_dynamic_range >= 0:
            raise ValueError(f"min_dynamic_range must be >= 0, got {self.min_dynamic_range!r}")
        if self.gain_from not in GAIN_SOURCES:
            raise ValueError(f"gain_from must be one of {GAIN_SOURCES}, got {self.gain_from!r}")
        if self.sky_surface not in SKY_SURFACES:
            raise ValueError(f"sky_surface must be one of {SKY_SURFACES}, got {self.sky_surface!r}")
        if not (isinstance(self.surface_block, int) and self.surface_block >= 4):
            raise ValueError(f"surface_block must be an integer >= 4, got {self.surface_block!r}")
        if not (math.isfinite(self.surface_ridge) and self.surface_ridge > 0):
            raise ValueError(f"surface_ridge must be finite and > 0, got {self.surface_ridge!r}")
        bt = self.background_target
        if not (bt == "median" or (isinstance(bt, (int, float)) and math.isfinite(bt))):
            raise ValueError(f"background_target must be 'median' or a number, got {bt!r}")

    @property
    def detrend_order(self) -> int:
        """Order of the surface each overlap's images lose before the pixel gain fit
        (`fit_overlap`): at least the sky surfaces' order, so their gradients cannot tilt it."""
        return max(1, SURFACE_ORDERS.get(self.sky_surface, 1))


@dataclass
class PhotometryReport:
    """What `normalize_tiles` did; ``to_dict()`` goes into run.json."""

    status: str = "ok"
    n_tiles: int = 0
    n_channels: int = 0
    n_overlaps: int = 0
    n_relations_ok: int = 0
    n_relations_offset_only: int = 0
    n_relations_failed: int = 0
    gains: np.ndarray | None = None
    offsets: np.ndarray | None = None
    background_offsets: np.ndarray | None = None
    #: (N, C, M) sky-surface coefficients (`skymosaic.SkySurface`), None without surfaces
    surfaces: np.ndarray | None = None
    sky_surface: str = "none"
    tile_status: list[list[str]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays to lists, non-finite numbers to None)."""
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:  # noqa: PLR0911 - one return per JSON type
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def normalize_tiles(
    tiles: list[PlacedTile], *, config: PhotometryOptions | None = None
) -> tuple[list[PlacedTile], PhotometryReport]:
    """Photometrically normalise tiles so that they agree on every overlap.

    Per channel: pairwise Deming relations on overlaps, one robust sparse solve for
    gains and offsets (``g*T + b``), then (optionally) overlap-based background matching.
    If anything inside these steps fails, one warning is logged and the tiles are
    returned unchanged with ``report.status == "fallback"``.

    Parameters
    ----------
    tiles : list of PlacedTile
        Tiles on the common output grid, all with the same channel count.
    config : PhotometryOptions, optional

    Returns
    -------
    tiles : list of PlacedTile
        New tiles (data float32, NaN kept); weights and ids unchanged.
    report : PhotometryReport

    Raises
    ------
    ValueError
        If the tiles have different channel counts or the gauge tile does not exist.
    """
    cfg = PhotometryOptions() if config is None else config
    n_ch = {t.data.shape[0] for t in tiles}
    if len(n_ch) > 1:
        raise ValueError(f"all tiles must have the same channel count, got {sorted(n_ch)}")
    if isinstance(cfg.gauge, int) and cfg.gauge >= len(tiles):
        raise ValueError(f"gauge tile {cfg.gauge} does not exist ({len(tiles)} tiles)")
    report = PhotometryReport(n_tiles=len(tiles), n_channels=n_ch.pop() if n_ch else 0)
    if not tiles:
        return [], report
    try:
        out = _run(tiles, cfg, report)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError, MemoryError) as err:
        msg = (
            f"photometric normalisation failed ({type(err).__name__}: {err}); tiles left unchanged"
        )
        logger.warning(msg)
        report.status = "fallback"
        report.warnings.append(msg)
        n, c = len(tiles), report.n_channels
        report.gains, report.offsets = np.ones((n, c)), np.zeros((n, c))
        return list(tiles), report
    return out, report


def _run(
    tiles: list[PlacedTile], cfg: PhotometryOptions, report: PhotometryReport
) -> list[PlacedTile]:
    t0 = time.perf_counter()
    masks = [np.asarray(valid_mask(t.data, eps=cfg.eps)) for t in tiles]
    overlaps = find_overlaps(tiles, min_pixels=cfg.min_overlap_pixels, masks=masks)
    t1 = time.perf_counter()
    relations = pairwise_relations(
        tiles,
        overlaps,
        max_samples=cfg.max_samples,
        seed=cfg.seed,
        masks=masks,
        min_points=cfg.min_points,
        min_dynamic_range=cfg.min_dynamic_range,
        gain_from=cfg.gain_from,
        detrend_order=cfg.detrend_order,
        threads=cfg.threads,
    )
    samples = ([] if cfg.sky_surface == "none"
               else tile_sky_samples(tiles, overlaps, masks, cfg.surface_block))
    t2 = time.perf_counter()
    gains, offsets, surfaces = solve_corrections(len(tiles), report.n_channels, relations,
                                                 samples, cfg, report)
    t3 = time.perf_counter()
    out = [_corrected(t, gains[k], offsets[k], None if surfaces is None else surfaces[k])
           for k, t in enumerate(tiles)]
    if cfg.background and surfaces is None:
        # After offsets, valid = original footprint (values may now be <= 0).
        match = match_backgrounds(
            out, target=cfg.background_target, overlaps=overlaps, masks=masks,
        )
        out = apply_background_match(out, match)
        report.background_offsets = match.offsets
    t4 = time.perf_counter()
    report.n_overlaps = len(overlaps)
    report.timings = {
        "overlaps_s": t1 - t0,
        "relations_s": t2 - t1,
        "solve_s": t3 - t2,
        "background_s": t4 - t3,
    }
    return out


def _corrected(tile: PlacedTile, gain: np.ndarray, offset: np.ndarray,
               coeffs: np.ndarray | None) -> PlacedTile:
    """``gain * data + offset`` (+ the tile's sky surface, in its own pixels)."""
    data = np.asarray(apply_gains_offsets(tile.data, gain, offset), dtype=np.float32)
    if coeffs is not None:
        h, w = tile.shape
        yy, xx = np.indices((h, w), dtype=np.float32)
        data += SkySurface(coeffs, (h, w)).evaluate(xx, yy, dtype=np.float32)
    return PlacedTile(data, tile.y0, tile.x0, tile.weight, tile.tile_id, dict(tile.meta))


def tile_frame(tile: PlacedTile):
    """The map from canvas pixels ``(x, y)`` to the tile's normalised own-frame ``(u, v)``."""
    h, w = tile.shape

    def to_uv(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ((x - tile.x0) * (2.0 / max(w - 1, 1)) - 1.0,
                (y - tile.y0) * (2.0 / max(h - 1, 1)) - 1.0)

    return to_uv


def tile_sky_samples(tiles: list[PlacedTile], overlaps: list, masks: list[np.ndarray],
                     block: int) -> list[SkySamples]:
    """The sky samples of every overlap and channel of tiles held in memory."""
    out = []
    for ov in overlaps:
        ti, tj = tiles[ov.i], tiles[ov.j]
        y0, y1, x0, x1 = ov.bbox
        si = (slice(y0 - ti.y0, y1 - ti.y0), slice(x0 - ti.x0, x1 - ti.x0))
        sj = (slice(y0 - tj.y0, y1 - tj.y0), slice(x0 - tj.x0, x1 - tj.x0))
        both = masks[ov.i][si] & masks[ov.j][sj]
        size = overlap_block(y1 - y0, x1 - x0, block)
        for c in range(ti.data.shape[0]):
            binned = sky_samples(ti.data[c][si], tj.data[c][sj], both, y0=y0, x0=x0, block=size)
            out.append(to_samples(binned, ov.i, ov.j, c, tile_frame(ti), tile_frame(tj)))
    return out


def solve_corrections(
    n: int,
    n_ch: int,
    relations: list,
    samples: list[SkySamples],
    cfg: PhotometryOptions,
    report: PhotometryReport,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gains, offsets and sky-surface coefficients of ``n`` inputs from their overlaps.

    Per channel: the gains from the pair relations (`solve_gains_offsets`); then either the
    sky surfaces from the sky samples with those gains fixed (`solve_sky_surfaces`; the
    offsets are then 0: the surfaces' constant terms replace them), or, with
    ``cfg.sky_surface == "none"``, the offsets from the relations' levels. Fills ``report``
    (statuses, pairs, warnings, gains, offsets, surfaces) and returns
    ``(gains (n, C), offsets (n, C), surfaces (n, C, M) or None)``.
    """
    gains, offsets = np.ones((n, n_ch)), np.zeros((n, n_ch))
    order = SURFACE_ORDERS.get(cfg.sky_surface)
    surfaces = None
    report.tile_status = [[] for _ in range(n)]
    steps: dict[tuple[int, int, int], tuple[float, float]] = {}
    for c in range(n_ch):
        sol = solve_gains_offsets(n, relations, channel=c, gauge=cfg.gauge,
                                  prior_weight=cfg.prior_weight, robust_iter=cfg.robust_iter)
        gains[:, c] = sol.gains
        if order is None:
            offsets[:, c] = sol.offsets
        else:
            sky = solve_sky_surfaces(n, [s for s in samples if s.channel == c], sol.gains,
                                     order=order, ridge=cfg.surface_ridge,
                                     robust_iter=cfg.robust_iter)
            if surfaces is None:
                surfaces = np.zeros((n, n_ch, sky.coeffs.shape[1]))
            surfaces[:, c] = sky.coeffs
            surfaces[:, c, 0] += _target_shift(samples, c, sol.gains, sky.coeffs, order,
                                               cfg.background_target)
            steps.update({(i, j, c): (v, sky.pair_step_before[(i, j)])
                          for (i, j), v in sky.pair_step.items()})
        for k in range(n):
            report.tile_status[k].append(sol.status[k])
        report.warnings.extend(f"channel {c}: {w}" for w in sol.warnings)
        for m, idx in enumerate(sol.pair_index):
            entry = _pair_entry(relations[idx], sol, m)
            if order is not None:
                after, before = steps.get((entry["i"], entry["j"], c), (float("nan"), float("nan")))
                entry["sky_step"], entry["sky_step_offsets_only"] = after, before
            report.pairs.append(entry)
    status = [r.relation.status for r in relations]
    report.n_relations_ok = status.count("ok")
    report.n_relations_offset_only = status.count("offset_only")
    report.n_relations_failed = status.count("failed")
    report.gains, report.offsets, report.surfaces = gains, offsets, surfaces
    report.sky_surface = cfg.sky_surface
    logger.info(
        "photometry: %d inputs, relations ok/offset-only/failed = %d/%d/%d, sky surfaces: %s",
        n, report.n_relations_ok, report.n_relations_offset_only, report.n_relations_failed,
        cfg.sky_surface,
    )
    return gains, offsets, surfaces


def _target_shift(samples: list[SkySamples], channel: int, gains: np.ndarray, coeffs: np.ndarray,
                  order: int, target: str | float) -> float:
    """The common shift that puts the median corrected sky of the inputs at ``target``
    (0 for ``"median"``: the solve's own level, the smallest surfaces)."""
    if target == "median":
        return 0.0
    levels: dict[int, list[float]] = {}
    for s in samples:
        if s.channel != channel or s.size == 0:
            continue
        for k, lev, u, v in ((s.i, s.level_i, s.ui, s.vi), (s.j, s.level_j, s.uj, s.vj)):
            surf = sum(t * coeffs[k, m] for m, t in enumerate(surface_terms(u, v, order)))
            levels.setdefault(k, []).append(float(np.median(gains[k] * lev + surf)))
    if not levels:
        return 0.0
    return float(target) - float(np.median([np.median(v) for v in levels.values()]))


def _pair_entry(pr, sol, m: int) -> dict[str, Any]:
    rel = pr.relation
    return {
        "i": pr.i,
        "j": pr.j,
        "channel": pr.channel,
        "status": rel.status,
        "reason": rel.reason,
        "gain": rel.gain,
        "offset": rel.offset,
        "gain_err": rel.gain_err,
        "n_used": rel.n_used,
        "residual_rms": rel.residual_rms,
        "solve_gain_residual": float(sol.pair_gain_residual[m]),
        "solve_offset_residual": float(sol.pair_offset_residual[m]),
        "robust_weight": float(sol.pair_robust_weight[m]),
    }
