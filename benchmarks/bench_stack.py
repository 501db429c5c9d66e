"""Benchmark of skymosaic.stack.stack_cube on a memory-mapped cube, against ccdproc.

Generates N synthetic registered frames (a star field with per-frame gain, offset and
Gaussian noise) into a memmap inside a temporary directory, stacks it with a memory
budget, and reports throughput (frame-megapixels per second, one megapixel = 1e6 pixels
of one frame, all channels) and peak memory. Then compares against ccdproc's
``Combiner`` (sigma clipping, then average) on a subset of frames that fits in memory.

Peak memory is reported two ways: ``ru_maxrss`` (the process high-water mark, which
also counts file-backed pages of the memmap that the kernel may reclaim at will) and
the peak of anonymous resident memory (``RssAnon`` sampled every 10 ms), which is what
the memory budget actually bounds.

Examples
--------
Seestar-size run (200 debayered 3x1080x1920 frames = 5 GB on disk)::

    python benchmarks/bench_stack.py --n-frames 200 --shape 3,1080,1920 --budget-mb 1024

Quick run::

    python benchmarks/bench_stack.py --n-frames 40 --shape 3,256,384 --ccdproc-frames 20
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from skymosaic.stack import StackSettings, chunk_rows_for, stack_cube

logger = logging.getLogger("bench_stack")


class PeakAnonRSS:
    """Context manager sampling ``RssAnon`` of this process; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()

    @staticmethod
    def read() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def __enter__(self) -> PeakAnonRSS:
        self.start = self.peak = self.read()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def star_field(shape: tuple[int, int, int], *, n_stars: int, seed: int) -> np.ndarray:
    """Sky + Gaussian stars, float32 (C, H, W); colours differ slightly per channel."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 100.0, dtype=np.float32)
    sig, r = 1.3, 6
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    for y0, x0, flux in zip(
        rng.integers(r, h - r, n_stars),
        rng.integers(r, w - r, n_stars),
        rng.pareto(1.5, n_stars) * 300 + 100,
        strict=True,
    ):
        img[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1] += (
            flux / (2 * np.pi * sig**2) * np.exp(-(yy**2 + xx**2) / (2 * sig**2))
        ).astype(np.float32)
    colour = np.linspace(0.9, 1.1, c, dtype=np.float32)[:, None, None]
    return img[None] * colour


def write_cube(path: Path, n: int, shape: tuple[int, int, int], seed: int) -> np.memmap:
    """Frames ``g_k * truth + b_k + noise`` (one satellite trail) into a memmap."""
    truth = star_field(shape, n_stars=max(50, shape[1] * shape[2] // 500), seed=seed)
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, *shape))
    rng = np.random.default_rng(seed + 1)
    for k in range(n):
        g, b = rng.uniform(0.9, 1.1), rng.uniform(-5, 5)
        frame = rng.standard_normal(shape, dtype=np.float32)
        frame *= 2.0
        frame += g * truth + b
        if k == n // 2:  # one satellite trail
            rows = np.arange(shape[2]) * shape[1] // shape[2]
            frame[:, rows, np.arange(shape[2])] += 400.0
        mm[k] = frame
    mm.flush()
    return mm


def run_ours(cube, settings: StackSettings, label: str) -> dict:
    n, _, h, w = cube.shape
    with PeakAnonRSS() as mem:
        t0 = time.perf_counter()
        res = stack_cube(cube, settings=settings)
        dt = time.perf_counter() - t0
    return {
        "engine": label,
        "frames": n,
        "seconds": dt,
        "mpix_s": n * h * w / 1e6 / dt,
        "peak_anon_mb": (mem.peak - mem.start) / 2**20,
        "result": res.data,
        "chunk_rows": res.chunk_rows,
    }


def run_ccdproc(cube: np.ndarray) -> dict:
    """ccdproc Combiner: sigma_clipping(3, 3, median, std) then average_combine, per channel."""
    from astropy.nddata import CCDData  # noqa: PLC0415 (optional dependency)
    from ccdproc import Combiner  # noqa: PLC0415

    n, c, h, w = cube.shape
    out = np.empty((c, h, w), dtype=np.float32)
    with PeakAnonRSS() as mem:
        t0 = time.perf_counter()
        for ch in range(c):
            frames = [CCDData(np.array(cube[k, ch]), unit="adu") for k in range(n)]
            comb = Combiner(frames, dtype=np.float32)
            comb.sigma_clipping(low_thresh=3, high_thresh=3, func=np.ma.median, dev_func=np.ma.std)
            out[ch] = comb.average_combine().data
        dt = time.perf_counter() - t0
    return {
        "engine": "ccdproc Combiner sigma_clip+average",
        "frames": n,
        "seconds": dt,
        "mpix_s": n * h * w / 1e6 / dt,
        "peak_anon_mb": (mem.peak - mem.start) / 2**20,
        "result": out,
        "chunk_rows": h,
    }


def print_table(rows: list[dict]) -> None:
    head = f"{'engine':44s} {'frames':>6s} {'rows/chunk':>10s} {'seconds':>8s} "
    head += f"{'Mpix/s':>8s} {'peak anon MB':>12s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['engine']:44s} {r['frames']:6d} {r['chunk_rows']:10d} {r['seconds']:8.2f} "
            f"{r['mpix_s']:8.1f} {r['peak_anon_mb']:12.0f}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-frames", type=int, default=200)
    p.add_argument("--shape", default="3,1080,1920", help="C,H,W of one frame")
    p.add_argument("--budget-mb", type=float, default=1024.0)
    p.add_argument("--rejection", default="winsorized")
    p.add_argument("--ccdproc-frames", type=int, default=30, help="0 = skip ccdproc")
    p.add_argument("--tmpdir", default=None, help="where the temporary memmap goes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    if len(shape) != 3:
        p.error(f"--shape must be C,H,W, got {args.shape!r}")
    logging.basicConfig(level=logging.WARNING)
    budget = int(args.budget_mb * 2**20)
    settings = StackSettings(
        normalization="linear", rejection=args.rejection, memory_budget_bytes=budget
    )
    n = args.n_frames
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        t0 = time.perf_counter()
        cube = write_cube(Path(tmp) / "cube.f32", n, shape, args.seed)
        gen = time.perf_counter() - t0
        size_gb = cube.nbytes / 1e9
        print(
            f"cube {n}x{'x'.join(map(str, shape))} float32 = {size_gb:.2f} GB memmap "
            f"(generated in {gen:.1f} s); budget {args.budget_mb:.0f} MB -> "
            f"{chunk_rows_for(n, *shape, settings)} rows/chunk"
        )
        rows = [run_ours(cube, settings, f"skymosaic {args.rejection} (memmap, linear norm)")]
        m = min(args.ccdproc_frames, n)
        if m:
            sub = np.array(cube[:m])
            plain = dict(normalization="none", memory_budget_bytes=budget)
            ours_k = run_ours(
                sub,
                StackSettings(rejection="kappa_sigma", **plain),
                "skymosaic kappa_sigma (in memory, no norm)",
            )
            ours_w = run_ours(
                sub,
                StackSettings(rejection=args.rejection, **plain),
                f"skymosaic {args.rejection} (in memory, no norm)",
            )
            ref = run_ccdproc(sub)
            rows += [ours_k, ours_w, ref]
        print_table(rows)
        if m:
            diff = np.nanmax(np.abs(ours_k["result"] - ref["result"]))
            speed_k = ref["seconds"] / ours_k["seconds"]
            speed_w = ref["seconds"] / ours_w["seconds"]
            mem = ref["peak_anon_mb"] / max(ours_k["peak_anon_mb"], 1)
            print(
                f"\nspeed ratio ccdproc_time/our_time on {m} frames: kappa_sigma x{speed_k:.2f}, "
                f"{args.rejection} x{speed_w:.2f}; peak anon memory ratio ccdproc/ours {mem:.2f}; "
                f"max |kappa_sigma - ccdproc| = {diff:.3g} ADU (noise 2 ADU per frame)"
            )
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"process ru_maxrss (includes mapped file pages): {hwm:.0f} MB")
        del cube


if __name__ == "__main__":
    main()
