"""Classic mode between discovery and the coadd: quality selection, clustering, stacking.

`select_by_quality` rejects outlier frames relative to their session; `group_frames`
clusters the rest by sky position; `stack_groups` turns every group of at least
``stack.min_frames`` frames into a master tile and passes smaller groups on frame by frame.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skymosaic.assemble._coadd import CoaddOptions
from skymosaic.io._frames import FrameInfo
from skymosaic.plan.cluster import Clustering, cluster_frames
from skymosaic.stack._combine import StackSettings
from skymosaic.stack.master import MasterTile, TileInputs, build_master_tile
from skymosaic.stack.quality import FrameQuality, QualitySettings, select_frames
from skymosaic.stack.sessions import SessionSummary, session_keys, summarise_sessions

if TYPE_CHECKING:  # config reads its choices from the algorithm packages: no import cycle
    from skymosaic.config import Config

__all__ = ["StackedGroups", "group_frames", "select_by_quality", "session_key", "stack_groups"]

logger = logging.getLogger(__name__)


def session_key(info: FrameInfo) -> str:
    """Target, filter and instrument of a frame; `select_by_quality` adds the night
    (`skymosaic.stack.sessions.session_keys`)."""
    return "|".join(str(v or "") for v in (info.object, info.filter, info.instrument, info.kind))


def select_by_quality(
    frames: Sequence[FrameInfo], qualities: dict[str, FrameQuality], config: Config, *,
    targets: Mapping[str, str] | None = None,
) -> tuple[list[FrameInfo], dict[str, str], list[SessionSummary]]:
    """Keep the frames whose quality is not a clear outlier of their session: the frames
    of one target, filter and instrument in one night (`skymosaic.stack.sessions`).

    ``targets`` maps frame paths to their sky-disjoint target (frames of two targets are
    never judged together). Returns the kept frames, ``{path: reason}`` for the rejected
    ones and a summary of every session.
    """
    measured = [f for f in frames if str(f.path) in qualities]
    if not measured:
        return list(frames), {}, []
    q = config.quality
    settings = QualitySettings.from_config(config)
    names = [str(f.path) for f in measured]
    keys = session_keys(measured, gap_hours=q.session_gap_hours, targets=targets)
    selection = select_frames([qualities[n] for n in names], names, sessions=keys,
                              settings=settings)
    rejected = {n: f"quality: {selection.reasons[n]}"
                for n, ok in zip(names, selection.accepted, strict=True) if not ok}
    kept = [f for f in frames if str(f.path) not in rejected]
    sessions = summarise_sessions(measured, keys, qualities, rejected)
    if len(sessions) > 1:
        logger.info("quality: %d session(s): %s", len(sessions), "; ".join(
            f"{s.id} ({s.used}/{s.frames} used)" for s in sessions))
    return kept, rejected, sessions


def group_frames(frames: Sequence[FrameInfo], config: Config) -> Clustering:
    """Cluster frames by footprint overlap (see `skymosaic.plan.cluster_frames`)."""
    footprints = np.stack([f.footprint for f in frames])
    sizes = [4.0 * f.channels * f.height * f.width for f in frames]
    max_bytes = config.cluster.max_group_mb * 2**20 if config.cluster.max_group_mb else None
    return cluster_frames(
        footprints, min_overlap=config.cluster.min_overlap, max_frames=config.cluster.max_frames,
        max_bytes=max_bytes, frame_bytes=sizes, mounts=[f.mount for f in frames],
        names=[f.name for f in frames],
    )




@dataclass
class StackedGroups:
    """Master tiles built, and frames passed on individually (groups too small to stack)."""

    tiles: list[MasterTile] = field(default_factory=list)
    singles: list[FrameInfo] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def stack_groups(
    frames: Sequence[FrameInfo],
    clustering: Clustering,
    *,
    config: Config,
    options: CoaddOptions,
    pixel_scale_arcsec: float,
    tiles_dir: Path,
    scratch_dir: Path,
    noise: dict[str, Sequence[float]],
    fwhm: dict[str, float],
    progress: Callable[[int], None] | None = None,
    tile_done: Callable[[MasterTile], None] | None = None,
    client: Any | None = None,
) -> StackedGroups:
    """Stack every group with at least ``stack.min_frames`` frames into a master tile.

    Tiles are built one after the other (each resamples its frames in ``options.threads``
    threads) or, given a ``dask.distributed`` client, as one Dask task per tile running the
    same `build_master_tile` on the workers (which read the frames and write the tile at the
    same paths). ``tile_done(tile)`` is called as each tile is finished or reused;
    ``progress(n)`` counts frames. The tiles are returned in group order either way.
    """
    out = StackedGroups()
    settings = StackSettings.from_config(config)
    jobs: list[tuple[int, TileInputs]] = []
    for index, members in enumerate(clustering.groups):
        group = [frames[k] for k in members]
        if len(group) < config.stack.min_frames:
            out.singles.extend(group)
            if progress is not None:
                progress(len(group))
            continue
        jobs.append((index, TileInputs(
            f"tile_{index:04d}", group, noise=[noise.get(str(f.path)) for f in group],
            fwhm=[fwhm.get(str(f.path)) for f in group],
        )))
    kwargs = {"settings": settings, "pixel_scale_arcsec": pixel_scale_arcsec, "out_dir": tiles_dir,
              "scratch_dir": scratch_dir, "valid_min": config.input.valid_min,
              "reuse": not config.run.fresh}
    built: dict[int, MasterTile] = {}
    for (index, inputs), tile, err in _build_tiles(jobs, options, kwargs, progress, client):
        if err is not None:
            logger.warning("tile %s (%d frames) could not be stacked: %s; its frames are coadded "
                           "individually", inputs.tile_id, len(inputs.frames), err)
            out.failed[inputs.tile_id] = str(err)
            out.singles.extend(inputs.frames)
            continue
        built[index] = tile
        if tile_done is not None:
            tile_done(tile)
    out.tiles = [built[k] for k in sorted(built)]
    return out


def build_tile(job: tuple[int, TileInputs], options: CoaddOptions, kwargs: dict,
               progress: Callable[[int], None] | None = None
               ) -> tuple[MasterTile | None, str | None]:
    """`build_master_tile` of one group, or the reason it failed (also a Dask task)."""
    try:
        return build_master_tile(job[1], options=options, progress=progress, **kwargs), None
    except (ValueError, OSError) as err:
        return None, str(err)


def _build_tiles(jobs: list[tuple[int, TileInputs]], options: CoaddOptions, kwargs: dict,
                 progress: Callable[[int], None] | None, client: Any | None
                 ) -> Iterator[tuple[tuple[int, TileInputs], MasterTile | None, str | None]]:
    """``(job, tile, None)`` or ``(job, None, reason)`` for every job, locally or on Dask."""
    if client is None:
        for job in jobs:
            yield (job, *build_tile(job, options, kwargs, progress))
        return
    from skymosaic._dask import run_tasks  # noqa: PLC0415 - only a Dask run needs it

    # one thread per task (the cluster's parallelism is its workers), host backend (see
    # `skymosaic.assemble._coadd._run_blocks`); the workers' tiles share the budget, so a
    # tile's cube is held in memory only when its share holds it (`fits_in_memory`)
    workers = len(client.scheduler_info().get("workers", {})) or 1
    single = dataclasses.replace(options, threads=1, backend=None,
                                 memory_budget=max(options.memory_budget // workers, 16 * 2**20))
    for job, (tile, err) in run_tasks(client, build_tile, jobs, window=2 * workers,
                                      args=(single, kwargs)):
        if progress is not None and not (tile is not None and tile.reused):
            progress(len(job[1].frames))  # reused tiles are reported by the caller (tile_done)
        yield job, tile, err
