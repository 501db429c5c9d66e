"""Photometric normalisation: valid masks, overlap graph, pairwise fits, global solve,
background matching and coverage renormalisation."""

from skymosaic.photometry._background import (
    BackgroundEstimate,
    BackgroundMatch,
    apply_background_match,
    estimate_background,
    match_backgrounds,
)
from skymosaic.photometry._coverage import coverage_gains
from skymosaic.photometry._engine import PhotometryOptions, PhotometryReport, normalize_tiles
from skymosaic.photometry._linefit import Relation, estimate_noise, fit_linear_relation
from skymosaic.photometry._masks import valid_mask
from skymosaic.photometry._overlaps import Overlap, bbox_candidate_pairs, find_overlaps
from skymosaic.photometry._regression import PairRelation, detrend, fit_overlap, pairwise_relations
from skymosaic.photometry._solve import Solution, apply_gains_offsets, solve_gains_offsets

__all__ = [
    "BackgroundEstimate",
    "BackgroundMatch",
    "Overlap",
    "PairRelation",
    "PhotometryOptions",
    "PhotometryReport",
    "Relation",
    "Solution",
    "apply_background_match",
    "apply_gains_offsets",
    "bbox_candidate_pairs",
    "coverage_gains",
    "estimate_background",
    "estimate_noise",
    "find_overlaps",
    "detrend",
    "fit_linear_relation",
    "fit_overlap",
    "match_backgrounds",
    "normalize_tiles",
    "pairwise_relations",
    "solve_gains_offsets",
    "valid_mask",
]
