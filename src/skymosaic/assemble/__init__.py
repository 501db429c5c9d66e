"""Phase 5: the coadd of frames or tiles onto the output grid."""

from skymosaic.assemble._coadd import (
    CoaddOptions,
    CoaddResult,
    DiskMosaic,
    coadd,
    coadd_memory_floor,
    resample_source,
    source_bbox,
)
from skymosaic.assemble._sources import ArraySource, FileSource, ImageSource

__all__ = [
    "ArraySource",
    "CoaddOptions",
    "CoaddResult",
    "DiskMosaic",
    "FileSource",
    "ImageSource",
    "coadd",
    "coadd_memory_floor",
    "resample_source",
    "source_bbox",
]
