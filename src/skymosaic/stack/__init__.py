"""skymosaic.stack: normalise, weight, reject and combine registered frames into a master tile.

See ``docs/stacking.md``. The entry point is `stack_cube`; the building blocks are public
so that other engines (mosaic coadd, GPU backend) can reuse the same per-pixel kernels.
"""

from skymosaic.stack._combine import (
    COMBINE_METHODS,
    StackResult,
    StackSettings,
    chunk_rows_for,
    stack_cube,
)
from skymosaic.stack._normalize import (
    NORMALIZATION_METHODS,
    estimate_normalization,
    select_reference,
)
from skymosaic.stack._reject import (
    REJECTION_METHODS,
    count_rejected,
    nanmedian_frames,
    reject,
    reject_kappa_sigma,
    reject_linear_fit,
    reject_minmax,
    reject_winsorized,
)
from skymosaic.stack._weights import WEIGHTING_METHODS, frame_weights

__all__ = [
    "COMBINE_METHODS",
    "NORMALIZATION_METHODS",
    "REJECTION_METHODS",
    "WEIGHTING_METHODS",
    "StackResult",
    "StackSettings",
    "chunk_rows_for",
    "count_rejected",
    "estimate_normalization",
    "frame_weights",
    "nanmedian_frames",
    "reject",
    "reject_kappa_sigma",
    "reject_linear_fit",
    "reject_minmax",
    "reject_winsorized",
    "select_reference",
    "stack_cube",
]
