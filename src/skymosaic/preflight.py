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
records it in ``run.json`` (``"preflight"``) and logs it.

Time. `estimate_time` turns the work of each phase into seconds with a small throughput
model (`WORK_UNITS`, counted from the headers and the grid; overlaps on a coarse copy of
the grid where each coadd input is the union of its frames' footprints):

    seconds = (SECONDS_PER_MPX * work + SECONDS_PER_FRAME * frames) / speedup(threads)

with the Amdahl speed-up ``1 / ((1 - p) + p / threads)`` of `PARALLEL_FRACTION` ``p``.
The constants were measured with ``scripts/calibrate_preflight_time.py`` (the small demo
survey and four synthetic surveys, mono and colour, stacked and direct, 2-36 frames of
48 kpx to 330 kpx, ``run.threads`` = 1 and 2; least squares of ``timings_s`` against the
work units) on a 2-core x86-64 VM, December 2026, averaged over two calibrations:

=========== ============== ========== =================================================
phase       s per Mpx      s per frame measured on one thread
=========== ============== ========== =================================================
verify      0.06           0.0024      0.053-0.067 s/Mpx (reading, noise, sep stars)
stack       0.35           0.016       0.33-0.37 (reprojection onto the tile, rejection)
photometry  2.0                        1.8-2.3 per overlap Mpx (star matching, fits)
coadd       0.2                        0.19-0.21 per coadded Mpx and pass
write       0.2                        0.19-0.23 per output Mpx (FITS, preview, exports)
=========== ============== ========== =================================================

With these constants every calibration run is estimated within a factor 0.6-1.7 of its
measured time. The 2-thread runs shared the 2 cores with other jobs, so the parallel
fractions measured 0-0.7 from one calibration to the next: 0.5 is used for the threaded
phases (frames, tiles, overlaps and coadd blocks run on ``run.threads`` threads) and 0
for the writer, which streams one file. A GPU, Dask workers, compressed inputs or a slow
disk change the figures: the estimate is an order of magnitude, not a promise.

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

import cv2
import numpy as np
import psutil

from skymosaic._space import format_bytes, format_count
from skymosaic.assemble import DiskMosaic, coadd_memory_floor
from skymosaic.config import Config
from skymosaic.io import FrameInfo, frame_footprint
from skymosaic.plan.targets import quiet_clustering
from skymosaic.reproject import OutputGrid, optimal_grid
from skymosaic.stack.classic import group_frames

__all__ = ["PreflightError", "PreflightEstimate", "TimeEstimate", "estimate_run", "estimate_time",
           "format_duration"]

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
class TimeEstimate:
    """The estimated wall time of a run (`estimate_time`): the work of each phase, in its
    unit (Mpx, see `WORK_UNITS`), and the seconds it takes on ``threads`` threads."""

    threads: int
    work: dict[str, float]
    seconds: dict[str, float]

    @property
    def total_s(self) -> float:
        return float(sum(self.seconds.values()))

    def to_dict(self) -> dict:
        return {"threads": self.threads, "total_s": round(self.total_s, 2),
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "work": {k: round(v, 3) for k, v in self.work.items()}, "units": dict(WORK_UNITS)}

    def line(self) -> str:
        phases = ", ".join(f"{k} {format_duration(v)}" for k, v in self.seconds.items() if v > 0)
        return (f"time: about {format_duration(self.total_s)} on {self.threads} thread(s)"
                + (f" ({phases})" if phases else ""))


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
    time: TimeEstimate | None = None

    @property
    def pixels(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-ready (run.json ``"preflight"``)."""
        out = asdict(self)
        out["time"] = None if self.time is None else self.time.to_dict()
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
        if self.time is not None:
            lines.append(self.time.line())
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


@dataclass
class _Stacking:
    """What the classic clustering implies: master tiles' bytes, the largest stacking
    cube's bytes, the widest tile's width (a coadd source), the stacked frame-Mpx
    (frames times their tile's channels x pixels) and the coadd sources (frame indices:
    one list per master tile, one frame per single)."""

    tiles: int = 0
    cube: int = 0
    widest: int = 0
    stacked_mpx: float = 0.0
    sources: list[list[int]] = field(default_factory=list)


def _classic_scratch(frames: Sequence[FrameInfo], config: Config, scale: float,
                     groups: Sequence[Sequence[int]] | None) -> _Stacking:
    """The master tiles and coadd sources of the classic clustering (``groups`` of frame
    indices, computed when not given)."""
    out = _Stacking()
    if not config.stack.enabled or len(frames) < config.stack.min_frames:
        out.sources = [[k] for k in range(len(frames))]
        return out
    for members in groups if groups is not None else _quiet_groups(frames, config):
        if len(members) < config.stack.min_frames:
            out.sources += [[k] for k in members]
            continue
        out.sources.append(list(members))
        group = [frames[k] for k in members]
        # the tile grid of `skymosaic.stack.master`: north-up over the group's footprints
        h, w = _grid_of(_footprints(group), config, scale, rotation="north").shape
        c = group[0].channels
        out.tiles += fits_bytes(c, (h, w))
        out.cube = max(out.cube, len(group) * (c * 4 + 1) * h * w)
        out.widest = max(out.widest, w)
        out.stacked_mpx += len(group) * c * h * w / 1e6
    return out


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


# --------------------------------------------------------------------------- time


#: the unit of each phase's work (see the module docstring)
WORK_UNITS = {
    "verify": "input Mpx read (frame pixels x channels)",
    "stack": "stacked frame-Mpx (frames x their tile's pixels x channels)",
    "photometry": "overlap Mpx (pixels x channels of every pair of overlapping coadd inputs)",
    "coadd": "coadded Mpx (each coadd input's pixels on the grid x channels, per pass)",
    "write": "output Mpx written (grid pixels x channels, per mosaic)",
}
#: seconds per unit of work on one thread, and per frame (file opening, star detection)
SECONDS_PER_MPX = {"verify": 0.06, "stack": 0.35, "photometry": 2.0, "coadd": 0.2, "write": 0.2}
SECONDS_PER_FRAME = {"verify": 0.0024, "stack": 0.016}
#: the fraction of each phase's time that runs in parallel over ``run.threads`` (Amdahl)
PARALLEL_FRACTION = {"verify": 0.5, "stack": 0.5, "photometry": 0.5, "coadd": 0.5, "write": 0.0}
#: the long side of the coarse grid on which the inputs' overlaps are counted
_COARSE_SIDE = 512


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.4 h"``."""
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pixel_polygon(points: np.ndarray, grid: OutputGrid, factor: int) -> np.ndarray | None:
    """A footprint (RA, Dec) as an int32 polygon on the grid binned by ``factor``."""
    with np.errstate(all="ignore"):
        x, y = grid.wcs.world_to_pixel_values(points[:, 0], points[:, 1])
    xy = np.stack([np.asarray(x, float), np.asarray(y, float)], axis=1) / factor
    if not np.all(np.isfinite(xy)):
        return None
    h, w = (-(-n // factor) for n in grid.shape)
    # a vertex far off the grid is moved to its edge (keeps int32 coordinates small)
    xy = np.clip(np.round(xy), [-2, -2], [w + 2, h + 2])
    return xy.astype(np.int32)


def _coverage(frames: Sequence[FrameInfo], sources: Sequence[Sequence[int]],
              grid: OutputGrid) -> tuple[float, float]:
    """Pixels of the coadd inputs on the grid (summed) and of the overlaps of every pair
    of them, counted on a coarse copy of the grid (`_COARSE_SIDE`) where each input is
    the union of its frames' footprints."""
    factor = max(1, math.ceil(max(grid.shape) / _COARSE_SIDE))
    h, w = (-(-n // factor) for n in grid.shape)
    depth = np.zeros((h, w), np.int32)
    footprints = _footprints(frames)
    area = 0.0
    for members in sources:
        polygons = [p for k in members
                    if (p := _pixel_polygon(footprints[k], grid, factor)) is not None]
        if not polygons:
            continue
        pts = np.concatenate(polygons)
        x0, y0 = np.maximum(pts.min(axis=0), 0)
        x1, y1 = np.minimum(pts.max(axis=0) + 1, [w, h])
        if x1 <= x0 or y1 <= y0:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for p in polygons:  # one by one: fillPoly fills overlapping contours by parity
            cv2.fillPoly(mask, [p - np.array([x0, y0], np.int32)], 1)
        depth[y0:y1, x0:x1] += mask
        area += float(mask.sum())
    pairs = float((depth.astype(np.int64) * (depth - 1) // 2).sum())
    return area * factor**2, pairs * factor**2


def _work_units(frames: Sequence[FrameInfo], grid: OutputGrid, config: Config,
                stacking: _Stacking, *, mode: str, n_mosaics: int) -> dict[str, float]:
    """Each phase's work in its unit (`WORK_UNITS`), and the frame count (``"frames"``)."""
    c = frames[0].channels
    area, pairs = _coverage(frames, stacking.sources, grid)
    photometry = config.photometry.enabled and len(stacking.sources) > 1
    passes = 2 if photometry and config.photometry.coverage_renorm else 1
    return {
        "frames": float(len(frames)),
        "verify": sum(f.channels * f.height * f.width for f in frames) / 1e6,
        "stack": stacking.stacked_mpx,
        "photometry": c * pairs / 1e6 if photometry else 0.0,
        "coadd": passes * c * area / 1e6 * (1 if mode != "grid" else n_mosaics),
        "write": n_mosaics * c * grid.shape[0] * grid.shape[1] / 1e6,
    }


def _speedup(fraction: float, threads: int) -> float:
    return 1.0 / ((1.0 - fraction) + fraction / max(1, threads))


def estimate_time(work: dict[str, float], *, threads: int) -> TimeEstimate:
    """The wall time of each phase: ``work`` (`WORK_UNITS`) times `SECONDS_PER_MPX`, plus
    `SECONDS_PER_FRAME` per frame, divided by the Amdahl speed-up of `PARALLEL_FRACTION`
    on ``threads`` threads."""
    n = work.get("frames", 0.0)
    stacked = n if work.get("stack", 0.0) > 0 else 0.0
    seconds = {}
    for phase, rate in SECONDS_PER_MPX.items():
        one = rate * work.get(phase, 0.0) + SECONDS_PER_FRAME.get(phase, 0.0) * (
            stacked if phase == "stack" else n if phase in SECONDS_PER_FRAME else 0.0)
        seconds[phase] = one / _speedup(PARALLEL_FRACTION[phase], threads)
    return TimeEstimate(threads=threads, work={k: v for k, v in work.items() if k != "frames"},
                        seconds=seconds)


def estimate_run(frames: Sequence[FrameInfo], grid: OutputGrid, config: Config, *,
                 out: Path | None = None, mode: str | None = None, n_mosaics: int = 1,
                 groups: Sequence[Sequence[int]] | None = None,
                 timed: bool = True) -> PreflightEstimate:
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
    timed : bool
        Estimate the wall time too (``estimate.time``, `estimate_time`).

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
        # each frame is reprojected into its tile(s); the tiles overlap as the frames do
        stacking = _Stacking(stacked_mpx=sum(f.channels * f.height * f.width for f in frames) / 1e6,
                             sources=[[k] for k in range(len(frames))])
        peak = tiles + output
    else:
        renorm = config.photometry.enabled and config.photometry.coverage_renorm and len(frames) > 1
        store = DiskMosaic.nbytes(c, (h, w)) * (2 if renorm else 1)
        stacking = (_classic_scratch(frames, config, scale, groups) if mode == "classic" else
                    _Stacking(sources=[[k] for k in range(len(frames))]))
        tiles, cube = stacking.tiles, stacking.cube
        memory = coadd_memory_floor(w, c, max(widest, stacking.widest))
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
    if timed:
        estimate.time = estimate_time(
            _work_units(frames, grid, config, stacking, mode=mode, n_mosaics=n_mosaics),
            threads=config.run.threads or (os.cpu_count() or 1))
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
