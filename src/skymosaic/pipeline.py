"""The orchestrator: runs the phases, times them, and writes the products and the report.

Phases (see docs/architecture.md): discover (headers only) -> verify (pixels read once:
unreadable or empty frames are rejected, noise measured) -> grid (output WCS) -> coadd ->
write. Each phase is a plain function; this module only sequences them, records what
happened in ``run.json`` and keeps a log file in the output folder.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

from skymosaic._dask import dask_client
from skymosaic._display import plan_display, write_display
from skymosaic._manifest import MANIFEST_NAME, Manifest, crash_point, file_signature, fingerprint
from skymosaic._memory import limit_heap_growth
from skymosaic._space import DiskFullError, format_bytes
from skymosaic._stats import FrameStats
from skymosaic._surface import SkySurface
from skymosaic._verify import check_frames
from skymosaic._version import __version__
from skymosaic.assemble import CoaddOptions, CoaddResult, FileSource, coadd
from skymosaic.assemble._coadd import BlockStore, DiskMosaic
from skymosaic.assemble._phase5 import match_sources, renormalise_coverage
from skymosaic.astrometry import review_wcs, solve_missing_wcs
from skymosaic.backend import Backend, select_backend
from skymosaic.config import Config, config_digest, dump_toml
from skymosaic.grid import find_plan, run_grid
from skymosaic.io import (
    FrameError,
    FrameInfo,
    discover_inputs,
    frame_footprint,
    scan_frame,
)
from skymosaic.io._diagnostics import write_photometry_diagnostics
from skymosaic.io._stream import StoreSource, binned_plane, preview_plane, write_mosaic_from_disk
from skymosaic.io._writer import atomic_path, write_json
from skymosaic.io.stack_plan import (
    PlanRow,
    StackPlan,
    StackPlanError,
    read_stack_plan,
    write_stack_plan,
)
from skymosaic.photometry import PhotometryOptions
from skymosaic.plan import Clustering
from skymosaic.plan.targets import Target, TargetError, TargetSplit, split_targets
from skymosaic.preflight import PreflightError, PreflightEstimate, estimate_run
from skymosaic.reproject import OutputGrid, grid_from_header, optimal_grid
from skymosaic.stack.classic import StackedGroups, group_frames, select_by_quality, stack_groups
from skymosaic.stack.master import MasterTile
from skymosaic.stack.quality import FrameQuality

__all__ = [
    "DiskFullError",
    "NoUsableFramesError",
    "NullProgress",
    "PreflightError",
    "Progress",
    "RunResult",
    "TargetEstimate",
    "build_catalog",
    "estimate_frames",
    "estimate_targets",
    "run_pipeline",
    "split_frames",
]

logger = logging.getLogger(__name__)


class NoUsableFramesError(RuntimeError):
    """Nothing usable is left to mosaic (the message says why)."""


class Progress:
    """Progress reporting interface (the CLI draws bars; the default draws nothing)."""

    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, phase: str, n: int = 1) -> None:
        pass

    def skip(self, phase: str, n: int = 1) -> None:
        """``n`` items were reused from an earlier run: done, but no measure of speed.

        Bars that show a rate or an ETA should not count them (the default advances).
        """
        self.advance(phase, n)

    def end(self, phase: str) -> None:
        pass


NullProgress = Progress


@dataclass
class Catalog:
    """Frames found, split into usable ones and rejected ones (with reasons)."""

    frames: list[FrameInfo] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    stats: dict[str, FrameStats] = field(default_factory=dict)
    quality: dict[str, FrameQuality] = field(default_factory=dict)
    solve: dict = field(default_factory=dict)  # plate-solving report (run.json "solve")
    sessions: list[dict] = field(default_factory=list)  # quality sessions (run.json "sessions")

    def reject(self, path: Path | str, reason: str) -> None:
        logger.warning("%s: %s; frame rejected", Path(path).name, reason)
        self.rejected[str(path)] = reason


@dataclass
class RunResult:
    """What a run produced: paths of the products and the report written to run.json."""

    out_dir: Path
    mosaic_path: Path
    preview_path: Path | None
    report: dict
    data_shape: tuple[int, ...]
    targets: list[RunResult] = field(default_factory=list)  # several targets: one run each


def build_catalog(paths: Sequence[Path], config: Config, *, progress: Progress | None = None,
                  threads: int = 1, run_dir: Path | None = None) -> Catalog:
    """Phase 1: classify every file from its header; reject the unusable with a reason.

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
    solved, failed, catalog.solve = solve_missing_wcs(unsolved, run_dir, config.solve,
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


def verify_frames(catalog: Catalog, config: Config, *, progress: Progress, threads: int) -> None:
    """Phase 2: read each frame once; reject unreadable or empty ones; measure noise and,
    when quality selection is on, stars (count, FWHM, elongation) with sep, on ``threads``
    worker processes for a large input (`skymosaic._verify`)."""
    progress.start("verify", len(catalog.frames))
    measure = config.quality.enabled or "fwhm" in config.stack.weighting
    kept = []
    for check in check_frames(catalog.frames, valid_min=config.input.valid_min,
                              detect_sigma=config.quality.detect_sigma, measure=measure,
                              workers=threads):
        progress.advance("verify")
        if check.error is not None:
            catalog.reject(check.info.path, check.error)
            continue
        catalog.stats[str(check.info.path)] = check.stats
        if check.quality is not None:
            catalog.quality[str(check.info.path)] = check.quality
        kept.append(check.info)
    catalog.frames = kept
    progress.end("verify")


def choose_grid(frames: Sequence[FrameInfo], config: Config) -> OutputGrid:
    """Phase 3: the output grid (user header, or optimal over every frame)."""
    if config.output.wcs_header is not None:
        return grid_from_header(config.output.wcs_header)
    scale = config.output.pixel_scale_arcsec or float(np.median([f.pixel_scale_arcsec for f in frames]))
    footprints = [frame_footprint(f.wcs, f.shape[1:], samples=9) for f in frames]
    # no size limit here: the pre-flight check (`skymosaic.preflight`) judges the size and
    # names the frames that make the grid large
    return optimal_grid(footprints, pixel_scale_arcsec=scale, rotation=config.output.rotation,
                        projection=config.output.projection, max_pixels=math.inf)


def estimate_frames(frames: Sequence[FrameInfo], config: Config) -> PreflightEstimate:
    """The pre-flight estimate of a run of ``frames`` (headers only; `skymosaic plan` and
    `skymosaic inspect` print it): the grid `choose_grid` picks, its size, the bytes it
    writes, the memory it needs and the time it takes, checked against every limit but
    the free disk space (which a run checks in its output folder)."""
    return estimate_run(frames, choose_grid(frames, config), config)


@dataclass
class TargetEstimate:
    """The estimate of one target of `estimate_targets`: its name (None when the frames
    are not split), frames and pre-flight estimate (None, with ``error``, when no output
    grid can be made)."""

    name: str | None
    frames: list[FrameInfo]
    estimate: PreflightEstimate | None = None
    error: str | None = None
    target: Target | None = None

    def to_dict(self) -> dict:
        out = self.target.to_dict() if self.target is not None else {"name": self.name}
        out["frames"] = [f.name for f in self.frames]
        out["estimate"] = None if self.estimate is None else self.estimate.to_dict()
        if self.error is not None:
            out["error"] = self.error
        return out


def split_frames(frames: Sequence[FrameInfo], config: Config) -> TargetSplit | None:
    """The sky-disjoint targets of ``frames`` as a classic run splits them
    (`skymosaic.plan.targets`; ``targets.*`` settings), or None when ``targets.split`` is
    off or there is no frame.

    Raises
    ------
    TargetError
        When ``targets.select`` or ``targets.region`` match no frame.
    """
    cfg = config.targets
    if not cfg.split or not frames:
        return None
    return split_targets(np.stack([np.asarray(f.footprint) for f in frames]),
                         objects=[f.object for f in frames], names=[f.name for f in frames],
                         link_diagonals=cfg.link_diagonals, select=cfg.select, region=cfg.region)


def estimate_targets(frames: Sequence[FrameInfo], config: Config
                     ) -> tuple[list[TargetEstimate], dict[str, str]]:
    """The pre-flight estimate of each target a classic run of ``frames`` would mosaic
    (`split_frames`, then `estimate_frames` per target), and the lone frames it would
    leave out (name -> reason). Headers only: `skymosaic plan` and `inspect` print it.

    Raises
    ------
    TargetError
        When ``targets.select`` or ``targets.region`` match no frame.
    """
    frames = list(frames)
    split = split_frames(frames, config)
    if split is None:
        parts = [TargetEstimate(None, frames)]
        lone: dict[str, str] = {}
    else:
        parts = [TargetEstimate(t.name, [frames[k] for k in t.frames], target=t)
                 for t in split.targets]
        lone = {frames[k].name: reason for k, reason in split.lone.items()}
    for part in parts:
        if not part.frames:
            continue
        try:
            part.estimate = estimate_frames(part.frames, config)
        except ValueError as err:  # no usable grid (a bad output header, ...)
            part.error = str(err)
    return parts, lone


def frame_weight(info: FrameInfo, stats: FrameStats | None, weighting: str) -> float:
    """The scalar weight of a frame in the weighted mean."""
    if weighting == "exposure":
        return float(info.exposure) if info.exposure and info.exposure > 0 else 1.0
    if weighting == "noise" and stats is not None:
        var = np.nanmean(np.square(stats.noise))
        return float(1.0 / var) if np.isfinite(var) and var > 0 else 1.0
    return 1.0


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
    clustering = group_frames(catalog.frames, config)
    rows = []
    for index, members in enumerate(clustering.groups):
        for k in members:
            f = catalog.frames[k]
            rows.append(PlanRow(
                path=f.path, exposure=f.exposure, mount=f.mount, filter=f.filter,
                batch_id=(f.date_obs or "")[:10] or None, order=len(rows), tile_id=f"tile_{index:04d}",
                extra={}, row_number=len(rows) + 1,
            ))
    out = write_stack_plan(rows, csv_path)
    groups = [[catalog.frames[k].name for k in members] for members in clustering.groups]
    logger.info("wrote %d frame(s) in %d group(s) to %s", len(rows), len(groups), out)
    return out, catalog, groups


@contextmanager
def _log_to_file(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("skymosaic")
    root.addHandler(handler)
    previous = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def _normalise_weights(weights: list[float]) -> list[float]:
    """Scale frame weights to mean 1 (a master tile's WEIGHT is the sum of such weights)."""
    mean = float(np.mean(weights)) if weights else 1.0
    return [w / mean for w in weights] if mean > 0 else weights


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
    with _log_to_file(out / "skymosaic.log"):
        run = _Run(out, config, progress, Manifest(out, fresh=config.run.fresh))
        local = config.run.scheduler == "local"
        with dask_client(config.run.scheduler, workers=config.run.workers,
                         memory_limit_bytes=config.memory_budget_bytes if local else None,
                         budget_bytes=config.memory_budget_bytes) as client:
            run.client = client
            try:
                return _run_phases(run, inputs)
            except DiskFullError as err:
                _disk_full(run, err)
                raise


def _disk_full(run: _Run, err: DiskFullError) -> None:
    """Log a write that failed for lack of space and record it in run.json, if it fits."""
    logger.error("%s; the artifacts finished so far are kept in %s (%s): free some space and "
                 "rerun to resume", err, run.out, MANIFEST_NAME)
    try:
        run.finish(f"failed: disk full ({err.path})")
    except (DiskFullError, OSError) as again:
        logger.error("run.json could not be written either: %s", again)


def _clustering(run: _Run, catalog: Catalog) -> Clustering:
    """The classic grouping of the frames, reused from the manifest when the catalog and the
    ``[cluster]`` settings are unchanged; computed once per run (the pre-flight check needs
    it first)."""
    if run.clustering is not None:
        return run.clustering
    with run.phase("cluster"):
        cluster_fp = fingerprint("clustering", run.catalog_fp,
                                 run.config.model_dump(mode="json", include={"cluster"}))
        clustering = run.manifest.load_pickle("clustering", cluster_fp)
        if clustering is None:
            clustering = group_frames(catalog.frames, run.config)
            run.manifest.store_pickle("clustering", cluster_fp, clustering)
    run.clustering = clustering
    return clustering


def _preflight(run: _Run, catalog: Catalog, plan: StackPlan | None, grid: OutputGrid) -> None:
    """Stop before any pixel is written when the run exceeds a limit (`skymosaic.preflight`)."""
    mode, n_mosaics, groups = None, 1, None
    if plan is not None:
        mode, n_mosaics = "grid", max(1, len({row.filter for row in plan.rows}))
    elif run.config.stack.enabled:
        groups = _clustering(run, catalog).groups
    estimate = estimate_run(catalog.frames, grid, run.config, out=run.out, mode=mode,
                            n_mosaics=n_mosaics, groups=groups)
    run.report["preflight"] = estimate.to_dict()
    for line in estimate.lines():
        logger.info("pre-flight: %s", line)
    if not estimate.ok:
        message = estimate.message()
        logger.error("%s", message)
        run.finish("failed: pre-flight check")
        raise PreflightError(message, estimate)


def _run_phases(run: _Run, inputs: Sequence[str | os.PathLike]) -> RunResult:
    """Every phase after the run directory is set up (see `run_pipeline`)."""
    paths, plan, catalog = _catalog_phase(run, inputs)
    if plan is None and len(run.targets) > 1:
        return run_targets(run, catalog)
    return _mosaic_phases(run, paths, plan, catalog)


def _mosaic_phases(run: _Run, paths: Sequence[Path], plan: StackPlan | None,
                   catalog: Catalog) -> RunResult:
    """Grid, pre-flight check, stack, photometry, coadd and products of one target."""
    config, out = run.config, run.out
    if not catalog.frames:
        run.fail("no usable frame", f"no usable frame among {len(paths)} file(s)")
    with run.phase("grid"):
        try:
            grid = _canonical_grid(choose_grid(catalog.frames, config))
        except ValueError as err:  # no grid can hold these frames (a clear reason)
            run.fail("no output grid", str(err))
    logger.info("output grid %d x %d px at %.3f arcsec/px", grid.shape[1], grid.shape[0],
                grid.pixel_scale_arcsec)
    _preflight(run, catalog, plan, grid)
    scratch = out / ".scratch"
    scratch.mkdir(exist_ok=True)
    if plan is not None:
        try:
            return _grid_mode(run, catalog, plan, grid, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    try:
        opts = _coadd_options(config, run.threads, scratch, run.backend)
        stacked = _stack_phase(run, catalog, grid, opts) if config.stack.enabled else None
        sources, weights, sources_fp = _coadd_sources(catalog, stacked, config)
        correction = _photometry_phase(run, sources, grid, opts, sources_fp)
        mosaic_fp = fingerprint("mosaic", sources_fp, correction, _grid_signature(grid),
                                config.model_dump(mode="json", include={"reproject", "output"},
                                                  exclude={"output": {"report"}}),
                                _renorm_settings(config), config_digest(config))
        reused = run.manifest.lookup("mosaic", mosaic_fp)
        if reused is not None:
            logger.info("resume: %s is up to date; nothing to recompute", reused["path"])
            run.manifest.reused["mosaic"] = True
            summary = reused["meta"]
        else:
            summary = _assemble_classic(run, sources, grid, opts, sources_fp, correction, mosaic_fp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, reason in summary["rejected"].items():
        path = next((str(f.path) for f in catalog.frames if f.name == name), name)
        catalog.rejected[path] = reason
    if not summary["used"]:
        run.fail("no frame contributed", "no frame contributed any pixel to the output grid")
    for key in ("coverage_renorm", "color"):
        if key in summary:
            run.report[key] = summary[key]
    run.report.update(_summary(catalog, summary, grid, weights, stacked))
    run.report["products"] = dict(summary["products"], log="skymosaic.log", config="config.toml")
    run.finish()
    _write_report(run)
    mosaic_path = out / summary["products"]["mosaic"]
    preview = summary["products"]["preview"]
    logger.info("mosaic written to %s", mosaic_path)
    return RunResult(out, mosaic_path, out / preview if preview else None, run.report,
                     tuple(summary["shape"]))


def _catalog_phase(run: _Run, inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], StackPlan | None, Catalog]:
    """Discover and classify the inputs (headers, plate-solve cache), then verify the pixels
    and select by quality; the verification and quality figures, the expensive part, are
    reused from the manifest when the frames and the settings they depend on are unchanged."""
    config = run.config
    with run.phase("discover"):
        plan_path = find_plan(inputs, config)
        plan = _read_plan(run, plan_path) if plan_path is not None else None
        if plan is not None:
            paths = _unique_paths(row.path for row in plan.rows)
            logger.info("[GRID] plan %s: %d frame(s), %d row(s) rejected", plan_path,
                        len(paths), len(plan.rejected))
        else:
            paths = discover_inputs(inputs, recursive=config.input.recursive)
        logger.info("found %d candidate files", len(paths))
        catalog = build_catalog(paths, config, progress=run.progress, threads=run.threads, run_dir=run.out)
        if plan is None:
            find_run_targets(run, catalog)
    run.report["frames"] = {"found": len(paths), "rejected": catalog.rejected}
    # sky corners of every frame with a WCS, rejected ones included (the report's outlines)
    run.report["footprints"] = {f.name: np.round(f.footprint, 7).tolist()
                                for f in catalog.frames if f.footprint is not None}
    if catalog.solve:
        run.report["solve"] = catalog.solve
    run.catalog_fp = fingerprint(
        "catalog", [[file_signature(f.path), f.wcs_source, f.channels] for f in catalog.frames],
        config.model_dump(mode="json", include={"input", "quality"}), "fwhm" in config.stack.weighting,
    )
    verified = run.manifest.load_pickle("catalog", run.catalog_fp)
    if verified is not None:
        logger.info("resume: pixel checks and quality of %d frame(s) reused", len(verified["stats"]))
        catalog.stats, catalog.quality = verified["stats"], verified["quality"]
        catalog.sessions = verified.get("sessions", [])
        run.report["sessions"] = catalog.sessions
        for path, reason in verified["rejected"].items():
            catalog.reject(path, reason)
        catalog.frames = [f for f in catalog.frames if str(f.path) not in verified["rejected"]]
        return paths, plan, catalog
    before = dict(catalog.rejected)
    with run.phase("verify"):
        verify_frames(catalog, config, progress=run.progress, threads=run.threads)
    if config.quality.enabled and catalog.frames:
        with run.phase("quality"):
            targets = run.target_of if len(run.targets) > 1 else None
            catalog.frames, rejected, sessions = select_by_quality(catalog.frames, catalog.quality,
                                                                   config, targets=targets)
            for path, reason in rejected.items():
                catalog.reject(path, reason)
            catalog.sessions = run.report["sessions"] = [s.to_dict() for s in sessions]
    run.manifest.store_pickle("catalog", run.catalog_fp, {
        "stats": catalog.stats, "quality": catalog.quality, "sessions": catalog.sessions,
        "rejected": {k: v for k, v in catalog.rejected.items() if k not in before},
    })
    return paths, plan, catalog


def _canonical_grid(grid: OutputGrid) -> OutputGrid:
    """The grid with its WCS rebuilt from its FITS header.

    A WCS computed in memory carries more digits than its header; a Dask worker receives
    the WCS through its header (pickling), and the written mosaic has only the header. Rebuilding
    it here makes the threaded and the Dask engines (and a resumed run) map pixels through
    the very same WCS, so they give identical mosaics.
    """
    return OutputGrid(wcs=WCS(grid.wcs.to_header(relax=True)), shape=grid.shape)


def _grid_signature(grid: OutputGrid) -> list:
    return [list(grid.shape), grid.wcs.to_header_string(relax=True)]


def _renorm_settings(config: Config) -> dict:
    p = config.photometry
    return {"enabled": p.enabled and p.coverage_renorm, "sigma": p.coverage_sigma_px, "clip": list(p.coverage_clip)}


def _assemble_classic(run: _Run, sources, grid: OutputGrid, opts: CoaddOptions, sources_fp: str,
                      correction: dict, mosaic_fp: str) -> dict:
    """Coadd (resumable by blocks), optional coverage renormalisation, diagnostics, write.

    Returns the summary recorded with the mosaic in the manifest (what `_summary` and the
    run report need), after which the coadd stores are deleted.
    """
    config, out = run.config, run.out
    base_fp = fingerprint("coadd", sources_fp, correction, _grid_signature(grid),
                          config.model_dump(mode="json", include={"reproject", "coadd"}))
    with run.phase("coadd"):
        result = _run_coadd(run, "coadd", base_fp, sources, grid, opts)
    stores = ["coadd"]
    extra = {}
    if config.photometry.enabled and config.photometry.coverage_renorm and len(sources) > 1:
        with run.phase("coverage_renorm"):
            factors = renormalise_coverage(
                sources, grid, result.weight, options=opts,
                sigma_px=config.photometry.coverage_sigma_px, clip=config.photometry.coverage_clip,
            )
            extra["coverage_renorm"] = dict(zip([s.name for s in sources], factors.tolist(), strict=True))
            renorm_fp = fingerprint("coadd_renorm", base_fp, factors.tolist())
            result = _run_coadd(run, "coadd_renorm", renorm_fp, sources, grid, opts)
            stores.append("coadd_renorm")
    if run.diagnostics is not None and config.photometry.diagnostics and result.used:
        _write_diagnostics(out, sources, grid, run.diagnostics, result, opts.memory_budget)
    products = {}
    if result.used:
        with run.phase("write"):
            mosaic_path, written, extra["color"] = _write_products(out, config, grid, result)
        products = {"mosaic": mosaic_path.name, **written}
    summary = {
        "used": result.used, "rejected": result.rejected, "shape": list(result.data.shape),
        "coverage_fraction": result.coverage_fraction, "max_depth": result.max_depth,
        "blocks": result.n_blocks, "block_rows": result.block_rows, "products": products,
        "outlier_pixels": result.outliers, **extra,
    }
    if result.used:
        run.manifest.record("mosaic", mosaic_fp, path=out / products["mosaic"], meta=summary)
    del result
    for name in stores:
        DiskMosaic(out / name).remove()
    run.manifest.forget(stores)
    return summary


def _coadd_options(config: Config, threads: int, scratch: Path, backend: Backend | None = None) -> CoaddOptions:
    return CoaddOptions(
        kernel=config.reproject.kernel, edge=config.reproject.edge,
        map_tolerance=config.reproject.map_tolerance_px,
        grid_step=config.reproject.grid_step_px, memory_budget=config.memory_budget_bytes,
        threads=threads, scratch_dir=str(scratch), backend=backend, block_rows=config.run.block_rows,
        reject=config.coadd.reject, reject_kappa=config.coadd.reject_kappa,
    )


def _read_plan(run: _Run, path: Path) -> StackPlan:
    """Read the stack plan (the reader warns about each rejected row) into the report."""
    run.report["mode"] = "grid"
    try:
        plan = read_stack_plan(path)
    except (StackPlanError, OSError) as err:
        run.report["plan"] = {"path": str(path), "error": str(err)}
        run.finish("failed: bad plan")
        raise
    run.report["plan"] = {"path": str(path), "rows": len(plan.rows),
                          "rejected": [bad._asdict() for bad in plan.rejected]}
    return plan


def _unique_paths(paths) -> list[Path]:
    seen, out = set(), []
    for p in paths:
        key = str(Path(p).resolve())
        if key not in seen:
            seen.add(key)
            out.append(Path(p))
    return out


def _grid_mode(run: _Run, catalog: Catalog, plan: StackPlan, canvas: OutputGrid, scratch: Path) -> RunResult:
    """Grid/survey mode after the catalog and the canvas: tiles, stacks, assembly, products."""
    config = run.config
    opts = _coadd_options(config, run.threads, scratch, run.backend)
    products = run_grid(
        plan=plan, frames=catalog.frames, canvas=canvas, config=config, options=opts, out=run.out,
        scratch=scratch, noise={k: v.noise for k, v in catalog.stats.items()},
        fwhm={k: q.fwhm for k, q in catalog.quality.items()}, threads=run.threads,
        phase=run.phase, progress=run.progress, client=run.client,
    )
    if not products:
        run.fail("no tile assembled", "grid mode assembled no tile")
    first = products[0]
    used = {name for p in products for name in p.report["frames"]}
    run.report["grid"] = {p.filter or "": p.report for p in products}
    run.report["frames"] = {
        "found": len(catalog.frames) + len(catalog.rejected), "used": len(used),
        "rejected": dict(catalog.rejected),
        "list": [{**f.to_dict(), "used": f.name in used} for f in catalog.frames],
    }
    run.report["output"] = {**canvas.to_dict(), "channels": int(first.data_shape[0]),
                            "coverage_fraction": first.report["coverage_fraction"],
                            "max_depth": first.report["max_depth"]}
    run.report["products"] = {
        "mosaic": first.mosaic_path.name, "preview": first.preview_path.name if first.preview_path else None,
        "mosaics": {p.filter or "": p.mosaic_path.name for p in products},
        "log": "skymosaic.log", "config": "config.toml",
    }
    run.finish()
    _write_report(run)
    logger.info("[GRID] %d mosaic(s) written: %s", len(products), ", ".join(p.mosaic_path.name for p in products))
    return RunResult(run.out, first.mosaic_path, first.preview_path, run.report, first.data_shape)


class _Run:
    """Bookkeeping of one run: threads, phase timings, the report, resume and its failure path."""

    def __init__(self, out: Path, config: Config, progress: Progress, manifest: Manifest) -> None:
        self.out, self.config, self.progress, self.manifest = out, config, progress, manifest
        self.threads = config.run.threads or (os.cpu_count() or 1)
        self.backend = select_backend(config.run.use_gpu)  # use_gpu = "on" without a GPU fails here
        self.client = None  # a dask.distributed Client when run.scheduler is set
        self.catalog_fp = ""
        self.targets: list[Target] = []  # sky-disjoint targets (`find_run_targets`)
        self.target_of: dict[str, str] = {}  # frame path -> target name
        self.clustering: Clustering | None = None  # the classic grouping (`_clustering`)
        self.diagnostics: dict | None = None  # what the photometry diagnostics plot needs
        self.timings: dict[str, float] = {}
        self.report: dict = {"skymosaic": __version__, "config_digest": config_digest(config),
                             "mode": "classic" if config.stack.enabled else "direct"}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)

    def finish(self, status: str = "ok") -> None:
        self.report["status"] = status
        self.report["timings_s"] = dict(self.timings)
        self.report["resume"] = {"manifest": MANIFEST_NAME, "fresh": self.config.run.fresh,
                                 "reused": dict(self.manifest.reused)}
        self.report["scheduler"] = self.config.run.scheduler or "threads"
        self.report["backend"] = self.backend.report()
        self.report["peak_memory_bytes"] = _peak_memory()
        write_json(self.out / "run.json", self.report)

    def fail(self, status: str, message: str) -> None:
        self.finish(f"failed: {status}")
        raise NoUsableFramesError(f"{message}; see {self.out / 'run.json'} for the reasons")


def _stack_phase(run: _Run, catalog: Catalog, grid: OutputGrid, opts: CoaddOptions) -> StackedGroups:
    """Cluster the frames by sky position and stack every group into a master tile.

    The clustering is reused when the catalog and the ``[cluster]`` settings are unchanged;
    each master tile is reused when its own fingerprint (frames, stack settings) matches
    (`skymosaic.stack.build_master_tile`) and recorded in the manifest as it is finished.
    """
    config, manifest = run.config, run.manifest
    clustering = _clustering(run, catalog)
    logger.info("%d frame(s) in %d group(s)", len(catalog.frames), len(clustering.groups))
    noise = {k: v.noise for k, v in catalog.stats.items()}
    fwhm = {k: q.fwhm for k, q in catalog.quality.items()}
    reused: list[str] = []

    def tile_done(tile: MasterTile) -> None:
        manifest.record(f"tile/{tile.tile_id}", tile.fingerprint, path=tile.path,
                        meta={"frames": len(tile.frames)})
        if tile.reused:
            reused.append(tile.tile_id)
            run.progress.skip("stack", len(tile.frames))
        else:
            crash_point("stack")

    run.progress.start("stack", len(catalog.frames))
    with run.phase("stack"):
        stacked = stack_groups(
            catalog.frames, clustering, config=config, options=opts,
            pixel_scale_arcsec=grid.pixel_scale_arcsec, tiles_dir=run.out / "tiles",
            scratch_dir=run.out / ".scratch", noise=noise, fwhm=fwhm,
            progress=lambda n: run.progress.advance("stack", n), tile_done=tile_done, client=run.client,
        )
    run.progress.end("stack")
    current = {f"tile/{t.tile_id}" for t in stacked.tiles}
    manifest.forget([k for k in manifest.artifacts if k.startswith("tile/") and k not in current])
    if reused:
        manifest.reused["tiles"] = sorted(reused)
    run.report["clusters"] = clustering.to_dict()
    return stacked


def _photometry_phase(run: _Run, sources, grid: OutputGrid, opts: CoaddOptions, sources_fp: str) -> dict:
    """Solve per-input gains and sky surfaces (reused when nothing they depend on changed);
    any failure falls back to the plain coadd (one warning). Returns the corrections set on
    the sources, ``{name: [gain, offset, surface coefficients]}`` (what the coadd's
    fingerprint depends on)."""
    cfg = run.config.photometry
    if not cfg.enabled or len(sources) < 2:
        return {}
    # The solve does not depend on the memory budget (it measures every overlap at full
    # resolution whatever the budget), so a resumed run with another budget reuses it.
    fp = fingerprint("photometry", sources_fp, _grid_signature(grid),
                     run.config.model_dump(mode="json", include={"reproject", "photometry"},
                                           exclude={"reproject": {"edge"},  # the fits are strict
                                                    "photometry": {"coverage_renorm", "coverage_sigma_px",
                                                                   "coverage_clip", "diagnostics"}}))
    state = run.manifest.lookup("photometry", fp)
    if state is not None:
        run.manifest.reused["photometry"] = True
        logger.info("resume: photometric solution reused")
        saved = state["meta"]
    else:
        with run.phase("photometry"):
            saved = _solve_photometry(run, sources, grid, opts)
        run.manifest.record("photometry", fp, meta=saved)
    for s in sources:
        gain, offset, *surface = saved["corrections"].get(s.name, (None, None, None))
        s.gain = None if gain is None else np.asarray(gain, np.float32)
        s.offset = None if offset is None else np.asarray(offset, np.float32)
        s.surface = None if not surface or surface[0] is None else SkySurface(np.asarray(surface[0]), s.shape[1:])
    run.report["photometry"] = saved["report"]
    run.diagnostics = saved.get("diagnostics")
    return saved["corrections"]


def _solve_photometry(run: _Run, sources, grid: OutputGrid, opts: CoaddOptions) -> dict:
    """The photometric solve: corrections, report and diagnostics data (JSON-ready)."""
    cfg = run.config.photometry
    options = PhotometryOptions.from_config(run.config)
    try:
        match = match_sources(sources, grid, options=opts, photometry=options, match_kernel=cfg.match_kernel)
    except (FrameError, ValueError, ArithmeticError, MemoryError) as err:
        logger.warning("photometric matching failed (%s: %s); plain coadd without corrections",
                       type(err).__name__, err)
        return {"corrections": {}, "report": {"status": f"fallback: {err}"}}
    rep = match.report
    report = {
        "status": rep.status, "binning": match.binning, "n_inputs": len(sources),
        "n_overlaps": rep.n_overlaps, "relations_ok": rep.n_relations_ok,
        "relations_offset_only": rep.n_relations_offset_only, "relations_failed": rep.n_relations_failed,
        "gain_range": [float(match.gains.min()), float(match.gains.max())],
        "offset_range": [float(match.offsets.min()), float(match.offsets.max())],
        "sky_surface": rep.sky_surface,
        "inputs": {s.name: {"gain": match.gains[k].tolist(), "offset": match.offsets[k].tolist(),
                            "surface": None if s.surface is None else s.surface.to_list()}
                   for k, s in enumerate(sources)},
        "pairs": rep.pairs, "warnings": rep.warnings, "timings_s": rep.timings,
    }
    logger.info("photometry: %d inputs, %d overlaps, regressions ok/offset-only/failed %d/%d/%d, "
                "gains %.4f..%.4f", len(sources), rep.n_overlaps, rep.n_relations_ok,
                rep.n_relations_offset_only, rep.n_relations_failed, match.gains.min(), match.gains.max())
    corrections = {s.name: [None if s.gain is None else np.asarray(s.gain).tolist(),
                            None if s.offset is None else np.asarray(s.offset).tolist(),
                            None if s.surface is None else s.surface.to_list()] for s in sources}
    diagnostics = {"gains": match.gains.tolist(),
                   "pairs": [[p["i"], p["j"], p.get("robust_weight", 1.0), p.get("sky_step")]
                             for p in rep.pairs if p["channel"] == 0]}
    return {"corrections": corrections, "report": report, "diagnostics": diagnostics}


def _write_diagnostics(out: Path, sources, grid: OutputGrid, diagnostics: dict, result: CoaddResult,
                       memory_budget: int) -> None:
    from skymosaic.assemble import source_bbox

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


def _coadd_sources(catalog: Catalog, stacked: StackedGroups | None, config: Config):
    """Phase 5 inputs: master tiles (their WEIGHT maps carry the depth) and single frames.

    Returns the sources, their weights by name, and a fingerprint of them (each single
    frame's file signature and weight, each tile's TILEFP).
    """
    singles = catalog.frames if stacked is None else stacked.singles
    weights = _normalise_weights([
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


def _run_coadd(run: _Run, name: str, fp: str, sources, grid: OutputGrid, opts: CoaddOptions) -> CoaddResult:
    """One coadd pass into ``run.out/name``, resuming the blocks an interrupted run finished."""
    progress, manifest = run.progress, run.manifest
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
        manifest.record(name, fp, path=run.out / name, meta=meta)
        crash_point("coadd")

    store = BlockStore(run.out / name, block_rows=meta["block_rows"], done=done, on_block=on_block)
    try:
        result = coadd(sources, grid, options=opts, progress=report, store=store, client=run.client)
    finally:
        progress.end(name)
    if store.done != done:  # the store did not match: it was started over
        meta["blocks"] = {}
    meta["block_rows"] = result.block_rows
    manifest.record(name, fp, path=run.out / name, meta=meta)
    if result.blocks_reused:
        manifest.reused[name] = {"blocks_reused": result.blocks_reused, "blocks": result.n_blocks}
        logger.info("resume: %s: %d of %d block(s) reused", name, result.blocks_reused, result.n_blocks)
    return result


def _write_products(out: Path, config: Config, grid: OutputGrid, result: CoaddResult):
    """The science FITS (streamed from the coadd store), the preview and the exports, with
    the colour calibration (`skymosaic._display`); returns their paths and its report."""
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
    mosaic_path = write_mosaic_from_disk(out / f"{config.output.name}.fits", result.store, grid.wcs,
                                         memory_budget=budget, history=history, cards=cards,
                                         color=display.science_color)
    products = write_display(out, config.output.name, config, display, StoreSource(result.store), grid.wcs,
                             memory_budget=budget, history=history, cards=cards)
    return mosaic_path, products, display.report()


def _summary(catalog: Catalog, coadded: dict, grid: OutputGrid, weights: dict,
             stacked: StackedGroups | None) -> dict:
    """The ``frames``, ``output`` and ``tiles`` sections of run.json."""
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
    summary = {
        "frames": {
            "found": len(catalog.frames) + len(catalog.rejected),
            "used": sum(1 for f in frames if f["used"]),
            "rejected": dict(catalog.rejected),
            "list": frames,
        },
        "output": {
            **grid.to_dict(),
            "channels": int(coadded["shape"][0]),
            "coverage_fraction": float(coadded["coverage_fraction"]),
            "max_depth": int(coadded["max_depth"]),
            "blocks": coadded["blocks"],
            "block_rows": coadded["block_rows"],
            "inputs_coadded": len(coadded["used"]),
        },
    }
    if stacked is not None:
        summary["tiles"] = [t.to_dict() for t in stacked.tiles]
        summary["tiles_failed"] = stacked.failed
    return summary


# --------------------------------------------------------------------------- several targets


def find_run_targets(run: _Run, catalog: Catalog) -> None:
    """Split the catalog into sky-disjoint targets (`skymosaic.plan.targets`): lone far
    frames are rejected, frames outside ``targets.select``/``region`` dropped; sets
    ``run.targets`` and ``run.target_of``."""
    frames = catalog.frames
    try:
        found = split_frames(frames, run.config)
    except TargetError as err:
        run.fail("no such target", str(err))
    if found is None:
        return
    for k, reason in found.lone.items():
        catalog.rejected[str(frames[k].path)] = reason  # split_targets warned, naming the frame
    run.targets = found.targets
    run.target_of = {str(frames[k].path): t.name for t in found.targets for k in t.frames}
    catalog.frames = [f for f in frames if str(f.path) in run.target_of]
    run.report["targets"] = {"targets": [t.to_dict() for t in found.targets],
                             "found": found.all_targets, "lone": [frames[k].name for k in found.lone],
                             "not_selected": [frames[k].name for k in found.not_selected]}
    if len(found.targets) > 1:
        logger.info("%d targets: %s", len(found.targets), ", ".join(
            f"{t.name} ({len(t.frames)} frames)" for t in found.targets))


def _target_run(run: _Run, catalog: Catalog, target: Target) -> tuple[_Run, Catalog]:
    """The run (folder ``OUT/<target>/``, its own manifest and run.json) and catalog of a target."""
    out = run.out / target.name
    out.mkdir(exist_ok=True)
    sub = copy.copy(run)  # shares the config, progress, backend and Dask client
    sub.out, sub.manifest = out, Manifest(out, fresh=run.config.run.fresh)
    sub.clustering, sub.diagnostics = None, None
    sub.timings, sub.targets, sub.target_of = {}, [], {}
    sub.report = {k: run.report[k] for k in ("skymosaic", "config_digest", "mode")}
    mine = {p for p, name in run.target_of.items() if name == target.name}
    cat = Catalog(frames=[f for f in catalog.frames if str(f.path) in mine],
                  rejected={p: r for p, r in catalog.rejected.items() if p in mine},
                  stats={p: v for p, v in catalog.stats.items() if p in mine},
                  quality={p: v for p, v in catalog.quality.items() if p in mine})
    names = {Path(p).name for p in mine}
    cat.sessions = [s for s in catalog.sessions if set(s["frame_names"]) <= names]
    sub.catalog_fp = fingerprint("target", run.catalog_fp, target.name, sorted(mine))
    sub.report["target"] = target.to_dict()
    sub.report["sessions"] = cat.sessions
    sub.report["footprints"] = {k: v for k, v in run.report.get("footprints", {}).items()
                                if k in names}
    return sub, cat


def _preflight_targets(run: _Run, runs: list[tuple[_Run, Catalog]]) -> None:
    """Every target's pre-flight check, and their disk needs together, before any pixel
    is written (each target's run checks itself again as it starts)."""
    need, estimate = 0, None
    for sub, cat in runs:
        if not cat.frames:
            continue
        grid = choose_grid(cat.frames, run.config)
        estimate = estimate_run(cat.frames, grid, run.config, out=sub.out)
        need += max(0, estimate.disk_needed_bytes - estimate.reusable_bytes)
        if not estimate.ok:
            message = f"target {sub.out.name}: {estimate.message()}"
            run.report["preflight"] = {sub.out.name: estimate.to_dict()}
            run.finish("failed: pre-flight check")
            raise PreflightError(message, estimate)
    free = shutil.disk_usage(run.out).free
    if estimate is not None and need > free:
        estimate.problems.append(f"the {len(runs)} targets need {format_bytes(need)} of disk at "
                                 f"{run.out} together and {format_bytes(free)} is free")
        run.finish("failed: pre-flight check")
        raise PreflightError(estimate.message(), estimate)


def run_targets(run: _Run, catalog: Catalog) -> RunResult:
    """Several sky-disjoint targets: one mosaic each in ``OUT/<target>/`` (its own manifest
    and run.json); ``OUT/targets.json`` and ``OUT/run.json`` list them. A target that
    fails is reported and the others go on; the run fails when every target does."""
    runs = [_target_run(run, catalog, t) for t in run.targets]
    _preflight_targets(run, runs)
    results, rows = [], []
    for target, (sub, cat) in zip(run.targets, runs, strict=True):
        logger.info("target %s: %d frame(s) into %s", target.name, len(cat.frames), sub.out)
        row = {**target.to_dict(), "output": str(sub.out), "status": "ok"}
        try:
            result = _mosaic_phases(sub, [f.path for f in cat.frames], None, cat)
        except NoUsableFramesError as err:
            row["status"] = f"failed: {err}"
        else:
            results.append(result)
            row.update(mosaic=str(result.mosaic_path), frames_used=result.report["frames"]["used"])
        rows.append(row)
    others = {k: v for k, v in run.report["targets"].items() if k != "targets"}
    write_json(run.out / "targets.json", {"targets": rows, **others})
    run.report["targets"]["targets"] = rows
    run.report["frames"] = {"found": run.report["frames"]["found"],
                            "rejected": dict(catalog.rejected),
                            "used": sum(r.report["frames"]["used"] for r in results)}
    if not results:
        run.fail("no target mosaicked", f"none of the {len(rows)} targets gave a mosaic")
    failed = sum(1 for r in rows if r["status"] != "ok")
    run.finish("ok" if not failed else f"partial: {failed} of {len(rows)} target(s) failed")
    if run.config.output.report:
        from skymosaic.report import ReportError, write_targets_index

        try:
            write_targets_index(run.out)
        except (OSError, ReportError) as err:
            logger.warning("targets page not written: %s", err)
    first = results[0]
    return RunResult(run.out, first.mosaic_path, first.preview_path, run.report, first.data_shape,
                     results)


def _peak_memory() -> int | None:
    """Peak resident memory of this process so far, bytes (None where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS: bytes, Linux: KiB


def _write_report(run: _Run) -> None:
    """OUT/index.html, the offline report (`skymosaic.report`), unless ``output.report`` is
    off; a report that cannot be written is a warning, never a failed run."""
    if not run.config.output.report:
        return
    from skymosaic.report import write_report

    try:
        with run.phase("report"):
            write_report(run.out, memory_budget=run.config.memory_budget_bytes)
    except (OSError, ValueError, KeyError, DiskFullError) as err:  # the mosaic is complete
        logger.warning("report not written: %s: %s", type(err).__name__, err)
        return
    run.finish()  # records the report's time in run.json
