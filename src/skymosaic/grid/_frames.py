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
with the smallest-surfaces regularisation), and hands each frame's correction
(``gain * frame + offset + S(x, y)``, a `skymosaic.stack.master.FrameCorrection`) to the
tiles, which apply it while they resample the frame and stack with
``normalization = "none"``: every piece of every tile is then on one photometric scale.
No corrected copy of a frame is written: the tiles read the inputs themselves. The tiles'
own solve in `assemble_tiles` is then left with nothing but noise to fit and is skipped
(`GridFrameMatch.tiles_consistent`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from skymosaic.assemble import CoaddOptions, FileSource, match_sources
from skymosaic.io import FrameError, FrameInfo
from skymosaic.photometry import PhotometryOptions
from skymosaic.reproject import OutputGrid
from skymosaic.stack.master import FrameCorrection

__all__ = ["GridFrameMatch", "match_grid_frames"]

logger = logging.getLogger(__name__)


@dataclass
class GridFrameMatch:
    """The frames' solve: their corrections, to be applied by the tiles' resampling.

    Attributes
    ----------
    corrections : list of FrameCorrection or None
        Each frame's correction, in input order; None when the solve failed.
    noise : dict
        Per input path (str), its noise scaled by its gains (the corrected frame's noise,
        for the stack's weights).
    report : dict
        The solve's report (run.json ``grid.frame_photometry``).
    """

    corrections: list[FrameCorrection] | None
    noise: dict
    report: dict = field(default_factory=dict)

    @property
    def tiles_consistent(self) -> bool:
        """True when there are corrections: the tiles, applying them, share one scale."""
        return self.corrections is not None


def match_grid_frames(
    frames: Sequence[FrameInfo], canvas: OutputGrid, *, options: CoaddOptions,
    photometry: PhotometryOptions, match_kernel: str, noise: dict, valid_min: float | None,
) -> GridFrameMatch:
    """Solve every frame's gain and sky surface over the frame overlaps.

    Parameters
    ----------
    frames : sequence of FrameInfo
        The frames of one filter of the plan.
    canvas : OutputGrid
        The global output grid.
    options, photometry, match_kernel
        As for `skymosaic.assemble.match_sources` (the classic Phase 5 solve).
    noise : dict
        Per input path (str), its noise per channel (or None).
    valid_min : float or None
        The inputs' valid-pixel threshold (``input.valid_min``).

    Returns
    -------
    GridFrameMatch
        Without corrections (``tiles_consistent = False``) when fewer than two frames
        overlap or the solve fell back.
    """
    frames = list(frames)
    t0 = time.perf_counter()
    sources = [FileSource.from_info(f, valid_min=valid_min) for f in frames]
    try:
        match = match_sources(sources, canvas, options=options, photometry=photometry,
                              match_kernel=match_kernel)
    except (FrameError, ValueError, ArithmeticError, MemoryError) as err:  # as classic mode
        match = None
        report = {"status": f"fallback: {type(err).__name__}: {err}", "n_frames": len(frames)}
    else:
        report = {**match.counts(), "n_frames": len(frames),
                  "gains": {f.name: np.round(match.gains[k], 6).tolist()
                            for k, f in enumerate(frames)}}
        if match.surfaces is not None:
            report["surfaces"] = {f.name: np.round(match.surfaces[k], 6).tolist()
                                  for k, f in enumerate(frames)}
    if report["status"] != "ok":
        logger.warning("[GRID] frame photometry not applied (%s); the tiles normalise their frames "
                       "themselves", report["status"])
        report["solve_s"] = time.perf_counter() - t0
        return GridFrameMatch(None, {}, report)
    corrections = [FrameCorrection(s.gain, s.offset, s.surface) for s in sources]
    scaled = {}
    for f, g in zip(frames, match.gains, strict=True):
        n = noise.get(str(f.path))
        scaled[str(f.path)] = None if n is None else (np.asarray(n, float) * np.abs(g)).tolist()
    report["solve_s"] = time.perf_counter() - t0
    logger.info("[GRID] frame photometry: %d frames, %d overlaps, gains %.4f..%.4f, sky surfaces: "
                "%s; applied while the tiles resample the frames", len(frames),
                report["n_overlaps"], match.gains.min(), match.gains.max(), report["sky_surface"])
    return GridFrameMatch(corrections, scaled, report)
