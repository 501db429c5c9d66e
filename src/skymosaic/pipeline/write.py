"""Phase 8, write: the science FITS (streamed from the coadd's on-disk store), the
preview and the exports with the colour calibration (`skymosaic._display`); then the
offline report (`skymosaic.report`). Part of the mosaic's artifact (`coadd`): no
fingerprint of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from skymosaic._display import plan_display, write_display
from skymosaic._space import DiskFullError
from skymosaic._version import __version__
from skymosaic.assemble import CoaddResult
from skymosaic.config import config_digest
from skymosaic.io._stream import StoreSource, preview_plane, write_mosaic_from_disk
from skymosaic.reproject import OutputGrid

from ._run import Run

__all__ = ["WriteInputs", "run", "write_report"]

logger = logging.getLogger(__name__)

NAME = "write"


@dataclass
class WriteInputs:
    """The output grid and the coadd (in its on-disk store)."""

    grid: OutputGrid
    result: CoaddResult


def run(ctx: Run, inputs: WriteInputs) -> tuple[Path, dict, dict]:
    """Write the products; returns the mosaic's path, the other products (name -> file)
    and the colour calibration's report."""
    config, out, result = ctx.config, ctx.out, inputs.result
    history = [
        f"skymosaic {__version__}: weighted-mean coadd of {len(result.used)} input(s)",
        f"config digest {config_digest(config)}; kernel {config.reproject.kernel}; "
        f"weighting {config.coadd.weighting}",
    ]
    history += [f"input {name}" for name in result.used[:500]]
    cards = {"NINPUTS": (len(result.used), "frames or master tiles coadded"),
             "CFGHASH": (config_digest(config), "skymosaic config digest")}
    budget = config.memory_budget_bytes
    assert result.store is not None  # the pipeline always coadds into a BlockStore
    display = plan_display(preview_plane(result.store, max_size=config.output.preview_max_size,
                                         memory_budget=budget), config)
    history += display.history()
    cards.update(display.cards())
    mosaic_path = write_mosaic_from_disk(out / f"{config.output.name}.fits", result.store,
                                         inputs.grid.wcs, memory_budget=budget, history=history,
                                         cards=cards, color=display.science_color)
    products = write_display(out, config.output.name, config, display, StoreSource(result.store),
                             inputs.grid.wcs, memory_budget=budget, history=history, cards=cards)
    return mosaic_path, products, display.report()


def write_report(ctx: Run) -> None:
    """OUT/index.html, the offline report (`skymosaic.report`), unless ``output.report`` is
    off; a report that cannot be written is a warning, never a failed run."""
    if not ctx.config.output.report:
        return
    from skymosaic.report import write_report as write_html  # noqa: PLC0415 - the layer above

    try:
        with ctx.phase("report"):
            write_html(ctx.out, memory_budget=ctx.config.memory_budget_bytes,
                       threads=ctx.config.run.threads)
    except (OSError, ValueError, KeyError, DiskFullError) as err:  # the mosaic is complete
        logger.warning("report not written: %s: %s", type(err).__name__, err)
        return
    ctx.finish()  # records the report's time in run.json
