"""Phase 4, canvas: the output grid (the user's header, or the optimal grid over every
frame), then the pre-flight check (`skymosaic.preflight`) before any pixel is written.

No resume fingerprint of its own (headers only, and quick); the grid's signature enters
the fingerprints of the phases after it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from astropy.wcs import WCS

from skymosaic.config import Config
from skymosaic.io import FrameInfo, frame_footprint
from skymosaic.io.stack_plan import StackPlan
from skymosaic.preflight import PreflightError, PreflightEstimate, estimate_run
from skymosaic.reproject import OutputGrid, grid_from_header, optimal_grid

from . import plan as plan_phase
from ._catalog import Catalog
from ._run import Run

__all__ = ["choose_grid", "estimate_frames", "grid_signature", "preflight", "run"]

logger = logging.getLogger(__name__)

NAME = "grid"


def run(ctx: Run, catalog: Catalog) -> OutputGrid:
    """The output grid of the catalog's frames, canonical (`canonical_grid`); a run whose
    frames fit no grid fails with the reason."""
    with ctx.phase(NAME):
        try:
            grid = canonical_grid(choose_grid(catalog.frames, ctx.config))
        except ValueError as err:  # no grid can hold these frames (a clear reason)
            ctx.fail("no output grid", str(err))
    logger.info("output grid %d x %d px at %.3f arcsec/px", grid.shape[1], grid.shape[0],
                grid.pixel_scale_arcsec)
    return grid


def choose_grid(frames: Sequence[FrameInfo], config: Config) -> OutputGrid:
    """The output grid (user header, or optimal over every frame)."""
    if config.output.wcs_header is not None:
        return grid_from_header(config.output.wcs_header)
    scale = (config.output.pixel_scale_arcsec
             or float(np.median([f.pixel_scale_arcsec for f in frames])))
    footprints = [frame_footprint(f.wcs, f.shape[1:], samples=9) for f in frames]
    # no size limit here: the pre-flight check (`skymosaic.preflight`) judges the size and
    # names the frames that make the grid large
    return optimal_grid(footprints, pixel_scale_arcsec=scale, rotation=config.output.rotation,
                        projection=config.output.projection, max_pixels=math.inf)


def canonical_grid(grid: OutputGrid) -> OutputGrid:
    """The grid with its WCS rebuilt from its FITS header.

    A WCS computed in memory carries more digits than its header; a Dask worker receives
    the WCS through its header (pickling), and the written mosaic has only the header. Rebuilding
    it here makes the threaded and the Dask engines (and a resumed run) map pixels through
    the very same WCS, so they give identical mosaics.
    """
    return OutputGrid(wcs=WCS(grid.wcs.to_header(relax=True)), shape=grid.shape)


def grid_signature(grid: OutputGrid) -> list:
    """What the fingerprints of the phases after this one hash of the grid."""
    return [list(grid.shape), grid.wcs.to_header_string(relax=True)]


def estimate_frames(frames: Sequence[FrameInfo], config: Config) -> PreflightEstimate:
    """The pre-flight estimate of a run of ``frames`` (headers only; `skymosaic plan` and
    `skymosaic inspect` print it): the grid `choose_grid` picks, its size, the bytes it
    writes, the memory it needs and the time it takes, checked against every limit but
    the free disk space (which a run checks in its output folder)."""
    return estimate_run(frames, choose_grid(frames, config), config)


def preflight(ctx: Run, catalog: Catalog, stack_plan: StackPlan | None, grid: OutputGrid) -> None:
    """Stop before any pixel is written when the run exceeds a limit (`skymosaic.preflight`)."""
    mode, n_mosaics, groups = None, 1, None
    if stack_plan is not None:
        mode, n_mosaics = "grid", max(1, len({row.filter for row in stack_plan.rows}))
    elif ctx.config.stack.enabled:
        groups = plan_phase.clustering(ctx, catalog).groups
    estimate = estimate_run(catalog.frames, grid, ctx.config, out=ctx.out, mode=mode,
                            n_mosaics=n_mosaics, groups=groups)
    ctx.report.preflight = estimate.to_dict()
    for line in estimate.lines():
        logger.info("pre-flight: %s", line)
    if not estimate.ok:
        message = estimate.message()
        logger.error("%s", message)
        ctx.finish("failed: pre-flight check")
        raise PreflightError(message, estimate)
