"""Phase 7, coadd: the block coadd of the corrected sources (resumable block by block),
the optional coverage renormalisation, the photometry diagnostics, then the products
(`write`). Its artifact is the finished mosaic: reused whole when the sources, their
corrections, the grid and the settings below are unchanged.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from skymosaic._manifest import crash_point, fingerprint
from skymosaic.assemble import (
    BlockStore,
    CoaddResult,
    DiskMosaic,
    coadd,
    renormalise_coverage,
)
from skymosaic.config import Config, config_digest

from . import write
from ._run import Run, Sections, run_phase
from .canvas import grid_signature
from .photometry import Sources, write_diagnostics

__all__ = ["MosaicInputs", "mosaic", "run"]

logger = logging.getLogger(__name__)

NAME = "mosaic"
SECTIONS = Sections(("reproject", "output"), {"output": frozenset({"report"})})
STORE = "meta"
TIMING = None  # "coadd", "coverage_renorm" and "write", timed apart

#: The sections the block coadd's own fingerprint covers (``coadd`` / ``coadd_renorm``).
COADD_SECTIONS = Sections(("reproject", "coadd"))


@dataclass
class MosaicInputs:
    """The corrected sources (`photometry.Sources`) and their corrections."""

    sources: Sources
    correction: dict


def key(ctx: Run, inputs: MosaicInputs, covered: dict) -> list:
    return [inputs.sources.fingerprint, inputs.correction, grid_signature(inputs.sources.grid),
            covered, _renorm_settings(ctx.config), config_digest(ctx.config)]


def mosaic(ctx: Run, inputs: MosaicInputs) -> dict:
    """The mosaic's summary (what `summary.summarise` and the report need), computed or
    reused (``resume: ... up to date``)."""
    art = run_phase(ctx, sys.modules[__name__], inputs)
    if art.reused:
        logger.info("resume: %s is up to date; nothing to recompute",
                    ctx.manifest.artifacts[NAME]["path"])
    return art.value


def recorded(ctx: Run, summary: dict) -> dict | None:
    """The mosaic file is the artifact; a run that coadded nothing keeps nothing."""
    return {"path": ctx.out / summary["products"]["mosaic"]} if summary["used"] else None


def run(ctx: Run, inputs: MosaicInputs) -> dict:
    """Coadd, optional coverage renormalisation, diagnostics, write; returns the summary
    recorded with the mosaic, after which the coadd stores are deleted."""
    config, out = ctx.config, ctx.out
    src = inputs.sources
    sources, grid, opts = src.sources, src.grid, src.options
    base_fp = fingerprint("coadd", src.fingerprint, inputs.correction, grid_signature(grid),
                          COADD_SECTIONS.dump(config))
    with ctx.phase("coadd"):
        result = _run_coadd(ctx, "coadd", base_fp, src)
    stores = ["coadd"]
    extra = {}
    if config.photometry.enabled and config.photometry.coverage_renorm and len(sources) > 1:
        with ctx.phase("coverage_renorm"):
            factors = renormalise_coverage(
                sources, grid, result.weight, options=opts,
                sigma_px=config.photometry.coverage_sigma_px, clip=config.photometry.coverage_clip,
            )
            extra["coverage_renorm"] = dict(zip([s.name for s in sources], factors.tolist(),
                                                strict=True))
            renorm_fp = fingerprint("coadd_renorm", base_fp, factors.tolist())
            result = _run_coadd(ctx, "coadd_renorm", renorm_fp, src)
            stores.append("coadd_renorm")
    if ctx.diagnostics is not None and config.photometry.diagnostics and result.used:
        write_diagnostics(out, sources, grid, ctx.diagnostics, result, opts.memory_budget)
    products = {}
    if result.used:
        with ctx.phase(write.NAME):
            mosaic_path, written, extra["color"] = write.run(ctx, write.WriteInputs(grid, result))
        products = {"mosaic": mosaic_path.name, **written}
    summary = {
        "used": result.used, "rejected": result.rejected, "shape": list(result.data.shape),
        "coverage_fraction": result.coverage_fraction, "max_depth": result.max_depth,
        "blocks": result.n_blocks, "block_rows": result.block_rows, "products": products,
        "outlier_pixels": result.outliers, **extra,
    }
    del result
    for name in stores:
        DiskMosaic(out / name).remove()
    ctx.manifest.forget(stores)
    return summary


def _run_coadd(ctx: Run, name: str, fp: str, src: Sources) -> CoaddResult:
    """One coadd pass into ``ctx.out/name``, resuming the blocks an interrupted run finished."""
    progress, manifest = ctx.progress, ctx.manifest
    entry = manifest.lookup(name, fp)
    meta = entry["meta"] if entry is not None else {"block_rows": None, "blocks": {}}
    done = {int(y0): stats for y0, stats in meta["blocks"].items()}
    state = {"started": False}

    def report(n: int, total: int) -> None:
        if not state["started"]:
            progress.start(name, total)
            state["started"] = True
        if n:
            progress.advance(name, n)

    def on_block(y0: int, stats: dict) -> None:
        meta["blocks"][str(y0)] = stats
        manifest.record(name, fp, path=ctx.out / name, meta=meta)
        crash_point("coadd")

    store = BlockStore(ctx.out / name, block_rows=meta["block_rows"], done=done, on_block=on_block)
    try:
        result = coadd(src.sources, src.grid, options=src.options, progress=report, store=store,
                       client=ctx.client)
    finally:
        progress.end(name)
    if store.done != done:  # the store did not match: it was started over
        meta["blocks"] = {}
    meta["block_rows"] = result.block_rows
    manifest.record(name, fp, path=ctx.out / name, meta=meta)
    if result.blocks_reused:
        manifest.reused[name] = {"blocks_reused": result.blocks_reused, "blocks": result.n_blocks}
        logger.info("resume: %s: %d of %d block(s) reused", name, result.blocks_reused,
                    result.n_blocks)
    return result


def _renorm_settings(config: Config) -> dict:
    p = config.photometry
    return {"enabled": p.enabled and p.coverage_renorm, "sigma": p.coverage_sigma_px,
            "clip": list(p.coverage_clip)}


