"""Photometric normalisation of placed tiles: masks -> overlaps -> relations -> solve ->
background matching, with a JSON-ready report."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from skymosaic._tiles import PlacedTile
from skymosaic.photometry._background import apply_background_match, match_backgrounds
from skymosaic.photometry._masks import valid_mask
from skymosaic.photometry._overlaps import find_overlaps
from skymosaic.photometry._regression import pairwise_relations
from skymosaic.photometry._solve import apply_gains_offsets, solve_gains_offsets

__all__ = ["PhotometryOptions", "PhotometryReport", "normalize_tiles"]

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
    background : bool
        Run overlap-based background matching after the solve.
    background_plane : bool
        Also remove relative sky tilts (planes) during background matching.
    background_target : "median" or float
        Final median sky level per channel.
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
    background: bool = True
    background_plane: bool = False
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
            background=cfg.background, background_plane=cfg.background_plane, gain_from=cfg.gain_from,
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
        if self.gain_from not in ("auto", "pixels", "stars", "none"):
            raise ValueError(f"gain_from must be 'auto', 'pixels', 'stars' or 'none', got {self.gain_from!r}")
        bt = self.background_target
        if not (bt == "median" or (isinstance(bt, (int, float)) and math.isfinite(bt))):
            raise ValueError(f"background_target must be 'median' or a number, got {bt!r}")


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
    tile_status: list[list[str]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays to lists, non-finite numbers to None)."""
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:
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
    n, n_ch = len(tiles), report.n_channels
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
        threads=cfg.threads,
    )
    t2 = time.perf_counter()
    gains, offsets = np.ones((n, n_ch)), np.zeros((n, n_ch))
    report.tile_status = [[] for _ in range(n)]
    for c in range(n_ch):
        sol = solve_gains_offsets(
            n,
            relations,
            channel=c,
            gauge=cfg.gauge,
            prior_weight=cfg.prior_weight,
            robust_iter=cfg.robust_iter,
        )
        gains[:, c], offsets[:, c] = sol.gains, sol.offsets
        for k in range(n):
            report.tile_status[k].append(sol.status[k])
        report.warnings.extend(f"channel {c}: {w}" for w in sol.warnings)
        for m, idx in enumerate(sol.pair_index):
            report.pairs.append(_pair_entry(relations[idx], sol, m))
    t3 = time.perf_counter()
    out = [
        PlacedTile(
            np.asarray(apply_gains_offsets(t.data, gains[k], offsets[k]), dtype=np.float32),
            t.y0,
            t.x0,
            t.weight,
            t.tile_id,
            dict(t.meta),
        )
        for k, t in enumerate(tiles)
    ]
    if cfg.background:
        # After offsets, valid = original footprint (values may now be <= 0).
        match = match_backgrounds(
            out,
            target=cfg.background_target,
            plane=cfg.background_plane,
            overlaps=overlaps,
            masks=masks,
        )
        out = apply_background_match(out, match)
        report.background_offsets = match.offsets
    t4 = time.perf_counter()
    status = [r.relation.status for r in relations]
    report.n_overlaps = len(overlaps)
    report.n_relations_ok = status.count("ok")
    report.n_relations_offset_only = status.count("offset_only")
    report.n_relations_failed = status.count("failed")
    report.gains, report.offsets = gains, offsets
    report.timings = {
        "overlaps_s": t1 - t0,
        "relations_s": t2 - t1,
        "solve_s": t3 - t2,
        "background_s": t4 - t3,
    }
    logger.info(
        "photometry: %d tiles, %d overlaps, relations ok/offset-only/failed = %d/%d/%d",
        n,
        len(overlaps),
        report.n_relations_ok,
        report.n_relations_offset_only,
        report.n_relations_failed,
    )
    return out


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
