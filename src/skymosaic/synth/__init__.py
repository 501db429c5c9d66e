"""Synthetic surveys with a known truth, and mosaic quality metrics."""

from skymosaic.synth._metrics import (
    BorderSteps,
    border_step_ratio,
    coverage_fraction,
    fit_affine,
    frame_border_mask,
    large_scale_residual,
    residual_map,
    residual_rms,
    seam_score,
    star_color_scatter,
    star_flux_scatter,
)
from skymosaic.synth._seestar import (
    SEESTAR_PIXEL_SCALE_ARCSEC,
    SEESTAR_RESPONSE,
    make_seestar_frames,
    write_seestar_frames,
)
from skymosaic.synth._sky import TruthSky, celestial_wcs, make_truth_sky
from skymosaic.synth._survey import Survey, SynthFrame, make_survey, write_survey

__all__ = [
    "SEESTAR_PIXEL_SCALE_ARCSEC",
    "SEESTAR_RESPONSE",
    "BorderSteps",
    "Survey",
    "SynthFrame",
    "TruthSky",
    "border_step_ratio",
    "celestial_wcs",
    "coverage_fraction",
    "fit_affine",
    "frame_border_mask",
    "large_scale_residual",
    "make_seestar_frames",
    "make_survey",
    "make_truth_sky",
    "residual_map",
    "residual_rms",
    "seam_score",
    "star_color_scatter",
    "star_flux_scatter",
    "write_seestar_frames",
    "write_survey",
]
