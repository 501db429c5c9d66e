"""Phase 5 coadd: weighted mean of every source on the output grid, in memory-bounded blocks.

The output is cut into blocks of rows sized from the memory budget. For each block only the
sources whose footprint touches it are read, and of each only the input rows and columns
that map into the block (plus the kernel margin). Sources are resampled in a thread pool
(OpenCV and NumPy release the GIL) and accumulated in source order, so the result does not
depend on the number of threads. Sums are kept in float64.

Edge rule: the coadd resamples with ``CoaddOptions.edge = "half"`` by default, so each
source covers its pixels' full area, out to half a pixel beyond its outermost pixel
centres, as astropy's ``reproject_and_coadd`` does (see `skymosaic.reproject.resample`).
The photometric matching (`skymosaic.assemble._phase5.match_sources`) and the stacking
into master tiles resample the same sources with ``"strict"``, so that no extrapolated
rim value enters a fit.

One kernel, two engines: `coadd_block` computes one block; `coadd` runs the blocks one after
the other with a thread pool inside each, or, given a ``dask.distributed`` client, as Dask
tasks on the cluster's workers (same function, so the same numbers). Finished blocks go to
an in-memory output, or to a `DiskMosaic` (``.npy`` files opened per block) when the output
does not fit in half the budget or when a `BlockStore` is given; a store records every
finished block so that an interrupted coadd resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from skymosaic._space import disk_full_guard, preallocate
from skymosaic.assemble._sources import ImageSource
from skymosaic.backend import Backend
from skymosaic.backend._reproject import resample_weighted
from skymosaic.io._frames import FrameError
from skymosaic.photometry._linefit import estimate_noise
from skymosaic.reproject._grid import OutputGrid
from skymosaic.reproject._mapping import pixel_map
from skymosaic.reproject._resample import EDGES, KERNEL_RADIUS, KERNELS

if TYPE_CHECKING:
    from skymosaic.config import Config

__all__ = [
    "COADD_REJECT",
    "COADD_WEIGHTINGS",
    "BlockStore",
    "CoaddOptions",
    "CoaddResult",
    "DiskMosaic",
    "coadd",
    "coadd_block",
    "coadd_memory_floor",
    "ordered_window",
    "resample_source",
    "source_bbox",
]

#: Scalar weights of the coadd's inputs (``coadd.weighting``, `skymosaic.pipeline.frame_weight`):
#: equal, by exposure time, or inverse variance of each input's robust noise.
COADD_WEIGHTINGS = ("uniform", "exposure", "noise")
#: Outlier rejection across overlapping inputs (``coadd.reject``, `reject_outliers`).
COADD_REJECT = ("auto", "off")

logger = logging.getLogger(__name__)

#: Bytes per output pixel and channel of one block while it is built: the float64 sum
#: and the float32 result; per pixel: float64 weight sum + float32 weight out, uint16
#: coverage in and out.
_BLOCK_BYTES_PER_CHANNEL, _BLOCK_BYTES_PER_PIXEL = 12, 16
#: Temporaries of one resampling task per input pixel and channel: the read region,
#: the zero-filled copy, the output cutout, maps and masks (measured ~5x, rounded up).
_TASK_FACTOR = 8
#: Bytes per output pixel of the result arrays (float32 per channel, float32 weight,
#: uint16 coverage).
_OUT_BYTES_PER_CHANNEL, _OUT_BYTES_PER_PIXEL = 4, 6


@dataclass(frozen=True)
class CoaddOptions:
    """How to coadd. ``memory_budget`` is in bytes; ``threads`` 0 means all cores.

    ``edge`` is the resampler's edge rule (`skymosaic.reproject.resample`): ``"half"``
    keeps the outer half pixel of every source, ``"strict"`` only what lies within its
    outermost pixel centres. Photometric matching and stacking always use ``"strict"``.
    """

    kernel: str = "bilinear"
    edge: str = "half"
    map_tolerance: float = 0.01
    grid_step: int = 64
    memory_budget: int = 2 * 1024**3
    threads: int = 0
    min_block_rows: int = 32
    scratch_dir: str | None = None
    #: Rows per output block; None plans them from the memory budget (`_plan_blocks`).
    block_rows: int | None = None
    #: Outlier rejection across overlapping inputs (`reject_outliers`): "off" or "auto".
    reject: str = "off"
    #: Rejection threshold in combined noise sigmas (see `reject_outliers`).
    reject_kappa: float = 5.0
    #: Where sources are resampled (None = the host); see `skymosaic.backend`.
    backend: Backend | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Config, *, threads: int, scratch: str | os.PathLike | None = None,
                    backend: Backend | None = None) -> CoaddOptions:
        """The coadd's options of a run: ``[reproject]``, ``[coadd]``, ``run.block_rows`` and the
        memory budget; ``threads``, the scratch folder and the backend are the run's."""
        r = config.reproject
        return cls(kernel=r.kernel, edge=r.edge, map_tolerance=r.map_tolerance_px,
                   grid_step=r.grid_step_px, memory_budget=config.memory_budget_bytes,
                   threads=threads, scratch_dir=None if scratch is None else str(scratch),
                   backend=backend, block_rows=config.run.block_rows, reject=config.coadd.reject,
                   reject_kappa=config.coadd.reject_kappa)

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel {self.kernel!r} is not one of {KERNELS}")
        if self.edge not in EDGES:
            raise ValueError(f"edge {self.edge!r} is not one of {EDGES}")
        if self.memory_budget < 16 * 1024**2:
            raise ValueError(f"memory_budget {self.memory_budget} bytes is below the 16 MiB "
                             "minimum")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.block_rows is not None and self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1 or None, got {self.block_rows}")
        if self.reject not in COADD_REJECT:
            raise ValueError(f"reject must be one of {COADD_REJECT}, got {self.reject!r}")
        if not (math.isfinite(self.reject_kappa) and self.reject_kappa > 0):
            raise ValueError(f"reject_kappa must be finite and > 0, got {self.reject_kappa!r}")

    @property
    def n_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


