"""Phase 6, photometry: per-input gains, offsets and sky surfaces from the overlaps
(`skymosaic.assemble.match_sources`, docs/photometry.md), set on the coadd's sources. Any
failure of the solve falls back to the plain coadd (one warning).

Reused from the manifest when the sources, the grid and the settings below are unchanged.
The solve does not depend on the memory budget (it measures every overlap at full
resolution whatever the budget), so a resumed run with another budget reuses it.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skymosaic._surface import SkySurface
from skymosaic.assemble import CoaddOptions, CoaddResult, FileSource, match_sources, source_bbox
from skymosaic.io import FrameError, write_photometry_diagnostics
from skymosaic.io._stream import binned_plane
from skymosaic.photometry import PhotometryOptions
from skymosaic.reproject import OutputGrid

from ._run import Run, Sections, run_phase
from .canvas import grid_signature

__all__ = ["Sources", "correct", "run"]

logger = logging.getLogger(__name__)

NAME = "photometry"
SECTIONS = Sections(("reproject", "photometry"), {
    "reproject": frozenset({"edge"}),  # the fits are strict
    # the coverage renormalisation and the plot come after the solve
    "photometry": frozenset({"coverage_renorm", "coverage_sigma_px", "coverage_clip",
                             "diagnostics"}),
})
STORE = "meta"
TIMING = "photometry"


@dataclass
class Sources:
    """The coadd's inputs on the output grid, and their fingerprint (`stack.coadd_sources`)."""

    sources: Sequence[FileSource]
    grid: OutputGrid
    options: CoaddOptions
    fingerprint: str


def key(ctx: Run, inputs: Sources, covered: dict) -> list:
    return [inputs.fingerprint, grid_signature(inputs.grid), covered]


def correct(ctx: Run, inputs: Sources) -> dict:
    """Solve (or reuse) the corrections and set them on the sources; returns them,
    ``{name: [gain, offset, surface coefficients]}`` (what the coadd's fingerprint depends
    on), empty when photometry is off or there is one source."""
    if not ctx.config.photometry.enabled or len(inputs.sources) < 2:
        return {}
    saved = run_phase(ctx, sys.modules[__name__], inputs).value
    for s in inputs.sources:
        gain, offset, *surface = saved["corrections"].get(s.name, (None, None, None))
        s.gain = None if gain is None else np.asarray(gain, np.float32)
        s.offset = None if offset is None else np.asarray(offset, np.float32)
        s.surface = (None if not surface or surface[0] is None
                     else SkySurface(np.asarray(surface[0]), s.shape[1:]))
    ctx.report.photometry = saved["report"]
    ctx.diagnostics = saved.get("diagnostics")
    return saved["corrections"]


def run(ctx: Run, inputs: Sources) -> dict:
    """The photometric solve: corrections, report and diagnostics data (JSON-ready)."""
    cfg = ctx.config.photometry
    sources, grid = inputs.sources, inputs.grid
    options = PhotometryOptions.from_config(ctx.config)
    try:
        match = match_sources(sources, grid, options=inputs.options, photometry=options,
                              match_kernel=cfg.match_kernel)
    except (FrameError, ValueError, ArithmeticError, MemoryError) as err:
        logger.warning("photometric matching failed (%s: %s); plain coadd without corrections",
                       type(err).__name__, err)
        return {"corrections": {}, "report": {"status": f"fallback: {err}"}}
    rep = match.report
    report = {
        **match.counts(), "binning": match.binning, "n_inputs": len(sources),
        "gain_range": [float(match.gains.min()), float(match.gains.max())],
        "offset_range": [float(match.offsets.min()), float(match.offsets.max())],
        "inputs": {s.name: {"gain": match.gains[k].tolist(), "offset": match.offsets[k].tolist(),
                            "surface": None if s.surface is None else s.surface.to_list()}
                   for k, s in enumerate(sources)},
        "pairs": rep.pairs, "timings_s": rep.timings,
    }
    logger.info("photometry: %d inputs, %d overlaps, regressions ok/offset-only/failed %d/%d/%d, "
                "gains %.4f..%.4f", len(sources), rep.n_overlaps, rep.n_relations_ok,
                rep.n_relations_offset_only, rep.n_relations_failed, match.gains.min(),
                match.gains.max())
    corrections = {s.name: [None if s.gain is None else np.asarray(s.gain).tolist(),
                            None if s.offset is None else np.asarray(s.offset).tolist(),
                            None if s.surface is None else s.surface.to_list()] for s in sources}
    diagnostics = {"gains": match.gains.tolist(),
                   "pairs": [[p["i"], p["j"], p.get("robust_weight", 1.0), p.get("sky_step")]
                             for p in rep.pairs if p["channel"] == 0]}
    return {"corrections": corrections, "report": report, "diagnostics": diagnostics}


def write_diagnostics(out: Path, sources: Sequence[FileSource], grid: OutputGrid, diagnostics: dict,
                      result: CoaddResult, memory_budget: int) -> None:
    """``photometry_diagnostics.png``: the weight map, the inputs' boxes, gains and pairs."""
    placed = [source_bbox(s, grid) for s in sources]
    index = [k for k, b in enumerate(placed) if b is not None]
    pairs = [(index[i], index[j], *rest) for i, j, *rest in diagnostics["pairs"]]
    weight, factor = result.weight, 1
    if result.store is not None:  # draw from a binned copy: the weight map may not fit in memory
        factor = max(1, math.ceil(max(grid.shape) / 1600))
        weight = binned_plane(result.store, "weight", factor, memory_budget=memory_budget)
        placed = [None if b is None else tuple(v // factor for v in b) for b in placed]
    write_photometry_diagnostics(out / "photometry_diagnostics.png", weight, placed,
                                 np.asarray(diagnostics["gains"]), pairs)
