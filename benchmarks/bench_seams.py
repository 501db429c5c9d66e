"""Seams and large-scale sky on a hard synthetic night: skymosaic, reproject, SWarp, Montage.

A synthetic survey (`skymosaic.synth.make_survey`) of Seestar-sized frames (default 6 x 5
pointings of 1080 x 1920 px, H x W, 20 % overlap, 2"/px) with per-frame gains U(0.8, 1.25)
and offsets U(100, 400) (per channel), noise 5 ADU, sky 100 ADU, and a per-frame
light-pollution gradient fixed to the sensor: a plane of ``--sky-gradient`` peak-to-peak
per frame width (default 0.3: +-15 ADU at the frame edge along its direction) plus a
random quadratic term of ``--sky-curvature`` (default 0.1: 10 ADU at the corners and edge
midpoints), about 20 ADU at the frame edge in all. The truth (`make_truth_sky`) gets a
multi-scale nebula (`_multiscale_nebula`: structure from 30 px to the whole field, peak
``--nebula-amplitude`` = 30 ADU), so that a tool which subtracts a per-frame background
mesh loses real sky. The frames are written as FITS to a temporary folder and every
tool runs, in a fresh worker subprocess (time and peak memory, `benchmarks/_common.py`),
on the same frames and the same output grid (skymosaic's, read from its ``mosaic.fits``):

* **skymosaic**: ``run_pipeline`` in classic direct mode (``stack.enabled = false``),
  default photometry (per-input quadratic sky surfaces, ``photometry.sky_surface``),
  default (bilinear) kernel, ``quality.enabled = false``, no preview or diagnostics PNG.
  Its phase times (run.json ``timings_s``, and the photometry's own) are reported.
* **skymosaic sky_surface=none**: the same with one offset per input and background
  matching (the model before per-input surfaces).
* **reproject**: ``reproject_and_coadd(..., reproject_interp, order="bilinear",
  match_background=True)`` per channel (`bench_phase5._run_reproject`).
* **SWarp** (Debian ``swarp``): a config from ``SWarp -d`` with ``SUBTRACT_BACK Y``
  (``BACK_SIZE 128``), ``COMBINE_TYPE WEIGHTED``, ``RESAMPLING_TYPE BILINEAR``, weight maps
  that blank the NaN corners, and a ``.head`` file with skymosaic's output WCS next to
  the output image, so it resamples onto the same grid; one run per channel.
* **Montage** (Debian ``montage``): ``mImgtbl``, ``mProjExec`` onto a ``template.hdr`` of
  skymosaic's WCS, ``mOverlaps``, ``mDiffExec``, ``mFitExec``, ``mBgModel`` (one plane per
  image), ``mBgExec``, ``mAdd -e`` (mean, the template's exact size); one run per channel.

Reference rows, all skymosaic with ``photometry.enabled = false`` on frames corrected by
this script: **perfect** (the true model inverted, the constant sky level kept:
``(data - offset) / gain - gradient``),
**true gains, gradients in** (``(data - offset) / gain``: the steps left are the
gradients), and **floor** (the degeneracy floor of the smallest-surfaces solve, see
`_floor_field`: each frame's true gradient replaced by the global quadratic field that
the overlaps cannot see and the solve leaves in the mosaic).

Metrics against the truth rendered on the output grid (`skymosaic.synth`):

* ``border step`` / ``control`` / ``ratio``: `border_step_ratio` (median residual in 8 px
  bands either side of each input's footprint edge, per 64 px of edge; control lines
  24 px inside; residual after one global affine fit; stars masked). 1 = seamless.
* ``LS``: `large_scale_residual` (RMS of 32 x 32 px block medians of the residual, in
  units of the truth's robust sigma); ``LS-quad``: the same after removing the
  best-fitting global quadratic surface (what no overlap can determine).
* ``flux scatter``: `star_flux_scatter` (robust scatter of star aperture fluxes against
  the truth, channels averaged).
* wall time of the tool alone (reading the frames and writing the mosaic included), and
  peak memory: the larger of the worker's ``VmHWM`` and the polled resident memory of its
  process tree (SWarp and Montage run as child processes).

Examples
--------
Quick (3 x 2 frames of 540 x 960)::

    python benchmarks/bench_seams.py --small

Default survey, colour, JSON beside the table::

    python benchmarks/bench_seams.py --channels 3 --json seams.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
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
    TruthSky,
    border_step_ratio,
    large_scale_residual,
    make_survey,
    make_truth_sky,
    star_color_scatter,
    star_flux_scatter,
    write_survey,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_result, format_bytes, format_table, machine_info, run_worker
from bench_phase5 import _read, _run_reproject

logger = logging.getLogger("bench_seams")

GAIN_RANGE = (0.8, 1.25)
OFFSET_RANGE = (100.0, 400.0)
PIXEL_SCALE = 2.0
JITTER_PX = 4.0  # make_survey's default
NEBULA_SCALES_PX = (30.0, 100.0, 300.0, 1000.0)  # plus one of the whole field

#: label -> (tool, frames folder, skymosaic config overrides)
RUNS: dict[str, tuple[str, str, dict]] = {
    "skymosaic": ("skymosaic", "frames", {}),
    "skymosaic sky_surface=none": ("skymosaic", "frames", {"photometry.sky_surface": "none"}),
    "reproject match_background": ("reproject", "frames", {}),
    "SWarp SUBTRACT_BACK": ("swarp", "frames", {}),
    "Montage mBgModel": ("montage", "frames", {}),
    "perfect (true model)": ("skymosaic", "frames_perfect", {"photometry.enabled": False}),
    "true gains, gradients in": ("skymosaic", "frames_true", {"photometry.enabled": False}),
    "floor (smallest surfaces)": ("skymosaic", "frames_floor", {"photometry.enabled": False}),
}
#: external programs each tool needs, and how to get them
NEEDS = {"swarp": (["SWarp"], "apt-get install swarp"),
         "montage": (["mImgtbl", "mProjExec", "mOverlaps", "mDiffExec", "mFitExec", "mBgModel",
                      "mBgExec", "mAdd"], "apt-get install montage")}


# -- the measured runs (in worker subprocesses) -------------------------------------------


def _run_skymosaic(frames: Path, out: Path, overrides: dict, threads: int, mode: str) -> dict:
    from skymosaic.config import load_config  # noqa: PLC0415
    from skymosaic.pipeline import run_pipeline  # noqa: PLC0415

    shutil.rmtree(out, ignore_errors=True)  # a fresh run: no resume
    settings = {"quality.enabled": False, "output.preview": False, "photometry.diagnostics": False,
                "run.threads": threads, "run.log_level": "WARNING"}
    if mode == "grid":
        settings["grid.plan"] = str(_write_plan(frames, out.parent / f"plan_{out.name}.csv"))
        if overrides.get("photometry.enabled") is False:  # a reference row: frames as given
            settings["stack.normalization"] = "none"
    else:
        settings["stack.enabled"] = False
    config = load_config(None, {**settings, **overrides})
    result = run_pipeline([frames], out, config)
    ph = result.report.get("photometry", {})
    if mode == "grid":  # the tiles' solve, one filter
        grid = next(iter(result.report.get("grid", {}).values()), {})
        ph = {**grid.get("photometry", {}), "timings_s": grid.get("timings", {})}
    return {"mosaic": str(result.mosaic_path), "phases_s": result.report.get("timings_s", {}),
            "photometry_s": ph.get("timings_s", {}), "photometry_status": ph.get("status", "off"),
            "sky_surface": ph.get("sky_surface")}


def _write_plan(frames: Path, path: Path) -> Path:
    """A ``stack_plan.csv`` of every frame in ``frames`` (grid mode), outside that folder so
    that a classic run of the same frames finds no plan."""
    from skymosaic.io.stack_plan import PlanRow, write_stack_plan  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [PlanRow(path=f.resolve()) for f in sorted(frames.glob("*.fits"))]
    return write_stack_plan(rows, path)


def _channel_dirs(frames: Path, work: Path, *, weights: bool) -> list[Path]:
    """Per-channel folders of 2-D frames (SWarp and Montage read planes only).

    With ``weights`` (SWarp): NaN pixels become 0 in the data and 0 in a
    ``.weight.fits`` map beside each frame (1 elsewhere).
    """
    paths = sorted(frames.glob("*.fits"))
    with fits.open(paths[0]) as hdul:
        channels = 1 if hdul[0].data.ndim == 2 else hdul[0].data.shape[0]
    if channels == 1 and not weights:
        return [frames]
    dirs = [work / f"c{c}" for c in range(channels)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    for p in paths:
        with fits.open(p, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float32)
            hdr = WCS(hdul[0].header, naxis=2).to_header(relax=True)
        for c, d in enumerate(dirs):
            plane = data if data.ndim == 2 else data[c]
            if weights:
                valid = np.isfinite(plane)
                fits.PrimaryHDU(np.where(valid, plane, 0.0).astype(np.float32), hdr).writeto(
                    d / p.name, overwrite=True)
                fits.PrimaryHDU(valid.astype(np.float32), hdr).writeto(
                    d / (p.stem + ".weight.fits"), overwrite=True)
            else:
                fits.PrimaryHDU(plane, hdr).writeto(d / p.name, overwrite=True)
    return dirs


def _sh(cmd: list[str], cwd: Path) -> str:
    """Run one external command; raise with its output when it fails or reports an error."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or 'stat="ERROR"' in out:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-2000:]}")
    return out