class DiskMosaic:
    """Coadd outputs on disk: ``data.npy`` (C, H, W) float32, ``weight.npy`` and
    ``coverage.npy`` (H, W) float32 / uint16 in ``folder``.

    The files are memory-mapped only for the rows being written or read and unmapped
    right after, so the process never keeps more than one block of them resident. They
    are preallocated when created: a disk too small for them raises
    `skymosaic._space.DiskFullError` then, instead of a SIGBUS at the first block that
    does not fit.
    """

    NAMES = ("data", "weight", "coverage")

    @staticmethod
    def nbytes(channels: int, shape: tuple[int, int]) -> int:
        """Bytes on disk of a ``channels`` x ``shape`` store (without the small .npy headers)."""
        h, w = shape
        return h * w * (_OUT_BYTES_PER_CHANNEL * channels + _OUT_BYTES_PER_PIXEL)

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @classmethod
    def create(cls, folder: str | os.PathLike, channels: int, shape: tuple[int, int]) -> DiskMosaic:
        """New (sparse) files for a ``channels`` x ``shape`` mosaic, replacing any old ones."""
        store = cls(folder)
        store.folder.mkdir(parents=True, exist_ok=True)
        h, w = shape
        for name, dtype, full in (("data", np.float32, (channels, h, w)),
                                  ("weight", np.float32, (h, w)),
                                  ("coverage", np.uint16, (h, w))):
            with disk_full_guard(store.path(name)):
                arr = np.lib.format.open_memmap(store.path(name), mode="w+", dtype=dtype,
                                                shape=full)
                del arr
            preallocate(store.path(name))
        return store

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.npy"

    def matches(self, channels: int, shape: tuple[int, int]) -> bool:
        """Whether the files exist with the layout of a ``channels`` x ``shape`` mosaic."""
        try:
            data = self.open("data")
            ok = data.shape == (channels, *shape) and self.open("weight").shape == tuple(shape)
            return ok and self.open("coverage").shape == tuple(shape)
        except (OSError, ValueError):
            return False

    def open(self, name: str, mode: str = "r") -> np.memmap:
        """The whole array ``name`` memory-mapped (``mode`` ``"r"`` or ``"r+"``)."""
        return np.load(self.path(name), mmap_mode=mode)

    def write_rows(self, y0: int, data: np.ndarray, weight: np.ndarray,
                   coverage: np.ndarray) -> None:
        """Write output rows ``[y0, y0 + len)`` and flush them to disk."""
        y1 = y0 + weight.shape[0]
        for name, block in (("data", data), ("weight", weight), ("coverage", coverage)):
            with disk_full_guard(self.path(name)):
                arr = self.open(name, "r+")
                arr[..., y0:y1, :] = block
                arr.flush()
                del arr

    def read_rows(self, name: str, y0: int, y1: int) -> np.ndarray:
        """A copy of rows ``[y0, y1)`` of ``name``."""
        arr = self.open(name)
        try:
            return np.array(arr[..., y0:y1, :])
        finally:
            del arr

    def remove(self) -> None:
        """Delete the files (and the folder when empty)."""
        for name in self.NAMES:
            self.path(name).unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class BlockStore:
    """A persistent coadd output: where it lives and what an earlier run already finished.

    ``done`` maps the first row of every finished block to its statistics (as passed to
    ``on_block``); ``block_rows`` forces the block layout of that earlier run, so that
    reused and new blocks fit together. ``on_block(y0, stats)`` is called after each new
    block is flushed to disk (the pipeline records it in the run's manifest).
    """

    folder: Path
    block_rows: int | None = None
    done: dict[int, dict] = field(default_factory=dict)
    on_block: Callable[[int, dict], None] | None = None


@dataclass
class CoaddResult:
    """The coadded image (C, H, W) float32 (NaN where no data), the weight sum (H, W)
    float32 and the number of contributing sources per pixel (H, W) uint16.

    When the output was built on disk, the three arrays are read-only memory maps of
    ``store`` (read them by blocks: see `DiskMosaic.read_rows`).
    """

    data: np.ndarray
    weight: np.ndarray
    coverage: np.ndarray
    rejected: dict[str, str] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    n_blocks: int = 1
    block_rows: int = 0
    coverage_fraction: float = 0.0
    max_depth: int = 0
    store: DiskMosaic | None = None
    blocks_reused: int = 0
    #: Pixels rejected as outliers across overlapping inputs, per source name.
    outliers: dict[str, int] = field(default_factory=dict)


