"""Pre-flight check: what a run will write and hold, checked before any pixel is written.

Once the output grid is chosen, `estimate_run` works out from the headers alone (the
catalog and the grid):

- the output size: pixels (H x W) and channels;
- the output bytes: the science FITS as the writer writes it (float32 science planes,
  float32 WEIGHT and COVERAGE extensions, 2880-byte FITS blocks) and the preview;
- the scratch bytes: the on-disk coadd store (``OUT/coadd/``: float32 data and weight,
  uint16 coverage; twice with ``photometry.coverage_renorm``), the master tiles
  (``OUT/tiles/``, kept for resume) and the largest stacking cube (``OUT/.scratch/``,
  deleted after each tile);
- the disk needed at the peak of the run (tiles, then the coadd store and the FITS being
  written next to it), less what an earlier run left in OUT that this one reuses or
  overwrites (coadd stores, tiles);
- the least memory budget the coadd runs in (`skymosaic.assemble.coadd_memory_floor`).

It then checks them against ``output.max_output_pixels``, the free space of OUT and of
the scratch folder (`shutil.disk_usage`) and ``run.memory_budget_mb``. When a limit is
exceeded, the message names the figures and the frames that make the grid that large:
the frames farthest from the median sky position of all frames, as many as must go for
the grid to fit (each removal recomputes the grid), with the size the grid would have
without them. `skymosaic plan` and `skymosaic inspect` print the same estimate; a run
records it in ``run.json`` (``"preflight"``).

Grid mode (a ``stack_plan.csv``) assembles each filter's mosaic in memory: its estimate
counts one FITS per filter, tiles of about the canvas size (times the tile overlap), and
the in-memory canvas, which is checked against the physical memory (the budget does not
bound it; a canvas over the budget is only reported).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from skymosaic._space import format_bytes, format_count
from skymosaic.assemble import DiskMosaic, coadd_memory_floor
from skymosaic.config import Config
from skymosaic.io import FrameInfo, frame_footprint
from skymosaic.plan.targets import quiet_clustering
from skymosaic.reproject import OutputGrid, optimal_grid
from skymosaic.stack.classic import group_frames

__all__ = ["PreflightError", "PreflightEstimate", "estimate_run"]

logger = logging.getLogger(__name__)

#: FITS header allowance per HDU (the primary one carries up to 500 HISTORY lines)
_HEADER_BYTES = 2880 * 20
#: frames removed at most while looking for the ones that make the grid too large
_MAX_CULPRITS = 10


class PreflightError(RuntimeError):
    """A run would exceed a limit (pixels, disk space, memory): nothing was written.

    ``estimate`` is the `PreflightEstimate` with the figures.
    """

    def __init__(self, message: str, estimate: PreflightEstimate) -> None:
        super().__init__(message)
        self.estimate = estimate


@dataclass
class Disk:
    """Free space of one folder's device and what the run needs there (bytes)."""

    path: str
    free: int
    needed: int


@dataclass
class Culprit:
    """A frame that makes the grid large: its name, path and distance from the median
    sky position of the frames."""

    name: str
    path: str
    distance_deg: float


