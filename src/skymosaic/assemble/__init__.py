"""Phase 5: the coadd of frames or tiles onto the output grid."""

from skymosaic.assemble._coadd import (
    COADD_REJECT,
    COADD_WEIGHTINGS,
    BlockStore,
    CoaddOptions,
    CoaddResult,
    DiskMosaic,
    coadd,
    coadd_memory_floor,
    resample_source,
    source_bbox,
)
from skymosaic.assemble._phase5 import MatchResult, match_sources, renormalise_coverage
from skymosaic.assemble._sources import ArraySource, FileSource, ImageSource

__all__ = [
    "COADD_REJECT",
    "COADD_WEIGHTINGS",
    "ArraySource",
    "BlockStore",
    "CoaddOptions",
    "CoaddResult",
    "DiskMosaic",
    "FileSource",
    "ImageSource",
    "MatchResult",
    "coadd",
    "coadd_memory_floor",
    "match_sources",
    "renormalise_coverage",
    "resample_source",
    "source_bbox",
]
