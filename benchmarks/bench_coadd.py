"""Benchmark of the phase-5 coadd (`skymosaic.assemble.coadd`) against astropy reproject.

A synthetic survey with a known truth (`skymosaic.synth.make_survey`: rotations, pointing
jitter, SIP distortion, NaN corners, Gaussian noise; gains 1 and offsets 0 so that this is
a pure resampling/coadd comparison) is written as FITS files to a temporary folder. One
output grid (`skymosaic.reproject.optimal_grid` over the frames' edges, at the frames'
pixel scale) is used by both tools:

* skymosaic: ``coadd([FileSource.from_info(scan_frame(p)) ...], grid,
  options=CoaddOptions(kernel=..., memory_budget=...))``, uniform weights;
* reproject: ``reproject_and_coadd([(data, wcs) ...], grid.wcs, shape_out=grid.shape,
  reproject_function=reproject_interp, combine_function="mean")`` with the same kernel
  order (reproject's default, serial execution).

The timed region includes reading the FITS files for both tools (headers and pixels).
Each tool runs in its own fresh subprocess, so that its peak RSS (``VmHWM``, exact, and a
polled anonymous-RSS peak) is its own; the interpreter + imports baseline is
measured in the same process just before the first run. Wall time is the best of
``--repeat`` runs (the machine may be shared: the median is reported too).

Accuracy: the truth is rendered on the output grid; over the pixels valid in *both*
mosaics, the robust RMS of ``mosaic - (a * truth + b)`` (`skymosaic.synth.residual_rms`)
divided by the input noise sigma. Lower is better; it includes the (averaged,
interpolated) noise, which is the same for both tools.

Examples
--------
Default run (16 frames of 1024 x 1024, about 3.2k x 3.2k output)::

    python benchmarks/bench_coadd.py

Smaller and faster, with a cProfile of one skymosaic coadd::

    python benchmarks/bench_coadd.py --n-x 2 --n-y 2 --frame 512x512 --repeat 2 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import math
import pickle
import pstats
import sys
import tempfile
import time
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

import skymosaic
from skymosaic.assemble import CoaddOptions, FileSource, _coadd, coadd
from skymosaic.io import frame_footprint, scan_frame
from skymosaic.reproject import optimal_grid
from skymosaic.synth import (
    coverage_fraction,
    frame_border_mask,
    make_survey,
    residual_rms,
    write_survey,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    best_of,
    emit_result,
    format_bytes,
    format_table,
    machine_info,
    peak_rss,
    run_worker,
)

logger = logging.getLogger("bench_coadd")

#: skymosaic kernel -> reproject_interp ``order`` (reproject's bicubic is a cubic
#: spline, not Keys' convolution: close, not identical).
_REPROJECT_ORDER = {"nearest": "nearest-neighbor", "bilinear": "bilinear", "bicubic": "bicubic"}

_MiB = 2**20


# -- the measured runs (in worker subprocesses) -------------------------------------------


def _frame_paths(workdir: Path) -> list[Path]:
    return sorted((workdir / "frames").glob("*.fits"))


def _run_skymosaic(paths: list[Path], grid, *, kernel: str, budget: int, threads: int):
    sources = [FileSource.from_info(scan_frame(p)) for p in paths]
    opts = CoaddOptions(kernel=kernel, memory_budget=budget, threads=threads)
    result = coadd(sources, grid, options=opts)
    return result.data, {"n_blocks": result.n_blocks, "block_rows": result.block_rows,
                         "used": len(result.used), "rejected": len(result.rejected)}


def _run_reproject(paths: list[Path], grid, *, kernel: str):
    # Imported here: the skymosaic worker never loads reproject.
    from reproject import reproject_interp  # noqa: PLC0415
    from reproject.mosaicking import reproject_and_coadd  # noqa: PLC0415

    inputs = []
    for p in paths:
        with fits.open(p, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float32)
            wcs = WCS(hdul[0].header, naxis=2)
        inputs.append((data, wcs))
    shape_out = grid.shape if inputs[0][0].ndim == 2 else (inputs[0][0].shape[0], *grid.shape)
    array, footprint = reproject_and_coadd(
        inputs, grid.wcs, shape_out=shape_out, reproject_function=reproject_interp,
        combine_function="mean", order=_REPROJECT_ORDER[kernel],
    )
    array = np.asarray(array, dtype=np.float32)
    array[np.asarray(footprint) <= 0] = np.nan  # reproject fills no-data with 0
    if array.ndim == 2:
        array = array[None]
    return array, {}


class _InlineExecutor:
    """Stand-in for ThreadPoolExecutor that runs every task in the calling thread.

    cProfile only sees the thread that enabled it; running the coadd's tasks inline makes
    the profile complete (at the cost of the thread-pool overlap, so timings differ).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, *iterables):
        return map(fn, *iterables)

    def submit(self, fn, *args, **kwargs) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


