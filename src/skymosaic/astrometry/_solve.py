"""Plate-solve the frames of a run that have no usable WCS, in parallel, with a cache.

For each frame: hash its bytes; reuse ``RUN_DIR/wcs/<hash>.wcs`` when it is there (no
solver is started); otherwise write the frame's luminance (Bayer frames debayered by
`skymosaic.io.load_frame`, so on the same pixel grid as the loaded frame) to a temporary
FITS, run the solver with the header's hints, validate the solution and store it
atomically. Frames are independent: a thread pool runs one solver subprocess per frame.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skymosaic.astrometry._cache import content_hash, read_solution, solution_path, write_solution
from skymosaic.astrometry._hints import SolveHints, read_hints
from skymosaic.astrometry._solvers import (
    SolveOptions,
    Solver,
    find_solver,
    solver_missing_reason,
)
from skymosaic.astrometry._validate import check_wcs
from skymosaic.io._frames import FrameError, FrameInfo, frame_footprint, load_frame, validate_wcs

if TYPE_CHECKING:
    from skymosaic.config import Config

__all__ = [
    "FrameSolution",
    "apply_solution",
    "solve_frames",
    "solve_missing_wcs",
    "write_solver_image",
]

logger = logging.getLogger(__name__)


@dataclass
class FrameSolution:
    """What happened to one frame: a WCS (solved now or cached) or the reason there is none."""

    path: Path
    wcs: WCS | None
    status: str  # "solved", "cached" or "failed"
    reason: str | None = None
    sidecar: Path | None = None
    seconds: float = 0.0
    solver: str | None = None
    hints: SolveHints | None = None

    def to_dict(self) -> dict:
        out = {"status": self.status, "seconds": round(self.seconds, 3), "solver": self.solver,
               "sidecar": str(self.sidecar) if self.sidecar else None}
        if self.reason:
            out["reason"] = self.reason
        if self.hints is not None:
            out["hints"] = self.hints.to_dict()
        if self.wcs is not None:
            out["pixel_scale_arcsec"] = round(_scale(self.wcs), 5)
        return out


def _scale(wcs: WCS) -> float:
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0


def write_solver_image(info: FrameInfo, path: Path) -> Path:
    """Write the frame's luminance (mean of its channels) as a float32 FITS without WCS.

    The image has the frame's full pixel grid (Bayer frames are debayered, not binned), so
    the solver's WCS applies to the frame as loaded. NaN (no data) becomes the median, so
    source extraction sees no edges.
    """
    data = load_frame(info, valid_min=None)
    finite = np.isfinite(data)
    count = finite.sum(axis=0)
    total = np.where(finite, data, 0.0).sum(axis=0, dtype=np.float64)
    bad = count == 0
    lum = (total / np.maximum(count, 1)).astype(np.float32)  # NaN-aware mean of the channels
    if bad.all():
        raise FrameError("no finite pixel to plate-solve")
    if bad.any():
        lum[bad] = np.median(lum[~bad])
    fits.PrimaryHDU(lum).writeto(path, overwrite=True)
    return path


def apply_solution(info: FrameInfo, wcs: WCS, source: str) -> FrameInfo:
    """Give ``info`` the solved ``wcs`` (scale, footprint and provenance ``source``)."""
    info.pixel_scale_arcsec = validate_wcs(wcs, info.shape[1:])
    info.wcs, info.wcs_source = wcs, source
    info.footprint = frame_footprint(wcs, info.shape[1:], samples=2)
    return info


def _solve_one(info: FrameInfo, run_dir: Path, solver: Solver | None, options: SolveOptions,
               max_scale_ratio: float) -> FrameSolution:
    """Cache first, then the solver; never raises for a frame that cannot be solved."""
    t0 = time.perf_counter()
    try:
        hints = read_hints(info.path, info.hdu)
        digest = content_hash(info.path)
    except (OSError, ValueError) as err:
        return FrameSolution(info.path, None, "failed", f"cannot read the frame ({err})")
    sidecar = solution_path(run_dir, digest)
    cached = read_solution(sidecar, width=info.width, height=info.height, digest=digest)
    if cached is not None:
        logger.info("%s: reusing the cached plate solution %s", info.name, sidecar)
        return FrameSolution(info.path, cached, "cached", sidecar=sidecar,
                             seconds=time.perf_counter() - t0, hints=hints)
    reason: str | None
    if solver is None:
        reason = solver_missing_reason(options)
    elif not hints.has_position and not options.blind:
        reason = ("the header gives no RA/DEC to search around (keys RA/DEC, OBJCTRA/OBJCTDEC); "
                  "set solve.blind = true to search the whole sky")
    else:
        with tempfile.TemporaryDirectory(prefix="skymosaic-solve-") as tmp:
            wcs, reason = _run_solver(info, Path(tmp), solver, options, hints=hints,
                                      max_scale_ratio=max_scale_ratio, digest=digest,
                                      sidecar=sidecar)
        elapsed = time.perf_counter() - t0
        if wcs is not None:
            logger.info("%s: plate-solved by %s in %.1f s (%.3f\"/px); WCS saved to %s",
                        info.name, solver.name, elapsed, _scale(wcs), sidecar)
            return FrameSolution(info.path, wcs, "solved", sidecar=sidecar, seconds=elapsed,
                                 solver=solver.name, hints=hints)
        return FrameSolution(info.path, None, "failed", reason, seconds=elapsed,
                             solver=solver.name, hints=hints)
    return FrameSolution(info.path, None, "failed", reason, hints=hints)


def _run_solver(info: FrameInfo, workdir: Path, solver: Solver, options: SolveOptions, *,
                hints: SolveHints, max_scale_ratio: float, digest: str,
                sidecar: Path) -> tuple[WCS | None, str | None]:
    """Solve one frame in ``workdir`` and store a valid solution: ``(wcs, None)`` or
    ``(None, reason)``."""
    try:
        image = write_solver_image(info, workdir / "frame.fits")
    except FrameError as err:
        return None, f"cannot plate-solve: {err}"
    shape = info.shape[1:]
    logger.debug("%s: %s", info.name, " ".join(solver.command(image, workdir, hints, shape,
                                                               options)))
    attempt = solver.solve(image, workdir, hints, shape, options)
    if not attempt.ok:
        return None, attempt.reason
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(attempt.header, naxis=2).celestial
    except (ValueError, KeyError, MemoryError) as err:
        return None, f"{solver.name} wrote an unreadable WCS ({err})"
    problem = check_wcs(wcs, shape, hints=hints, max_scale_ratio=max_scale_ratio)
    if problem is not None:
        return None, f"{solver.name} solution rejected: {problem}"
    write_solution(sidecar, attempt.header, width=info.width, height=info.height, digest=digest,
                   frame_name=info.name, solver=solver.name)
    return wcs, None


def solve_frames(
    infos: Sequence[FrameInfo],
    run_dir: str | Path,
    *,
    options: SolveOptions | None = None,
    solver: Solver | None = None,
    max_scale_ratio: float = 1.5,
    progress: Callable[[int], None] | None = None,
) -> dict[str, FrameSolution]:
    """Plate-solve frames (cache first), in parallel; results keyed by ``str(info.path)``.

    Parameters
    ----------
    infos : sequence of FrameInfo
        Frames without a usable WCS (from `skymosaic.io.scan_frame`). They are not
        modified: use `apply_solution` on the solved ones.
    run_dir : path
        The run directory; solutions are cached in ``run_dir/wcs/<sha256[:16]>.wcs``.
    options : SolveOptions, optional
        Solver choice and limits (defaults: auto, 60 s CPU per frame, downsample 2).
    solver : Solver, optional
        Use this solver instead of `find_solver(options)` (tests, custom programs).
    max_scale_ratio : float
        A solution whose scale is off by more than this factor from the optics' is refused.
    progress : callable, optional
        Called with 1 after each frame.

    Returns
    -------
    dict
        ``{str(path): FrameSolution}``; failed frames carry the solver's reason.
    """
    options = options or SolveOptions()
    run_dir = Path(run_dir)
    if solver is None and infos:
        solver = find_solver(options)
    if solver is not None and infos:
        logger.info("plate solving %d frame(s) with %s (%s), %d at a time (cached solutions "
                    "are reused)", len(infos), solver.name, solver.executable,
                    max(1, options.workers))
    results: dict[str, FrameSolution] = {}
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        futures = [pool.submit(_solve_one, info, run_dir, solver, options, max_scale_ratio)
                   for info in infos]
        for future in futures:
            outcome = future.result()
            results[str(outcome.path)] = outcome
            if progress is not None:
                progress(1)
    return results




def _no_wcs(info: FrameInfo) -> str:
    return info.extra.get("bad_wcs") or "no celestial WCS in the header and no .wcs sidecar"


def solve_missing_wcs(
    infos: Sequence[FrameInfo],
    run_dir: str | Path | None,
    config: Config,
    *,
    threads: int = 1,
    progress=None,
) -> tuple[list[FrameInfo], dict[str, str], dict]:
    """The pipeline's solve step: solve ``infos`` per the ``[solve]`` section of ``config``.

    Parameters
    ----------
    infos : sequence of FrameInfo
        Frames without a usable WCS.
    run_dir : path or None
        The run directory (solutions are cached in its ``wcs/`` folder); None: no solving.
    config : skymosaic.config.Config
        The run's configuration (its ``[solve]`` section, `SolveOptions.from_config`).
    threads : int
        Default number of parallel solves (``solve.workers`` = 0).
    progress : skymosaic.pipeline.Progress, optional
        Told about phase ``"solve"``.

    Returns
    -------
    solved : list of FrameInfo
        The frames that now have a WCS (``wcs_source`` = ``"solved:<sidecar>"``).
    failed : dict
        ``{str(path): reason}`` for the others; the reason starts with why the frame needed
        solving and ends with the solver's own reason.
    report : dict
        For run.json: solver, wall time, and per frame status, time and hints.
    """
    if not infos:
        return [], {}, {}
    cfg = config.solve
    if not cfg.enabled or run_dir is None:
        why = ("plate solving is off (solve.enabled = false)" if not cfg.enabled
               else "not plate-solved here (skymosaic run solves and caches solutions)")
        return [], {str(i.path): f"{_no_wcs(i)}; {why}" for i in infos}, {}
    options = SolveOptions.from_config(config, threads=threads)
    solver = find_solver(options)
    t0 = time.perf_counter()
    if progress is not None:
        progress.start("solve", len(infos))
    try:
        results = solve_frames(
            infos, run_dir, options=options, solver=solver, max_scale_ratio=cfg.max_scale_ratio,
            progress=(lambda n: progress.advance("solve", n)) if progress is not None else None,
        )
    finally:
        if progress is not None:
            progress.end("solve")
    solved, failed = [], {}
    for info in infos:
        outcome = results[str(info.path)]
        if outcome.wcs is None:
            failed[str(info.path)] = f"{_no_wcs(info)}; plate solving failed: {outcome.reason}"
        else:
            solved.append(apply_solution(info, outcome.wcs, f"solved:{outcome.sidecar}"))
    report = {
        "solver": (None if solver is None
                   else {"name": solver.name, "executable": solver.executable}),
        "wall_s": round(time.perf_counter() - t0, 3),
        "solved": sum(r.status == "solved" for r in results.values()),
        "cached": sum(r.status == "cached" for r in results.values()),
        "failed": len(failed),
        "frames": {Path(k).name: v.to_dict() for k, v in results.items()},
    }
    logger.info("plate solving: %d solved, %d from the cache, %d failed in %.1f s",
                report["solved"], report["cached"], report["failed"], report["wall_s"])
    return solved, failed, report
