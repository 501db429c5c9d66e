"""Master tiles: every frame of a group resampled onto one tile grid, then stacked.

Frames are resampled one at a time (in a thread pool) into a cube ``(N, C, H, W)``
float32 and a pixel-weight cube ``(N, H, W)`` uint8 (1 where the frame covers the pixel);
`skymosaic.stack.stack_cube` then stacks the cube in bands of rows. Where the cube lives:

* **in memory** when it fits the memory budget (`CoaddOptions.memory_budget`) beside what
  else the tile holds (`fits_in_memory`): each frame is resampled straight into its slice
  of the cube, and no scratch file is written or read back;
* **on disk** otherwise, in ``.npy`` files in the scratch folder, filled one frame at a
  time and read back in chunks of rows through `NpyReader` (which keeps no page mapped
  between reads), so memory holds one frame's temporaries per thread whatever N is.

Both give the same master tile, bit for bit: the same float32 samples reach the same
stack. Field rotation between sessions is handled by the WCS: no pixel-space alignment
is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from skymosaic._space import disk_full_guard
from skymosaic._surface import SkySurface
from skymosaic._version import __version__
from skymosaic.assemble._coadd import (
    _TASK_FACTOR,
    CoaddOptions,
    ordered_window,
    resample_source,
    source_bbox,
)
from skymosaic.assemble._sources import FileSource
from skymosaic.io._frames import FrameInfo, frame_footprint
from skymosaic.io._writer import write_mosaic
from skymosaic.reproject._grid import OutputGrid, optimal_grid
from skymosaic.stack._combine import StackSettings, stack_cube
from skymosaic.stack._normalize import bin_factor, block_mean

__all__ = ["FrameCorrection", "MasterTile", "NpyReader", "TileInputs", "build_master_tile",
           "fits_in_memory", "tile_fingerprint"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameCorrection:
    """A frame's photometric correction ``gain * x + offset + S(x, y)``, applied while the
    frame is resampled (`skymosaic.assemble.resample_source`); ``S`` in the frame's pixels."""

    gain: np.ndarray | None = None  # (C,)
    offset: np.ndarray | None = None  # (C,)
    surface: SkySurface | None = None

    def to_list(self) -> list:
        """Its numbers as nested lists (the tile fingerprint)."""
        coeffs = None if self.surface is None else self.surface.coeffs
        return [None if v is None else np.asarray(v, float).tolist()
                for v in (self.gain, self.offset, coeffs)]


@dataclass
class TileInputs:
    """The frames of one group and what is known of them (all lists of length N, or empty).

    ``corrections``: each frame's photometric correction (grid mode's frame photometry),
    None or empty for none.
    """

    tile_id: str
    frames: list[FrameInfo]
    noise: list[Sequence[float] | None] = field(default_factory=list)
    fwhm: list[float | None] = field(default_factory=list)
    corrections: list[FrameCorrection | None] = field(default_factory=list)


@dataclass
class MasterTile:
    """A stacked tile on disk (data + WEIGHT + COVERAGE extensions) and its summary."""

    tile_id: str
    path: Path
    frames: list[str]
    exposure_sum: float
    shape: tuple[int, int, int]
    summary: dict
    reused: bool = False
    fingerprint: str = ""  # TILEFP: digest of its frames and settings (see tile_fingerprint)

    def to_dict(self) -> dict:
        return {
            "tile_id": self.tile_id, "path": str(self.path), "n_frames": len(self.frames),
            "frames": self.frames, "exposure_sum": self.exposure_sum, "shape": list(self.shape),
            "reused": self.reused, "stack": self.summary,
        }


