"""Chunked combination of registered frames into a master tile.

`stack_cube` is the engine of phase 3: N frames already resampled onto one tile grid
(an ``(N, C, H, W)`` ndarray or memmap, NaN = no data) become one ``(C, H, W)`` master
tile plus a weight map. The order of work:

1. validate everything (settings, cube, per-frame figures);
2. estimate the normalisation once on a row sample (`estimate_normalization`);
3. compute the per-frame weights (`frame_weights`, noise taken after normalisation);
4. for each chunk of rows: read it (a copy), normalise, blank samples whose pixel weight
   is 0/NaN, reject outliers along the frame axis, combine.

Steps 4 only use per-pixel statistics, and the weighted sums are accumulated frame by
frame in a fixed order, so the result is bit-identical for any chunk height.

Memory
------
A chunk of ``h`` rows holds the float32 samples ``N*C*h*W*4`` bytes plus the
temporaries of normalisation, rejection and combination. ``_TEMP_FACTOR`` gives, per
rejection method, the peak number of float32-sized copies ``k`` (the sorted copy, float64
prefix sums or ranks and residuals, boolean masks), so::

    bytes_per_row = N * C * W * 4 * k  (+ N * W * 4 * 2 for pixel weights)
    chunk_rows    = max(1, memory_budget_bytes // bytes_per_row)

The factors are measured upper bounds (see ``benchmarks/bench_stack.py``) rounded up.

Device backend
--------------
With a device `~skymosaic.backend.Backend`, step 4 runs on the device: each chunk is read
on the host (the cube may be a memmap), copied to the device once, normalised, rejected and
combined there (the array-API kernels of `skymosaic.backend._stats`), and its four results
come back once. Steps 1-3 work on small per-frame tables and stay on the host. Device
chunks are sized to a share of free device memory with ``_DEVICE_TEMP_SCALE`` times the
host factors (whole-array masks and float64 temporaries instead of in-place scatters; an
estimate -- an out-of-memory error halves the chunk, see `Backend.run`). Chunks give
bit-identical results for any height on both backends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as device_of

from skymosaic._surface import SURFACE_ORDERS
from skymosaic.assemble._coadd import ordered_window
from skymosaic.backend import Backend, to_host
from skymosaic.stack._normalize import (
    NORMALIZATION_METHODS,
    estimate_normalization,
    estimate_star_normalization,
    select_reference,
)
from skymosaic.stack._reject import (
    REJECTION_METHODS,
    count_rejected,
    keep_scratch,
    nanmedian_frames,
    reject,
)
from skymosaic.stack._starnorm import add_surfaces
from skymosaic.stack._weights import frame_weights, normalize_methods

if TYPE_CHECKING:
    from skymosaic.config import Config

__all__ = ["COMBINE_METHODS", "StackResult", "StackSettings", "chunk_rows_for", "stack_cube"]

logger = logging.getLogger(__name__)

COMBINE_METHODS = ("mean", "median")

#: Peak temporaries per sample, in float32-sized units, for each rejection method.
_TEMP_FACTOR = {"none": 4, "kappa_sigma": 10, "winsorized": 10, "linear_fit": 16, "minmax": 8}
#: Extra for the median combine (a sorted copy and its counts).
_MEDIAN_EXTRA = 2
#: Device chunks: the array-API kernels hold about twice the host temporaries.
_DEVICE_TEMP_SCALE = 2


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_pos_number(value: object) -> bool:
    return bool(
        isinstance(value, (int, float, np.number))
        and not isinstance(value, bool)
        and np.isfinite(value)
        and value > 0
    )


@dataclass(frozen=True)
class StackSettings:
    """How to stack: normalisation, weighting, rejection, combination, memory.

    Parameters
    ----------
    normalization : {"none", "additive", "multiplicative", "linear", "stars"}
        Photometric normalisation of every frame onto the reference (see
        `estimate_normalization`).
    reference : int or "auto"
        Reference frame index, or ``"auto"``: most coverage, then best quality.
    weighting : str or tuple of str
        Any combination of ``"exposure"``, ``"noise"``, ``"fwhm"``; ``()`` = uniform.
        Stored as a canonical tuple.
    rejection : {"none", "kappa_sigma", "winsorized", "linear_fit", "minmax"}
        Per-pixel outlier rejection along the frame axis.
    kappa_low, kappa_high : float
        Clipping thresholds in sigma (> 0) for the sigma-based methods.
    max_iter : int
        Maximum clipping iterations (>= 1).
    n_low, n_high : int
        Samples dropped at each end by ``"minmax"`` (>= 0).
    combine : {"mean", "median"}
        ``"mean"``: weighted mean ``sum(w*x)/sum(w)`` of the kept samples; ``"median"``:
        the plain (unweighted) median of the kept samples — weights then only enter the
        weight map.
    memory_budget_bytes : int
        Budget for one chunk and its temporaries (> 0); sets the chunk height.
    chunk_rows : int, optional
        Fixed chunk height (>= 1), overriding the budget.
    sample_pixels : int
        Size of the normalisation sample: frames are block-averaged to at most this many
        bins per channel (see `estimate_normalization`).
    sky_surface : {"constant", "plane", "quadratic"}
        With ``normalization="stars"``: order of each frame's sky surface relative to the
        reference (`estimate_star_normalization`).
    """

    normalization: str = "linear"
    reference: int | str = "auto"
    weighting: tuple[str, ...] = ()
    rejection: str = "winsorized"
    kappa_low: float = 3.0
    kappa_high: float = 3.0
    max_iter: int = 5
    n_low: int = 1
    n_high: int = 1
    combine: str = "mean"
    memory_budget_bytes: int = 1 << 30
    chunk_rows: int | None = None
    sample_pixels: int = 65536
    sky_surface: str = "quadratic"

    @classmethod
    def from_config(cls, config: Config) -> StackSettings:
        """The ``[stack]`` section; the stack's chunks get a quarter of the memory budget
        (at least 16 MiB)."""
        s = config.stack
        return cls(normalization=s.normalization, weighting=tuple(s.weighting),
                   rejection=s.rejection, kappa_low=s.kappa_low, kappa_high=s.kappa_high,
                   max_iter=s.max_iter, n_low=s.n_low, n_high=s.n_high, combine=s.combine,
                   sky_surface=s.sky_surface,
                   memory_budget_bytes=max(config.memory_budget_bytes // 4, 16 * 2**20))

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("normalization", self.normalization, NORMALIZATION_METHODS),
            ("rejection", self.rejection, REJECTION_METHODS),
            ("combine", self.combine, COMBINE_METHODS),
            ("sky_surface", self.sky_surface, tuple(SURFACE_ORDERS)),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        ref = self.reference
        if ref != "auto" and not (isinstance(ref, (int, np.integer)) and _is_int(ref) and ref >= 0):
            raise ValueError(f"reference must be 'auto' or an int >= 0, got {self.reference!r}")
        weighting = self.weighting
        if not isinstance(weighting, (str, Iterable)):
            raise ValueError(f"weighting must be a str or a tuple of str, got {weighting!r}")
        object.__setattr__(self, "weighting", normalize_methods(weighting))
        for name in ("kappa_low", "kappa_high"):
            if not _is_pos_number(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name, low in (("max_iter", 1), ("n_low", 0), ("n_high", 0), ("sample_pixels", 1)):
            value = getattr(self, name)
            if not (_is_int(value) and value >= low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (_is_int(self.memory_budget_bytes) and self.memory_budget_bytes > 0):
            raise ValueError(
                f"memory_budget_bytes must be an integer > 0, got {self.memory_budget_bytes!r}"
            )
        if self.chunk_rows is not None and not (_is_int(self.chunk_rows) and self.chunk_rows >= 1):
            raise ValueError(f"chunk_rows must be None or an integer >= 1, got {self.chunk_rows!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of the settings."""
        out = dataclasses.asdict(self)
        out["weighting"] = list(self.weighting)
        return out


