"""`run_pipeline`: the run directory, then the phases in their one order (docs/architecture.md)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from skymosaic._dask import dask_client
from skymosaic._manifest import MANIFEST_NAME, Manifest
from skymosaic._memory import limit_heap_growth
from skymosaic._space import DiskFullError
from skymosaic._threads import one_blas_thread
from skymosaic.assemble import CoaddOptions
from skymosaic.config import Config, dump_toml
from skymosaic.io import atomic_path
from skymosaic.io.stack_plan import StackPlan

from . import canvas, coadd, discover, gridmode, photometry, stack, summary, targets, verify
from ._catalog import Catalog
from ._run import Progress, Run, RunResult, log_to_file, run_phase
from .write import write_report

__all__ = ["run_pipeline"]

logger = logging.getLogger(__name__)


def run_pipeline(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: Config | None = None,
    *,
    progress: Progress | None = None,
) -> RunResult:
    """Run the whole pipeline on ``inputs`` (files, folders, globs) into ``out_dir``.

    Classic mode (``stack.enabled``, the default): discover -> verify and measure quality ->
    reject outliers -> cluster by sky position -> stack each group into a master tile ->
    coadd the tiles (and the frames of groups too small to stack) -> write. With
    ``stack.enabled = false`` every frame is coadded directly.

    Resume: every artifact is recorded with the fingerprint of its inputs in
    ``out_dir/manifest.json``; a rerun into the same folder reuses each one that still
    matches (``run.fresh`` ignores them) and says which in ``run.json`` (``"resume"``).
    With ``run.scheduler`` set, master tiles and coadd blocks run as Dask tasks
    (docs/scale.md).

    Raises
    ------
    NoUsableFramesError
        When no frame is usable (the report is still written to ``run.json``).
    FileNotFoundError
        When an input does not exist.
    PreflightError
        When the output grid, the disk space or the memory budget do not suffice
        (`skymosaic.preflight`): before any pixel is written.
    DiskFullError
        When a write fails for lack of space; the artifacts finished so far stay in
        ``out_dir`` (a rerun resumes from them).
    """
    config = config or Config()
    progress = progress or Progress()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # how much freed memory the allocator keeps, from the budget (see skymosaic._memory)
    limit_heap_growth(config.memory_budget_bytes)
    with atomic_path(out / "config.toml", suffix=".toml") as tmp:
        tmp.write_text(dump_toml(config))
    with log_to_file(out / "skymosaic.log"):
        ctx = Run(out, config, progress, Manifest(out, fresh=config.run.fresh))
        local = config.run.scheduler == "local"
        with dask_client(config.run.scheduler, workers=config.run.workers,
                         memory_limit_bytes=config.memory_budget_bytes if local else None,
                         budget_bytes=config.memory_budget_bytes) as client:
            ctx.client = client
            try:
                with one_blas_thread():  # our pools are the parallelism (skymosaic._threads)
                    return _run_phases(ctx, inputs)
            except DiskFullError as err:
                _disk_full(ctx, err)
                raise


def _disk_full(ctx: Run, err: DiskFullError) -> None:
    """Log a write that failed for lack of space and record it in run.json, if it fits."""
    logger.error("%s; the artifacts finished so far are kept in %s (%s): free some space and "
                 "rerun to resume", err, ctx.out, MANIFEST_NAME)
    try:
        ctx.finish(f"failed: disk full ({err.path})")
    except (DiskFullError, OSError) as again:
        logger.error("run.json could not be written either: %s", again)


def _run_phases(ctx: Run, inputs: Sequence[str | os.PathLike]) -> RunResult:
    """discover -> verify, then one target's phases (or each target's, `targets.run`)."""
    found = discover.run(ctx, inputs)
    ctx.catalog_fp = run_phase(ctx, verify, found.catalog).fingerprint
    if found.plan is None and len(ctx.targets) > 1:
        return targets.run(ctx, found.catalog, mosaic=_mosaic_phases)
    return _mosaic_phases(ctx, found.paths, found.plan, found.catalog)


def _mosaic_phases(ctx: Run, paths: Sequence[Path], plan: StackPlan | None,
                   catalog: Catalog) -> RunResult:
    """canvas -> pre-flight -> (plan ->) stack -> photometry -> coadd -> write -> summary
    of one target; grid mode after the pre-flight check."""
    config, out = ctx.config, ctx.out
    if not catalog.frames:
        ctx.fail("no usable frame", f"no usable frame among {len(paths)} file(s)")
    grid = canvas.run(ctx, catalog)
    canvas.preflight(ctx, catalog, plan, grid)
    scratch = out / ".scratch"
    scratch.mkdir(exist_ok=True)
    if plan is not None:
        try:
            return gridmode.run(ctx, catalog, plan, grid, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    try:
        opts = CoaddOptions.from_config(config, threads=ctx.threads, scratch=scratch,
                                        backend=ctx.backend)
        stacked = stack.run(ctx, catalog, grid, opts) if config.stack.enabled else None
        sources, weights, sources_fp = stack.coadd_sources(catalog, stacked, config)
        inputs = photometry.Sources(sources, grid, opts, sources_fp)
        correction = photometry.correct(ctx, inputs)
        made = coadd.mosaic(ctx, coadd.MosaicInputs(inputs, correction))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, reason in made["rejected"].items():
        path = next((str(f.path) for f in catalog.frames if f.name == name), name)
        catalog.rejected[path] = reason
    if not made["used"]:
        ctx.fail("no frame contributed", "no frame contributed any pixel to the output grid")
    ctx.report.coverage_renorm = made.get("coverage_renorm")
    ctx.report.color = made.get("color")
    summary.summarise(ctx.report, catalog, made, grid, weights, stacked)
    ctx.report.products = dict(made["products"], log="skymosaic.log", config="config.toml")
    ctx.finish()
    write_report(ctx)
    mosaic_path = out / made["products"]["mosaic"]
    preview = made["products"]["preview"]
    logger.info("mosaic written to %s", mosaic_path)
    return RunResult(out, mosaic_path, out / preview if preview else None, ctx.report.to_dict(),
                     tuple(made["shape"]))