def _profile_skymosaic(paths, grid, args) -> str:
    _coadd.ThreadPoolExecutor = _InlineExecutor  # type: ignore[assignment, misc]
    prof = cProfile.Profile()
    prof.enable()
    _run_skymosaic(paths, grid, kernel=args.kernel, budget=args.budget_mb * _MiB, threads=1)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(args.profile_top)
    stats.sort_stats("tottime").print_stats(args.profile_top)
    return out.getvalue()


def worker(args: argparse.Namespace) -> None:
    """One tool, one process: baseline, ``--repeat`` timed runs, mosaic saved as .npy."""
    if args.worker == "reproject":  # its imports belong to the baseline
        import reproject.mosaicking  # noqa: F401, PLC0415

    workdir = Path(args.workdir)
    grid = pickle.loads((workdir / "grid.pkl").read_bytes())
    paths = _frame_paths(workdir)
    baseline = peak_rss()
    if args.profile:
        emit_result({"profile": _profile_skymosaic(paths, grid, args), "baseline": baseline})
        return
    if args.worker == "skymosaic":
        def fn():
            return _run_skymosaic(paths, grid, kernel=args.kernel,
                                  budget=args.budget_mb * _MiB, threads=args.threads)
    else:
        def fn():
            return _run_reproject(paths, grid, kernel=args.kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITSFixedWarning and the like
        timed = best_of(fn, args.repeat)
    mosaic, info = timed.value
    np.save(workdir / f"mosaic_{args.label}.npy", mosaic)
    emit_result({"times": timed.times, "baseline": baseline, **info})


# -- the orchestrating parent --------------------------------------------------------------


def _parse_frame(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--frame must be WIDTHxHEIGHT, got {text!r}") from err
    if min(w, h) < 16:
        raise argparse.ArgumentTypeError(f"--frame sizes must be >= 16, got {text!r}")
    return h, w


def _prepare(args: argparse.Namespace, workdir: Path):
    """Write the survey and the grid; return (survey, grid)."""
    t0 = time.perf_counter()
    survey = make_survey(
        n_x=args.n_x, n_y=args.n_y, frame_shape=args.frame, channels=args.channels,
        overlap=args.overlap, rotation_deg=args.rotation, jitter_px=args.jitter,
        gain_range=(1.0, 1.0), offset_range=(0.0, 0.0), noise_sigma=args.noise_sigma,
        sip=True, nan_corners=True, seed=args.seed,
    )
    paths = write_survey(survey, workdir / "frames")
    infos = [scan_frame(p) for p in paths]
    # Densely sampled edges: with SIP distortion the corners alone can clip the grid.
    grid = optimal_grid(
        [frame_footprint(i.wcs, i.shape[1:], samples=17) for i in infos],
        pixel_scale_arcsec=survey.pixel_scale_arcsec,
    )
    (workdir / "grid.pkl").write_bytes(pickle.dumps(grid))
    logger.info("survey: %d frames %s, grid %s, prepared in %.1f s", len(paths),
                args.frame, grid.shape, time.perf_counter() - t0)
    return survey, grid


def _worker_args(args: argparse.Namespace, workdir: Path, tool: str, label: str, *,
                 budget_mb: int, threads: int, repeat: int, profile: bool = False) -> list[str]:
    cmd = [
        str(Path(__file__).resolve()), "--worker", tool, "--label", label,
        "--workdir", str(workdir), "--kernel", args.kernel, "--budget-mb", str(budget_mb),
        "--threads", str(threads), "--repeat", str(repeat),
    ]
    if profile:
        cmd += ["--profile", "--profile-top", str(args.profile_top)]
    return cmd


def _accuracy(mosaics: dict[str, np.ndarray], truth: np.ndarray, sigma: float) -> dict:
    """Residual RMS / sigma of every mosaic over the pixels valid in all of them."""
    valid = {k: np.all(np.isfinite(m), axis=0) for k, m in mosaics.items()}
    common = np.logical_and.reduce(list(valid.values()))
    out = {"common_fraction": float(common.mean())}
    for k, m in mosaics.items():
        rms = residual_rms(m, truth, mask=~common)
        out[k] = {"rms": rms, "rms_sigma": rms / sigma, "valid_fraction": coverage_fraction(m)}
    return out


def _robust_rms(x: np.ndarray) -> float:
    x = x[np.isfinite(x)].astype(np.float64)
    return math.sqrt(float(np.median(x * x)) / 0.45493642) if x.size else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-x", type=int, default=4, help="pointings along x (default 4)")
    p.add_argument("--n-y", type=int, default=4, help="pointings along y (default 4)")
    p.add_argument("--frame", type=_parse_frame, default="1024x1024",
                   help="frame size WIDTHxHEIGHT (default 1024x1024)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1)
    p.add_argument("--overlap", type=float, default=0.3)
    p.add_argument("--rotation", type=float, default=3.0, help="max |rotation| (deg)")
    p.add_argument("--jitter", type=float, default=8.0, help="pointing jitter sigma (px)")
    p.add_argument("--noise-sigma", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernel", choices=sorted(_REPROJECT_ORDER), default="bilinear")
    p.add_argument("--repeat", type=int, default=3, help="skymosaic runs; best is reported")
    p.add_argument("--reproject-repeat", type=int, default=1,
                   help="reproject runs (slow: default 1)")
    p.add_argument("--budget-mb", type=int, default=2048,
                   help="skymosaic memory budget, MiB (default 2048 = CoaddOptions default)")
    p.add_argument("--small-budget-mb", type=int, default=256,
                   help="second skymosaic run with this budget (0: skip)")
    p.add_argument("--threads", type=int, default=0, help="skymosaic threads (0 = all cores)")
    p.add_argument("--no-single-thread", action="store_true",
                   help="skip the skymosaic threads=1 run (core-for-core comparison)")
    p.add_argument("--no-reproject", action="store_true", help="skymosaic runs only")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile one skymosaic coadd (tasks run inline) and print it")
    p.add_argument("--profile-top", type=int, default=12)
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the survey and mosaics in this folder (default: temporary)")
    # internal: the measured process
    p.add_argument("--worker", choices=("skymosaic", "reproject"), help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if min(args.repeat, args.reproject_repeat) < 1:
        p.error("--repeat and --reproject-repeat must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        ctx: Any = _Keep(args.keep)
    else:
        ctx = tempfile.TemporaryDirectory(prefix="bench_coadd_")
    with ctx as tmp:
        return _orchestrate(args, Path(tmp))


class _Keep:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> str:
        return str(self.path)

    def __exit__(self, *exc: object) -> None:
        return None


def _orchestrate(args: argparse.Namespace, workdir: Path) -> int:
    machine = machine_info()
    survey, grid = _prepare(args, workdir)
    n_frames = len(survey.frames)
    in_px = n_frames * args.frame[0] * args.frame[1]
    threads = args.threads or machine["usable_cpus"] or 1

    runs: list[tuple[str, str, int, int, int]] = [  # label, tool, budget, threads, repeat
        ("skymosaic", "skymosaic", args.budget_mb, args.threads, args.repeat),
    ]
    if not args.no_single_thread and threads > 1:
        runs.append(("skymosaic-1thread", "skymosaic", args.budget_mb, 1, args.repeat))
    if args.small_budget_mb:
        runs.append((f"skymosaic-{args.small_budget_mb}MiB", "skymosaic", args.small_budget_mb,
                     args.threads, args.repeat))
    if not args.no_reproject:
        runs.append(("reproject", "reproject", 0, 1, args.reproject_repeat))

    results: dict[str, dict] = {}
    for label, tool, budget, thr, rep in runs:
        logger.info("running %s (%d run(s)) ...", label, rep)
        res = run_worker(_worker_args(args, workdir, tool, label, budget_mb=max(budget, 16),
                                      threads=thr, repeat=rep))
        res.update(tool=tool, budget_mb=budget, threads=thr or threads)
        results[label] = res
        logger.info("  %s: best %.2f s of %s", label, min(res["times"]),
                    ", ".join(f"{t:.2f}" for t in res["times"]))

    profile_text = None
    if args.profile:
        logger.info("profiling one skymosaic coadd (inline tasks) ...")
        profile_text = run_worker(_worker_args(args, workdir, "skymosaic", "profile",
                                               budget_mb=args.budget_mb, threads=1, repeat=1,
                                               profile=True))["profile"]

    mosaics = {k: np.load(workdir / f"mosaic_{k}.npy") for k in results}
    truth = survey.truth_image(grid.wcs, grid.shape)
    if truth.shape[0] != next(iter(mosaics.values())).shape[0]:
        truth = survey.truth.render(grid.wcs, grid.shape, channels=args.channels)
    acc = _accuracy(mosaics, truth, args.noise_sigma)
    if "reproject" in mosaics:
        diff = np.abs(mosaics["skymosaic"] - mosaics["reproject"]) / args.noise_sigma
        # The tools differ in which frames count at a pixel next to a frame's valid-region
        # edge (kernel-support rule); away from those edges only the resampling differs.
        edges = frame_border_mask(survey.frames, grid.wcs, grid.shape, width=1)
        agreement = []
        for d in (diff[np.isfinite(diff)], diff[np.isfinite(diff) & ~edges[None]]):
            agreement += [_robust_rms(d), math.sqrt(float(np.mean(d.astype(np.float64) ** 2))),
                          float(np.percentile(d, 99.9)), float(d.max())]
    else:
        agreement = None

    rows = []
    for label, res in results.items():
        best = min(res["times"])
        budget = res["budget_mb"] * _MiB if res["tool"] == "skymosaic" else None
        peak, base = res["peak_rss"], res["baseline"]
        rows.append({
            "run": label,
            "threads": res["threads"],
            "best s": f"{best:.2f}",
            "median s": f"{sorted(res['times'])[len(res['times']) // 2]:.2f}",
            "runs": len(res["times"]),
            "Mpx/s in": f"{in_px / best / 1e6:.1f}",
            "peak RSS": format_bytes(peak),
            "baseline": format_bytes(base),
            "peak-base": format_bytes(peak - base),
            "anon peak": format_bytes(res["poll_peak_anon"]),
            "budget": format_bytes(budget) if budget else "-",
            "in budget": ("yes" if peak - base <= budget else "NO") if budget else "-",
            "blocks": res.get("n_blocks", "-"),
            "rms/sigma": f"{acc[label]['rms_sigma']:.4f}",
            "valid px": f"{acc[label]['valid_fraction']:.4f}",
        })

    print()
    print(f"## bench_coadd (skymosaic {skymosaic.__version__})")
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"survey: {n_frames} frames of {args.frame[1]}x{args.frame[0]} x {args.channels} ch "
          f"(SIP, rotation <= {args.rotation} deg, jitter {args.jitter} px, NaN corners, "
          f"noise sigma {args.noise_sigma}); output grid {grid.shape[1]}x{grid.shape[0]} "
          f"= {grid.shape[0] * grid.shape[1] / 1e6:.1f} Mpx; kernel {args.kernel}")
    print(f"accuracy over the {acc['common_fraction']:.4f} of output pixels valid in every "
          "mosaic")
    print()
    print(format_table(rows))
    if "reproject" in results:
        rp, sm = results["reproject"], results["skymosaic"]
        t_ratio = min(rp["times"]) / min(sm["times"])
        m_ratio = (rp["peak_rss"] - rp["baseline"]) / max(1, sm["peak_rss"] - sm["baseline"])
        m_ratio_abs = rp["peak_rss"] / sm["peak_rss"]
        a_ratio = acc["reproject"]["rms"] / acc["skymosaic"]["rms"]
        print()
        print(f"time ratio reproject/skymosaic: {t_ratio:.1f}x"
              + (f" (core for core, vs 1 thread: "
                 f"{min(rp['times']) / min(results['skymosaic-1thread']['times']):.1f}x)"
                 if "skymosaic-1thread" in results else ""))
        print(f"peak-memory ratio reproject/skymosaic: {m_ratio_abs:.2f}x total RSS, "
              f"{m_ratio:.2f}x above baseline")
        print(f"accuracy ratio rms(reproject)/rms(skymosaic): {a_ratio:.4f} "
              "(>= 1: skymosaic at least as accurate)")
        print("|skymosaic - reproject| / sigma over common pixels: robust RMS {:.2e}, RMS {:.2e},"
              " p99.9 {:.2e}, max {:.3f}; beyond 1 px of any frame's valid-region edge: "
              "robust RMS {:.2e}, RMS {:.2e}, p99.9 {:.2e}, max {:.3f}".format(*agreement))
        print(f"target (>= 10x faster, accuracy ratio >= 1): "
              f"{'MET' if t_ratio >= 10 and a_ratio >= 0.999 else 'NOT MET'}")
    if profile_text:
        print()
        print("cProfile of one skymosaic coadd (threads=1, tasks inline):")
        print(profile_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
