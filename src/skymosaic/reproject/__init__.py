"""Fast WCS reprojection: coarse-grid pixel mapping, NaN-aware kernels, output grids."""

from skymosaic.reproject._grid import (
    PROJECTIONS,
    ROTATIONS,
    OutputGrid,
    grid_from_header,
    optimal_grid,
)
from skymosaic.reproject._mapping import PixelMap, exact_pixel_map, pixel_map
from skymosaic.reproject._resample import EDGES, KERNEL_RADIUS, KERNELS, resample

__all__ = [
    "EDGES",
    "KERNELS",
    "KERNEL_RADIUS",
    "PROJECTIONS",
    "ROTATIONS",
    "OutputGrid",
    "PixelMap",
    "exact_pixel_map",
    "grid_from_header",
    "optimal_grid",
    "pixel_map",
    "resample",
]
