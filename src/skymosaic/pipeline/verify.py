"""Phase 2, verify: read each frame once (unreadable or empty frames are rejected, noise
measured, stars measured when quality selection or FWHM weighting needs them), then
select by quality (`skymosaic.stack.classic.select_by_quality`).

The expensive part of the catalog: reused from ``state/catalog.pkl`` when the frames (file
signatures, WCS source, channels) and the ``[input]`` and ``[quality]`` settings are
unchanged.
"""

from __future__ import annotations

import logging

from skymosaic._manifest import file_signature
from skymosaic._verify import check_frames
from skymosaic.config import Config
from skymosaic.stack.classic import select_by_quality

from ._catalog import Catalog
from ._run import Progress, Run, Sections

__all__ = ["run", "verify_frames"]

logger = logging.getLogger(__name__)

NAME = "catalog"
SECTIONS = Sections(("input", "quality"))
STORE = "pickle"
TIMING = None  # "verify" and "quality", timed apart


def key(ctx: Run, catalog: Catalog, covered: dict) -> list:
    frames = [[file_signature(f.path), f.wcs_source, f.channels] for f in catalog.frames]
    return [frames, covered, "fwhm" in ctx.config.stack.weighting]


def run(ctx: Run, catalog: Catalog) -> dict:
    """Verify the catalog's frames and select them by quality, in place; returns what a
    rerun reuses (stats, quality, sessions and the frames this phase rejected)."""
    config = ctx.config
    before = dict(catalog.rejected)
    with ctx.phase("verify"):
        verify_frames(catalog, config, progress=ctx.progress, threads=ctx.threads)
    if config.quality.enabled and catalog.frames:
        with ctx.phase("quality"):
            targets = ctx.target_of if len(ctx.targets) > 1 else None
            catalog.frames, rejected, sessions = select_by_quality(catalog.frames, catalog.quality,
                                                                   config, targets=targets)
            for path, reason in rejected.items():
                catalog.reject(path, reason)
            catalog.sessions = [s.to_dict() for s in sessions]
            ctx.report.sessions = catalog.sessions
    return {"stats": catalog.stats, "quality": catalog.quality, "sessions": catalog.sessions,
            "rejected": {k: v for k, v in catalog.rejected.items() if k not in before}}


def reuse(ctx: Run, catalog: Catalog, saved: dict) -> dict:
    """Apply a stored verification to ``catalog`` (in place)."""
    logger.info("resume: pixel checks and quality of %d frame(s) reused", len(saved["stats"]))
    catalog.stats, catalog.quality = saved["stats"], saved["quality"]
    catalog.sessions = saved.get("sessions", [])
    ctx.report.sessions = catalog.sessions
    for path, reason in saved["rejected"].items():
        catalog.reject(path, reason)
    catalog.frames = [f for f in catalog.frames if str(f.path) not in saved["rejected"]]
    return saved


def verify_frames(catalog: Catalog, config: Config, *, progress: Progress, threads: int) -> None:
    """Read each frame once; reject unreadable or empty ones; measure noise and, when
    quality selection is on, stars (count, FWHM, elongation) with sep, on ``threads``
    worker processes for a large input (`skymosaic._verify`)."""
    progress.start("verify", len(catalog.frames))
    measure = config.quality.enabled or "fwhm" in config.stack.weighting
    kept = []
    for check in check_frames(catalog.frames, valid_min=config.input.valid_min,
                              detect_sigma=config.quality.detect_sigma, measure=measure,
                              workers=threads):
        progress.advance("verify")
        if check.error is not None:
            catalog.reject(check.info.path, check.error)
            continue
        catalog.stats[str(check.info.path)] = check.stats
        if check.quality is not None:
            catalog.quality[str(check.info.path)] = check.quality
        kept.append(check.info)
    catalog.frames = kept
    progress.end("verify")