def tile_fingerprint(inputs: TileInputs, settings: StackSettings, options: CoaddOptions,
                     scale: float,
                     grid: OutputGrid | None = None) -> str:
    """A digest of everything a master tile depends on (frames, their sizes, settings, grid)."""
    parts = {
        "frames": [[str(f.path), os.path.getsize(f.path), os.path.getmtime(f.path)]
                   for f in inputs.frames],
        "settings": {k: v for k, v in settings.to_dict().items()
                     if k not in ("memory_budget_bytes", "chunk_rows")},
        "kernel": options.kernel, "tolerance": options.map_tolerance, "scale": round(scale, 9),
        "version": __version__,
    }
    if grid is not None:  # only then, so that classic fingerprints stay as they were
        parts["grid"] = [list(grid.shape), grid.wcs.to_header_string(relax=True)]
    if any(c is not None for c in inputs.corrections):  # likewise
        parts["corrections"] = [None if c is None else c.to_list() for c in inputs.corrections]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _tile_grid(frames: Sequence[FrameInfo], scale: float) -> OutputGrid:
    footprints = [frame_footprint(f.wcs, f.shape[1:], samples=9) for f in frames]
    return optimal_grid(footprints, pixel_scale_arcsec=scale, rotation="north")


def _existing(path: Path, fingerprint: str) -> MasterTile | None:
    if not path.is_file():
        return None
    try:
        with fits.open(path) as hdul:
            header = hdul[0].header
            if header.get("TILEFP") != fingerprint:
                return None
            summary = (json.loads(hdul["STACKINF"].data.tobytes().decode())
                       if "STACKINF" in hdul else {})
            shape = (1, *hdul[0].data.shape) if hdul[0].data.ndim == 2 else hdul[0].data.shape
    except (OSError, ValueError, KeyError):
        return None  # a half-written or foreign file: rebuild it
    return MasterTile(
        tile_id=str(header.get("TILEID", path.stem)), path=path, frames=summary.get("frames", []),
        exposure_sum=float(header.get("EXPTIME", 0.0)), shape=tuple(shape), summary=summary,
        reused=True,
        fingerprint=fingerprint,
    )


