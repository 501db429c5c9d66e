"""Multi-resolution (Burt & Adelson) blending, Gaussian feathering and their pyramids."""

from skymosaic.blend._blend import (
    BLEND_METHODS,
    BlendResult,
    band_weights,
    blend_tiles,
    distance_ramp,
    feather_weights,
)
from skymosaic.blend._pyramid import (
    collapse,
    expand_to_base,
    gaussian_pyramid,
    laplacian_pyramid,
    levels_for_overlap,
    masked_gaussian_pyramid,
    masked_laplacian_pyramid,
    pyramid_shapes,
)

__all__ = [
    "BLEND_METHODS",
    "BlendResult",
    "band_weights",
    "blend_tiles",
    "collapse",
    "distance_ramp",
    "expand_to_base",
    "feather_weights",
    "gaussian_pyramid",
    "laplacian_pyramid",
    "levels_for_overlap",
    "masked_gaussian_pyramid",
    "masked_laplacian_pyramid",
    "pyramid_shapes",
]
