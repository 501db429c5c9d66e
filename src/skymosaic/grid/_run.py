"""Grid mode inside `skymosaic.pipeline.run_pipeline`: tiles -> stacks -> assemble -> write.

Called once the frames of the plan are catalogued, verified and the global output grid
(the canvas) is chosen. One mosaic per ``filter`` of the plan, all on the same canvas, so
that the per-filter mosaics align pixel for pixel.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits

from skymosaic._dask import run_tasks
from skymosaic._display import plan_display, write_display
from skymosaic._tiles import PlacedTile
from skymosaic._version import __version__
from skymosaic.assemble import CoaddOptions
from skymosaic.grid._assemble import AssembleResult, assemble_tiles
from skymosaic.grid._frames import match_grid_frames
from skymosaic.grid._geometry import GridTile, make_tile_grid, tile_grid_of
from skymosaic.io import FrameInfo, write_mosaic
from skymosaic.io._export import ArraySource
from skymosaic.io._writer import shrink_planes
from skymosaic.io.stack_plan import PlanRow, StackPlan
from skymosaic.photometry import PhotometryOptions
from skymosaic.reproject import OutputGrid
from skymosaic.stack import StackSettings
from skymosaic.stack.classic import build_tile
from skymosaic.stack.master import FrameCorrection, MasterTile, TileInputs

if TYPE_CHECKING:  # config reads its choices from the algorithm packages: no import cycle
    from skymosaic.config import Config

__all__ = ["GridProducts", "find_plan", "run_grid"]

logger = logging.getLogger(__name__)

PLAN_NAME = "stack_plan.csv"


@dataclasses.dataclass
class GridProducts:
    """What grid mode wrote for one filter."""

    filter: str | None
    mosaic_path: Path
    preview_path: Path | None
    data_shape: tuple[int, int, int]
    report: dict


def find_plan(inputs: Sequence[str | Path], config: Config) -> Path | None:
    """The plan to use: ``grid.plan``, else a ``stack_plan.csv`` in an input folder."""
    if config.grid.plan is not None:
        return Path(config.grid.plan)
    if not config.grid.auto_plan:
        return None
    for item in inputs:
        p = Path(item)
        if p.is_dir() and (p / PLAN_NAME).is_file():
            return p / PLAN_NAME
        if p.is_file() and p.name.lower() == PLAN_NAME:
            return p
    return None


def _load_tile(tile: MasterTile, grid_tile: GridTile) -> PlacedTile:
    with fits.open(tile.path) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
        data = data[None] if data.ndim == 2 else data
        weight = np.asarray(hdul["WEIGHT"].data, np.float32) if "WEIGHT" in hdul else None
    if weight is not None and weight.ndim == 3:
        weight = weight[0]
    y0, _, x0, _ = grid_tile.bbox
    return PlacedTile(data, y0, x0, weight=weight, tile_id=grid_tile.tile_id)


def _stack_tiles(
    tiles: list[GridTile], frames: list[FrameInfo], canvas: OutputGrid, config: Config,
    options: CoaddOptions, out: Path, scratch: Path, noise: dict, fwhm: dict, threads: int,
    progress: Callable[[int], None] | None, client: Any | None = None,
    corrections: list[FrameCorrection] | None = None,
) -> tuple[list[PlacedTile], dict[str, str]]:
    """Stack every tile: in parallel across tiles (the memory budget shared among them) or,
    given a ``dask.distributed`` client, as one Dask task per tile (classic mode's task:
    `build_master_tile` on a worker, which reads the frames and writes the tile at the same
    paths; the tile is then read back here). ``corrections``: each frame's correction from
    the global frame photometry (`match_grid_frames`), applied while the tiles resample the
    frames, which are then stacked without normalisation."""
    workers = 1 if client is not None else max(1, min(threads, len(tiles)))
    settings = StackSettings.from_config(config)
    per_tile = max(settings.memory_budget_bytes // workers, 16 * 2**20)
    settings = dataclasses.replace(settings, memory_budget_bytes=per_tile,
                                   **({"normalization": "none"} if corrections else {}))
    tile_opts = dataclasses.replace(options, threads=max(1, threads // workers),
                                    memory_budget=max(options.memory_budget // workers, 16 * 2**20))
    tasks = {}  # tile id -> (inputs, the tile's cutout of the canvas)
    for t in tiles:
        members = [frames[k] for k in t.frames]
        inputs = TileInputs(t.tile_id, members, noise=[noise.get(str(f.path)) for f in members],
                            fwhm=[fwhm.get(str(f.path)) for f in members],
                            corrections=[corrections[k] for k in t.frames] if corrections else [])
        tasks[t.tile_id] = (inputs, tile_grid_of(canvas, t.bbox))
    kwargs = {"settings": settings, "pixel_scale_arcsec": canvas.pixel_scale_arcsec,
              "out_dir": out / "tiles", "scratch_dir": scratch,
              "valid_min": config.input.valid_min,
              "reuse": not config.run.fresh}

    def stack(t: GridTile) -> tuple[PlacedTile | None, str | None]:
        return _placed(t, *_build_grid_tile(tasks[t.tile_id], tile_opts, kwargs))

    def stacked() -> Iterator[tuple[GridTile, PlacedTile | None, str | None]]:
        """Every tile placed (or why not), in plan order; progress counts finished tiles."""
        if client is None:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for t, result in zip(tiles, pool.map(stack, tiles), strict=True):
                    if progress is not None:
                        progress(1)
                    yield t, *result
            return
        # one thread per task (the cluster's parallelism is its workers), host backend
        single = dataclasses.replace(tile_opts, threads=1, backend=None)
        n_workers = len(client.scheduler_info().get("workers", {})) or 1
        by_id, done = {t.tile_id: t for t in tiles}, {}
        for (inputs, _), result in run_tasks(client, _build_grid_tile, list(tasks.values()),
                                             window=2 * n_workers, args=(single, kwargs)):
            done[inputs.tile_id] = _placed(by_id[inputs.tile_id], *result)
            if progress is not None:
                progress(1)
        # in plan order, as the threads give them: the assembly does not depend on timing
        yield from ((t, *done[t.tile_id]) for t in tiles)

    placed, failed = [], {}
    for t, tile, err in stacked():
        if tile is None:
            logger.warning("[GRID] tile %s (%d frames) could not be stacked: %s; left out",
                           t.tile_id, len(t.frames), err)
            failed[t.tile_id] = err
        elif not np.isfinite(tile.data).any():
            logger.warning("[GRID] tile %s has no valid pixel after stacking; left out", t.tile_id)
            failed[t.tile_id] = "no valid pixel"
        else:
            placed.append(tile)
    return placed, failed


def _build_grid_tile(task: tuple[TileInputs, OutputGrid], options: CoaddOptions,
                     kwargs: dict) -> tuple[MasterTile | None, str | None]:
    """One grid tile on its cutout of the canvas (a Dask task; classic mode's `build_tile`)."""
    inputs, grid = task
    return build_tile((0, inputs), options, {**kwargs, "grid": grid})


def _placed(
    t: GridTile, tile: MasterTile | None, err: str | None
) -> tuple[PlacedTile | None, str | None]:
    """The stacked tile read back and placed on the canvas, or why not."""
    if tile is None:
        return None, err
    try:
        return _load_tile(tile, t), None
    except (ValueError, OSError, MemoryError) as error:
        return None, str(error)


def run_grid(
    *, plan: StackPlan, frames: list[FrameInfo], canvas: OutputGrid, config: Config,
    options: CoaddOptions, out: Path, scratch: Path, noise: dict, fwhm: dict, threads: int,
    phase: Callable, progress=None, client: Any | None = None,
) -> list[GridProducts]:
    """Grid mode for catalogued frames: one mosaic per filter of the plan.

    ``phase`` is the run's phase-timing context manager factory; ``progress`` the run's
    `Progress` (phases ``stack`` and ``assemble``); ``client`` a ``dask.distributed``
    client (``run.scheduler``): the tiles are then stacked as Dask tasks.
    """
    rows: dict[str, PlanRow] = {}
    for row in plan.rows:
        rows[str(Path(row.path).resolve())] = row
    by_filter: dict[str | None, list[FrameInfo]] = defaultdict(list)
    for f in frames:
        row = rows.get(str(Path(f.path).resolve()))
        by_filter[row.filter if row is not None else None].append(f)
    multi = len(by_filter) > 1
    products = []
    for filt in sorted(by_filter, key=lambda v: (v is None, v or "")):
        members = by_filter[filt]
        label = f" [{filt}]" if filt else ""
        with phase("tiles"):
            tiles = make_tile_grid(members, canvas, tile_factor=config.grid.tile_factor,
                                   overlap=config.grid.overlap)
            tiles = _split_sessions(tiles, members, rows)
            dropped = [t for t in tiles if len(t.frames) < config.grid.min_frames]
            tiles = [t for t in tiles if len(t.frames) >= config.grid.min_frames]
        th, tw = tiles[0].shape if tiles else (0, 0)
        logger.info("[GRID]%s %d frames -> %d tiles of %dx%d px, overlap %.0f%% (%d dropped with "
                    "fewer than %d frames)", label, len(members), len(tiles), tw, th,
                    100 * config.grid.overlap, len(dropped), config.grid.min_frames)
        if not tiles:
            logger.warning("[GRID]%s no tile has enough frames; no mosaic for this filter", label)
            continue
        frame_report, consistent, corrections, stack_noise = None, False, None, noise
        if config.photometry.enabled and config.grid.frame_photometry and len(members) > 1:
            with phase("photometry"):
                match = match_grid_frames(
                    members, canvas, options=options,
                    photometry=PhotometryOptions.from_config(config),
                    match_kernel=config.photometry.match_kernel, noise=noise,
                    valid_min=config.input.valid_min)
            frame_report, consistent = match.report, match.tiles_consistent
            corrections, stack_noise = match.corrections, {**noise, **match.noise}
        if progress is not None:
            progress.start("stack", len(tiles))
        with phase("stack"):
            placed, failed = _stack_tiles(
                tiles, members, canvas, config, options, out, scratch, stack_noise, fwhm, threads,
                (lambda n: progress.advance("stack", n)) if progress is not None else None,
                client=client, corrections=corrections)
        if progress is not None:
            progress.end("stack")
        if not placed:
            logger.warning("[GRID]%s every tile failed to stack; no mosaic for this filter", label)
            continue
        with phase("assemble"):
            # frames already on one scale: the tiles' solve would only fit noise
            tile_solve = config.photometry.enabled and not consistent
            photometry = PhotometryOptions.from_config(config) if tile_solve else None
            result = assemble_tiles(placed, canvas.shape, photometry=photometry,
                                    blend=config.grid.blend, levels=config.grid.blend_levels,
                                    feather_sigma=config.grid.feather_sigma,
                                    backend=options.backend)
            if consistent:
                result.report["photometry_mode"] = "frames"
        name = config.output.name + (f"_{_safe(filt)}" if multi and filt else "")
        with phase("write"):
            mosaic_path, preview_path, written = _write(out, name, config, canvas, result, placed,
                                                        filt)
        report = {
            "filter": filt, "mosaic": mosaic_path.name,
            "preview": preview_path.name if preview_path else None,
            "tiles": [{**t.to_dict(), "frames": [members[k].name for k in t.frames]}
                      for t in tiles],
            "tiles_failed": failed,
            "frames": [f.name for f in members],
            "frame_photometry": frame_report,
            **{k: v for k, v in result.report.items()},
            "tile_names": [t.tile_id for t in placed],
            "coverage_fraction": float(np.isfinite(result.data).all(axis=0).mean()),
            "max_depth": max(len(t.frames) for t in tiles),
            **written,
        }
        products.append(GridProducts(filt, mosaic_path, preview_path, tuple(result.data.shape),
                                     report))
    return products


def _split_sessions(tiles: list[GridTile], frames: list[FrameInfo],
                    rows: dict[str, PlanRow]) -> list[GridTile]:
    """One stack per (mount, batch_id) of the plan in each tile.

    Equatorial and Alt-Az frames (field rotation, different flats) and different sessions
    (sky, transparency) are not stacked together: each becomes its own tile on the same
    box, and the global photometric solve of `assemble_tiles` matches them, i.e. the
    normalisation between sessions is done per session, with overlaps as evidence.
    """
    out = []
    for t in tiles:
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for k in t.frames:
            row = rows.get(str(Path(frames[k].path).resolve()))
            groups[(row.mount or "", row.batch_id or "") if row is not None else ("", "")].append(k)
        if len(groups) == 1:
            out.append(t)
            continue
        for (mount, batch), members in sorted(groups.items()):
            suffix = "_".join(_safe(v) for v in (mount, batch) if v) or "unlabelled"
            out.append(GridTile(f"{t.tile_id}_{suffix}", t.row, t.col, t.bbox, members))
    return out


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _write(out: Path, name: str, config: Config, canvas: OutputGrid, result: AssembleResult,
           placed: list[PlacedTile], filt: str | None) -> tuple[Path, Path | None, dict]:
    """The science FITS, preview and exports of one grid mosaic, with the colour
    calibration (`skymosaic._display`); the third value: the exports and the colour report."""
    from skymosaic.config import config_digest  # noqa: PLC0415 - config imports this package's choices

    history = [
        f"skymosaic {__version__}: grid mode, {len(placed)} tile(s), photometry "
        f"{result.report.get('photometry_mode')}, blend {result.report.get('blend')}",
        f"config digest {config_digest(config)}",
    ] + [f"tile {t.tile_id}" for t in placed[:500]]
    cards = {"NINPUTS": (len(placed), "grid tiles assembled"),
             "CFGHASH": (config_digest(config), "skymosaic config digest"),
             "SKYMODE": ("grid", "skymosaic mode")}
    if filt:
        cards["FILTER"] = (filt[:68], "filter of the plan rows")
    coverage = np.zeros(canvas.shape, np.float32)
    for t in placed:
        h, w = t.data.shape[1:]
        ok = np.all(np.isfinite(t.data), axis=0)
        coverage[t.y0:t.y0 + h, t.x0:t.x0 + w] += ok
    display = plan_display(shrink_planes(result.data, config.output.preview_max_size), config)
    history += display.history()
    cards.update(display.cards())
    science = (result.data if display.science_color is None
               else display.science_color.apply(result.data))
    mosaic_path = write_mosaic(out / f"{name}.fits", science, canvas.wcs, weight=result.weight,
                               coverage=coverage, history=history, cards=cards)
    written = write_display(out, name, config, display, ArraySource(result.data), canvas.wcs,
                            memory_budget=config.memory_budget_bytes, history=history, cards=cards)
    preview = written.pop("preview")
    return mosaic_path, out / preview if preview else None, {**written, "color": display.report()}