def source_bbox(source: ImageSource, grid: OutputGrid, *,
                margin: int = 2) -> tuple[int, int, int, int] | None:
    """The source's bounding box on the output grid ``(y0, y1, x0, x1)``, or None if outside."""
    pts = source.edge_points()
    x, y = grid.wcs.world_to_pixel_values(pts[:, 0], pts[:, 1])
    x, y = np.asarray(x), np.asarray(y)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return (0, grid.shape[0], 0, grid.shape[1])  # crosses a horizon: be safe
    y0 = max(0, math.floor(y.min()) - margin)
    y1 = min(grid.shape[0], math.ceil(y.max()) + margin + 1)
    x0 = max(0, math.floor(x.min()) - margin)
    x1 = min(grid.shape[1], math.ceil(x.max()) + margin + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1


def _task_bytes(sources: Sequence[ImageSource]) -> int:
    """Peak temporaries of one resampling task (the largest source)."""
    largest = max((s.shape[0] * s.shape[1] * s.shape[2] for s in sources), default=0)
    return largest * 4 * _TASK_FACTOR


def coadd_memory_floor(width: int, channels: int, source_width: int, *,
                       min_block_rows: int = CoaddOptions.min_block_rows) -> int:
    """The least memory (bytes) a coadd onto a ``width`` px wide grid needs, output on disk.

    One block of ``min_block_rows`` rows (the smallest `_plan_blocks` falls back to) and one
    thread, i.e. two resampling tasks in flight (`ordered_window`), each over a cutout of
    as many rows of the widest source (``source_width`` px, ``channels`` planes). A task
    reads only the part of its source that maps into the block, so this is a floor, not
    the budget the block planner aims at: below it no block layout fits.
    """
    block = min_block_rows * width * (channels * _BLOCK_BYTES_PER_CHANNEL + _BLOCK_BYTES_PER_PIXEL)
    return block + 2 * min_block_rows * source_width * channels * 4 * _TASK_FACTOR


def _plan_blocks(grid: OutputGrid, channels: int, sources: Sequence[ImageSource],
                 opts: CoaddOptions,
                 *, on_disk: bool) -> int:
    """Rows per block so that outputs + one block + in-flight tasks fit in the budget
    (with outlier rejection, the block also keeps its contributions).

    At most ``n_threads + 1`` resampling tasks are in flight (`ordered_window`), each
    holding `_task_bytes`; a block holds its float64 sums and its float32 result; an
    in-memory output holds the whole mosaic.
    """
    h, w = grid.shape
    if opts.block_rows is not None:
        return int(min(h, opts.block_rows))
    tasks = (opts.n_threads + 1) * _task_bytes(sources)
    in_memory = 0 if on_disk else h * w * (_OUT_BYTES_PER_CHANNEL * channels + _OUT_BYTES_PER_PIXEL)
    per_row = w * (channels * _BLOCK_BYTES_PER_CHANNEL + _BLOCK_BYTES_PER_PIXEL)
    if opts.reject != "off":
        # the kept contributions (twice the mean depth, float32 data and weight) and the
        # rejection's float64 sums
        depth = 2.0 * sum(s.shape[1] * s.shape[2] for s in sources) / max(h * w, 1)
        per_row += int(w * (16 * channels + 12 + min(depth, len(sources)) * (4 * channels + 4)))
    room = opts.memory_budget - tasks - in_memory
    rows = room // per_row if room > 0 else 0
    if rows < opts.min_block_rows:
        logger.warning(
            "memory budget %.0f MiB is tight for %d threads and %.1f Mpx frames; using "
            "%d-row blocks", opts.memory_budget / 2**20, opts.n_threads,
            _task_bytes(sources) / (4 * _TASK_FACTOR * 3e6), opts.min_block_rows,
        )
        rows = opts.min_block_rows
    return int(min(h, rows))


def _output_on_disk(grid: OutputGrid, channels: int, opts: CoaddOptions) -> bool:
    """An output larger than half the budget is built in memory-mapped scratch files."""
    h, w = grid.shape
    out_bytes = h * w * (_OUT_BYTES_PER_CHANNEL * channels + _OUT_BYTES_PER_PIXEL)
    return opts.scratch_dir is not None and out_bytes > opts.memory_budget // 2


def resample_source(
    source: ImageSource, grid: OutputGrid, cut: tuple[int, int, int, int], opts: CoaddOptions
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """Resample one source onto the cutout ``cut = (y0, y1, x0, x1)`` of ``grid``.

    Only the input rows and columns that map into the cutout are read. Returns
    ``(cut, data (C, h, w), weight (h, w))`` with the source's weight, pixel weights and
    gain/offset/sky surface applied (weight 0 and NaN data where the source has no valid sample), or
    None when the source has no valid pixel there.
    """
    pm = pixel_map(grid.wcs, source.wcs, cut, tolerance=opts.map_tolerance, step=opts.grid_step)
    _, h_in, w_in = source.shape
    r = KERNEL_RADIUS[opts.kernel] + 1
    with np.errstate(invalid="ignore"):
        inside = (pm.x > -r) & (pm.x < w_in - 1 + r) & (pm.y > -r) & (pm.y < h_in - 1 + r)
    if not inside.any():
        return None
    xs, ys = pm.x[inside], pm.y[inside]
    c0, c1 = max(0, int(np.floor(xs.min())) - r), min(w_in, int(np.ceil(xs.max())) + r + 1)
    r0, r1 = max(0, int(np.floor(ys.min())) - r), min(h_in, int(np.ceil(ys.max())) + r + 1)
    del inside, xs, ys
    if c1 <= c0 or r1 <= r0:
        return None
    rows, cols = slice(r0, r1), slice(c0, c1)
    xmap, ymap = pm.x - np.float32(c0), pm.y - np.float32(r0)
    del pm
    res = resample_weighted(
        source.read(rows, cols), xmap, ymap, kernel=opts.kernel, edge=opts.edge,
        weight=source.weight, pixel_weight=source.read_weight(rows, cols), gain=source.gain,
        offset=source.offset, surface=None if source.surface is None else source.surface.at(c0, r0),
        backend=opts.backend,
    )
    return None if res is None else (cut, *res)


class _Block:
    """float64 accumulators for output rows ``[y0, y1)``.

    With ``reject`` the contributions are kept until `finish`, which removes the outliers
    across them (`reject_outliers`) before summing; ``rejected`` then counts the pixels
    taken out of each source.
    """

    def __init__(self, y0: int, y1: int, channels: int, width: int, *, reject: bool = False,
                 kappa: float = 5.0, threads: int = 1) -> None:
        self.y0 = y0
        self.threads = threads
        self.acc = np.zeros((channels, y1 - y0, width), np.float64)
        self.wsum = np.zeros((y1 - y0, width), np.float64)
        self.cov = np.zeros((y1 - y0, width), np.uint16)
        self.reject, self.kappa = reject, kappa
        self.kept: list[tuple] = []
        self.rejected: dict[int, int] = {}

    def add(self, cut: tuple[int, int, int, int], img: np.ndarray, wt: np.ndarray, k: int = 0,
            noise: np.ndarray | None = None) -> None:
        """Accumulate ``img * wt`` in place (``img`` is consumed: no full-size temporaries).
        With ``reject``, keep it (``noise``: the source's per-channel pixel noise)."""
        if self.reject:
            self.kept.append((k, cut, img, wt, noise))
            return
        self._sum(cut, img, wt)

    def _sum(self, cut: tuple[int, int, int, int], img: np.ndarray, wt: np.ndarray) -> None:
        cy0, cy1, cx0, cx1 = cut
        sl = (slice(cy0 - self.y0, cy1 - self.y0), slice(cx0, cx1))
        good = wt > 0
        np.multiply(img, wt, out=img)
        img[:, ~good] = 0.0  # NaN where the source has no valid sample (weight 0 there)
        self.acc[(slice(None), *sl)] += img
        self.wsum[sl] += wt
        self.cov[sl] += good

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The weighted mean (NaN where no weight) float32, weights float32 and coverage."""
        if self.kept:
            # the contributions reach _REJECT_GROW rows beyond the block (coadd_block), so
            # the flags inside it do not depend on where the block ends
            y_lo = min(c[0] for _, c, *_ in self.kept)
            y_hi = max(c[1] for _, c, *_ in self.kept)
            flags = reject_outliers([(c, i, w, n) for _, c, i, w, n in self.kept], y_lo,
                                    (y_hi - y_lo, self.wsum.shape[1]), kappa=self.kappa,
                                    threads=self.threads)
            y0, y1 = self.y0, self.y0 + self.wsum.shape[0]
            for (k, cut, _, _, _), flag in zip(self.kept, flags, strict=True):
                r0, r1 = max(cut[0], y0), min(cut[1], y1)
                n = int(np.count_nonzero(flag[r0 - cut[0]:r1 - cut[0]])) if r1 > r0 else 0
                if n:
                    self.rejected[k] = self.rejected.get(k, 0) + n

            def band(a: int, b: int) -> None:
                """Sum the kept contributions' rows ``[a, b)`` of the block, in their order
                (bands are disjoint: the threads never add to the same pixel)."""
                for (_, cut, full_img, full_wt, _), full_flag in zip(self.kept, flags,
                                                                      strict=True):
                    r0, r1 = max(cut[0], y0 + a), min(cut[1], y0 + b)
                    if r1 <= r0:
                        continue
                    rows = slice(r0 - cut[0], r1 - cut[0])
                    img, wt, flag = full_img[:, rows], full_wt[rows], full_flag[rows]
                    if flag.any():
                        wt = np.where(flag, np.float32(0), wt)
                    self._sum((r0, r1, cut[2], cut[3]), img, wt)

            cuts = np.linspace(0, y1 - y0, max(1, min(self.threads, (y1 - y0) // 8)) + 1)
            bands = list(itertools.pairwise(cuts.round().astype(int).tolist()))
            if len(bands) == 1:
                band(*bands[0])
            else:
                with ThreadPoolExecutor(max_workers=len(bands)) as pool:
                    list(pool.map(lambda ab: band(*ab), bands))
            self.kept = []
        has = self.wsum > 0
        data = np.full(self.acc.shape, np.nan, np.float32)
        for ch in range(self.acc.shape[0]):
            np.divide(self.acc[ch], self.wsum, out=data[ch], where=has, casting="same_kind")
        self.acc = np.empty(0)  # release the float64 sums before the caller copies the result
        return data, self.wsum.astype(np.float32), self.cov


#: Relative model error of a pixel in the rejection test (of the larger signal above the
#: sky): PSF and resampling differences between inputs (see `reject_outliers`).
_REJECT_RELATIVE = 0.1
#: Flagged pixels grow by this many pixels into neighbours that are also high (trail
#: wings), those with ``r`` above `_REJECT_GROW_SIGMA`.
_REJECT_GROW, _REJECT_GROW_SIGMA = 2, 2.5


def source_noise(source: ImageSource, *, window: int = 256) -> np.ndarray:
    """Robust per-channel pixel noise and sky level of a source, shaped (2, C): on a central
    window of at most ``window`` x ``window`` of its own pixels, the noise of the raw values
    (`estimate_noise`) and the median of the corrected ones (gain, offset and sky surface
    applied, as the coadd sees them). Cached in ``source.meta["noise"]`` (`coadd` refreshes
    it once per call, so it travels with the source to Dask workers)."""
    cached = source.meta.get("noise")
    if cached is not None:
        return np.asarray(cached, np.float64)
    c, h, w = source.shape
    r0, c0 = max(0, (h - window) // 2), max(0, (w - window) // 2)
    rows, cols = slice(r0, min(h, r0 + window)), slice(c0, min(w, c0 + window))
    data = np.asarray(source.read(rows, cols), np.float64)
    finite = np.isfinite(data).all(axis=0)
    out = np.full((2, c), np.nan)
    if finite.sum() > 16:
        corrected = data * (1.0 if source.gain is None else np.asarray(source.gain)[:, None, None])
        if source.offset is not None:
            corrected = corrected + np.asarray(source.offset)[:, None, None]
        if source.surface is not None:
            yy, xx = np.indices(finite.shape, dtype=np.float64)
            corrected = corrected + source.surface.at(c0, r0).evaluate(xx, yy)
        for ch in range(c):
            out[0, ch] = estimate_noise(data[ch], mask=finite)
            out[1, ch] = np.median(corrected[ch][finite])
        if source.gain is not None:
            out[0] *= np.abs(np.asarray(source.gain, np.float64))
    source.meta["noise"] = out.tolist()
    return out


#: One input of a band to `reject_outliers`: its cut ``(y0, y1, x0, x1)`` of the output,
#: data (C, h, w), weight (h, w) and `source_noise` (or None).
Contribution = tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, np.ndarray | None]


def reject_outliers(
    contributions: Sequence[Contribution],
    y0: int,
    shape: tuple[int, int],
    *,
    kappa: float = 5.0,
    max_iter: int = 2,
    threads: int = 1,
) -> list[np.ndarray]:
    """Flag the pixels of overlapping inputs that disagree with the others (trails, hot
    pixels, satellites, cosmic rays), in a band of output rows.

    Each contribution ``(cut, data (C, h, w), weight (h, w), noise)`` (``noise`` from
    `source_noise`: the input's pixel noise and sky level, properties of the input and not
    of the band, so the result does not depend on how the output is cut) is compared, per
    pixel and channel, with the weighted mean ``m`` of the *other* unflagged inputs there:
    ``r = (x - m) / s``, ``s^2 = sigma^2 + var(m) + (0.1 (max(x, m) - sky))^2``. The
    relative term keeps seeing differences from being taken for outliers: two images of a
    star differ by at most ~40 % of the larger (``|r| <= 4``), while a trail or hot pixel on
    the sky differs by nearly all of itself (``r`` up to 10). Per pass, the
    input with the largest ``|r|`` at a pixel is flagged when ``|r| > kappa`` and at least 3
    unflagged inputs overlap there (a clipped mean, one outlier per pass, ``max_iter``
    passes); where only 2 do, the higher one when ``r > kappa`` (a trail or hot pixel is
    brighter than the sky; the other input gives the pixel). Flags then grow by 2 px into
    neighbours with ``r > 2.5`` (a trail's wings). A pixel is never taken from every input.

    Every test is per pixel but the growth, which reaches `_REJECT_GROW` px: with
    ``threads`` > 1 the band is cut into that many bands of rows, each worked on with that
    many rows of its neighbours around it (`_reject_rows`) in a thread of its own, which
    gives the same flags (NumPy releases the GIL; the coadd's resampling threads are idle
    while a block finishes).

    Returns
    -------
    list of ndarray of bool
        One (h, w) mask per contribution, True = rejected.
    """
    if threads <= 1 or shape[0] < 4 * threads * (_REJECT_GROW + 1):
        return _reject_rows(contributions, y0, shape, kappa=kappa, max_iter=max_iter)
    edges = np.linspace(0, shape[0], threads + 1).round().astype(int)
    flags = [np.zeros(wt.shape, bool) for _, _, wt, _ in contributions]

    def part(a: int, b: int) -> None:
        lo, hi = max(a - _REJECT_GROW, 0), min(b + _REJECT_GROW, shape[0])
        cut_rows, index = [], []
        for k, (cut, img, wt, noise) in enumerate(contributions):
            r0, r1 = max(cut[0] - y0, lo), min(cut[1] - y0, hi)
            if r1 > r0:
                rows = slice(r0 - (cut[0] - y0), r1 - (cut[0] - y0))
                cut_rows.append(((r0 + y0, r1 + y0, cut[2], cut[3]), img[:, rows], wt[rows],
                                 noise))
                index.append((k, r0))
        found = _reject_rows(cut_rows, y0 + lo, (hi - lo, shape[1]), kappa=kappa,
                             max_iter=max_iter)
        for (k, r0), flag in zip(index, found, strict=True):
            c0 = contributions[k][0][0] - y0  # the contribution's first row, band-relative
            keep0, keep1 = max(r0, a), min(r0 + flag.shape[0], b)  # its rows of [a, b)
            if keep1 > keep0:
                flags[k][keep0 - c0:keep1 - c0] = flag[keep0 - r0:keep1 - r0]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda ab: part(*ab), itertools.pairwise(edges.tolist())))
    return flags


def _reject_rows(
    contributions: Sequence[Contribution],
    y0: int,
    shape: tuple[int, int],
    *,
    kappa: float,
    max_iter: int,
) -> list[np.ndarray]:
    """`reject_outliers` of one band of rows, in the calling thread."""
    n_ch = contributions[0][1].shape[0] if contributions else 0
    views, sig, sky = [], [], []
    for cut, _, _, noise in contributions:
        views.append((slice(cut[0] - y0, cut[1] - y0), slice(cut[2], cut[3])))
        ns = np.zeros((2, n_ch)) if noise is None else np.asarray(noise, np.float64)
        ns = np.where(np.isfinite(ns), ns, 0.0)
        sig.append(ns[0])
        sky.append(ns[1])
    goods = [wt > 0 for _, _, wt, _ in contributions]
    flags = [np.zeros(g.shape, bool) for g in goods]
    # Only where two inputs or more have data can anything be tested: each contribution is
    # worked on at those of its pixels only, as flat index lists (`pix` into its own
    # arrays, `at` into the band's tested pixels, numbered in order), and the sums are kept
    # there only (such a pixel of one contribution is one of every other input there).
    # Frames overlapping by 20 % have about a third of their pixels there: the same flags
    # for a third of the work (a bounding box of them spans nearly the whole frame).
    n_good = np.zeros(shape, np.int32)
    for k, good in enumerate(goods):
        n_good[views[k]] += good
    multi = n_good >= 2
    size = int(np.count_nonzero(multi))  # the tested pixels of the band, numbered in order
    number = np.full(shape, -1, np.int32)
    number[multi] = np.arange(size, dtype=np.int32)
    del n_good
    pix, at = [], []
    for k, good in enumerate(goods):
        p = np.flatnonzero(good & multi[views[k]])
        pix.append(p)
        at.append(number[views[k]].ravel()[p])
    del number, multi
    data = [img.reshape(img.shape[0], -1)[:, p] for (_, img, _, _), p in zip(contributions, pix,
                                                                               strict=True)]
    weights = [wt.ravel()[p] for (_, _, wt, _), p in zip(contributions, pix, strict=True)]

    def residuals(k: int, s_wx, s_w, s_w2v, depth):
        """``r`` (C, n) of contribution k at its tested pixels against the other unflagged
        inputs, and where it is defined (>= 1 other input)."""
        idx = at[k]
        own = ~flags[k].ravel()[pix[k]]
        w = np.where(own, weights[k], 0.0)
        rest = s_w[idx] - w
        d = depth[idx] - own
        test = (d >= 1) & (rest > 0)
        safe = np.where(test, rest, 1.0)
        r = np.zeros((n_ch, idx.size))
        for c in range(n_ch):
            x = data[k][c]
            m = (s_wx[c][idx] - w * x) / safe
            var_m = (s_w2v[c][idx] - w * w * sig[k][c] ** 2) / (safe * safe)
            signal = np.maximum(np.maximum(x, m) - sky[k][c], 0.0)
            s2 = sig[k][c] ** 2 + np.maximum(var_m, 0.0) + (_REJECT_RELATIVE * signal) ** 2
            r[c] = np.where(test, (x - m) / np.sqrt(np.where(s2 > 0, s2, np.inf)), 0.0)
        return r, test, d

    def sums():
        s_wx, s_w2v = np.zeros((n_ch, size)), np.zeros((n_ch, size))
        s_w, depth = np.zeros(size), np.zeros(size, np.int32)
        for k in range(len(contributions)):
            idx = at[k]  # unique within a contribution: plain fancy-index sums
            own = ~flags[k].ravel()[pix[k]]
            w = np.where(own, weights[k], 0.0)
            s_wx[:, idx] += w * np.where(own[None], data[k], 0.0)
            s_w[idx] += w
            s_w2v[:, idx] += (w * w)[None] * (sig[k] ** 2)[:, None]
            depth[idx] += own
        return s_wx, s_w, s_w2v, depth

    for _ in range(max_iter):
        totals = sums()
        best = np.zeros(size)
        owner = np.full(size, -1, np.int32)
        for k in range(len(contributions)):
            r, test, d = residuals(k, *totals)
            # depth counts the other unflagged inputs: >= 2 others = a clipped mean (both
            # signs); 1 other = only the brighter input is an outlier
            score = np.where(d >= 2, np.abs(r).max(axis=0), np.where(d == 1, r.max(axis=0), 0.0))
            score = np.where(test & ~flags[k].ravel()[pix[k]], score, 0.0)
            idx = at[k]
            better = score > best[idx]
            best[idx] = np.where(better, score, best[idx])
            owner[idx] = np.where(better, k, owner[idx])
        hit = best > kappa
        if not hit.any():
            break
        for k in range(len(contributions)):
            idx = at[k]
            flags[k].ravel()[pix[k][hit[idx] & (owner[idx] == k)]] = True
    if any(f.any() for f in flags):
        totals = sums()
        for k, flag in enumerate(flags):
            if flag.any():
                r, test, _ = residuals(k, *totals)
                grown = ndimage.binary_dilation(flag, iterations=_REJECT_GROW).ravel()[pix[k]]
                flag.ravel()[pix[k][grown & test & (r.max(axis=0) > _REJECT_GROW_SIGMA)]] = True
    # never take a pixel from every input
    kept = np.zeros(shape, np.int32)
    for k, flag in enumerate(flags):
        kept[views[k]] += goods[k] & ~flag
    for k, flag in enumerate(flags):
        np.logical_and(flag, kept[views[k]] > 0, out=flag)
    return flags


@dataclass
class BlockJob:
    """One output block: rows ``[y0, y1)`` and the (index, source, cutout) that touch it."""

    y0: int
    y1: int
    width: int
    channels: int
    tasks: list[tuple[int, ImageSource, tuple[int, int, int, int]]]


@dataclass
class BlockOutput:
    """A finished block: float32 mean, weight and coverage, and per-source outcome."""

    y0: int
    data: np.ndarray
    weight: np.ndarray
    coverage: np.ndarray
    contributed: list[int]
    errors: dict[int, str]
    rejected: dict[int, int] = field(default_factory=dict)  # outlier pixels per source

    def stats(self) -> dict:
        """What the run report needs from this block (kept in the manifest on resume)."""
        return {
            "y1": self.y0 + self.weight.shape[0], "contributed": self.contributed,
            "errors": {str(k): v for k, v in self.errors.items()},
            "outliers": {str(k): v for k, v in self.rejected.items()},
            "finite": int(np.isfinite(self.data).all(axis=0).sum()),
            "max_depth": int(self.coverage.max()) if self.coverage.size else 0,
        }


def ordered_window(pool: Executor, fn: Callable[[Any], Any], items: Iterable[Any],
                   window: int) -> Iterator[Any]:
    """``pool.map(fn, items)`` with at most ``window`` tasks submitted and not yet consumed.

    `Executor.map` submits every item at once, so results that finish before an earlier
    slow one pile up in memory; this keeps the number of live results bounded (the memory
    plan of `_plan_blocks` counts ``n_threads + 1`` tasks) and still yields in order.
    """
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def coadd_block(job: BlockJob, grid: OutputGrid, opts: CoaddOptions, *,
                pool: Executor | None = None,
                progress: Callable[[int, int], None] | None = None) -> BlockOutput:
    """Resample and accumulate every source of ``job``, in source order, into one block.

    With a ``pool`` the sources are resampled in its threads (at most ``n_threads + 1`` in
    flight); without one, one after the other (a Dask task). The sums run in the same
    order either way, so the result is identical to the bit.
    """
    block = _Block(job.y0, job.y1, job.channels, job.width, reject=opts.reject != "off",
                   kappa=opts.reject_kappa, threads=opts.n_threads if pool is not None else 1)
    halo = _REJECT_GROW if block.reject else 0

    def run(task):
        k, source, cut = task
        try:
            noise = source_noise(source) if block.reject else None
            # rows either side, so that the rejection's growth sees across the block's ends
            if halo:
                b = source_bbox(source, grid)
                cut = (max(cut[0] - halo, b[0], 0), min(cut[1] + halo, b[1], grid.shape[0]),
                       cut[2], cut[3])
            res = resample_source(source, grid, cut, opts)
            return k, None if res is None else (*res, noise), None
        except FrameError as err:
            return k, None, str(err)

    results = (ordered_window(pool, run, job.tasks, opts.n_threads + 1) if pool is not None
               else map(run, job.tasks))
    contributed, errors = [], {}
    for k, result, error in results:
        if progress is not None:
            progress(1, 0)
        if error is not None:
            errors[k] = error
        elif result is not None:
            cut, img, wt, noise = result
            block.add(cut, img, wt, k=k, noise=noise)
            if cut[0] < job.y1 and cut[1] > job.y0:
                contributed.append(k)
    data, weight, coverage = block.finish()
    return BlockOutput(job.y0, data, weight, coverage, contributed, errors, block.rejected)


def _blocks(height: int, rows: int) -> Iterator[tuple[int, int]]:
    for y0 in range(0, height, rows):
        yield y0, min(height, y0 + rows)


def _run_blocks(jobs: list[BlockJob], grid: OutputGrid, opts: CoaddOptions, client: Any | None,
                progress: Callable[[int, int], None] | None) -> Iterator[BlockOutput]:
    """Finished blocks, from the local thread pool (in order) or from Dask (as they finish)."""
    if client is None:
        with ThreadPoolExecutor(max_workers=opts.n_threads) as pool:
            for job in jobs:
                yield coadd_block(job, grid, opts, pool=pool, progress=progress)
        return
    from skymosaic._dask import run_tasks  # noqa: PLC0415 - only a Dask run needs it

    out_bytes = max((j.y1 - j.y0) * j.width
                    * (_BLOCK_BYTES_PER_CHANNEL * j.channels + _BLOCK_BYTES_PER_PIXEL)
                    for j in jobs) if jobs else 1
    window = max(1, min(2 * len(client.scheduler_info().get("workers", {})) or 2,
                        opts.memory_budget // (2 * out_bytes)))
    # one thread per task (the cluster's parallelism is its workers); the host backend (a
    # device backend holds a module and a device, which do not travel to other processes)
    single = dataclasses.replace(opts, threads=1, backend=None, scratch_dir=None)
    for job, out in run_tasks(client, coadd_block, jobs, window=window, args=(grid, single)):
        if progress is not None:
            progress(len(job.tasks), 0)
        yield out


def coadd(
    sources: Sequence[ImageSource],
    grid: OutputGrid,
    *,
    options: CoaddOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    store: BlockStore | None = None,
    client: Any | None = None,
) -> CoaddResult:
    """Weighted mean of ``sources`` on ``grid``: ``sum(w * x) / sum(w)`` per pixel.

    Parameters
    ----------
    sources : sequence of ImageSource
        Frames or tiles with a celestial WCS; all must have the same number of channels.
    grid : OutputGrid
        The output WCS and shape.
    options : CoaddOptions, optional
        Kernel, mapping tolerance, memory budget and threads.
    progress : callable, optional
        ``progress(done, total)``: called once with ``done=0`` and the number of
        (source, block) tasks still to run, then with the number of tasks done as they
        finish (1 at a time locally, a block's worth with Dask).
    store : BlockStore, optional
        Build the output on disk in ``store.folder`` and skip the blocks an earlier run
        finished (``store.done``). Without it, the output is in memory unless it exceeds
        half the budget and ``options.scratch_dir`` is set.
    client : distributed.Client, optional
        Run the blocks as Dask tasks on this cluster (workers must read the sources'
        files at the same paths).

    Returns
    -------
    CoaddResult
        Sources that fail to read are listed in ``rejected`` with the reason; the others
        in ``used``. Pixels with a zero weight sum are NaN.

    Raises
    ------
    ValueError
        If sources differ in their number of channels.
    """
    opts = options or CoaddOptions()
    channels = {s.shape[0] for s in sources}
    if len(channels) > 1:
        raise ValueError(f"sources mix {sorted(channels)} channels; convert them first")
    n_ch = channels.pop() if channels else 1
    h, w = grid.shape
    bboxes = [source_bbox(s, grid) for s in sources]
    outside = {k for k, b in enumerate(bboxes) if b is None}
    if opts.reject != "off":  # once per source, here: it travels with the source to Dask workers
        for k, s in enumerate(sources):
            if k not in outside:
                s.meta.pop("noise", None)  # the corrections may have changed since
                with contextlib.suppress(FrameError):  # the block that reads it reports it
                    source_noise(s)
    disk = _open_disk(store, grid, n_ch, opts)
    block_rows = (store.block_rows if store is not None and store.block_rows
                  else _plan_blocks(grid, n_ch, sources, opts, on_disk=disk is not None))
    done = dict(store.done) if store is not None else {}
    if disk is None:
        data = np.full((n_ch, h, w), np.nan, np.float32)
        wsum_out, cov_out = np.zeros((h, w), np.float32), np.zeros((h, w), np.uint16)
    jobs = []
    for y0, y1 in _blocks(h, block_rows):
        if y0 in done:
            continue
        halo = _REJECT_GROW if opts.reject != "off" else 0  # see coadd_block
        tasks = [(k, sources[k], (max(y0, b[0]), min(y1, b[1]), b[2], b[3]))
                 for k, b in enumerate(bboxes)
                 if b is not None and b[0] < y1 + halo and b[1] > y0 - halo]
        jobs.append(BlockJob(y0, y1, w, n_ch, tasks))
    if progress is not None:
        progress(0, sum(len(j.tasks) for j in jobs))
    for out in _run_blocks(jobs, grid, opts, client, progress):
        if disk is not None:
            disk.write_rows(out.y0, out.data, out.weight, out.coverage)
        else:
            y1 = out.y0 + out.weight.shape[0]
            data[:, out.y0:y1] = out.data
            wsum_out[out.y0:y1], cov_out[out.y0:y1] = out.weight, out.coverage
        done[out.y0] = out.stats()
        if store is not None and store.on_block is not None:
            store.on_block(out.y0, done[out.y0])
    result = _collect(sources, outside, done, block_rows, h * w)
    result.blocks_reused = len(done) - len(jobs)
    if disk is not None:
        result.data, result.weight, result.coverage = (disk.open(n) for n in DiskMosaic.NAMES)
        result.store = disk
    else:
        result.data, result.weight, result.coverage = data, wsum_out, cov_out
    return result


def _open_disk(store: BlockStore | None, grid: OutputGrid, channels: int,
               opts: CoaddOptions) -> DiskMosaic | None:
    """The on-disk output (existing when ``store`` resumes, new otherwise), or None."""
    if store is not None:
        disk = DiskMosaic(store.folder)
        if store.done and not disk.matches(channels, grid.shape):
            logger.warning("coadd store %s does not match the output grid; starting the coadd over",
                           store.folder)
            store.done, store.block_rows = {}, None
        if not store.done:
            disk = DiskMosaic.create(store.folder, channels, grid.shape)
        return disk
    if _output_on_disk(grid, channels, opts):
        # the caller owns scratch_dir and removes it after writing the FITS
        return DiskMosaic.create(Path(opts.scratch_dir or "."), channels, grid.shape)
    return None


def _collect(sources: Sequence[ImageSource], outside: set[int], done: dict[int, dict],
             block_rows: int,
             n_pixels: int) -> CoaddResult:
    """Merge the per-block statistics into the result's lists and figures."""
    rejected = {sources[k].name: "outside the output grid" for k in sorted(outside)}
    contributed: set[int] = set()
    outliers: dict[str, int] = {}
    for y0 in sorted(done):
        stats = done[y0]
        contributed.update(int(k) for k in stats["contributed"])
        for k, n in stats.get("outliers", {}).items():
            outliers[sources[int(k)].name] = outliers.get(sources[int(k)].name, 0) + int(n)
        for k, reason in stats["errors"].items():
            name = sources[int(k)].name
            if name not in rejected:
                logger.warning("%s: %s; frame skipped", name, reason)
                rejected[name] = reason
    used = [sources[k].name for k in sorted(contributed)]
    for k, s in enumerate(sources):
        if k not in contributed and s.name not in rejected:
            rejected[s.name] = "no valid pixel on the output grid"
    finite = sum(int(s["finite"]) for s in done.values())
    return CoaddResult(
        data=np.empty(0), weight=np.empty(0), coverage=np.empty(0), rejected=rejected, used=used,
        n_blocks=len(done), block_rows=block_rows,
        coverage_fraction=finite / n_pixels if n_pixels else 0.0,
        max_depth=max((int(s["max_depth"]) for s in done.values()), default=0),
        outliers=dict(sorted(outliers.items())),
    )