def _swarp_config(path: Path, overrides: dict[str, str]) -> None:
    """``SWarp -d`` with ``overrides`` applied (key value lines)."""
    text = subprocess.run(["SWarp", "-d"], capture_output=True, text=True, check=True).stdout
    lines, seen = [], set()
    for line in text.splitlines():
        key = line.split()[0] if line.strip() and not line.startswith("#") else None
        if key in overrides:
            seen.add(key)
            lines.append(f"{key:<22} {overrides[key]}")
        else:
            lines.append(line)
    lines += [f"{k:<22} {v}" for k, v in overrides.items() if k not in seen]
    path.write_text("\n".join(lines) + "\n")


def _stack_planes(planes: list[np.ndarray], header: fits.Header, out: Path) -> None:
    mosaic = np.stack([np.asarray(p, dtype=np.float32) for p in planes])
    fits.PrimaryHDU(mosaic if mosaic.shape[0] > 1 else mosaic[0], header).writeto(
        out, overwrite=True)


def _run_swarp(frames: Path, work: Path, grid: Path, out: Path, threads: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dirs = _channel_dirs(frames, work, weights=True)
    header = fits.Header.fromtextfile(str(grid))
    t0 = time.perf_counter()
    planes = []
    for c, d in enumerate(dirs):
        name = work / f"coadd_{c}.fits"
        (work / f"coadd_{c}.head").write_text(header.tostring(sep="\n", endcard=True,
                                                              padding=False) + "\n")
        conf = work / "bench.swarp"
        _swarp_config(conf, {
            "IMAGEOUT_NAME": str(name), "WEIGHTOUT_NAME": str(work / f"coadd_{c}.weight.fits"),
            "WEIGHT_TYPE": "MAP_WEIGHT", "WEIGHT_SUFFIX": ".weight.fits",
            "COMBINE_TYPE": "WEIGHTED", "RESAMPLING_TYPE": "BILINEAR", "SUBTRACT_BACK": "Y",
            "BACK_SIZE": "128", "FSCALASTRO_TYPE": "NONE", "BLANK_BADPIXELS": "Y",
            "RESAMPLE_DIR": str(work), "VMEM_DIR": str(work), "MEM_MAX": "2048",
            "COMBINE_BUFSIZE": "1024", "NTHREADS": str(threads), "WRITE_XML": "N",
            "VERBOSE_TYPE": "QUIET", "COPY_KEYWORDS": "OBJECT",
        })
        images = [str(p) for p in sorted(d.glob("*.fits")) if not p.name.endswith(".weight.fits")]
        _sh(["SWarp", *images, "-c", str(conf)], cwd=work)
        with fits.open(name) as hdul, fits.open(work / f"coadd_{c}.weight.fits") as whdul:
            plane = np.asarray(hdul[0].data, dtype=np.float32)
            # SWarp writes 0, not NaN, where no input lands (BLANK_BADPIXELS or not)
            plane[~(np.asarray(whdul[0].data) > 0)] = np.nan
            planes.append(plane)
        for p in work.glob("*.resamp*.fits"):
            p.unlink()
    _stack_planes(planes, header, out)
    return {"mosaic": str(out), "tool_s": time.perf_counter() - t0}


def _run_montage(frames: Path, work: Path, grid: Path, out: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dirs = _channel_dirs(frames, work / "raw", weights=False)
    header = fits.Header.fromtextfile(str(grid))
    template = work / "template.hdr"
    template.write_text(header.tostring(sep="\n", endcard=True, padding=False) + "\n")
    t0 = time.perf_counter()
    planes = []
    for c, raw in enumerate(dirs):
        w = work / f"m{c}"
        for sub in ("proj", "diff", "corr"):
            (w / sub).mkdir(parents=True)
        t = str(template)
        _sh(["mImgtbl", str(raw), "images.tbl"], cwd=w)
        _sh(["mProjExec", "-p", str(raw), "images.tbl", t, "proj", "stats.tbl"], cwd=w)
        _sh(["mImgtbl", "proj", "pimages.tbl"], cwd=w)
        _sh(["mOverlaps", "pimages.tbl", "diffs.tbl"], cwd=w)
        _sh(["mDiffExec", "-p", "proj", "diffs.tbl", t, "diff"], cwd=w)
        _sh(["mFitExec", "diffs.tbl", "fits.tbl", "diff"], cwd=w)
        _sh(["mBgModel", "pimages.tbl", "fits.tbl", "corrections.tbl"], cwd=w)
        _sh(["mBgExec", "-p", "proj", "pimages.tbl", "corrections.tbl", "corr"], cwd=w)
        _sh(["mAdd", "-e", "-p", "corr", "pimages.tbl", t, "mosaic.fits"], cwd=w)
        with fits.open(w / "mosaic.fits") as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float32)
        if data.shape != (header["NAXIS2"], header["NAXIS1"]):
            raise RuntimeError(f"mAdd wrote {data.shape}, template is "
                               f"{(header['NAXIS2'], header['NAXIS1'])}")
        planes.append(data)
        shutil.rmtree(w / "proj")
        shutil.rmtree(w / "diff")
    _stack_planes(planes, header, out)
    return {"mosaic": str(out), "tool_s": time.perf_counter() - t0}


def worker(args: argparse.Namespace) -> None:
    """One tool, one process: its result and timing as JSON."""
    tool, folder, overrides = RUNS[args.worker]
    if tool == "skymosaic":
        import skymosaic.pipeline  # noqa: F401, PLC0415
    elif tool == "reproject":
        import reproject.mosaicking  # noqa: F401, PLC0415
    workdir = Path(args.workdir)
    slug = "".join(ch if ch.isalnum() else "_" for ch in args.worker)
    grid = workdir / "grid.hdr"
    frames = workdir / folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITSFixedWarning and the like
        t0 = time.perf_counter()
        if tool == "skymosaic":
            res = _run_skymosaic(frames, workdir / f"out_{slug}", overrides, args.threads,
                                 args.mode)
        elif tool == "reproject":
            np.random.seed(args.seed)  # noqa: NPY002  # reproject's SGD uses the global state
            res = _run_reproject(frames, workdir / "out_skymosaic" / "mosaic.fits",
                                 workdir / f"mosaic_{slug}.fits", match=True)
        elif tool == "swarp":
            res = _run_swarp(frames, workdir / f"work_{slug}", grid,
                             workdir / f"mosaic_{slug}.fits", args.threads or os.cpu_count())
        else:
            res = _run_montage(frames, workdir / f"work_{slug}", grid,
                               workdir / f"mosaic_{slug}.fits")
        wall = time.perf_counter() - t0
    emit_result({"wall_s": wall, **res})


# -- the survey and its references ---------------------------------------------------------


def _multiscale_nebula(truth: TruthSky, seed: int, amplitude: float) -> TruthSky:
    """``truth`` with two nebula components of structure on every scale in `NEBULA_SCALES_PX`
    and on the whole field (equal weights), ``|N(0, 1)|``-like and positive, peak ``amplitude``.
    """
    rng = np.random.default_rng(seed)
    half_w, half_h = truth.size_deg[0] * 1800.0, truth.size_deg[1] * 1800.0
    step = NEBULA_SCALES_PX[0] * PIXEL_SCALE / 3.0  # nodes: 3 per smallest correlation length
    pad = 4
    nx = math.ceil(2 * half_w / step) + 2 * pad + 1
    ny = math.ceil(2 * half_h / step) + 2 * pad + 1
    whole = 0.25 * max(nx, ny)
    fields = []
    for _ in range(2):
        f = np.zeros((ny, nx))
        for sigma in [s * PIXEL_SCALE / step / 2.0 for s in NEBULA_SCALES_PX] + [whole]:
            g = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma, mode="reflect")
            f += (g - g.mean()) / g.std()
        f = np.clip(f / f.std() + 0.5, 0.0, None) ** 1.5
        f *= amplitude / max(float(f.max()), 1e-12)
        fields.append(ndimage.spline_filter(f, order=3, mode="mirror"))
    coeffs = np.stack(fields)
    coeffs.flags.writeable = False
    return dataclasses.replace(truth, nebula_coeffs=coeffs,
                               nebula_grid=(-half_w - pad * step, -half_h - pad * step, step))


