"""CPU vs GPU (CuPy) wall time and peak device memory for Phase 5 and stacking.

Workloads, both in memory (no FITS I/O, so the numbers are the compute):

* **phase5**: a synthetic RGB survey (`skymosaic.synth.make_survey`, ``--nx`` x ``--ny``
  pointings of ``--frame`` px, star-rich truth): photometric matching (resample onto the
  binned grid, pairwise fits, solve), the coadd, the coverage renormalisation and the
  second coadd -- the same calls as the pipeline's classic direct mode, with
  ``CoaddOptions(backend=...)``.
* **stack**: `skymosaic.stack.stack_cube` of ``--frames`` frames of ``--stack-shape`` px,
  3 channels, additive normalisation, winsorized rejection, mean combine.

Each workload runs once to warm up (CUDA context, kernel compilation, memory pool) and
then ``--repeat`` times; the best wall time is reported. Peak device memory is CuPy's
default memory pool high-water mark (``total_bytes`` sampled after each step, which is
what the pool holds, including cached blocks). The ratio column is CPU time / GPU time.

The parity of the two results is printed too (largest absolute difference over the data
range): the GPU is meant to be a pure speed-up.

Usage::

    python benchmarks/bench_gpu.py                 # medium survey: 4 x 3 pointings of 512 x 640
    python benchmarks/bench_gpu.py --nx 6 --ny 4 --frame 1024 1280 --frames 40

Exits with status 2 and a message when CuPy or a CUDA device is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from skymosaic.assemble import ArraySource, CoaddOptions, coadd
from skymosaic.assemble._phase5 import match_sources, renormalise_coverage
from skymosaic.backend import Backend, GPUUnavailableError, select_backend
from skymosaic.photometry import PhotometryOptions
from skymosaic.reproject import optimal_grid
from skymosaic.stack import StackSettings, stack_cube
from skymosaic.synth import make_survey, make_truth_sky


def _phase5(survey, grid, backend: Backend | None, threads: int) -> np.ndarray:
    sources = [ArraySource.from_arrays(f.name, f.data, f.wcs) for f in survey.frames]
    opts = CoaddOptions(kernel="bilinear", threads=threads, backend=backend)
    match_sources(sources, grid, options=opts, photometry=PhotometryOptions(threads=threads))
    first = coadd(sources, grid, options=opts)
    renormalise_coverage(sources, grid, first.weight, options=opts, sigma_px=32.0, clip=(0.8, 1.25))
    return coadd(sources, grid, options=opts).data


def _stack(cube: np.ndarray, backend: Backend | None) -> np.ndarray:
    settings = StackSettings(normalization="additive", rejection="winsorized", combine="mean")
    return stack_cube(cube, settings=settings, backend=backend).data


def _timed(
    fn: Callable[[], np.ndarray], repeat: int, pool: Any | None
) -> tuple[float, np.ndarray, int]:
    """Best wall time of ``repeat`` runs after one warm-up, the result, peak pool bytes."""
    result = fn()
    best, peak = float("inf"), 0
    for _ in range(repeat):
        if pool is not None:
            pool.free_all_blocks()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        if pool is not None:
            peak = max(peak, int(pool.total_bytes()))
    return best, result, peak


def _parity(cpu: np.ndarray, gpu: np.ndarray) -> float:
    finite = np.isfinite(cpu) & np.isfinite(gpu)
    span = float(np.ptp(cpu[finite])) or 1.0
    return float(np.max(np.abs(cpu[finite] - gpu[finite]))) / span


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nx", type=int, default=4)
    ap.add_argument("--ny", type=int, default=3)
    ap.add_argument("--frame", type=int, nargs=2, default=(512, 640), metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=24, help="frames in the stacking cube")
    ap.add_argument("--stack-shape", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        gpu = select_backend("on")
    except GPUUnavailableError as err:
        print(f"bench_gpu: no GPU to benchmark: {err}", file=sys.stderr)
        return 2
    pool = gpu.xp.get_default_memory_pool()
    print(f"device: {gpu.device}")

    truth = make_truth_sky(center=(150.0, 2.0), size_deg=(1.5, 1.5), n_stars=20000, seed=args.seed)
    survey = make_survey(
        n_x=args.nx,
        n_y=args.ny,
        frame_shape=tuple(args.frame),
        channels=3,
        gain_range=(0.8, 1.25),
        offset_range=(0.0, 60.0),
        seed=args.seed,
        truth=truth,
    )
    feet = [f.wcs.calc_footprint(axes=(f.data.shape[2], f.data.shape[1])) for f in survey.frames]
    grid = optimal_grid(feet, pixel_scale_arcsec=survey.pixel_scale_arcsec)
    rng = np.random.default_rng(args.seed)
    h, w = args.stack_shape
    cube = (100 + 5 * rng.standard_normal((args.frames, 3, h, w))).astype(np.float32)

    rows = []
    for name, cpu_fn, gpu_fn in (
        (
            "phase5",
            lambda: _phase5(survey, grid, None, args.threads),
            lambda: _phase5(survey, grid, gpu, args.threads),
        ),
        ("stack", lambda: _stack(cube, None), lambda: _stack(cube, gpu)),
    ):
        t_cpu, r_cpu, _ = _timed(cpu_fn, args.repeat, None)
        t_gpu, r_gpu, peak = _timed(gpu_fn, args.repeat, pool)
        rows.append((name, t_cpu, t_gpu, t_cpu / t_gpu, peak / 2**20, _parity(r_cpu, r_gpu)))
    head = ("workload", "cpu s", "gpu s", "ratio", "peak VRAM MiB", "max diff/range")
    print(f"{head[0]:10s} {head[1]:>8s} {head[2]:>8s} {head[3]:>7s} {head[4]:>14s} {head[5]:>15s}")
    for name, t_cpu, t_gpu, ratio, peak, diff in rows:
        print(f"{name:10s} {t_cpu:8.2f} {t_gpu:8.2f} {ratio:7.2f} {peak:14.0f} {diff:15.2e}")
    print(f"backend report: {gpu.report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