@dataclass
class PreflightEstimate:
    """What a run will write and hold (bytes), the limits, and what exceeds them."""

    mode: str
    grid_shape: tuple[int, int]
    channels: int
    pixel_scale_arcsec: float
    n_frames: int
    n_mosaics: int
    output_bytes: int
    store_bytes: int
    tiles_bytes: int
    stack_scratch_bytes: int
    reusable_bytes: int
    disk_needed_bytes: int
    memory_budget_bytes: int
    memory_needed_bytes: int
    max_output_pixels: float
    disks: list[Disk] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    culprits: list[Culprit] = field(default_factory=list)
    shape_without_culprits: tuple[int, int] | None = None
    grid_from_header: bool = False

    @property
    def pixels(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-ready (run.json ``"preflight"``)."""
        out = asdict(self)
        out["pixels"] = self.pixels
        out["ok"] = self.ok
        return out

    def lines(self) -> list[str]:
        """The estimate as short lines of text (for the log, `plan` and `inspect`)."""
        h, w = self.grid_shape
        lines = [
            f"output grid {w} x {h} px ({format_count(self.pixels)}px, limit "
            f"{format_count(self.max_output_pixels)}px) x {self.channels} channel(s) at "
            f"{self.pixel_scale_arcsec:.3f}\"/px, {self.n_frames} frame(s)",
            f"output {format_bytes(self.output_bytes)}"
            + (f" ({self.n_mosaics} mosaics)" if self.n_mosaics > 1 else "")
            + f"; scratch: coadd store {format_bytes(self.store_bytes)}, master tiles "
              f"{format_bytes(self.tiles_bytes)}, stacking "
              f"{format_bytes(self.stack_scratch_bytes)}",
            f"disk needed at the peak {format_bytes(self.disk_needed_bytes)}"
            + (f" (of which {format_bytes(self.reusable_bytes)} already in OUT)"
               if self.reusable_bytes else ""),
        ]
        lines += [f"free space at {d.path}: {format_bytes(d.free)}" for d in self.disks]
        lines.append(f"memory: budget {format_bytes(self.memory_budget_bytes)}, the "
                     f"{'assembly' if self.mode == 'grid' else 'coadd'} needs at least "
                     f"{format_bytes(self.memory_needed_bytes)}")
        return lines

    def message(self, *, prefix: str = "pre-flight check failed, nothing was written: ") -> str:
        """Why the run cannot start: every exceeded limit, the frames to blame, what to do."""
        text = prefix + "; ".join(self.problems)
        if self.grid_from_header:
            return text + (". The grid comes from output.wcs_header: use a smaller header or a "
                           "coarser scale.")
        if self.culprits:
            names = ", ".join(f"{c.name} ({c.distance_deg:.1f} deg from the median position "
                              "of the frames)" for c in self.culprits)
            text += f". The grid is that large because of {len(self.culprits)} frame(s): {names}"
            if self.shape_without_culprits is not None:
                h, w = self.shape_without_culprits
                text += f"; without them it would be {w} x {h} px ({format_count(h * w)}px)"
            text += ". Remove them from the inputs (or move them to another folder)"
        else:
            text += (". No single frame makes the grid that large: the frames themselves cover "
                     "it; use a coarser --pixel-scale, fewer frames, or more room")
        return text + "; --max-output-pixels and --memory-budget set the limits."


def fits_bytes(channels: int, shape: tuple[int, int]) -> int:
    """Bytes of a mosaic FITS as the writer writes it: float32 science planes and float32
    WEIGHT and COVERAGE extensions, each padded to 2880-byte blocks, with their headers."""
    h, w = shape

    def padded(n: int) -> int:
        return -(-n // 2880) * 2880

    return padded(channels * h * w * 4) + 2 * padded(h * w * 4) + 3 * _HEADER_BYTES


def _preview_bytes(channels: int, shape: tuple[int, int], max_size: int) -> int:
    h, w = shape
    scale = min(1.0, max_size / max(h, w))
    return int(math.ceil(h * scale) * math.ceil(w * scale) * (3 if channels == 3 else 1))


def _allocated(paths: Sequence[Path]) -> int:
    """Bytes on disk of the existing files among ``paths`` (sparse files count what they hold)."""
    total = 0
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def _existing_folder(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _footprints(frames: Sequence[FrameInfo]) -> list[np.ndarray]:
    return [frame_footprint(f.wcs, f.shape[1:], samples=9) for f in frames]


def _grid_of(footprints: Sequence[np.ndarray], config: Config, scale: float,
             rotation: str | None = None) -> OutputGrid:
    return optimal_grid(footprints, pixel_scale_arcsec=scale,
                        rotation=rotation or config.output.rotation,
                        projection=config.output.projection, max_pixels=math.inf)


def _unit(points: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(points[:, 0]), np.radians(points[:, 1])
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _distances(footprints: Sequence[np.ndarray]) -> np.ndarray:
    """Angular distance (deg) of each frame's centre from the median centre of all frames."""
    centres = np.array([_unit(np.asarray(f, float)).mean(axis=0) for f in footprints])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    median = np.median(centres, axis=0)
    norm = np.linalg.norm(median)
    median = median / norm if norm > 0 else centres[0]
    return np.degrees(np.arccos(np.clip(centres @ median, -1.0, 1.0)))


def _culprits(frames: Sequence[FrameInfo], footprints: list[np.ndarray], config: Config,
              scale: float, target_pixels: float) -> tuple[list[Culprit], tuple[int, int] | None]:
    """The frames farthest from the others whose removal brings the grid to ``target_pixels``.

    Frames are removed in order of distance from the median position, the grid recomputed
    after each, up to `_MAX_CULPRITS`. When that is not enough, the removed frames are
    still named if they shrink the grid at least fourfold (they make it large, if not too
    large alone); otherwise none is.
    """
    if len(frames) < 2:
        return [], None
    dist = _distances(footprints)
    order = [int(k) for k in np.argsort(-dist, kind="stable")]
    full = _grid_of(footprints, config, scale)
    full_pixels = full.shape[0] * full.shape[1]
    shape: tuple[int, int] | None = None
    for n in range(1, min(_MAX_CULPRITS, len(frames) - 1) + 1):
        drop = set(order[:n])
        grid = _grid_of([fp for k, fp in enumerate(footprints) if k not in drop], config, scale)
        shape = (int(grid.shape[0]), int(grid.shape[1]))
        if shape[0] * shape[1] <= target_pixels:
            break
    else:
        if shape is None or shape[0] * shape[1] * 4 > full_pixels:
            return [], None
    names = [Culprit(frames[k].name, str(frames[k].path), float(dist[k])) for k in order[:n]]
    return names, shape


def _quiet_groups(frames: Sequence[FrameInfo], config: Config) -> list[list[int]]:
    """The classic clustering, without its log lines (the run logs them when it clusters)."""
    with quiet_clustering():
        return [list(g) for g in group_frames(frames, config).groups]


def _classic_scratch(frames: Sequence[FrameInfo], config: Config, scale: float,
                     groups: Sequence[Sequence[int]] | None) -> tuple[int, int, int]:
    """Master tiles' bytes, the largest stacking cube's bytes, and the widest tile's width
    (a coadd source), from the classic clustering (``groups`` of frame indices)."""
    if not config.stack.enabled or len(frames) < config.stack.min_frames:
        return 0, 0, 0
    tiles, cube, widest = 0, 0, 0
    for members in groups if groups is not None else _quiet_groups(frames, config):
        if len(members) < config.stack.min_frames:
            continue
        group = [frames[k] for k in members]
        # the tile grid of `skymosaic.stack.master`: north-up over the group's footprints
        h, w = _grid_of(_footprints(group), config, scale, rotation="north").shape
        c = group[0].channels
        tiles += fits_bytes(c, (h, w))
        cube = max(cube, len(group) * (c * 4 + 1) * h * w)
        widest = max(widest, w)
    return tiles, cube, widest


def _grid_mode_figures(frames: Sequence[FrameInfo], grid: OutputGrid, config: Config,
                       n_mosaics: int) -> tuple[int, int]:
    """Grid mode: tiles' bytes (about the canvas, enlarged by the tiles' overlap) and the
    in-memory canvas of one mosaic (data and weight, with their accumulators)."""
    c = frames[0].channels
    h, w = grid.shape
    enlarge = 1.0 / (1.0 - config.grid.overlap) ** 2
    tiles = int(n_mosaics * fits_bytes(c, (h, w)) * enlarge)
    memory = 2 * h * w * (c * 4 + 4)
    return tiles, memory


def estimate_run(frames: Sequence[FrameInfo], grid: OutputGrid, config: Config, *,
                 out: Path | None = None, mode: str | None = None, n_mosaics: int = 1,
                 groups: Sequence[Sequence[int]] | None = None) -> PreflightEstimate:
    """The pre-flight estimate of a run of ``frames`` onto ``grid`` (see the module docstring).

    Parameters
    ----------
    frames : sequence of FrameInfo
        The frames the run will use (headers: WCS and shape).
    grid : OutputGrid
        The chosen output grid.
    config : Config
    out : path, optional
        The run's output folder: its free space (and that of its scratch folder) is
        checked, and what an earlier run left there is counted as reusable. Without it
        (`skymosaic plan`, `inspect`) only the figures and the other limits are checked.
    mode : {"classic", "direct", "grid"}, optional
        Default: classic, or direct with ``stack.enabled = false``.
    n_mosaics : int
        Mosaics written (grid mode: one per filter).
    groups : sequence of sequence of int, optional
        Classic mode: the clustering (indices into ``frames``) when the caller has it;
        computed otherwise.

    Returns
    -------
    PreflightEstimate
        ``problems`` lists every exceeded limit (empty: the run fits).
    """
    if not frames:
        raise ValueError("no frame to estimate a run of")
    mode = mode or ("classic" if config.stack.enabled else "direct")
    c = frames[0].channels
    h, w = grid.shape
    scale = grid.pixel_scale_arcsec
    preview = (_preview_bytes(c, (h, w), config.output.preview_max_size)
               if config.output.preview else 0)
    output = n_mosaics * (fits_bytes(c, (h, w)) + preview)
    budget = config.memory_budget_bytes
    widest = max(f.width for f in frames)
    if mode == "grid":
        store, cube = 0, 0
        tiles, memory = _grid_mode_figures(frames, grid, config, n_mosaics)
        peak = tiles + output
    else:
        renorm = config.photometry.enabled and config.photometry.coverage_renorm and len(frames) > 1
        store = DiskMosaic.nbytes(c, (h, w)) * (2 if renorm else 1)
        tiles, cube, widest_tile = (_classic_scratch(frames, config, scale, groups)
                                    if mode == "classic" else (0, 0, 0))
        memory = coadd_memory_floor(w, c, max(widest, widest_tile))
        # tiles stay; the cube lives while its tile is stacked, the store while the FITS is written
        peak = tiles + max(cube, store + output)
    reusable = 0
    disks: list[Disk] = []
    if out is not None:
        out = Path(out)
        stores = [p for name in ("coadd", "coadd_renorm") for p in (out / name).glob("*.npy")]
        reusable = _allocated(stores + sorted((out / "tiles").glob("*.fits")))
        needs = {out: max(0, peak - reusable)}
        scratch = out / ".scratch"
        if cube and scratch.exists() and _device(scratch) != _device(out):
            needs = {out: max(0, peak - cube - reusable), scratch: cube}
        disks = _check_disks(needs)
    estimate = PreflightEstimate(
        mode=mode, grid_shape=(h, w), channels=c, pixel_scale_arcsec=scale, n_frames=len(frames),
        n_mosaics=n_mosaics, output_bytes=output, store_bytes=store, tiles_bytes=tiles,
        stack_scratch_bytes=cube, reusable_bytes=reusable, disk_needed_bytes=peak,
        memory_budget_bytes=budget, memory_needed_bytes=memory,
        max_output_pixels=config.output.max_output_pixels, disks=disks,
        grid_from_header=config.output.wcs_header is not None,
    )
    target = _find_problems(estimate)
    if estimate.problems and not estimate.grid_from_header:
        estimate.culprits, estimate.shape_without_culprits = _culprits(
            frames, _footprints(frames), config, scale, target)
    return estimate


def _device(path: Path) -> int:
    return os.stat(_existing_folder(path)).st_dev


def _check_disks(needs: dict[Path, int]) -> list[Disk]:
    """Free space of each folder's device (folders on one device share its free space)."""
    by_device: dict[int, Disk] = {}
    for path, needed in needs.items():
        folder = _existing_folder(path)
        dev = os.stat(folder).st_dev
        if dev in by_device:
            by_device[dev].needed += needed
        else:
            by_device[dev] = Disk(str(path), int(shutil.disk_usage(folder).free), int(needed))
    return list(by_device.values())


def _find_problems(e: PreflightEstimate) -> float:
    """Fill ``e.problems``; return the grid size (pixels) that would fit every limit."""
    h, w = e.grid_shape
    target = float(e.pixels)
    if e.pixels > e.max_output_pixels:
        e.problems.append(f"the output grid of {w} x {h} px is {format_count(e.pixels)}px "
                          f"({e.pixels:,} px), over the limit of "
                          f"{format_count(e.max_output_pixels)}px "
                          "(output.max_output_pixels, --max-output-pixels)")
        target = min(target, e.max_output_pixels)
    for d in e.disks:
        if d.needed > d.free:
            e.problems.append(f"the run needs {format_bytes(d.needed)} of disk at {d.path} "
                              f"(output {format_bytes(e.output_bytes)}, coadd store "
                              f"{format_bytes(e.store_bytes)}, master tiles "
                              f"{format_bytes(e.tiles_bytes)}, stacking "
                              f"{format_bytes(e.stack_scratch_bytes)}) and "
                              f"{format_bytes(d.free)} is free")
            target = min(target, e.pixels * d.free / max(d.needed, 1))
    if e.mode == "grid":
        total = psutil.virtual_memory().total
        if e.memory_needed_bytes > total:
            e.problems.append(f"grid mode assembles the {w} x {h} px canvas in memory: at least "
                              f"{format_bytes(e.memory_needed_bytes)}, more than the "
                              f"{format_bytes(total)} of RAM")
            target = min(target, e.pixels * total / e.memory_needed_bytes)
        elif e.memory_needed_bytes > e.memory_budget_bytes:
            logger.warning("[GRID] the %d x %d px canvas is assembled in memory (at least %s), "
                           "more than the memory budget of %s", w, h,
                           format_bytes(e.memory_needed_bytes), format_bytes(e.memory_budget_bytes))
    elif e.memory_needed_bytes > e.memory_budget_bytes:
        e.problems.append(f"the memory budget of {format_bytes(e.memory_budget_bytes)} "
                          f"(run.memory_budget_mb, --memory-budget) is below the "
                          f"{format_bytes(e.memory_needed_bytes)} the coadd needs at least for "
                          f"blocks of rows {w} px wide and its largest input")
        target = min(target, e.pixels * (e.memory_budget_bytes / e.memory_needed_bytes) ** 2)
    return target
