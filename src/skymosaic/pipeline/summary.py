"""The last step of a classic run: the ``frames``, ``output`` and ``tiles`` sections of
run.json from the catalog, the mosaic's summary (`coadd`) and the master tiles."""

from __future__ import annotations

from skymosaic.reproject import OutputGrid
from skymosaic.stack.classic import StackedGroups

from ._catalog import Catalog
from ._report import FramesReport, OutputReport, RunReport

__all__ = ["summarise"]


def summarise(report: RunReport, catalog: Catalog, coadded: dict, grid: OutputGrid,
              weights: dict[str, float], stacked: StackedGroups | None) -> None:
    """Fill ``report.frames``, ``report.output`` and (classic mode) ``report.tiles``."""
    frames = []
    in_tile = {}
    if stacked is not None:
        for tile in stacked.tiles:
            for name in tile.frames:
                in_tile[name] = tile.tile_id
    used = set(coadded["used"])
    for info in catalog.frames:
        entry = info.to_dict()
        stats = catalog.stats.get(str(info.path))
        if stats is not None:
            entry["stats"] = stats.to_dict()
        quality = catalog.quality.get(str(info.path))
        if quality is not None:
            entry["quality"] = quality.to_dict()
        entry["tile"] = in_tile.get(info.name)
        entry["weight"] = weights.get(info.name)
        entry["used"] = info.name in used or info.name in in_tile
        frames.append(entry)
    report.frames = FramesReport(found=len(catalog.frames) + len(catalog.rejected),
                                 used=sum(1 for f in frames if f["used"]),
                                 rejected=dict(catalog.rejected), list=frames)
    report.output = OutputReport(
        grid=grid.to_dict(), channels=int(coadded["shape"][0]),
        coverage_fraction=float(coadded["coverage_fraction"]), max_depth=int(coadded["max_depth"]),
        blocks=coadded["blocks"], block_rows=coadded["block_rows"],
        inputs_coadded=len(coadded["used"]),
    )
    if stacked is not None:
        report.tiles = [t.to_dict() for t in stacked.tiles]
        report.tiles_failed = stacked.failed
