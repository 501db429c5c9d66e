"""The end-to-end demo: a synthetic colour survey with a known truth, mosaicked and scored.

The frames carry a one-shot-colour camera's channel response (`SEESTAR_RESPONSE`, green
strongest), so the linear mosaic is green as a raw Seestar mosaic is; the preview shows it
after the colour calibration (docs/colour.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from skymosaic.config import Config
from skymosaic.io import read_mosaic
from skymosaic.pipeline import Progress, RunResult, run_pipeline
from skymosaic.synth import (
    SEESTAR_RESPONSE,
    coverage_fraction,
    frame_border_mask,
    make_survey,
    residual_rms,
    seam_score,
    write_survey,
)

__all__ = ["DEMO_SURVEYS", "run_demo"]

logger = logging.getLogger(__name__)

#: Survey parameters of each demo size (see `skymosaic.synth.make_survey`).
DEMO_SURVEYS = {
    "small": dict(n_x=3, n_y=3, frame_shape=(320, 400), overlap=0.25, channels=3,
                  frames_per_pointing=4, hot_pixels=30, satellite_prob=0.3, sip=True,
                  channel_response=SEESTAR_RESPONSE),
    "medium": dict(n_x=5, n_y=4, frame_shape=(600, 800), overlap=0.25, channels=3,
                   frames_per_pointing=6, hot_pixels=50, satellite_prob=0.2, sip=True,
                   channel_response=SEESTAR_RESPONSE),
}


def run_demo(
    out_dir: str | os.PathLike,
    *,
    seed: int = 1,
    size: str = "small",
    config: Config | None = None,
    progress: Progress | None = None,
) -> tuple[RunResult, dict]:
    """Write a synthetic survey to ``out_dir/frames``, mosaic it into ``out_dir``, score it.

    Returns
    -------
    result : RunResult
    metrics : dict
        ``residual_rms_rel`` (robust RMS of mosaic minus the affinely fitted truth,
        relative to the truth's dynamic range), ``seam_score`` (~1 = seamless, see
        `skymosaic.synth.seam_score`), ``coverage`` (fraction of finite pixels).
    """
    if size not in DEMO_SURVEYS:
        raise ValueError(f"demo size {size!r} is not one of {sorted(DEMO_SURVEYS)}")
    out = Path(out_dir)
    survey = make_survey(seed=seed, **DEMO_SURVEYS[size])
    frames_dir = out / "frames"
    paths = write_survey(survey, frames_dir, prefix="demo")
    logger.info("wrote %d synthetic frames to %s", len(paths), frames_dir)
    result = run_pipeline([frames_dir], out, config or Config(), progress=progress)
    data, wcs, _ = read_mosaic(result.mosaic_path)
    truth = survey.truth_image(wcs, data.shape[1:])
    borders = frame_border_mask(survey.frames, wcs, data.shape[1:], width=2)
    metrics = {
        "frames": len(paths),
        "residual_rms_rel": residual_rms(data, truth, relative=True),
        "seam_score": seam_score(data, truth, borders),
        "coverage": coverage_fraction(data),
    }
    result.report["demo_metrics"] = metrics
    return result, metrics
