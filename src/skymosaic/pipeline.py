"""The orchestrator: runs the phases, times them, and writes the products and the report.

Phases (see docs/architecture.md): discover (headers only) -> verify (pixels read once:
unreadable or empty frames are rejected, noise measured) -> grid (output WCS) -> coadd ->
write. Each phase is a plain function; this module only sequences them, records what
happened in ``run.json`` and keeps a log file in the output folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skymosaic._stats import FrameStats, frame_stats
from skymosaic._version import __version__
from skymosaic.assemble import CoaddOptions, FileSource, coadd
from skymosaic.assemble._phase5 import MatchResult, match_sources, renormalise_coverage
from skymosaic.astrometry import review_wcs, solve_missing_wcs
from skymosaic.config import Config, config_digest, dump_toml
from skymosaic.grid import find_plan, run_grid
from skymosaic.io.stack_plan import StackPlan, StackPlanError, read_stack_plan
from skymosaic.io import (
    FrameError,
    FrameInfo,
    discover_inputs,
    frame_footprint,
    load_frame,
    scan_frame,
)
from skymosaic.io._diagnostics import write_photometry_diagnostics
from skymosaic.io._writer import atomic_path, write_json, write_mosaic, write_preview
from skymosaic.io.stack_plan import PlanRow, write_stack_plan
from skymosaic.photometry import PhotometryOptions
from skymosaic.reproject import OutputGrid, grid_from_header, optimal_grid
from skymosaic.stack.classic import StackedGroups, group_frames, select_by_quality, stack_groups
from skymosaic.stack.quality import FrameQuality, measure_quality

__all__ = [
    "NoUsableFramesError",
    "NullProgress",
    "Progress",
    "RunResult",
    "build_catalog",
    "run_pipeline",
]

logger = logging.getLogger(__name__)


class NoUsableFramesError(RuntimeError):
    """Nothing usable is left to mosaic (the message says why)."""


class Progress:
    """Progress reporting interface (the CLI draws bars; the default draws nothing)."""

    def start(self, phase: str, total: int) -> None:  # noqa: B027 - optional hook
        pass

    def advance(self, phase: str, n: int = 1) -> None:  # noqa: B027
        pass

    def end(self, phase: str) -> None:  # noqa: B027
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
    when quality selection is on, stars (count, FWHM, elongation) with sep."""
    progress.start("verify", len(catalog.frames))
    measure = config.quality.enabled or "fwhm" in config.stack.weighting

    def check(info: FrameInfo):
        try:
            data = load_frame(info, valid_min=config.input.valid_min)
        except FrameError as err:
            return info, None, None, str(err)
        stats = frame_stats(data)
        if stats.valid_fraction == 0.0:
            return info, stats, None, "no valid pixel (all NaN or below input.valid_min)"
        quality = measure_quality(data, detect_sigma=config.quality.detect_sigma) if measure else None
        return info, stats, quality, None

    kept = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for info, stats, quality, error in pool.map(check, catalog.frames):
            progress.advance("verify")
            if error is not None:
                catalog.reject(info.path, error)
                continue
            catalog.stats[str(info.path)] = stats
            if quality is not None:
                catalog.quality[str(info.path)] = quality
            kept.append(info)
    catalog.frames = kept
    progress.end("verify")


