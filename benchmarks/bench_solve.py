"""Benchmark: plate solving the raw Seestar S50 frames of ../shared/testdata.

Run: ``.venv/bin/python benchmarks/bench_solve.py [--workers 1 2] [--repeat 1]``

For each worker count: copies of the 8 raw frames (never their sidecars) are solved cold
by `skymosaic.astrometry.solve_frames` (astrometry.net's solve-field, the settings of
``[solve]``), then again from the cache. Reports the wall time per frame, the solver's
own time per frame, and the largest disagreement with the shipped astrometry.net sidecars
over a 33 x 33 grid covering each whole frame (corners included). Skips (exit 0) when
solve-field or the test data are missing.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skymosaic.astrometry import (
    SolveOptions,
    content_hash,
    find_index_files,
    index_search_dirs,
    solve_frames,
    write_solver_image,
)
from skymosaic.io import scan_frame

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_info

logger = logging.getLogger("bench_solve")
DATA = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "seestar_s50_osc"


def disagreement_px(solved: WCS, reference: WCS, shape: tuple[int, int], n: int = 33) -> float:
    h, w = shape
    x, y = np.meshgrid(np.linspace(-0.5, w - 0.5, n), np.linspace(-0.5, h - 0.5, n))
    ra, dec = solved.pixel_to_world_values(x.ravel(), y.ravel())
    bx, by = reference.all_world2pix(ra, dec, 0, tolerance=1e-8, maxiter=50)
    return float(np.hypot(bx - x.ravel(), by - y.ravel()).max())


def run(workers: int, frames: list[Path], tmp: Path) -> dict:
    infos = [scan_frame(p) for p in frames]
    options = SolveOptions(solver="astrometry.net", workers=workers)
    run_dir = tmp / f"run_w{workers}"
    t0 = time.perf_counter()
    cold = solve_frames(infos, run_dir, options=options)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = solve_frames(infos, run_dir, options=options)
    t_warm = time.perf_counter() - t0
    errors = []
    for info in infos:
        r = cold[str(info.path)]
        if r.wcs is None:
            errors.append(np.inf)
            continue
        side = DATA / "wcs" / (info.name[: -len(".fit.gz")] + ".wcs")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            errors.append(disagreement_px(r.wcs, WCS(fits.getheader(side)), info.shape[1:]))
    per_frame = [r.seconds for r in cold.values()]
    return {
        "workers": workers,
        "frames": len(infos),
        "solved": sum(r.status == "solved" for r in cold.values()),
        "cold_wall_s": t_cold,
        "cold_per_frame_s": t_cold / len(infos),
        "frame_s_median": float(np.median(per_frame)),
        "frame_s_max": float(np.max(per_frame)),
        "cached_wall_s": t_warm,
        "cached": sum(r.status == "cached" for r in warm.values()),
        "max_err_px": float(np.max(errors)),
        "median_err_px": float(np.median(errors)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if shutil.which("solve-field") is None or not find_index_files(index_search_dirs()):
        print("bench_solve: solve-field or its index files not installed (make solver); skipped")
        return 0
    raw = sorted((DATA / "raw").glob("*.fit.gz"))
    if not raw:
        print(f"bench_solve: no test data in {DATA}; skipped")
        return 0
    print(machine_info())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "frames").mkdir()
        frames = [Path(shutil.copyfile(p, tmp / "frames" / p.name)) for p in raw]
        t0 = time.perf_counter()
        for p in frames:
            write_solver_image(scan_frame(p), tmp / "lum.fits")
        t_prep = (time.perf_counter() - t0) / len(frames)
        t0 = time.perf_counter()
        for p in frames:
            content_hash(p)
        t_hash = (time.perf_counter() - t0) / len(frames)
        print(f"per frame: luminance FITS (read, debayer, write) {t_prep:.3f} s, "
              f"SHA-256 {t_hash:.3f} s")
        for workers in args.workers:
            res = run(workers, frames, tmp)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
