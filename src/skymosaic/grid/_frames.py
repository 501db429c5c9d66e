"""Grid mode's frame photometry: the classic engine on the frames, before the tiles are stacked.

A grid tile is a box of the canvas, not a frame: it holds pieces of every frame that
touches it, each with its own gain and light-pollution gradient (fixed to that frame's
sensor). Normalising those pieces inside the tile, to a reference frame they may barely
overlap (the stack normalisation), leaves each tile a patchwork: on a 3 x 2 colour survey
most frame channels of a tile had fewer than 8 stars in common with the reference, took
the binned pixel-fit gain, and the mosaic's star-flux scatter was 1.5 % (classic: 0.5 %,
the noise). No per-tile gain or surface can undo that afterwards.

So grid mode solves the frames themselves, as classic direct mode does
(`skymosaic.assemble.match_sources`: every frame overlap measured at full resolution,
star-aperture gains, per-frame sky surfaces in each frame's own pixels, one global solve
with the smallest-surfaces regularisation), writes each frame corrected
(``gain * frame + S(x, y)``, NaN where it had no data) to the run's scratch folder, and the
tiles stack those with ``normalization = "none"``: every piece of every tile is then on one
photometric scale. The tiles' own solve in `assemble_tiles` is then left with nothing but
noise to fit and is skipped (`GridFrameMatch.tiles_consistent`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from skymosaic.assemble import CoaddOptions, FileSource, match_sources
from skymosaic.io import FrameInfo, atomic_path, load_frame
from skymosaic.photometry import PhotometryOptions
from skymosaic.reproject import OutputGrid

__all__ = ["GridFrameMatch", "match_grid_frames"]

logger = logging.getLogger(__name__)


@dataclass
class GridFrameMatch:
    """The frames' solve and their corrected copies.

    Attributes
    ----------
    frames : list of FrameInfo
        The corrected frames (scratch FITS, float32 CHW, NaN = no data), in input order;
        the inputs themselves where the solve failed.
    noise : dict
        Per corrected path, the input's noise scaled by its gains.
    report : dict
        The solve's report (run.json ``grid.frame_photometry``).
    tiles_consistent : bool
        True when the frames were corrected: the tiles share one scale.
    """

    frames: list[FrameInfo]
    noise: dict
    report: dict = field(default_factory=dict)
    tiles_consistent: bool = False


def match_grid_frames(
    frames: Sequence[FrameInfo], canvas: OutputGrid, *, options: CoaddOptions,
    photometry: PhotometryOptions, match_kernel: str, scratch: Path, noise: dict,
    valid_min: float | None,
) -> GridFrameMatch:
    """Solve every frame's gain and sky surface over the frame overlaps; write them corrected.

    Parameters
    ----------
    frames : sequence of FrameInfo
        The frames of one filter of the plan.
    canvas : OutputGrid
        The global output grid.
    options, photometry, match_kernel
        As for `skymosaic.assemble.match_sources` (the classic Phase 5 solve).
    scratch : Path
        Where the corrected frames go (``scratch/grid_frames/``).
    noise : dict
        Per input path (str), its noise per channel (or None).
    valid_min : float or None
        The inputs' valid-pixel threshold (``input.valid_min``).

    Returns
    -------
    GridFrameMatch
        With the inputs unchanged (``tiles_consistent = False``) when fewer than two frames
        overlap or the solve fell back.
    """
    frames = list(frames)
    t0 = time.perf_counter()
    sources = [FileSource.from_info(f, valid_min=valid_min) for f in frames]
    match = match_sources(sources, canvas, options=options, photometry=photometry,
                          match_kernel=match_kernel)
    rep = match.report
    report = {"status": rep.status, "n_frames": len(frames), "n_overlaps": rep.n_overlaps,
              "relations_ok": rep.n_relations_ok, "relations_offset_only": rep.n_relations_offset_only,
              "relations_failed": rep.n_relations_failed, "sky_surface": rep.sky_surface,
              "gains": {f.name: np.round(match.gains[k], 6).tolist() for k, f in enumerate(frames)},
              "warnings": list(rep.warnings)}
    if match.surfaces is not None:
        report["surfaces"] = {f.name: np.round(match.surfaces[k], 6).tolist()
                              for k, f in enumerate(frames)}
    if rep.status != "ok":
        logger.warning("[GRID] frame photometry not applied (%s); the tiles normalise their frames "
                       "themselves", rep.status)
        report["solve_s"] = time.perf_counter() - t0
        return GridFrameMatch(frames, noise, report, tiles_consistent=False)
    t1 = time.perf_counter()
    folder = scratch / "grid_frames"
    folder.mkdir(parents=True, exist_ok=True)

    def write(k: int) -> FrameInfo:
        return _write_corrected(frames[k], sources[k], folder / f"{k:06d}_{frames[k].name}", valid_min)

    threads = max(1, min(options.n_threads, len(frames)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        corrected = list(pool.map(write, range(len(frames))))
    scaled = {}
    for f, c, g in zip(frames, corrected, match.gains, strict=True):
        n = noise.get(str(f.path))
        scaled[str(c.path)] = None if n is None else (np.asarray(n, float) * np.abs(g)).tolist()
    report.update(solve_s=t1 - t0, write_s=time.perf_counter() - t1)
    logger.info("[GRID] frame photometry: %d frames, %d overlaps, gains %.4f..%.4f, sky surfaces: "
                "%s; corrected frames written in %.1f s", len(frames), rep.n_overlaps,
                match.gains.min(), match.gains.max(), rep.sky_surface, time.perf_counter() - t1)
    return GridFrameMatch(corrected, scaled, report, tiles_consistent=True)


def _write_corrected(info: FrameInfo, source: FileSource, path: Path, valid_min: float | None) -> FrameInfo:
    """``gain * frame + offset + S(x, y)`` of one frame as a float32 CHW FITS at ``path``."""
    data = load_frame(info, valid_min=valid_min)
    invalid = ~np.isfinite(data).all(axis=0)
    gain = np.ones(data.shape[0], np.float32) if source.gain is None else source.gain
    offset = np.zeros(data.shape[0], np.float32) if source.offset is None else source.offset
    data = data * gain[:, None, None] + offset[:, None, None]
    if source.surface is not None:
        h, w = data.shape[1:]
        yy, xx = np.indices((h, w), dtype=np.float32)
        data += source.surface.evaluate(xx, yy, dtype=np.float32)
    data[:, invalid] = np.nan
    header = info.wcs.to_header(relax=True) if info.wcs is not None else fits.Header()
    for key, value in (("EXPTIME", info.exposure), ("FILTER", info.filter), ("DATE-OBS", info.date_obs)):
        if value is not None:
            header[key] = value
    header["HISTORY"] = f"skymosaic grid frame photometry of {info.name}"
    with atomic_path(path, suffix=".fits") as tmp:
        fits.PrimaryHDU(data.astype(np.float32), header).writeto(tmp)
    return dataclasses.replace(info, path=path, hdu=0, layout="CHW", bayer_pattern=None,
                               has_weight=False)