def choose_grid(frames: Sequence[FrameInfo], config: Config) -> OutputGrid:
    """Phase 3: the output grid (user header, or optimal over every frame)."""
    if config.output.wcs_header is not None:
        return grid_from_header(config.output.wcs_header)
    scale = config.output.pixel_scale_arcsec or float(np.median([f.pixel_scale_arcsec for f in frames]))
    footprints = [frame_footprint(f.wcs, f.shape[1:], samples=9) for f in frames]
    return optimal_grid(footprints, pixel_scale_arcsec=scale, rotation=config.output.rotation,
                        projection=config.output.projection)


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

    Raises
    ------
    NoUsableFramesError
        When no frame is usable (the report is still written to ``run.json``).
    FileNotFoundError
        When an input does not exist.
    """
    config = config or Config()
    progress = progress or Progress()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(out, config, progress)
    with atomic_path(out / "config.toml", suffix=".toml") as tmp:
        tmp.write_text(dump_toml(config))
    with _log_to_file(out / "skymosaic.log"):
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
            catalog = build_catalog(paths, config, progress=progress, threads=run.threads,
                                    run_dir=out)
        run.report["frames"] = {"found": len(paths), "rejected": catalog.rejected}
        if catalog.solve:
            run.report["solve"] = catalog.solve
        with run.phase("verify"):
            verify_frames(catalog, config, progress=progress, threads=run.threads)
        if config.quality.enabled and catalog.frames:
            with run.phase("quality"):
                catalog.frames, rejected = select_by_quality(catalog.frames, catalog.quality, config)
                for path, reason in rejected.items():
                    catalog.reject(path, reason)
        if not catalog.frames:
            run.fail("no usable frame", f"no usable frame among {len(paths)} file(s)")
        with run.phase("grid"):
            grid = choose_grid(catalog.frames, config)
        logger.info("output grid %d x %d px at %.3f arcsec/px", grid.shape[1], grid.shape[0],
                    grid.pixel_scale_arcsec)
        scratch = out / ".scratch"
        scratch.mkdir(exist_ok=True)
        if plan is not None:
            try:
                return _grid_mode(run, catalog, plan, grid, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        try:
            opts = _coadd_options(config, run.threads, scratch)
            stacked = _stack_phase(run, catalog, grid, opts) if config.stack.enabled else None
            sources, weights = _coadd_sources(catalog, stacked, config)
            match = _photometry_phase(run, sources, grid, opts)
            with run.phase("coadd"):
                result = _run_coadd(sources, grid, opts, progress)
            if config.photometry.enabled and config.photometry.coverage_renorm and len(sources) > 1:
                with run.phase("coverage_renorm"):
                    factors = renormalise_coverage(
                        sources, grid, result.weight, options=opts,
                        sigma_px=config.photometry.coverage_sigma_px, clip=config.photometry.coverage_clip,
                    )
                    run.report["coverage_renorm"] = dict(zip([s.name for s in sources], factors.tolist(), strict=True))
                    result = _run_coadd(sources, grid, opts, progress)
            if match is not None and config.photometry.diagnostics:
                _write_diagnostics(out, sources, grid, match, result)
            for name, reason in result.rejected.items():
                path = next((str(f.path) for f in catalog.frames if f.name == name), name)
                catalog.rejected[path] = reason
            if not result.used:
                run.fail("no frame contributed", "no frame contributed any pixel to the output grid")
            with run.phase("write"):
                mosaic_path, preview_path = _write_products(out, config, grid, result, sources)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        run.report.update(_summary(catalog, result, grid, sources, weights, stacked))
        run.report["products"] = {"mosaic": mosaic_path.name,
                                  "preview": preview_path.name if preview_path else None,
                                  "log": "skymosaic.log", "config": "config.toml"}
        run.finish()
        logger.info("mosaic written to %s", mosaic_path)
    return RunResult(out, mosaic_path, preview_path, run.report, tuple(result.data.shape))


def _coadd_options(config: Config, threads: int, scratch: Path) -> CoaddOptions:
    return CoaddOptions(
        kernel=config.reproject.kernel, map_tolerance=config.reproject.map_tolerance_px,
        grid_step=config.reproject.grid_step_px, memory_budget=config.memory_budget_bytes,
        threads=threads, scratch_dir=str(scratch),
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
    opts = _coadd_options(config, run.threads, scratch)
    products = run_grid(
        plan=plan, frames=catalog.frames, canvas=canvas, config=config, options=opts, out=run.out,
        scratch=scratch, noise={k: v.noise for k, v in catalog.stats.items()},
        fwhm={k: q.fwhm for k, q in catalog.quality.items()}, threads=run.threads,
        phase=run.phase, progress=run.progress,
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
    logger.info("[GRID] %d mosaic(s) written: %s", len(products), ", ".join(p.mosaic_path.name for p in products))
    return RunResult(run.out, first.mosaic_path, first.preview_path, run.report, first.data_shape)


class _Run:
    """Bookkeeping of one run: threads, phase timings, the report and its failure path."""

    def __init__(self, out: Path, config: Config, progress: Progress) -> None:
        self.out, self.config, self.progress = out, config, progress
        self.threads = config.run.threads or (os.cpu_count() or 1)
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
        write_json(self.out / "run.json", self.report)

    def fail(self, status: str, message: str) -> None:
        self.finish(f"failed: {status}")
        raise NoUsableFramesError(f"{message}; see {self.out / 'run.json'} for the reasons")


def _stack_phase(run: _Run, catalog: Catalog, grid: OutputGrid, opts: CoaddOptions) -> StackedGroups:
    """Cluster the frames by sky position and stack every group into a master tile."""
    config = run.config
    with run.phase("cluster"):
        clustering = group_frames(catalog.frames, config)
    logger.info("%d frame(s) in %d group(s)", len(catalog.frames), len(clustering.groups))
    noise = {k: v.noise for k, v in catalog.stats.items()}
    fwhm = {k: q.fwhm for k, q in catalog.quality.items()}
    run.progress.start("stack", len(catalog.frames))
    with run.phase("stack"):
        stacked = stack_groups(
            catalog.frames, clustering, config=config, options=opts,
            pixel_scale_arcsec=grid.pixel_scale_arcsec, tiles_dir=run.out / "tiles",
            scratch_dir=run.out / ".scratch", noise=noise, fwhm=fwhm,
            progress=lambda n: run.progress.advance("stack", n),
        )
    run.progress.end("stack")
    run.report["clusters"] = clustering.to_dict()
    return stacked


def _photometry_phase(run: _Run, sources, grid: OutputGrid, opts: CoaddOptions) -> MatchResult | None:
    """Solve per-input gains/offsets; any failure falls back to the plain coadd (one warning)."""
    cfg = run.config.photometry
    if not cfg.enabled or len(sources) < 2:
        return None
    options = PhotometryOptions.from_config(run.config)
    try:
        with run.phase("photometry"):
            match = match_sources(sources, grid, options=opts, photometry=options,
                                  match_kernel=cfg.match_kernel)
    except (FrameError, ValueError, ArithmeticError, MemoryError) as err:
        logger.warning("photometric matching failed (%s: %s); plain coadd without corrections",
                       type(err).__name__, err)
        for s in sources:
            s.gain = s.offset = None
        run.report["photometry"] = {"status": f"fallback: {err}"}
        return None
    rep = match.report
    run.report["photometry"] = {
        "status": rep.status, "binning": match.binning, "n_inputs": len(sources),
        "n_overlaps": rep.n_overlaps, "relations_ok": rep.n_relations_ok,
        "relations_offset_only": rep.n_relations_offset_only, "relations_failed": rep.n_relations_failed,
        "gain_range": [float(match.gains.min()), float(match.gains.max())],
        "offset_range": [float(match.offsets.min()), float(match.offsets.max())],
        "inputs": {s.name: {"gain": match.gains[k].tolist(), "offset": match.offsets[k].tolist()}
                   for k, s in enumerate(sources)},
        "pairs": rep.pairs, "warnings": rep.warnings, "timings_s": rep.timings,
    }
    logger.info("photometry: %d inputs, %d overlaps, regressions ok/offset-only/failed %d/%d/%d, "
                "gains %.4f..%.4f", len(sources), rep.n_overlaps, rep.n_relations_ok,
                rep.n_relations_offset_only, rep.n_relations_failed, match.gains.min(), match.gains.max())
    return match


def _write_diagnostics(out: Path, sources, grid: OutputGrid, match: MatchResult, result) -> None:
    from skymosaic.assemble import source_bbox

    placed = [source_bbox(s, grid) for s in sources]
    index = [k for k, b in enumerate(placed) if b is not None]
    pairs = [(index[p["i"]], index[p["j"]], p.get("robust_weight", 1.0))
             for p in match.report.pairs if p["channel"] == 0]
    write_photometry_diagnostics(out / "photometry_diagnostics.png", result.weight, placed,
                                 match.gains, pairs)


def _coadd_sources(catalog: Catalog, stacked: StackedGroups | None, config: Config):
    """Phase 5 inputs: master tiles (their WEIGHT maps carry the depth) and single frames."""
    singles = catalog.frames if stacked is None else stacked.singles
    weights = _normalise_weights([
        frame_weight(f, catalog.stats.get(str(f.path)), config.coadd.weighting) for f in singles
    ])
    sources = [
        FileSource.from_info(f, weight=wt, valid_min=config.input.valid_min)
        for f, wt in zip(singles, weights, strict=True)
    ]
    if stacked is not None:
        for tile in stacked.tiles:
            info = scan_frame(tile.path)
            sources.append(FileSource.from_info(info, weight=1.0, valid_min=None))
    return sources, dict(zip([s.name for s in sources], [s.weight for s in sources], strict=True))


def _run_coadd(sources, grid, opts, progress: Progress):
    state = {"started": False}

    def report(done: int, total: int) -> None:
        if not state["started"]:
            progress.start("coadd", total)
            state["started"] = True
        if done:
            progress.advance("coadd", done)

    try:
        return coadd(sources, grid, options=opts, progress=report)
    finally:
        progress.end("coadd")


def _write_products(out: Path, config: Config, grid: OutputGrid, result, sources):
    history = [
        f"skymosaic {__version__}: weighted-mean coadd of {len(result.used)} input(s)",
        f"config digest {config_digest(config)}; kernel {config.reproject.kernel}; "
        f"weighting {config.coadd.weighting}",
    ]
    history += [f"input {name}" for name in result.used[:500]]
    cards = {"NINPUTS": (len(result.used), "frames or master tiles coadded"),
             "CFGHASH": (config_digest(config), "skymosaic config digest")}
    mosaic_path = write_mosaic(out / f"{config.output.name}.fits", result.data, grid.wcs,
                               weight=result.weight, coverage=result.coverage, history=history,
                               cards=cards)
    preview_path = None
    if config.output.preview:
        preview_path = write_preview(out / f"{config.output.name}_preview.png", result.data,
                                     max_size=config.output.preview_max_size)
    return mosaic_path, preview_path


def _summary(catalog: Catalog, result, grid: OutputGrid, sources, weights: dict,
             stacked: StackedGroups | None) -> dict:
    frames = []
    in_tile = {}
    if stacked is not None:
        for tile in stacked.tiles:
            for name in tile.frames:
                in_tile[name] = tile.tile_id
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
        entry["used"] = info.name in result.used or info.name in in_tile
        frames.append(entry)
    finite = np.isfinite(result.data).all(axis=0)
    summary = {
        "frames": {
            "found": len(catalog.frames) + len(catalog.rejected),
            "used": sum(1 for f in frames if f["used"]),
            "rejected": dict(catalog.rejected),
            "list": frames,
        },
        "output": {
            **grid.to_dict(),
            "channels": int(result.data.shape[0]),
            "coverage_fraction": float(finite.mean()),
            "max_depth": int(result.coverage.max()) if result.coverage.size else 0,
            "blocks": result.n_blocks,
            "block_rows": result.block_rows,
            "inputs_coadded": len(result.used),
        },
    }
    if stacked is not None:
        summary["tiles"] = [t.to_dict() for t in stacked.tiles]
        summary["tiles_failed"] = stacked.failed
    return summary
