"""Phase 1, discover: find the inputs (or read grid mode's stack plan) and classify every
file from its header; frames without a usable WCS are plate-solved (`skymosaic.astrometry`).

No resume fingerprint of its own: headers are cheap, and the plate solutions are cached by
file content in ``OUT/wcs/``. `plan_inputs` (``skymosaic plan``) is this phase and the
classic grouping, written as an editable ``stack_plan.csv``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skymosaic.astrometry import review_wcs, solve_missing_wcs
from skymosaic.config import Config
from skymosaic.grid import find_plan
from skymosaic.io import FrameError, discover_inputs, scan_frame
from skymosaic.io.stack_plan import (
    PlanRow,
    StackPlan,
    StackPlanError,
    read_stack_plan,
    write_stack_plan,
)
from skymosaic.stack.classic import group_frames

from . import targets
from ._catalog import Catalog
from ._report import FramesReport
from ._run import NoUsableFramesError, Progress, Run

__all__ = ["Discovered", "build_catalog", "plan_inputs", "run"]

logger = logging.getLogger(__name__)

NAME = "discover"


@dataclass
class Discovered:
    """The files found (or named by the plan), grid mode's stack plan, and the catalog."""

    paths: list[Path]
    plan: StackPlan | None
    catalog: Catalog


def run(ctx: Run, inputs: Sequence[str | os.PathLike]) -> Discovered:
    """Discover and classify ``inputs``; split classic runs into sky-disjoint targets
    (`targets.find_run_targets`). Writes ``plan``, ``targets``, ``frames``, ``footprints``
    and ``solve`` of the report."""
    config = ctx.config
    with ctx.phase(NAME):
        plan_path = find_plan(inputs, config)
        plan = _read_plan(ctx, plan_path) if plan_path is not None else None
        if plan is not None:
            paths = _unique_paths(row.path for row in plan.rows)
            logger.info("[GRID] plan %s: %d frame(s), %d row(s) rejected", plan_path,
                        len(paths), len(plan.rejected))
        else:
            paths = discover_inputs(inputs, recursive=config.input.recursive)
        logger.info("found %d candidate files", len(paths))
        catalog = build_catalog(paths, config, progress=ctx.progress, threads=ctx.threads,
                                run_dir=ctx.out)
        if plan is None:
            targets.find_run_targets(ctx, catalog)
    ctx.report.frames = FramesReport(found=len(paths), rejected=catalog.rejected)
    # sky corners of every frame with a WCS, rejected ones included (the report's outlines)
    ctx.report.footprints = {f.name: np.round(f.footprint, 7).tolist()
                             for f in catalog.frames if f.footprint is not None}
    if catalog.solve:
        ctx.report.solve = catalog.solve
    return Discovered(paths, plan, catalog)


def build_catalog(paths: Sequence[Path], config: Config, *, progress: Progress | None = None,
                  threads: int = 1, run_dir: Path | None = None) -> Catalog:
    """Classify every file from its header; reject the unusable with a reason.

    Frames without a usable WCS (none, a broken one, or one whose scale contradicts the
    optics) are plate-solved when ``config.solve.enabled`` and ``run_dir`` is given: the
    solutions are cached in ``run_dir/wcs`` (docs/astrometry.md) and the solved frames join
    the catalog; the others are rejected with the solver's reason.
    """
    progress = progress or Progress()
    catalog = Catalog()
    progress.start("discover", len(paths))
    solving = config.solve.enabled and run_dir is not None

    def scan(path: Path):
        try:
            info = scan_frame(path, wcs_dirs=config.input.wcs_dirs,
                              bayer_pattern=config.input.bayer_pattern,
                              on_bad_wcs="drop" if solving else "raise")
        except FrameError as err:
            return path, None, str(err)
        if solving:
            review_wcs(info, check_scale=config.solve.validate_existing,
                       max_scale_ratio=config.solve.max_scale_ratio)
        return path, info, None

    unsolved = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, info, error in pool.map(scan, paths):
            progress.advance("discover")
            if error is not None:
                catalog.reject(path, error)
            elif info.wcs is None:
                unsolved.append(info)
            else:
                catalog.frames.append(info)
    progress.end("discover")
    solved, failed, catalog.solve = solve_missing_wcs(unsolved, run_dir, config,
                                                      threads=threads, progress=progress)
    for path, reason in failed.items():
        catalog.reject(path, reason)
    if solved:
        order = {str(p): k for k, p in enumerate(paths)}
        catalog.frames = sorted(catalog.frames + solved, key=lambda f: order.get(str(f.path), 0))
    _reject_mixed_channels(catalog)
    return catalog


def _reject_mixed_channels(catalog: Catalog) -> None:
    counts: dict[int, int] = {}
    for f in catalog.frames:
        counts[f.channels] = counts.get(f.channels, 0) + 1
    if len(counts) < 2:
        return
    keep = max(counts, key=lambda c: (counts[c], c))
    for f in [f for f in catalog.frames if f.channels != keep]:
        catalog.reject(f.path, f"{f.channels}-channel frame among {counts[keep]} {keep}-channel "
                               "frames (mono and colour inputs cannot be coadded together)")
    catalog.frames = [f for f in catalog.frames if f.channels == keep]


def _read_plan(ctx: Run, path: Path) -> StackPlan:
    """Read the stack plan (the reader warns about each rejected row) into the report."""
    ctx.report.mode = "grid"
    try:
        plan = read_stack_plan(path)
    except (StackPlanError, OSError) as err:
        ctx.report.plan = {"path": str(path), "error": str(err)}
        ctx.finish("failed: bad plan")
        raise
    ctx.report.plan = {"path": str(path), "rows": len(plan.rows),
                       "rejected": [bad._asdict() for bad in plan.rejected]}
    return plan


def _unique_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    seen, out = set(), []
    for p in paths:
        key = str(Path(p).resolve())
        if key not in seen:
            seen.add(key)
            out.append(Path(p))
    return out


def plan_inputs(
    inputs: Sequence[str | os.PathLike], csv_path: str | os.PathLike, config: Config | None = None
) -> tuple[Path, Catalog, list[list[str]]]:
    """Write the classic-mode grouping of ``inputs`` as an editable ``stack_plan.csv``.

    Headers only (no pixels are read): frames without a usable WCS are left out (and
    logged); every other frame gets a row with its exposure, mount, filter, batch (the
    night of DATE-OBS) and ``tile_id`` = its group. Returns the CSV path, the catalog and the
    groups (frame names).

    Raises
    ------
    NoUsableFramesError
        When no frame has a usable WCS.
    """
    config = config or Config()
    paths = discover_inputs(inputs, recursive=config.input.recursive)
    catalog = build_catalog(paths, config, threads=config.run.threads or (os.cpu_count() or 1))
    if not catalog.frames:
        raise NoUsableFramesError(f"no frame with a usable WCS among {len(paths)} file(s)")
    grouping = group_frames(catalog.frames, config)
    rows = []
    for index, members in enumerate(grouping.groups):
        for k in members:
            f = catalog.frames[k]
            rows.append(PlanRow(
                path=f.path, exposure=f.exposure, mount=f.mount, filter=f.filter,
                batch_id=(f.date_obs or "")[:10] or None, order=len(rows),
                tile_id=f"tile_{index:04d}",
                extra={}, row_number=len(rows) + 1,
            ))
    out = write_stack_plan(rows, csv_path)
    groups = [[catalog.frames[k].name for k in members] for members in grouping.groups]
    logger.info("wrote %d frame(s) in %d group(s) to %s", len(rows), len(groups), out)
    return out, catalog, groups
