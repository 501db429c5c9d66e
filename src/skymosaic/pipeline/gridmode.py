"""Grid/survey mode after the catalog and the canvas (`skymosaic.grid.run_grid`): tiles,
stacks, assembly and products of every filter of the stack plan, then the report."""

from __future__ import annotations

import logging
from pathlib import Path

from skymosaic.assemble import CoaddOptions
from skymosaic.grid import run_grid
from skymosaic.io.stack_plan import StackPlan
from skymosaic.reproject import OutputGrid

from ._catalog import Catalog
from ._report import FramesReport, OutputReport
from ._run import Run, RunResult
from .write import write_report

__all__ = ["run"]

logger = logging.getLogger(__name__)


def run(ctx: Run, catalog: Catalog, plan: StackPlan, canvas: OutputGrid,
        scratch: Path) -> RunResult:
    """Grid mode's mosaics (one per filter) on ``canvas``; fills the report."""
    config = ctx.config
    opts = CoaddOptions.from_config(config, threads=ctx.threads, scratch=scratch,
                                    backend=ctx.backend)
    products = run_grid(
        plan=plan, frames=catalog.frames, canvas=canvas, config=config, options=opts, out=ctx.out,
        scratch=scratch, noise={k: v.noise for k, v in catalog.stats.items()},
        fwhm={k: q.fwhm for k, q in catalog.quality.items()}, threads=ctx.threads,
        phase=ctx.phase, progress=ctx.progress, client=ctx.client,
    )
    if not products:
        ctx.fail("no tile assembled", "grid mode assembled no tile")
    first = products[0]
    used = {name for p in products for name in p.report["frames"]}
    ctx.report.grid = {p.filter or "": p.report for p in products}
    ctx.report.frames = FramesReport(
        found=len(catalog.frames) + len(catalog.rejected), used=len(used),
        rejected=dict(catalog.rejected),
        list=[{**f.to_dict(), "used": f.name in used} for f in catalog.frames],
    )
    ctx.report.output = OutputReport(grid=canvas.to_dict(), channels=int(first.data_shape[0]),
                                     coverage_fraction=first.report["coverage_fraction"],
                                     max_depth=first.report["max_depth"])
    ctx.report.products = {
        "mosaic": first.mosaic_path.name,
        "preview": first.preview_path.name if first.preview_path else None,
        "mosaics": {p.filter or "": p.mosaic_path.name for p in products},
        "log": "skymosaic.log", "config": "config.toml",
    }
    ctx.finish()
    write_report(ctx)
    logger.info("[GRID] %d mosaic(s) written: %s", len(products),
                ", ".join(p.mosaic_path.name for p in products))
    return RunResult(ctx.out, first.mosaic_path, first.preview_path, ctx.report.to_dict(),
                     first.data_shape)