@dataclass(frozen=True)
class StackResult:
    """A master tile and what it took to make it.

    Attributes
    ----------
    data : ndarray (C, H, W) float32
        The combined image; NaN where no frame contributed.
    weight : ndarray (H, W) float32
        Sum of the weights (frame weight x pixel weight) of the samples used at each
        pixel, averaged over channels; 0 where nothing contributed.
    n_frames_map : ndarray (H, W) int32
        Number of frames that contributed (valid and not rejected) in at least one channel.
    rejected_per_frame : ndarray (N,) int64
        Rejected samples of each frame, summed over channels.
    rejected_per_channel : ndarray (N, C) int64
        The same, per channel.
    gains, offsets : ndarray (N, C) float64
        Normalisation applied: ``gains * frame + offsets`` (+ the sky surfaces).
    surfaces : ndarray (N, C, M) or None
        With ``normalization="stars"``: each frame's sky surface on the reference's scale
        (`skymosaic.SkySurface` coefficients over the cube's ``(H, W)``), added after the gain.
    frame_weights : ndarray (N, C) float64
        Combination weights (mean 1 per channel).
    reference : int or None
        Reference frame of the normalisation (None when ``normalization="none"``).
    settings : StackSettings
    chunk_rows : int
        Chunk height used.
    elapsed_s : float
        Wall time of the stack.
    """

    data: np.ndarray
    weight: np.ndarray
    n_frames_map: np.ndarray
    rejected_per_frame: np.ndarray
    rejected_per_channel: np.ndarray
    gains: np.ndarray
    offsets: np.ndarray
    frame_weights: np.ndarray
    reference: int | None
    settings: StackSettings
    chunk_rows: int
    elapsed_s: float = 0.0
    meta: dict = field(default_factory=dict)
    surfaces: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixel arrays) for ``run.json``."""
        n_valid = int(np.count_nonzero(self.n_frames_map))
        total = int(self.n_frames_map.size)
        n_samples = int(self.n_frames_map.size * self.data.shape[0])
        return {
            "n_frames": int(self.gains.shape[0]),
            "shape": [int(s) for s in self.data.shape],
            "settings": self.settings.to_dict(),
            "reference": self.reference,
            "gains": self.gains.tolist(),
            "offsets": self.offsets.tolist(),
            "sky_surfaces": None if self.surfaces is None else self.surfaces.tolist(),
            "frame_weights": self.frame_weights.tolist(),
            "rejected_per_frame": self.rejected_per_frame.tolist(),
            "rejected_fraction_per_frame": (self.rejected_per_frame / max(n_samples, 1)).tolist(),
            "coverage_fraction": n_valid / max(total, 1),
            "median_frames_per_pixel": float(np.median(self.n_frames_map)) if total else 0.0,
            "max_frames_per_pixel": int(self.n_frames_map.max()) if total else 0,
            "chunk_rows": int(self.chunk_rows),
            "elapsed_s": float(self.elapsed_s),
        }


def chunk_rows_for(
    n_frames: int, n_channels: int, height: int, width: int, settings: StackSettings
) -> int:
    """Chunk height for the settings' memory budget (see the module docstring)."""
    if settings.chunk_rows is not None:
        return min(settings.chunk_rows, height)
    bytes_per_row = _bytes_per_row(n_frames, n_channels, width, settings)
    rows = max(1, settings.memory_budget_bytes // bytes_per_row)
    if rows == 1 and bytes_per_row > settings.memory_budget_bytes:
        logger.warning(
            "memory budget %d B is below one row (%d B): stacking row by row",
            settings.memory_budget_bytes,
            bytes_per_row,
        )
    return int(min(rows, height))


def _bytes_per_row(n_frames: int, n_channels: int, width: int, settings: StackSettings) -> int:
    """Peak working bytes of one chunk row (samples, temporaries, pixel weights)."""
    k = _TEMP_FACTOR[settings.rejection] + (_MEDIAN_EXTRA if settings.combine == "median" else 0)
    return n_frames * n_channels * width * 4 * k + n_frames * width * 4 * 2


def _as_figure(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray | None:
    """Per-frame figure as float64 of ``shape`` (or broadcast), or None."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape and not (len(shape) == 2 and arr.shape == shape[:1]):
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def _validate_inputs(cube, *, exposure, noise, fwhm, pixel_weights, progress, settings):
    if not isinstance(settings, StackSettings):
        raise ValueError(f"settings must be a StackSettings, got {type(settings).__name__}")
    shape = getattr(cube, "shape", None)
    if shape is None or len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"cube must be a non-empty (N, C, H, W) array, got shape {shape!r}")
    if np.dtype(cube.dtype).kind not in "fiu":
        raise ValueError(f"cube must hold real numbers, got dtype {cube.dtype}")
    n, c, h, w = (int(s) for s in shape)
    if isinstance(settings.reference, (int, np.integer)) and settings.reference >= n:
        raise ValueError(f"reference={settings.reference} is out of range for {n} frames")
    figures = (
        _as_figure("exposure", exposure, (n,)),
        _as_figure("noise", noise, (n, c)),
        _as_figure("fwhm", fwhm, (n,)),
    )
    if pixel_weights is not None:
        pw_shape = tuple(getattr(pixel_weights, "shape", ()))
        if pw_shape != (n, h, w):
            raise ValueError(f"pixel_weights must have shape {(n, h, w)}, got {pw_shape}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {progress!r}")
    return (n, c, h, w), figures


def stack_cube(
    cube: np.ndarray,
    *,
    settings: StackSettings | None = None,
    exposure: np.ndarray | None = None,
    noise: np.ndarray | None = None,
    fwhm: np.ndarray | None = None,
    pixel_weights: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    backend: Backend | None = None,
    names: Sequence[str] | None = None,
    threads: int = 1,
    binned: np.ndarray | None = None,
) -> StackResult:
    """Normalise, weight, reject and combine N registered frames into a master tile.

    Parameters
    ----------
    cube : array (N, C, H, W)
        Registered frames, float (or integer, read as float32); NaN = no data. An
        ndarray or a ``np.memmap``: the cube is read one chunk of rows at a time and
        never modified.
    settings : StackSettings, optional
        Default ``StackSettings()``.
    exposure : array (N,), optional
        Exposure times (for ``"exposure"`` weighting).
    noise : array (N, C) or (N,), optional
        Noise sigma per frame and channel before normalisation (``"noise"`` weighting,
        linear normalisation, auto reference).
    fwhm : array (N,), optional
        Star FWHM per frame (``"fwhm"`` weighting, auto reference).
    pixel_weights : array (N, H, W), optional
        Per-frame pixel weights (footprint/coverage from resampling); 0 or NaN = unused.
        They multiply the frame weights in the mean and the weight map.
    progress : callable(done_rows, total_rows), optional
        Called after every chunk (again from the start if a device fault makes the
        chunks be recomputed on the CPU).
    backend : Backend, optional
        Where the chunks are combined (default: the host); see the module docstring.
    names : sequence of str, optional
        The frames' file names, used in warnings (default: frame indices).
    threads : int
        Host threads: frames normalised at once, and chunks combined at once (each thread
        gets ``1/threads`` of the memory budget, so the peak stays within it). The
        result does not depend on it. A device backend combines one chunk at a time.
    binned : array (N, C, H // f, W // f), optional
        The frames' block means for the normalisation (`block_mean` at
        ``f = bin_factor(H, W, settings.sample_pixels)``), when the caller computed them
        while building the cube: the cube is then not read for them (twice).

    Returns
    -------
    StackResult

    Raises
    ------
    ValueError
        On bad settings or inputs of the wrong shape, before any work is done.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cube = (100 + rng.normal(0, 1, (9, 1, 8, 8))).astype(np.float32)
    >>> res = stack_cube(cube, settings=StackSettings(normalization="none"))
    >>> res.data.shape, float(res.weight[0, 0])
    ((1, 8, 8), 9.0)
    """
    settings = StackSettings() if settings is None else settings
    (n, c, h, w), (exposure, noise, fwhm) = _validate_inputs(
        cube,
        exposure=exposure,
        noise=noise,
        fwhm=fwhm,
        pixel_weights=pixel_weights,
        progress=progress,
        settings=settings,
    )
    t0 = time.perf_counter()
    reference: int | None = None
    if settings.normalization != "none":
        if settings.reference != "auto":
            reference = int(settings.reference)
        else:
            reference = select_reference(
                cube, noise=noise, fwhm=fwhm, sample_pixels=settings.sample_pixels, binned=binned
            )
    surfaces = None
    if settings.normalization == "stars":
        gains, offsets, surfaces = estimate_star_normalization(
            cube, reference=reference, surface_order=SURFACE_ORDERS[settings.sky_surface],
            sample_pixels=settings.sample_pixels, names=names, threads=threads, binned=binned,
        )
    else:
        gains, offsets = estimate_normalization(
            cube,
            reference=0 if reference is None else reference,
            method=settings.normalization,
            sample_pixels=settings.sample_pixels,
            noise=noise,
            names=names,
            threads=threads,
            binned=binned,
        )
    fweights = frame_weights(
        n, c, exposure=exposure, noise=noise, fwhm=fwhm, gains=gains, methods=settings.weighting
    )
    threads = max(1, int(threads))
    rows = chunk_rows_for(n, c, h, w, settings)
    if settings.chunk_rows is None:
        rows = max(1, rows // threads)
    logger.info(
        "stacking %d frames of %dx%dx%d: %s normalisation, %s rejection, %s combine, "
        "%d rows per chunk",
        n,
        c,
        h,
        w,
        settings.normalization,
        settings.rejection,
        settings.combine,
        rows,
    )
    chunks = _ChunkJob(cube, pixel_weights, gains, offsets, fweights, settings, progress, surfaces)
    if backend is None:
        data, weight, nmap, rejected = chunks.run(rows, None, threads)
    else:
        dev_bytes = _DEVICE_TEMP_SCALE * _bytes_per_row(n, c, w, settings)
        data, weight, nmap, rejected = backend.run(
            "stack",
            lambda r: chunks.run(r, backend, 1),
            lambda: chunks.run(rows, None, threads),
            rows=min(rows, backend.chunk_rows(h, dev_bytes)),
        )
    elapsed = time.perf_counter() - t0
    logger.info(
        "stacked in %.2f s: %d samples rejected, %.1f %% of pixels covered",
        elapsed,
        int(rejected.sum()),
        100.0 * np.count_nonzero(nmap) / nmap.size,
    )
    return StackResult(
        data=data,
        weight=weight,
        n_frames_map=nmap,
        rejected_per_frame=rejected.sum(axis=1),
        rejected_per_channel=rejected,
        gains=gains,
        offsets=offsets,
        frame_weights=fweights,
        reference=reference,
        settings=settings,
        chunk_rows=rows,
        elapsed_s=elapsed,
        surfaces=surfaces,
    )


@dataclass(frozen=True)
class _ChunkJob:
    """Step 4 of `stack_cube` over all chunks, on the host or on a device."""

    cube: np.ndarray
    pixel_weights: np.ndarray | None
    gains: np.ndarray
    offsets: np.ndarray
    fweights: np.ndarray
    settings: StackSettings
    progress: Callable[[int, int], None] | None
    surfaces: np.ndarray | None = None

    def run(
        self, rows: int, backend: Backend | None, threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(data (C,H,W), weight (H,W), n_frames (H,W), rejected (N,C)) in ``rows``-row chunks.

        With ``threads > 1`` (host only), that many chunks are read and combined at once;
        NumPy's sorts and ufuncs release the GIL, so they run on as many cores.
        """
        n, c, h, w = self.cube.shape
        data = np.full((c, h, w), np.nan, dtype=np.float32)
        weight = np.zeros((h, w), dtype=np.float32)
        nmap = np.zeros((h, w), dtype=np.int32)
        rejected = np.zeros((n, c), dtype=np.int64)

        def one(r0: int):
            r1 = min(r0 + rows, h)
            block = self.cube[:, :, r0:r1, :]
            # a private float32 copy (the cube is never modified); a reader that already
            # returned an array of its own (`NpyReader`) is not copied twice
            private = block.flags.owndata and block.flags.writeable and block.dtype == np.float32
            x = block if private else np.array(block, dtype=np.float32, copy=True)
            if self.surfaces is not None:  # on the host, so every backend adds the same
                add_surfaces(x, self.surfaces, self.gains, r0, (h, w))
            pw = None
            if self.pixel_weights is not None:
                pw = np.array(self.pixel_weights[:, r0:r1, :], dtype=np.float32, copy=True)
            if backend is not None:  # host -> device, once per chunk
                x = backend.to_device(x)
                pw = None if pw is None else backend.to_device(pw)
            out = _stack_chunk(
                x, pw, gains=self.gains, offsets=self.offsets, fweights=self.fweights,
                settings=self.settings,
            )
            # device -> host, once per chunk (no-ops for NumPy arrays)
            return r0, r1, [to_host(a) for a in out]

        starts = range(0, h, rows)
        threads = 1 if backend is not None else max(1, min(int(threads), len(starts)))
        # the pool's threads keep the clipping's work arrays from chunk to chunk
        with ThreadPoolExecutor(max_workers=threads, initializer=keep_scratch) as pool:
            for r0, r1, out in ordered_window(pool, one, starts, threads):
                data[:, r0:r1], weight[r0:r1], nmap[r0:r1] = out[:3]
                rejected += out[3]
                if self.progress is not None:
                    self.progress(r1, h)
        return data, weight, nmap, rejected


def _blank(xp, x, where):
    """``x`` with NaN where ``where`` (in place for NumPy, a new array on a device)."""
    if isinstance(x, np.ndarray):
        np.copyto(x, np.float32(np.nan), where=where)
        return x
    return xp.where(where, xp.asarray(float("nan"), dtype=x.dtype, device=device_of(x)), x)


def _stack_chunk(
    x: np.ndarray,
    pw: np.ndarray | None,
    *,
    gains: np.ndarray,
    offsets: np.ndarray,
    fweights: np.ndarray,
    settings: StackSettings,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """A chunk ``x`` (N,C,h,W) -> (data (C,h,W), weight (h,W), n_frames (h,W), rejected (N,C)).

    ``x`` (a copy) and ``pw`` (N,h,W pixel weights) are modified; every array operation
    stays in their namespace and on their device.
    """
    xp = array_namespace(x)
    dev = device_of(x)
    if settings.normalization != "none":
        x *= xp.asarray(gains, dtype=xp.float32, device=dev)[:, :, None, None]
        x += xp.asarray(offsets, dtype=xp.float32, device=dev)[:, :, None, None]
    if pw is not None:
        unused = ~(pw > 0)  # NaN compares False: unused
        pw = xp.where(unused, xp.zeros_like(pw), pw)
        x = _blank(xp, x, unused[:, None, ...])
    rejected = xp.zeros(fweights.shape, dtype=xp.int64, device=dev)
    if settings.rejection != "none":
        mask = reject(
            x,
            method=settings.rejection,
            kappa_low=settings.kappa_low,
            kappa_high=settings.kappa_high,
            max_iter=settings.max_iter,
            n_low=settings.n_low,
            n_high=settings.n_high,
        )
        rejected = count_rejected(mask)
        x = _blank(xp, x, mask)
        del mask
    data, den, nmap = _weighted_sums(x, pw, fweights, want_mean=settings.combine == "mean")
    if settings.combine == "median":
        data = nanmedian_frames(x)
    weight = xp.astype(xp.mean(den, axis=0), xp.float32)
    return data, weight, nmap, rejected


def _weighted_sums(
    x: np.ndarray, pw: np.ndarray | None, fweights: np.ndarray, *, want_mean: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Weighted mean (or None), per-channel weight sums and frame counts of a chunk.

    Accumulates frame by frame in float64 in a fixed order, so every pixel's result is
    independent of the chunk it was computed in.
    """
    xp = array_namespace(x)
    n = x.shape[0]
    dev = device_of(x)
    num = xp.zeros(x.shape[1:], dtype=xp.float64, device=dev) if want_mean else None
    den = xp.zeros(x.shape[1:], dtype=xp.float64, device=dev)
    nmap = xp.zeros(x.shape[2:], dtype=xp.int32, device=dev)
    for k in range(n):
        valid = ~xp.isnan(x[k, ...])
        wk = xp.asarray(fweights[k], dtype=xp.float64, device=dev)[:, None, None]
        if pw is not None:
            wk = wk * xp.astype(pw[k, ...], xp.float64)[None, ...]
        wk = xp.where(valid, wk, 0.0)
        den += wk
        if num is not None:
            num += wk * xp.where(valid, xp.astype(x[k, ...], xp.float64), 0.0)
        nmap += xp.astype(xp.any(valid, axis=0), xp.int32)
    mean = None
    if num is not None:
        mean = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), xp.nan)
        mean = xp.astype(mean, xp.float32)
    return mean, den, nmap