def build_master_tile(
    inputs: TileInputs,
    *,
    settings: StackSettings,
    options: CoaddOptions,
    pixel_scale_arcsec: float,
    out_dir: str | os.PathLike,
    scratch_dir: str | os.PathLike,
    valid_min: float | None = None,
    progress: Callable[[int], None] | None = None,
    grid: OutputGrid | None = None,
    reuse: bool = True,
) -> MasterTile:
    """Resample the frames of one group onto a common tile grid and stack them.

    The tile grid is the optimal north-up grid of the group's footprints, or ``grid``
    when given (grid mode: a cutout of the global mosaic WCS, so the tile lands on the
    mosaic's pixels without a second resampling).

    The tile is written to ``out_dir/<tile_id>.fits`` (science, WEIGHT = sum of frame
    weights per pixel, COVERAGE = frames used per pixel, a STACKINF table with the stack
    summary). If that file exists with the same fingerprint (same frames, settings and
    version), it is reused as is, unless ``reuse`` is False (``run.fresh``).

    Raises
    ------
    ValueError
        If the group is empty.
    """
    if not inputs.frames:
        raise ValueError(f"tile {inputs.tile_id}: no frame to stack")
    out_path = Path(out_dir) / f"{inputs.tile_id}.fits"
    fingerprint = tile_fingerprint(inputs, settings, options, pixel_scale_arcsec, grid)
    existing = _existing(out_path, fingerprint) if reuse else None
    if existing is not None:
        logger.info("tile %s: reusing %s", inputs.tile_id, out_path.name)
        return existing
    grid = grid if grid is not None else _tile_grid(inputs.frames, pixel_scale_arcsec)
    n, c = len(inputs.frames), inputs.frames[0].channels
    h, w = grid.shape
    in_memory = fits_in_memory(inputs.frames, (h, w), settings=settings, options=options)
    scratch = Path(scratch_dir)
    cube_path = scratch / f"{inputs.tile_id}_cube.npy"
    pw_path = scratch / f"{inputs.tile_id}_pw.npy"
    if in_memory:  # every element is written by `_fill_cube`
        cube, covered = np.empty((n, c, h, w), np.float32), np.empty((n, h, w), np.uint8)
    else:
        scratch.mkdir(parents=True, exist_ok=True)
        # created sparse and filled one frame at a time (`_fill_cube`), so that resampling
        # never keeps more than one frame of the cube resident
        cube = NpyReader.create(cube_path, (n, c, h, w), np.float32)
        covered = NpyReader.create(pw_path, (n, h, w), np.uint8)
    logger.info("tile %s: %d frames of %dx%dx%d stacked %s", inputs.tile_id, n, c, h, w,
                "in memory" if in_memory else f"from a scratch cube in {scratch}")
    # the normalisation's block means, taken from each frame while it is in memory
    factor = bin_factor(h, w, settings.sample_pixels)
    binned = None
    if settings.normalization != "none":
        binned = np.full((n, c, h // factor, w // factor), np.nan)
    try:
        _fill_cube(inputs, grid, cube, covered, options, valid_min, progress,
                   binned=binned, factor=factor)
        noise = _figure_array(inputs.noise, n, c)
        fwhm = _figure_array(inputs.fwhm, n, None)
        exposure = np.array([f.exposure if f.exposure else np.nan for f in inputs.frames], float)
        result = stack_cube(
            cube, settings=settings,
            exposure=exposure if np.all(exposure > 0) else None,
            noise=noise, fwhm=fwhm, pixel_weights=covered, backend=options.backend,
            names=[f.name for f in inputs.frames], threads=options.n_threads, binned=binned,
        )
    finally:
        del cube, covered  # the in-memory cube is freed before the tile is written
        if not in_memory:
            for p in (cube_path, pw_path):
                p.unlink(missing_ok=True)
    names = [f.name for f in inputs.frames]
    summary = {"frames": names, **result.to_dict()}
    exposure_sum = float(np.nansum(exposure))
    _write_tile(out_path, result, grid, inputs, fingerprint, exposure_sum, summary, settings)
    logger.info("tile %s: stacked %d frames into %dx%d px", inputs.tile_id, n, w, h)
    return MasterTile(inputs.tile_id, out_path, names, exposure_sum, (c, h, w), summary,
                      fingerprint=fingerprint)


class NpyReader:
    """A ``.npy`` file read in slices, with ``pread`` (a band of rows) or through a map
    that is closed at once (anything else).

    A memmap held open for a whole stack keeps every page it has touched mapped into the
    process: the resident set grows to the size of the cube (4 GB for 111 Seestar frames)
    although the data are only read once. Reading leaves those pages to the kernel's page
    cache, which can drop them under pressure, and the process holds only the copies it
    works on. A band of rows ``[:, ..., r0:r1, :]`` (how the stack reads its chunks) is
    one contiguous range per leading index, read with one ``pread`` each straight into
    the result: no page fault per 4 KiB of the file, as a map would take. Has ``shape``
    and ``dtype`` like an array; every read returns a new array of its own. `write_frame`
    fills one frame ``[k]`` with a single ``pwrite``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        mapped = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.offset = mapped.shape, mapped.dtype, mapped.offset
        del mapped

    @classmethod
    def create(cls, path: str | os.PathLike, shape: tuple[int, ...], dtype) -> NpyReader:
        """A new file of ``shape`` (sparse: no data written yet)."""
        with disk_full_guard(path):
            mapped = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            del mapped
        return cls(path)

    def write_frame(self, k: int, block: np.ndarray, *, channel: int | None = None) -> None:
        """Write ``block`` as frame ``k`` (shape ``shape[1:]``) or as its plane ``channel``
        (shape ``shape[2:]``), in this dtype."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        index = (k,) if channel is None else (k, channel)
        if block.shape != self.shape[len(index):]:
            raise ValueError(f"block of shape {block.shape} for [{', '.join(map(str, index))}] of "
                             f"a file shaped {self.shape}")
        flat = int(np.ravel_multi_index(index, self.shape[: len(index)]))
        view, position = memoryview(block).cast("B"), self.offset + flat * block.nbytes
        with disk_full_guard(self.path), open(self.path, "r+b") as fh:
            while view:  # a pwrite may write fewer bytes than asked
                done = os.pwrite(fh.fileno(), view, position)
                view, position = view[done:], position + done

    def _row_band(self, key) -> tuple[int, int] | None:
        """``(r0, r1)`` when ``key`` is ``[:, ..., r0:r1, :]`` (full leading and last axes)."""
        key = key if isinstance(key, tuple) else (key,)
        if len(self.shape) < 2 or len(key) > len(self.shape) or Ellipsis in key:
            return None
        key = key + (slice(None),) * (len(self.shape) - len(key))
        full = slice(None)
        if any(k != full for k in key[:-2]) or key[-1] != full or not isinstance(key[-2], slice):
            return None
        r0, r1, step = key[-2].indices(self.shape[-2])
        return (r0, max(r0, r1)) if step == 1 else None

    def __getitem__(self, key) -> np.ndarray:
        band = self._row_band(key)
        if band is None:
            mapped = np.load(self.path, mmap_mode="r")
            try:
                return np.array(mapped[key], copy=True)
            finally:
                del mapped
        (r0, r1), (h, w) = band, self.shape[-2:]
        out = np.empty((*self.shape[:-2], r1 - r0, w), dtype=self.dtype)
        if out.size == 0:
            return out
        item, plane = self.dtype.itemsize, h * w * self.dtype.itemsize
        with open(self.path, "rb") as fh:
            for i, part in enumerate(out.reshape(-1, (r1 - r0) * w)):
                view, position = memoryview(part).cast("B"), self.offset + i * plane + r0 * w * item
                while view:  # a pread may return fewer bytes than asked
                    done = os.preadv(fh.fileno(), [view], position)
                    if done == 0:
                        raise OSError(f"{self.path}: file ends before byte {position}")
                    view, position = view[done:], position + done
        return out


def _figure_array(values: list, n: int, channels: int | None) -> np.ndarray | None:
    if len(values) != n or any(v is None for v in values):
        return None
    arr = np.asarray(values, dtype=float)
    if channels is not None:
        arr = arr.reshape(n, -1)
        if arr.shape[1] != channels:
            return None
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        return None
    return arr


def fits_in_memory(frames: Sequence[FrameInfo], shape: tuple[int, int], *, settings: StackSettings,
                   options: CoaddOptions) -> bool:
    """Whether the cube of ``frames`` on a tile grid of ``shape`` (H, W) is held in memory.

    It is when the cube (``N * H * W * (4 C + 1)`` bytes: float32 samples and uint8 pixel
    weights) plus the larger of what the two steps hold beside it fits
    ``options.memory_budget``: the resampling's ``n_threads + 1`` frames in flight (the
    coadd's per-task estimate, ``_TASK_FACTOR`` float32 copies of the largest frame, plus
    the frame's cutout on the tile), or the stack's chunks (``settings.memory_budget_bytes``)
    and its results. The scratch cube holds the same beside a cube on disk, so the
    in-memory path adds exactly the cube to the peak.
    """
    h, w = shape
    n, c = len(frames), frames[0].channels
    cube = n * h * w * (4 * c + 1)
    source = max(f.channels * f.height * f.width for f in frames)
    resampling = (options.n_threads + 1) * (source * 4 * _TASK_FACTOR + h * w * (4 * c + 4))
    stacking = settings.memory_budget_bytes + h * w * (4 * c + 8)
    return cube + max(resampling, stacking) <= options.memory_budget


def _fill_cube(inputs: TileInputs, grid: OutputGrid, cube: NpyReader | np.ndarray,
               covered: NpyReader | np.ndarray, options: CoaddOptions, valid_min: float | None,
               progress, *, binned: np.ndarray | None = None, factor: int = 1) -> None:
    """Resample every frame onto the tile grid into the cube (NaN / 0 elsewhere).

    An in-memory cube (ndarrays) is filled in place, each frame by its own thread, every
    element written once. On disk, each frame's plane of the cube is one contiguous block
    of the ``.npy`` file, written with a single ``pwrite`` from a full-size buffer: no page
    faults on a map of the sparse file, and no forced write-back (the stack reads the cube
    back through the page cache; the scratch files are deleted after it). When ``binned``
    is given, frame ``k``'s `block_mean` at ``factor`` goes to ``binned[k]`` (left NaN for
    a frame off the grid), so that the normalisation does not read the cube again.

    A frame's correction (``inputs.corrections[k]``) is applied by the resampling.
    Frames are resampled with the ``"strict"`` edge rule whatever the coadd's: the stack's
    normalisation fits frames against each other, and an extrapolated half-pixel rim
    would enter those fits (see `skymosaic.reproject.resample`).
    """
    c, (h, w) = inputs.frames[0].channels, grid.shape
    options = dataclasses.replace(options, edge="strict")
    in_memory = isinstance(cube, np.ndarray)

    def one(k: int):
        # the frame's slice of an in-memory cube, or one plane per channel: arrays below
        # the allocator's mmap threshold are reused from frame to frame instead of being
        # faulted in afresh (see skymosaic._memory)
        if in_memory:
            planes, footprint = list(cube[k]), covered[k]
        else:
            planes = [np.empty((h, w), np.float32) for _ in range(c)]
            footprint = np.empty((h, w), np.uint8)
        source = FileSource.from_info(inputs.frames[k], valid_min=valid_min)
        if k < len(inputs.corrections) and inputs.corrections[k] is not None:
            fix = inputs.corrections[k]
            source.gain, source.offset, source.surface = fix.gain, fix.offset, fix.surface
        bbox = source_bbox(source, grid)
        if bbox is None:
            for plane in planes:
                plane.fill(np.nan)
            footprint.fill(0)
            return k, None
        (y0, y1, x0, x1), data, weight = resample_source(source, grid, bbox, options)
        for ch, plane in enumerate(planes):
            _fill_outside(plane, (y0, y1, x0, x1), np.nan)
            plane[y0:y1, x0:x1] = data[ch]
            if binned is not None:
                binned[k, ch] = block_mean(plane[None], factor)[0]
        _fill_outside(footprint, (y0, y1, x0, x1), 0)
        footprint[y0:y1, x0:x1] = weight > 0
        return k, (planes, footprint)

    frames = range(len(inputs.frames))
    with ThreadPoolExecutor(max_workers=options.n_threads) as pool:
        for k, result in ordered_window(pool, one, frames, options.n_threads + 1):
            if progress is not None:
                progress(1)
            if result is None:
                logger.warning("tile %s: %s has no pixel on the tile grid", inputs.tile_id,
                               inputs.frames[k].name)
            if in_memory:
                continue
            planes, footprint = result or ([np.full((h, w), np.nan, np.float32)] * c,
                                           np.zeros((h, w), np.uint8))
            for ch, plane in enumerate(planes):
                cube.write_frame(k, plane, channel=ch)
            covered.write_frame(k, footprint)


def _fill_outside(plane: np.ndarray, bbox: tuple[int, int, int, int], value) -> None:
    """Set ``plane`` to ``value`` outside rows ``y0:y1`` x columns ``x0:x1`` (each element once)."""
    y0, y1, x0, x1 = bbox
    plane[:y0] = value
    plane[y1:] = value
    plane[y0:y1, :x0] = value
    plane[y0:y1, x1:] = value


def _write_tile(path: Path, result, grid: OutputGrid, inputs: TileInputs, fingerprint: str,
                exposure_sum: float, summary: dict, settings: StackSettings) -> None:
    history = [f"skymosaic {__version__}: master tile of {len(inputs.frames)} frame(s)"]
    history += [f"frame {f.name}" for f in inputs.frames[:200]]
    history.append(f"stack {json.dumps(settings.to_dict(), sort_keys=True)}")
    cards = {
        "TILEID": (inputs.tile_id, "master tile name"),
        "TILEFP": (fingerprint, "fingerprint of frames and settings"),
        "NCOMBINE": (len(inputs.frames), "frames stacked"),
        "EXPTIME": (exposure_sum, "[s] sum of frame exposures"),
        "FILTER": inputs.frames[0].filter or "",
    }
    write_mosaic(path, result.data, grid.wcs, weight=result.weight, coverage=result.n_frames_map,
                 history=history, cards=cards,
                 extra_hdus=[fits.ImageHDU(np.frombuffer(json.dumps(summary, default=str).encode(),
                                                         np.uint8),
                                           name="STACKINF")])
