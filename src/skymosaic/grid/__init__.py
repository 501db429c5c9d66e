"""Grid/survey mode: a regular tile grid on one global WCS, per-tile stacks, `assemble_tiles`."""

from skymosaic.grid._assemble import GRID_BLENDS, AssembleResult, assemble_tiles, weighted_mean
from skymosaic.grid._geometry import GridTile, frame_polygons, make_tile_grid, tile_grid_of
from skymosaic.grid._run import GridProducts, find_plan, run_grid

__all__ = [
    "GRID_BLENDS",
    "AssembleResult",
    "GridProducts",
    "GridTile",
    "assemble_tiles",
    "find_plan",
    "frame_polygons",
    "make_tile_grid",
    "run_grid",
    "tile_grid_of",
    "weighted_mean",
]
