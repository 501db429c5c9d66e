"""Benchmark of Phase 5 photometry against reproject's ``match_background=True``.

A synthetic survey with known per-frame, per-channel gains and offsets
(`skymosaic.synth.make_survey`: gains U(0.8, 1.25), offsets U(0, 60), noise 5, sky 100
with per-frame gradients, rotations, jitter, NaN corners) of a star-rich truth
(`make_truth_sky`, ``--stars-per-deg2``) is written as FITS files to a temporary folder.

* **skymosaic**: ``run_pipeline([frames], out, config)`` in classic direct mode
  (``stack.enabled = false``: every frame is a coadd input), ``photometry.enabled = true``
  (the default: pairwise fits, global gain/offset solve, background matching), bilinear
  kernel, inverse-variance weights (the default ``coadd.weighting = "noise"``),
  ``quality.enabled = false`` (all references use the same frames), no preview PNG and no
  diagnostics PNG. The timed region is the whole pipeline: header scan, photometry,
  coadd and writing ``mosaic.fits``.
* **reproject**: ``reproject_and_coadd([(data, wcs) ...], wcs_out, shape_out=...,
  reproject_function=reproject_interp, order="bilinear", combine_function="mean",
  match_background=True)``, one call per colour channel (so that each channel gets its
  own offsets, as skymosaic solves them), on the same output WCS and shape, read from
  skymosaic's ``mosaic.fits``. The timed region includes reading the frames and writing
  the mosaic as FITS. ``match_background`` solves one additive correction per frame
  (median pixel differences over each overlap, solved by stochastic gradient descent,
  seeded here with ``np.random.seed(--seed)``); it has no gain term.

Reference rows: **uncorrected** (skymosaic, ``photometry.enabled = false``, raw frames);
**true params** (skymosaic, ``photometry.enabled = false``, frames corrected by this
script with the true parameters, ``(data - offset) / gain`` per channel: the best any
per-frame gain and offset can do); **reproject true params** (reproject,
``match_background=False``, the same corrected frames). The two "true params" rows are
each tool's own floor: the tools' coadds differ in weighting (skymosaic inverse-variance,
reproject a plain mean) and in their rule at frame edges, which moves the seam score by a
few hundredths with no photometric error at all.

Metrics, against the truth rendered on the output grid:

* ``seam``: `skymosaic.synth.seam_score` with `frame_border_mask` (width 2 px): mean
  gradient of the smoothed residual along frame borders (``grad border``, ADU/px) over its
  mean elsewhere (``grad interior``); ~1 = no seams. Both parts are reported: the ratio
  is not monotonic in photometric error, because uncorrected gains leave star and nebula
  residuals everywhere, which raises the denominator and can bring the ratio below that
  of a perfect correction; ``grad border`` alone (lower is better) has no such effect.
* ``seam masked``: the same score with the sources masked (`_source_mask`: truth above
  its median by more than ``--source-sigma`` noise sigmas, grown by 3 px) in the fit,
  along the borders and elsewhere. Star residuals from gain errors then no longer enter
  the denominator, so the ratio measures steps of the sky across frame borders only:
  the seam as a user sees it in the background.
* ``flux scatter``: `skymosaic.synth.star_flux_scatter`: sep ``sum_circle`` aperture
  photometry (radius 1.5 FWHM, local annulus) at the truth positions of isolated stars
  with true flux >= ``--min-flux``, in the mosaic and in the truth rendered on the same
  grid; ratio divided by its median (the global scale); robust scatter 1.4826 * MAD, in
  percent, averaged over channels.
* ``rms/sigma``: robust RMS of ``mosaic - (a * truth + b)`` over the valid pixels
  (`residual_rms`), in units of the input noise.
* wall time (best of ``--repeat``), and peak memory: each run is a fresh subprocess;
  ``VmHWM`` (exact) minus the baseline after imports, and the polled anonymous-RSS peak
  (see ``benchmarks/_common.py``).

Examples
--------
Default (4 x 4 pointings of 256 x 256 mono frames)::

    python benchmarks/bench_phase5.py

Colour::

    python benchmarks/bench_phase5.py --channels 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

import skymosaic
from skymosaic.synth import (
    Survey,
    coverage_fraction,
    frame_border_mask,
    make_survey,
    make_truth_sky,
    residual_map,
    residual_rms,
    seam_score,
    star_flux_scatter,
    write_survey,
)
from skymosaic.synth._metrics import _grad_mag, _nan_smooth

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

logger = logging.getLogger("bench_phase5")

SKY_LEVEL = 100.0
GAIN_RANGE = (0.8, 1.25)
OFFSET_RANGE = (0.0, 60.0)
OVERLAP = 0.3
JITTER_PX = 4.0  # make_survey's default

#: label -> (tool, frames folder, correction on: skymosaic photometry.enabled or reproject
#: match_background); the first two are the comparison, the others references.
RUNS = {
    "skymosaic": ("skymosaic", "frames", True),
    "reproject": ("reproject", "frames", True),
    "uncorrected": ("skymosaic", "frames", False),
    "true params": ("skymosaic", "frames_true", False),
    "reproject true params": ("reproject", "frames_true", False),
}


# -- the measured runs (in worker subprocesses) -------------------------------------------


def _skymosaic_config(photometry: bool, threads: int):
    from skymosaic.config import load_config  # noqa: PLC0415

    return load_config(None, {
        "stack.enabled": False, "photometry.enabled": photometry, "quality.enabled": False,
        "output.preview": False, "photometry.diagnostics": False, "run.threads": threads,
        "run.log_level": "WARNING",
    })


def _run_skymosaic(frames: Path, out: Path, *, photometry: bool, threads: int) -> dict:
    from skymosaic.pipeline import run_pipeline  # noqa: PLC0415

    shutil.rmtree(out, ignore_errors=True)  # a fresh run every time: no resume
    result = run_pipeline([frames], out, _skymosaic_config(photometry, threads))
    ph = result.report.get("photometry", {})
    gains = {k: v["gain"] for k, v in ph.get("inputs", {}).items()} if photometry else {}
    return {"mosaic": str(result.mosaic_path), "mode": result.report["mode"],
            "photometry_status": ph.get("status", "off"), "gains": gains}


def _run_reproject(frames: Path, grid_from: Path, out: Path, *, match: bool) -> dict:
    from reproject import reproject_interp  # noqa: PLC0415
    from reproject.mosaicking import reproject_and_coadd  # noqa: PLC0415

    with fits.open(grid_from) as hdul:
        header = hdul[0].header
        wcs_out = WCS(header).celestial
        shape_out = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    inputs = []
    for p in sorted(frames.glob("*.fits")):
        with fits.open(p, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float32)
            wcs = WCS(hdul[0].header, naxis=2)
        inputs.append((data if data.ndim == 3 else data[None], wcs))
    planes = []
    for c in range(inputs[0][0].shape[0]):
        array, footprint = reproject_and_coadd(
            [(d[c], w) for d, w in inputs], wcs_out, shape_out=shape_out,
            reproject_function=reproject_interp, order="bilinear", combine_function="mean",
            match_background=match,
        )
        array = np.asarray(array, dtype=np.float32)
        array[np.asarray(footprint) <= 0] = np.nan  # reproject fills no-data with 0
        planes.append(array)
    mosaic = np.stack(planes)
    fits.PrimaryHDU(data=mosaic if mosaic.shape[0] > 1 else mosaic[0],
                    header=wcs_out.to_header()).writeto(out, overwrite=True)
    return {"mosaic": str(out)}


def worker(args: argparse.Namespace) -> None:
    """One run, one process: baseline, ``--repeat`` timed runs, result as JSON."""
    tool, folder, correct = RUNS[args.worker]
    if tool == "reproject":  # its imports belong to the baseline
        import reproject.mosaicking  # noqa: F401, PLC0415
    else:
        import skymosaic.pipeline  # noqa: F401, PLC0415
    workdir = Path(args.workdir)
    slug = args.worker.replace(" ", "_")
    baseline = peak_rss()
    if tool == "skymosaic":
        def fn():
            return _run_skymosaic(workdir / folder, workdir / f"out_{slug}",
                                  photometry=correct, threads=args.threads)
    else:
        def fn():
            # reproject's solve_corrections_sgd shuffles with the legacy global state
            np.random.seed(args.seed)  # noqa: NPY002
            return _run_reproject(workdir / folder, workdir / "out_skymosaic" / "mosaic.fits",
                                  workdir / f"mosaic_{slug}.fits", match=correct)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITSFixedWarning and the like
        timed = best_of(fn, args.repeat)
    emit_result({"times": timed.times, "baseline": baseline, **timed.value})


# -- the orchestrating parent --------------------------------------------------------------


def _truth_size_deg(args: argparse.Namespace) -> float:
    """Side of a square truth that holds every frame (make_survey's own rule, + 5 %)."""
    scale = 2.0
    step = args.size * scale * (1.0 - OVERLAP)
    diag = math.hypot(args.size, args.size) * scale
    span = (max(args.n_x, args.n_y) - 1) * step + diag + 8 * JITTER_PX * scale
    return span / 3600.0 * 1.05


def _corrected_with_truth(survey: Survey) -> Survey:
    """Invert the frame model with the true parameters: ``(data - offset) / gain``."""
    frames = [dataclasses.replace(
        f, data=((f.data - f.offset[:, None, None]) / f.gain[:, None, None]).astype(np.float32))
        for f in survey.frames]
    return dataclasses.replace(survey, frames=frames)


def _prepare(args: argparse.Namespace, workdir: Path) -> Survey:
    t0 = time.perf_counter()
    side = _truth_size_deg(args)
    truth = make_truth_sky(center=(150.0, 2.0), size_deg=(side, side), channels=args.channels,
                           n_stars=round(args.stars_per_deg2 * side * side),
                           seed=args.seed + 1000)
    survey = make_survey(
        n_x=args.n_x, n_y=args.n_y, frame_shape=(args.size, args.size), channels=args.channels,
        overlap=OVERLAP, jitter_px=JITTER_PX, gain_range=GAIN_RANGE, offset_range=OFFSET_RANGE,
        noise_sigma=args.noise_sigma, sky_level=SKY_LEVEL, seed=args.seed, truth=truth,
    )
    write_survey(survey, workdir / "frames")
    write_survey(_corrected_with_truth(survey), workdir / "frames_true")
    logger.info("survey: %d frames of %dx%d x %d ch, truth %.3f deg with %d stars; %.1f s",
                len(survey.frames), args.size, args.size, args.channels, side,
                truth.n_stars, time.perf_counter() - t0)
    return survey


def _read(path: str) -> tuple[np.ndarray, WCS]:
    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
        wcs = WCS(hdul[0].header).celestial
    return (data if data.ndim == 3 else data[None]), wcs


def _seam_parts(data: np.ndarray, truth: np.ndarray, borders: np.ndarray) -> tuple[float, float]:
    """Numerator and denominator of `seam_score` (its own steps, defaults smooth=2, clip 99.5).

    The score is a ratio: residuals that a tool leaves everywhere (stars scaled by an
    uncorrected gain) raise the denominator and *lower* the score. The numerator alone,
    the mean gradient of the smoothed residual along frame borders, is reported next to it.
    """
    res = residual_map(data, truth)
    grads = np.stack([_grad_mag(_nan_smooth(r, 2.0)) for r in res])
    finite = np.isfinite(grads)
    np.minimum(grads, np.percentile(grads[finite], 99.5), out=grads, where=finite)
    return (float(grads[finite & borders[None]].mean()),
            float(grads[finite & ~borders[None]].mean()))


def _source_mask(truth: np.ndarray, noise: float, n_sigma: float) -> np.ndarray:
    """Pixels of the truth's sources (any channel): above its median by ``n_sigma * noise``,
    grown 3 px."""
    excess = truth - np.nanmedian(truth, axis=(1, 2), keepdims=True)
    return ndimage.binary_dilation(np.any(excess > n_sigma * noise, axis=0), iterations=3)


def _quality(survey: Survey, data: np.ndarray, wcs: WCS, args: argparse.Namespace) -> dict:
    shape = data.shape[1:]
    truth = survey.truth.render(wcs, shape, channels=data.shape[0])
    borders = frame_border_mask(survey.frames, wcs, shape, width=2)
    scatter = []
    for c in range(data.shape[0]):
        try:
            scatter.append(star_flux_scatter(data, wcs, survey.truth, channel=c,
                                             min_flux=args.min_flux, truth_image=truth))
        except ValueError as err:  # too few isolated stars (a small survey)
            logger.warning("star-flux scatter not measured: %s", err)
            scatter.append(math.nan)
    seam = seam_score(data, truth, borders)
    border, interior = _seam_parts(data, truth, borders)
    if not math.isclose(border / interior, seam, rel_tol=1e-6):
        raise RuntimeError(f"_seam_parts out of step with seam_score: {border / interior} "
                           f"!= {seam}")
    seam_masked = seam_score(data, truth, borders,
                             mask=_source_mask(truth, args.noise_sigma, args.source_sigma))
    return {"seam": seam, "seam_masked": seam_masked, "grad_border": border,
            "grad_interior": interior,
            "flux_scatter": float(np.mean(scatter)), "flux_scatter_ch": scatter,
            "rms_sigma": residual_rms(data, truth) / args.noise_sigma,
            "valid": coverage_fraction(data)}


def _gain_error(survey: Survey, gains: dict) -> float:
    """Largest |relative gain error| of the solve, after removing the common factor."""
    solved = np.array([gains[f"frame_{k:04d}.fits"] for k in range(len(survey.frames))])
    true = np.array([f.gain for f in survey.frames])
    product = solved * true  # equal for every frame if the solve were exact
    return float(np.max(np.abs(product / np.exp(np.mean(np.log(product), axis=0)) - 1)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-x", type=int, default=4, help="pointings along x (default 4)")
    p.add_argument("--n-y", type=int, default=4, help="pointings along y (default 4)")
    p.add_argument("--size", type=int, default=256, help="frame side in px (default 256)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-sigma", type=float, default=5.0)
    p.add_argument("--stars-per-deg2", type=float, default=22000.0,
                   help="star density of the truth (make_truth_sky's default is 3000)")
    p.add_argument("--min-flux", type=float, default=3000.0,
                   help="faintest true star flux (ADU) in the flux scatter (default 3000: "
                        "aperture noise ~1%%)")
    p.add_argument("--source-sigma", type=float, default=0.5,
                   help="seam masked: truth above its median by this many noise sigmas is a source")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per tool; best reported")
    p.add_argument("--threads", type=int, default=0, help="skymosaic threads (0 = all cores)")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the reference rows (uncorrected, true params)")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the survey and mosaics in this folder (default: temporary)")
    p.add_argument("--worker", choices=sorted(RUNS), help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.repeat < 1 or min(args.n_x, args.n_y) < 1 or args.size < 32:
        p.error("need --repeat >= 1, --n-x/--n-y >= 1 and --size >= 32")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return _orchestrate(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="bench_phase5_") as tmp:
        return _orchestrate(args, Path(tmp))


def _orchestrate(args: argparse.Namespace, workdir: Path) -> int:
    machine = machine_info()
    survey = _prepare(args, workdir)
    labels = list(RUNS) if not args.no_reference else ["skymosaic", "reproject"]
    results: dict[str, dict] = {}
    for label in labels:  # skymosaic first: reproject reads its output grid
        logger.info("running %s (%d run(s)) ...", label, args.repeat)
        res = run_worker([str(Path(__file__).resolve()), "--worker", label,
                          "--workdir", str(workdir), "--repeat", str(args.repeat),
                          "--threads", str(args.threads), "--seed", str(args.seed)])
        data, wcs = _read(res["mosaic"])
        res["quality"] = _quality(survey, data, wcs, args)
        res["shape"] = data.shape
        results[label] = res
        logger.info("  %s: best %.2f s; %s", label, min(res["times"]),
                    json.dumps({k: v for k, v in res["quality"].items() if k != "flux_scatter_ch"}))
    _report(args, survey, machine, results)
    return 0


def _report(args, survey: Survey, machine: dict, results: dict[str, dict]) -> None:
    rows = []
    for label, res in results.items():
        q, times = res["quality"], sorted(res["times"])
        rows.append({
            "run": label,
            "seam": f"{q['seam']:.3f}",
            "seam masked": f"{q['seam_masked']:.3f}",
            "grad border": f"{q['grad_border']:.4f}",
            "grad interior": f"{q['grad_interior']:.4f}",
            "flux scatter %": f"{100 * q['flux_scatter']:.2f}",
            "rms/sigma": f"{q['rms_sigma']:.3f}",
            "best s": f"{times[0]:.2f}",
            "median s": f"{times[len(times) // 2]:.2f}",
            "peak RSS": format_bytes(res["peak_rss"]),
            "peak-base": format_bytes(res["peak_rss"] - res["baseline"]),
            "anon peak": format_bytes(res["poll_peak_anon"]),
            "valid px": f"{q['valid']:.4f}",
        })
    shape = results["skymosaic"]["shape"]
    print()
    print(f"## bench_phase5 (skymosaic {skymosaic.__version__})")
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"survey: {len(survey.frames)} frames ({args.n_x}x{args.n_y}) of {args.size}x{args.size}"
          f" x {args.channels} ch, gains U{GAIN_RANGE}, offsets U{OFFSET_RANGE}, noise "
          f"{args.noise_sigma}, {args.stars_per_deg2:.0f} stars/deg2, seed {args.seed}; output "
          f"{shape[2]}x{shape[1]}; flux scatter over stars >= {args.min_flux:.0f} ADU")
    print()
    print(format_table(rows))
    sm, rp = results["skymosaic"], results["reproject"]
    qs, qr = sm["quality"], rp["quality"]
    print()
    print("ratios reproject / skymosaic (> 1 favours skymosaic):")
    print(f"- seam: {qr['seam'] / qs['seam']:.2f}x ({qr['seam']:.3f} vs {qs['seam']:.3f}; "
          f"seam - 1: {(qr['seam'] - 1) / max(qs['seam'] - 1, 1e-9):.1f}x)"
          if qs["seam"] > 1 else
          f"- seam: {qr['seam'] / qs['seam']:.2f}x ({qr['seam']:.3f} vs {qs['seam']:.3f})")
    print(f"- seam-score numerator (mean residual gradient along frame borders): "
          f"{qr['grad_border'] / qs['grad_border']:.2f}x ({qr['grad_border']:.4f} vs "
          f"{qs['grad_border']:.4f} ADU/px); denominator (elsewhere): "
          f"{qr['grad_interior'] / qs['grad_interior']:.2f}x")
    print(f"- star-flux scatter: {qr['flux_scatter'] / qs['flux_scatter']:.2f}x "
          f"(per channel, skymosaic: "
          + ", ".join(f"{100 * v:.2f}%" for v in qs["flux_scatter_ch"]) + "; reproject: "
          + ", ".join(f"{100 * v:.2f}%" for v in qr["flux_scatter_ch"]) + ")")
    print(f"- time: {min(rp['times']) / min(sm['times']):.2f}x")
    print(f"- peak memory above baseline: "
          f"{(rp['peak_rss'] - rp['baseline']) / max(1, sm['peak_rss'] - sm['baseline']):.2f}x")
    if sm.get("gains"):
        print(f"skymosaic largest relative gain error (common factor removed): "
              f"{100 * _gain_error(survey, sm['gains']):.2f}%")
    for name, key in (("seam score", "seam"), ("seam score, sources masked", "seam_masked"),
                      ("border gradient", "grad_border"),
                      ("star-flux scatter", "flux_scatter")):
        verdict = "better" if qs[key] < qr[key] else "NOT better"
        print(f"verdict, {name}: skymosaic is {verdict} than reproject "
              f"({qs[key]:.4g} vs {qr[key]:.4g}; lower is better)")
    if "true params" in results:
        floor = results["true params"]["quality"]["seam"]
        print(f"seam floor (skymosaic coadd of frames corrected with the true parameters): "
              f"{floor:.3f}; skymosaic - floor {qs['seam'] - floor:+.3f}")
    if "reproject true params" in results:
        floor = results["reproject true params"]["quality"]["seam"]
        print(f"seam floor (reproject coadd of frames corrected with the true parameters): "
              f"{floor:.3f}; reproject - floor {qr['seam'] - floor:+.3f}")

if __name__ == "__main__":
    raise SystemExit(main())
