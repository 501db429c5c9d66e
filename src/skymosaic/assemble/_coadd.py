"""Phase 5 coadd: weighted mean of every source on the output grid, in memory-bounded blocks.

The output is cut into blocks of rows sized from the memory budget. For each block only the
sources whose footprint touches it are read, and of each only the input rows and columns
that map into the block (plus the kernel margin). Sources are resampled in a thread pool
(OpenCV and NumPy release the GIL) and accumulated in source order, so the result does not
depend on the number of threads. Sums are kept in float64.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from skymosaic.assemble._sources import ImageSource
from skymosaic.io._frames import FrameError
from skymosaic.reproject._grid import OutputGrid
from skymosaic.reproject._mapping import pixel_map
from skymosaic.reproject._resample import KERNEL_RADIUS, KERNELS, resample

__all__ = ["CoaddOptions", "CoaddResult", "coadd", "resample_source", "source_bbox"]

logger = logging.getLogger(__name__)

#: Bytes of accumulator per output pixel and channel (float64 sum) plus per pixel
#: (float64 weight sum, uint16 coverage).
_ACC_BYTES_PER_CHANNEL, _ACC_BYTES_PER_PIXEL = 8, 10
#: Temporaries of one resampling task per input pixel and channel: the read region,
#: the zero-filled copy, the output cutout, maps and masks (measured ~5x, rounded up).
_TASK_FACTOR = 8


@dataclass(frozen=True)
class CoaddOptions:
    """How to coadd. ``memory_budget`` is in bytes; ``threads`` 0 means all cores."""

    kernel: str = "bilinear"
    map_tolerance: float = 0.01
    grid_step: int = 64
    memory_budget: int = 2 * 1024**3
    threads: int = 0
    min_block_rows: int = 32
    scratch_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel {self.kernel!r} is not one of {KERNELS}")
        if self.memory_budget < 16 * 1024**2:
            raise ValueError(f"memory_budget {self.memory_budget} bytes is below the 16 MiB minimum")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")

    @property
    def n_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


@dataclass
class CoaddResult:
    """The coadded image (C, H, W) float32 (NaN where no data), the weight sum (H, W)
    float32 and the number of contributing sources per pixel (H, W) uint16."""

    data: np.ndarray
    weight: np.ndarray
    coverage: np.ndarray
    rejected: dict[str, str] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    n_blocks: int = 1
    block_rows: int = 0


def source_bbox(source: ImageSource, grid: OutputGrid, *, margin: int = 2) -> tuple[int, int, int, int] | None:
    """The source's bounding box on the output grid ``(y0, y1, x0, x1)``, or None if outside."""
    pts = source.edge_points()
    x, y = grid.wcs.world_to_pixel_values(pts[:, 0], pts[:, 1])
    x, y = np.asarray(x), np.asarray(y)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return (0, grid.shape[0], 0, grid.shape[1])  # crosses a horizon: be safe
    y0 = max(0, int(math.floor(y.min())) - margin)
    y1 = min(grid.shape[0], int(math.ceil(y.max())) + margin + 1)
    x0 = max(0, int(math.floor(x.min())) - margin)
    x1 = min(grid.shape[1], int(math.ceil(x.max())) + margin + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1


def _plan_blocks(grid: OutputGrid, channels: int, sources: Sequence[ImageSource], opts: CoaddOptions) -> int:
    """Rows per block so that outputs + accumulators + in-flight tasks fit in the budget."""
    h, w = grid.shape
    largest = max((s.shape[0] * s.shape[1] * s.shape[2] for s in sources), default=0)
    tasks = (opts.n_threads + 1) * largest * 4 * _TASK_FACTOR
    out_bytes = h * w * (4 * channels + 6)
    in_memory = 0 if _output_on_disk(grid, channels, opts) else out_bytes
    per_row = w * (channels * _ACC_BYTES_PER_CHANNEL + _ACC_BYTES_PER_PIXEL)
    room = opts.memory_budget - tasks - in_memory
    rows = room // per_row if room > 0 else 0
    if rows < opts.min_block_rows:
        logger.warning(
            "memory budget %.0f MiB is tight for %d threads and %.1f Mpx frames; using "
            "%d-row blocks", opts.memory_budget / 2**20, opts.n_threads, largest / 3e6, opts.min_block_rows,
        )
        rows = opts.min_block_rows
    return int(min(h, rows))


def _output_on_disk(grid: OutputGrid, channels: int, opts: CoaddOptions) -> bool:
    """An output larger than half the budget is built in memory-mapped scratch files."""
    h, w = grid.shape
    return opts.scratch_dir is not None and h * w * (4 * channels + 6) > opts.memory_budget // 2


def resample_source(
    source: ImageSource, grid: OutputGrid, cut: tuple[int, int, int, int], opts: CoaddOptions
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """Resample one source onto the cutout ``cut = (y0, y1, x0, x1)`` of ``grid``.

    Only the input rows and columns that map into the cutout are read. Returns
    ``(cut, data (C, h, w), weight (h, w))`` with the source's weight, pixel weights and
    gain/offset applied (weight 0 and NaN data where the source has no valid sample), or
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
    if c1 <= c0 or r1 <= r0:
        return None
    rows, cols = slice(r0, r1), slice(c0, c1)
    pixels = source.read(rows, cols)
    xmap, ymap = pm.x - np.float32(c0), pm.y - np.float32(r0)
    out, footprint = resample(pixels, xmap, ymap, kernel=opts.kernel)
    if not footprint.any():
        return None
    weight = np.where(footprint, np.float32(source.weight), np.float32(0.0))
    pixel_weight = source.read_weight(rows, cols)
    if pixel_weight is not None:
        pw, pw_fp = resample(pixel_weight[None].astype(np.float32), xmap, ymap, kernel="bilinear")
        weight *= np.where(pw_fp, np.maximum(pw[0], 0.0), 0.0)
    if source.gain is not None:
        out *= np.asarray(source.gain, np.float32)[:, None, None]
    if source.offset is not None:
        out += np.asarray(source.offset, np.float32)[:, None, None]
    return cut, out, weight


class _Block:
    """float64 accumulators for output rows ``[y0, y1)``."""

    def __init__(self, y0: int, y1: int, channels: int, width: int) -> None:
        self.y0 = y0
        self.acc = np.zeros((channels, y1 - y0, width), np.float64)
        self.wsum = np.zeros((y1 - y0, width), np.float64)
        self.cov = np.zeros((y1 - y0, width), np.uint16)

    def add(self, cut: tuple[int, int, int, int], img: np.ndarray, wt: np.ndarray) -> None:
        """Accumulate ``img * wt`` in place (``img`` is consumed: no full-size temporaries)."""
        cy0, cy1, cx0, cx1 = cut
        sl = (slice(cy0 - self.y0, cy1 - self.y0), slice(cx0, cx1))
        good = wt > 0
        np.multiply(img, wt, out=img)
        img[:, ~good] = 0.0  # NaN where the source has no valid sample (weight 0 there)
        self.acc[(slice(None), *sl)] += img
        self.wsum[sl] += wt
        self.cov[sl] += good

    def finish(self, data: np.ndarray, wsum: np.ndarray, cov: np.ndarray) -> None:
        """Write the weighted mean (NaN where no weight), weights and coverage into the outputs."""
        has = self.wsum > 0
        data[...] = np.nan
        for ch in range(self.acc.shape[0]):
            np.divide(self.acc[ch], self.wsum, out=data[ch], where=has, casting="same_kind")
        wsum[...] = self.wsum
        cov[...] = self.cov


def _blocks(height: int, rows: int) -> Iterator[tuple[int, int]]:
    for y0 in range(0, height, rows):
        yield y0, min(height, y0 + rows)


def _allocate(shape: tuple[int, ...], dtype, fill, scratch: str | None, name: str) -> np.ndarray:
    if scratch is None:
        return np.full(shape, fill, dtype=dtype)
    arr = np.lib.format.open_memmap(os.path.join(scratch, f"{name}.npy"), mode="w+", dtype=dtype, shape=shape)
    arr[...] = fill
    return arr


def coadd(
    sources: Sequence[ImageSource],
    grid: OutputGrid,
    *,
    options: CoaddOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
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
        (source, block) tasks, then with ``done=1`` as each task finishes.

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
    rejected: dict[str, str] = {
        s.name: "outside the output grid" for s, b in zip(sources, bboxes, strict=True) if b is None
    }
    block_rows = _plan_blocks(grid, n_ch, sources, opts)
    # An output larger than half the budget lives in memory-mapped files in scratch_dir
    # (the caller owns that folder and removes it after writing the FITS).
    scratch = opts.scratch_dir if _output_on_disk(grid, n_ch, opts) else None
    data = _allocate((n_ch, h, w), np.float32, np.nan, scratch, "data")
    wsum_out = _allocate((h, w), np.float32, 0.0, scratch, "weight")
    cov_out = _allocate((h, w), np.uint16, 0, scratch, "coverage")
    contributed: set[int] = set()
    n_blocks = 0
    if progress is not None:
        progress(0, sum(
            len([b for b in bboxes if b is not None and b[0] < y1 and b[1] > y0])
            for y0, y1 in _blocks(h, block_rows)
        ))
    with ThreadPoolExecutor(max_workers=opts.n_threads) as pool:
        for y0, y1 in _blocks(h, block_rows):
            n_blocks += 1
            tasks = [
                (k, (max(y0, b[0]), min(y1, b[1]), b[2], b[3]))
                for k, b in enumerate(bboxes)
                if b is not None and b[0] < y1 and b[1] > y0 and sources[k].name not in rejected
            ]
            block = _Block(y0, y1, n_ch, w)

            def run(task):
                k, cut = task
                try:
                    return k, resample_source(sources[k], grid, cut, opts), None
                except FrameError as err:
                    return k, None, str(err)

            for k, result, error in pool.map(run, tasks):  # ordered: deterministic sums
                if progress is not None:
                    progress(1, 0)
                if error is not None:
                    logger.warning("%s: %s; frame skipped", sources[k].name, error)
                    rejected[sources[k].name] = error
                elif result is not None:
                    block.add(*result)
                    contributed.add(k)
            block.finish(data[:, y0:y1], wsum_out[y0:y1], cov_out[y0:y1])
    used = [sources[k].name for k in sorted(contributed)]
    for k, s in enumerate(sources):
        if k not in contributed and s.name not in rejected:
            rejected[s.name] = "no valid pixel on the output grid"
    return CoaddResult(
        data=data, weight=wsum_out, coverage=cov_out, rejected=rejected, used=used,
        n_blocks=n_blocks, block_rows=block_rows,
    )