def _quad(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)


def _frame_uv(shape: tuple[int, int], n: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """Sample pixels ``(x, y)`` of a frame and their normalised ``(u, v)`` in [-1, 1]."""
    h, w = shape
    y, x = np.meshgrid(np.linspace(0, h - 1, n), np.linspace(0, w - 1, n), indexing="ij")
    x, y = x.ravel(), y.ravel()
    return x, y, x * 2.0 / max(w - 1, 1) - 1.0, y * 2.0 / max(h - 1, 1) - 1.0


def _floor_field(survey: Survey) -> list[np.ndarray]:
    """Per frame, the 6 quadratic coefficients in its own ``(u, v)`` of the common field.

    The solve (`skymosaic.photometry._surfaces`) puts a ridge on the non-constant surface
    coefficients, so of all solutions ``S_k = G_k - F`` (``G_k`` frame k's true gradient,
    ``F`` any field quadratic on the output grid, which no overlap sees) it picks the ``F``
    that minimises ``sum_k |nonconst(G_k - F|_k)|^2``. This finds that ``F`` by linear least
    squares over the frames and returns it expressed in each frame; a mosaic of frames
    corrected by ``G_k - F|_k`` shows ``F`` alone: the degeneracy floor.
    """
    wcs, (h_out, w_out) = survey.mosaic_grid()
    design_rows, target, local = [], [], []
    for f in survey.frames:
        x, y, u, v = _frame_uv(f.shape)
        xo, yo = wcs.world_to_pixel_values(*f.wcs.pixel_to_world_values(x, y))
        bx, by = xo / w_out * 2.0 - 1.0, yo / h_out * 2.0 - 1.0
        basis = _quad(bx, by)  # F's terms at the frame's samples
        fit = np.linalg.lstsq(_quad(u, v), basis, rcond=None)[0]  # (6 frame terms, 6 F terms)
        local.append(fit)
        h, w = f.shape
        gx, gy = f.sky_gradient
        a, b, c = f.sky_quadratic
        design_rows.append(fit[1:, 1:])  # non-constant frame terms of F's non-constant terms
        target.append(np.array([gx * (w - 1) / 2, gy * (h - 1) / 2, a, b, c]))
    coef = np.linalg.lstsq(np.vstack(design_rows), np.concatenate(target), rcond=None)[0]
    field_coef = np.concatenate([[0.0], coef])
    return [fit @ field_coef for fit in local]


def _reference_frames(survey: Survey, which: str) -> Survey:
    """Frames corrected with the truth: "perfect", "true" (gradients in) or "floor"."""
    floor = _floor_field(survey) if which == "floor" else None
    frames = []
    for k, f in enumerate(survey.frames):
        data = (f.data - f.offset[:, None, None]) / f.gain[:, None, None]
        if which == "perfect":  # the constant sky stays: skymosaic's valid mask needs > 0
            data = data - (f.sky_model() - f.sky_level)
        elif which == "floor":
            h, w = f.shape
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            u, v = xx * (2.0 / max(w - 1, 1)) - 1, yy * (2.0 / max(h - 1, 1)) - 1
            c = floor[k]
            field = c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v
            data = data - (f.sky_model() - f.sky_level) + field
        frames.append(dataclasses.replace(f, data=np.asarray(data, dtype=np.float32)))
    return dataclasses.replace(survey, frames=frames)


def _prepare(args: argparse.Namespace, workdir: Path, labels: list[str]) -> Survey:
    t0 = time.perf_counter()
    h, w = args.frame_shape
    span_x = ((args.n_x - 1) * w * (1 - args.overlap) + math.hypot(h, w) + 8 * JITTER_PX)
    span_y = ((args.n_y - 1) * h * (1 - args.overlap) + math.hypot(h, w) + 8 * JITTER_PX)
    size = (span_x * PIXEL_SCALE / 3600.0 * 1.05, span_y * PIXEL_SCALE / 3600.0 * 1.05)
    truth = make_truth_sky(center=(150.0, 2.0), size_deg=size, channels=args.channels,
                           pixel_scale_arcsec=PIXEL_SCALE,
                           n_stars=round(args.stars_per_deg2 * size[0] * size[1]),
                           seed=args.seed + 1000)
    truth = _multiscale_nebula(truth, args.seed + 2000, args.nebula_amplitude)
    survey = make_survey(
        n_x=args.n_x, n_y=args.n_y, frame_shape=(h, w), channels=args.channels,
        overlap=args.overlap, pixel_scale_arcsec=PIXEL_SCALE, jitter_px=JITTER_PX,
        gain_range=GAIN_RANGE, offset_range=OFFSET_RANGE, noise_sigma=args.noise_sigma,
        sky_level=args.sky_level, sky_gradient=args.sky_gradient,
        sky_curvature=args.sky_curvature, seed=args.seed, truth=truth,
    )
    folders = {RUNS[label][1] for label in labels}
    write_survey(survey, workdir / "frames")
    for which in ("perfect", "true", "floor"):
        if f"frames_{which}" in folders:
            write_survey(_reference_frames(survey, which), workdir / f"frames_{which}")
    edge = [float(np.nanmax(np.abs(f.sky_model() - f.sky_level))) for f in survey.frames]
    logger.info("survey: %d frames of %dx%d x %d ch, %d stars, gradient at the frame edge "
                "median %.1f ADU (max %.1f); %.1f s", len(survey.frames), h, w, args.channels,
                truth.n_stars, float(np.median(edge)), max(edge), time.perf_counter() - t0)
    return survey


def _write_grid(mosaic: Path, workdir: Path) -> None:
    """skymosaic's output grid as ``grid.hdr`` (a FITS header as text)."""
    with fits.open(mosaic) as hdul:
        hdr = hdul[0].header
        shape = (int(hdr["NAXIS2"]), int(hdr["NAXIS1"]))
        wcs = WCS(hdr).celestial
    out = fits.Header()
    out["SIMPLE"] = True
    out["BITPIX"] = -32
    out["NAXIS"] = 2
    out["NAXIS1"] = shape[1]
    out["NAXIS2"] = shape[0]
    out.extend(wcs.to_header(), update=True)
    out.totextfile(str(workdir / "grid.hdr"), overwrite=True)


# -- metrics and report ---------------------------------------------------------------------


class _TruthCache:
    """The truth rendered once per output grid."""

    def __init__(self, survey: Survey) -> None:
        self.survey = survey
        self._key: str | None = None
        self._img: np.ndarray | None = None

    def get(self, wcs: WCS, shape: tuple[int, int], channels: int) -> np.ndarray:
        key = f"{wcs.to_header().tostring()}{shape}{channels}"
        if key != self._key:
            self._img = None
            self._img = self.survey.truth.render(wcs, shape, channels=channels)
            self._key = key
        return self._img


def _quality(survey: Survey, data: np.ndarray, wcs: WCS, truth: np.ndarray,
             args: argparse.Namespace) -> dict:
    steps = border_step_ratio(data, truth, survey.frames, wcs, noise_sigma=None)
    scatter = []
    for c in range(data.shape[0]):
        try:
            scatter.append(star_flux_scatter(data, wcs, survey.truth, channel=c,
                                             min_flux=args.min_flux, truth_image=truth))
        except ValueError as err:  # too few isolated stars (a small survey)
            logger.warning("star-flux scatter not measured: %s", err)
            scatter.append(math.nan)
    color = math.nan
    if data.shape[0] == 3:
        try:
            color = star_color_scatter(data, wcs, survey.truth, min_flux=args.min_flux,
                                       truth_image=truth)
        except ValueError as err:
            logger.warning("star-colour scatter not measured: %s", err)
    return {
        "color_scatter": color,
        "border_step": steps.border, "control_step": steps.control, "ratio": steps.ratio,
        "n_segments": [steps.n_border, steps.n_control],
        "worst_frames": _worst(survey, steps.frame_steps),
        "large_scale": large_scale_residual(data, truth),
        "large_scale_quad": large_scale_residual(data, truth, remove_quadratic=True),
        "flux_scatter": float(np.nanmean(scatter)), "flux_scatter_ch": scatter,
    }


def _worst(survey: Survey, frame_steps: tuple[float, ...], n: int = 3) -> list:
    order = [k for k in np.argsort([-(v if math.isfinite(v) else -1) for v in frame_steps])][:n]
    return [[survey.frames[k].name, round(float(frame_steps[k]), 3)] for k in order]


def _available(tool: str) -> str | None:
    """None if the tool can run, else why not."""
    if tool == "reproject":
        try:
            import reproject  # noqa: F401, PLC0415
        except ImportError:
            return "skipped: reproject not installed (pip install reproject)"
    progs, how = NEEDS.get(tool, ([], ""))
    missing = [p for p in progs if shutil.which(p) is None]
    if missing:
        return f"skipped: {', '.join(missing)} not found ({how})"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-x", type=int, default=6, help="pointings along x (default 6)")
    p.add_argument("--n-y", type=int, default=5, help="pointings along y (default 5)")
    p.add_argument("--frame-shape", type=int, nargs=2, default=(1080, 1920), metavar=("H", "W"),
                   help="frame size (default 1080 1920, Seestar)")
    p.add_argument("--small", action="store_true",
                   help="quick run: 3 x 2 pointings of 540 x 960 px")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1)
    p.add_argument("--mode", choices=("classic", "grid"), default="classic",
                   help="skymosaic's mode: classic direct (default) or grid (a stack_plan.csv "
                        "of the frames; only skymosaic's rows, the other tools do not change)")
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-sigma", type=float, default=5.0)
    p.add_argument("--sky-level", type=float, default=100.0)
    p.add_argument("--sky-gradient", type=float, default=0.3,
                   help="plane, peak-to-peak per frame width / sky level (default 0.3)")
    p.add_argument("--sky-curvature", type=float, default=0.1,
                   help="quadratic term at the frame edge / sky level (default 0.1)")
    p.add_argument("--nebula-amplitude", type=float, default=30.0)
    p.add_argument("--stars-per-deg2", type=float, default=10000.0)
    p.add_argument("--min-flux", type=float, default=3000.0,
                   help="faintest true star flux (ADU) in the flux scatter")
    p.add_argument("--threads", type=int, default=0, help="skymosaic/SWarp threads (0 = all)")
    p.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=None,
                   help="subset of rows (skymosaic always runs first: it defines the grid)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per tool, seconds")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the survey and mosaics in this folder (default: temporary)")
    p.add_argument("--worker", choices=sorted(RUNS), help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.small:
        args.n_x, args.n_y, args.frame_shape = 3, 2, (540, 960)
    args.frame_shape = tuple(args.frame_shape)
    if min(args.n_x, args.n_y) < 1 or min(args.frame_shape) < 128:
        p.error("need --n-x/--n-y >= 1 and frames of at least 128 px")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return _orchestrate(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="bench_seams_") as tmp:
        return _orchestrate(args, Path(tmp))


def _orchestrate(args: argparse.Namespace, workdir: Path) -> int:
    machine = machine_info()
    default = [r for r in RUNS if args.mode == "classic" or RUNS[r][0] == "skymosaic"]
    labels = default if args.runs is None else ["skymosaic", *(r for r in RUNS
                                                               if r in args.runs and
                                                               r != "skymosaic")]
    survey = _prepare(args, workdir, labels)
    cache = _TruthCache(survey)
    results: dict[str, dict] = {}
    for label in labels:
        tool = RUNS[label][0]
        why = _available(tool)
        if why is not None:
            logger.warning("%s: %s", label, why)
            results[label] = {"skipped": why}
            continue
        logger.info("running %s ...", label)
        try:
            res = run_worker([str(Path(__file__).resolve()), "--worker", label, "--workdir",
                              str(workdir), "--threads", str(args.threads), "--seed",
                              str(args.seed), "--mode", args.mode], timeout=args.timeout)
        except RuntimeError as err:
            if label == "skymosaic":
                raise
            logger.warning("%s failed: %s", label, str(err)[-1500:])
            results[label] = {"skipped": f"failed: {str(err).splitlines()[0][:120]}"}
            continue
        if label == "skymosaic":
            _write_grid(Path(res["mosaic"]), workdir)
        t0 = time.perf_counter()
        data, wcs = _read(res["mosaic"])
        truth = cache.get(wcs, data.shape[1:], data.shape[0])
        res["quality"] = _quality(survey, data, wcs, truth, args)
        res["shape"] = list(data.shape)
        res["peak"] = max(res["peak_rss"], res["poll_peak_rss"])
        del data
        results[label] = res
        logger.info("  %s: %.1f s, metrics %.1f s; %s", label, res["wall_s"],
                    time.perf_counter() - t0,
                    json.dumps({k: v for k, v in res["quality"].items()
                                if k not in ("flux_scatter_ch",)}))
    _report(args, survey, machine, results)
    return 0


def _report(args, survey: Survey, machine: dict, results: dict[str, dict]) -> None:
    rows = []
    for label, res in results.items():
        if "skipped" in res:
            rows.append({"run": label, "ratio": res["skipped"]})
            continue
        q = res["quality"]
        rows.append({
            "run": label,
            "border step": f"{q['border_step']:.3f}",
            "control": f"{q['control_step']:.3f}",
            "ratio": f"{q['ratio']:.2f}",
            "LS": f"{q['large_scale']:.3f}",
            "LS-quad": f"{q['large_scale_quad']:.3f}",
            "flux scatter %": f"{100 * q['flux_scatter']:.2f}",
            **({"colour scatter %": f"{100 * q['color_scatter']:.2f}"} if args.channels == 3
               else {}),
            "wall s": f"{res['wall_s']:.1f}",
            "peak RSS": format_bytes(res["peak"]),
        })
    h, w = args.frame_shape
    sm = results["skymosaic"]
    command = " ".join([Path(sys.executable).name, *sys.argv])
    print()
    print(f"## bench_seams (skymosaic {skymosaic.__version__}, {args.mode} mode)")
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("command: " + command)
    print(f"survey: {len(survey.frames)} frames ({args.n_x}x{args.n_y}) of {h}x{w} x "
          f"{args.channels} ch, overlap {args.overlap}, gains U{GAIN_RANGE}, offsets "
          f"U{OFFSET_RANGE}, noise {args.noise_sigma}, sky {args.sky_level} with gradient "
          f"{args.sky_gradient} + curvature {args.sky_curvature}, nebula peak "
          f"{args.nebula_amplitude} (scales {NEBULA_SCALES_PX} px + whole field), "
          f"{survey.truth.n_stars} stars, seed {args.seed}; output {sm['shape'][2]}x"
          f"{sm['shape'][1]}")
    print()
    print(format_table(rows))
    print()
    print("skymosaic phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sm["phases_s"].items())
          + "; photometry: " + ", ".join(f"{k} {v:.1f}" for k, v in sm["photometry_s"].items()))
    for label in ("skymosaic", "skymosaic sky_surface=none"):
        if "quality" in results.get(label, {}):
            print(f"{label}: worst frames (mean border step, ADU): "
                  f"{results[label]['quality']['worst_frames']}")
    floor = results.get("floor (smallest surfaces)", {}).get("quality")
    if floor:
        print(f"degeneracy floor: LS {floor['large_scale']:.3f} (target for LS: <= "
              f"{1.2 * floor['large_scale']:.3f}); skymosaic LS {sm['quality']['large_scale']:.3f}")
    if args.json is not None:
        doc = {"machine": machine, "command": command, "skymosaic": skymosaic.__version__,
               "args": {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in vars(args).items() if k not in ("json", "keep")},
               "results": results}
        args.json.write_text(json.dumps(doc, indent=1, default=str))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    raise SystemExit(main())
