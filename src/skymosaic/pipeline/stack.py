"""Phase 5, stack (classic mode): every group of the plan stacked into a master tile
(`skymosaic.stack.classic.stack_groups`); then the coadd's inputs, master tiles and the
frames of groups too small to stack (`coadd_sources`).

Resumes tile by tile: each master tile is reused when its own fingerprint (its frames and
the ``[stack]`` settings, `skymosaic.stack.build_master_tile`) matches, and recorded in the
manifest (``tile/<id>``) as it is finished.
"""

from __future__ import annotations

import logging

import numpy as np

from skymosaic._manifest import crash_point, file_signature, fingerprint
from skymosaic._stats import FrameStats
from skymosaic.assemble import CoaddOptions, FileSource
from skymosaic.config import Config
from skymosaic.io import FrameInfo, scan_frame
from skymosaic.reproject import OutputGrid
from skymosaic.stack.classic import StackedGroups, stack_groups
from skymosaic.stack.master import MasterTile

from . import plan as plan_phase
from ._catalog import Catalog
from ._run import Run

__all__ = ["coadd_sources", "frame_weight", "run"]

logger = logging.getLogger(__name__)

NAME = "stack"


def run(ctx: Run, catalog: Catalog, grid: OutputGrid, opts: CoaddOptions) -> StackedGroups:
    """Stack every group of the run's clustering (`plan.clustering`) into a master tile."""
    config, manifest = ctx.config, ctx.manifest
    clustering = plan_phase.clustering(ctx, catalog)
    logger.info("%d frame(s) in %d group(s)", len(catalog.frames), len(clustering.groups))
    noise = {k: v.noise for k, v in catalog.stats.items()}
    fwhm = {k: q.fwhm for k, q in catalog.quality.items()}
    reused: list[str] = []

    def tile_done(tile: MasterTile) -> None:
        manifest.record(f"tile/{tile.tile_id}", tile.fingerprint, path=tile.path,
                        meta={"frames": len(tile.frames)})
        if tile.reused:
            reused.append(tile.tile_id)
            ctx.progress.skip(NAME, len(tile.frames))
        else:
            crash_point(NAME)

    ctx.progress.start(NAME, len(catalog.frames))
    with ctx.phase(NAME):
        stacked = stack_groups(
            catalog.frames, clustering, config=config, options=opts,
            pixel_scale_arcsec=grid.pixel_scale_arcsec, tiles_dir=ctx.out / "tiles",
            scratch_dir=ctx.out / ".scratch", noise=noise, fwhm=fwhm,
            progress=lambda n: ctx.progress.advance(NAME, n), tile_done=tile_done,
            client=ctx.client,
        )
    ctx.progress.end(NAME)
    current = {f"tile/{t.tile_id}" for t in stacked.tiles}
    manifest.forget([k for k in manifest.artifacts if k.startswith("tile/") and k not in current])
    if reused:
        manifest.reused["tiles"] = sorted(reused)
    ctx.report.clusters = clustering.to_dict()
    return stacked


def frame_weight(info: FrameInfo, stats: FrameStats | None, weighting: str) -> float:
    """The scalar weight of a frame in the weighted mean."""
    if weighting == "exposure":
        return float(info.exposure) if info.exposure and info.exposure > 0 else 1.0
    if weighting == "noise" and stats is not None:
        var = np.nanmean(np.square(stats.noise))
        return float(1.0 / var) if np.isfinite(var) and var > 0 else 1.0
    return 1.0


def normalise_weights(weights: list[float]) -> list[float]:
    """Scale frame weights to mean 1 (a master tile's WEIGHT is the sum of such weights)."""
    mean = float(np.mean(weights)) if weights else 1.0
    return [w / mean for w in weights] if mean > 0 else weights


def coadd_sources(catalog: Catalog, stacked: StackedGroups | None, config: Config
                  ) -> tuple[list[FileSource], dict[str, float], str]:
    """The coadd's inputs: master tiles (their WEIGHT maps carry the depth) and single frames.

    Returns the sources, their weights by name, and a fingerprint of them (each single
    frame's file signature and weight, each tile's TILEFP).
    """
    singles = catalog.frames if stacked is None else stacked.singles
    weights = normalise_weights([
        frame_weight(f, catalog.stats.get(str(f.path)), config.coadd.weighting) for f in singles
    ])
    sources = [
        FileSource.from_info(f, weight=wt, valid_min=config.input.valid_min)
        for f, wt in zip(singles, weights, strict=True)
    ]
    signature = [[file_signature(f.path), wt] for f, wt in zip(singles, weights, strict=True)]
    if stacked is not None:
        for tile in stacked.tiles:
            info = scan_frame(tile.path)
            sources.append(FileSource.from_info(info, weight=1.0, valid_min=None))
            signature.append([tile.tile_id, tile.fingerprint])
    names = [s.name for s in sources]
    fp = fingerprint("sources", signature, config.input.valid_min)
    return sources, dict(zip(names, [s.weight for s in sources], strict=True)), fp
