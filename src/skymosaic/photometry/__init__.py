"""Photometric normalisation: valid masks, overlap graph, pairwise fits, global solve of
gains and per-input sky surfaces (or offsets and background matching), coverage
renormalisation and the colour calibration of the mosaic."""

from skymosaic.photometry._background import (
    BackgroundEstimate,
    BackgroundMatch,
    apply_background_match,
    estimate_background,
    match_backgrounds,
)
from skymosaic.photometry._color import (
    COLOR_MODES,
    COLOR_WHITE,
    ColorCalibration,
    ColorOptions,
    measure_color,
)
from skymosaic.photometry._coverage import coverage_gains
from skymosaic.photometry._engine import (
    GAIN_SOURCES,
    SKY_SURFACES,
    PhotometryOptions,
    PhotometryReport,
    normalize_tiles,
    solve_corrections,
    tile_sky_samples,
)
from skymosaic.photometry._linefit import Relation, estimate_noise, fit_linear_relation
from skymosaic.photometry._masks import valid_mask
from skymosaic.photometry._overlaps import Overlap, bbox_candidate_pairs, find_overlaps
from skymosaic.photometry._regression import (
    PairRelation,
    detrend,
    fit_overlap,
    overlap_relations,
    pairwise_relations,
)
from skymosaic.photometry._solve import Solution, apply_gains_offsets, solve_gains_offsets
from skymosaic.photometry._surfaces import (
    SkySamples,
    SurfaceSolution,
    overlap_block,
    sky_samples,
    solve_sky_surfaces,
    to_samples,
)

__all__ = [
    "COLOR_MODES",
    "COLOR_WHITE",
    "GAIN_SOURCES",
    "SKY_SURFACES",
    "BackgroundEstimate",
    "BackgroundMatch",
    "ColorCalibration",
    "ColorOptions",
    "Overlap",
    "PairRelation",
    "PhotometryOptions",
    "PhotometryReport",
    "Relation",
    "SkySamples",
    "Solution",
    "SurfaceSolution",
    "apply_background_match",
    "apply_gains_offsets",
    "bbox_candidate_pairs",
    "coverage_gains",
    "detrend",
    "estimate_background",
    "estimate_noise",
    "find_overlaps",
    "fit_linear_relation",
    "fit_overlap",
    "match_backgrounds",
    "measure_color",
    "normalize_tiles",
    "overlap_block",
    "overlap_relations",
    "pairwise_relations",
    "sky_samples",
    "solve_corrections",
    "solve_gains_offsets",
    "solve_sky_surfaces",
    "tile_sky_samples",
    "to_samples",
    "valid_mask",
]
