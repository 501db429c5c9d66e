"""FITS reading (frames, Bayer, WCS sidecars) and atomic writing (mosaic, preview, reports)."""

from skymosaic.io._bayer import BAYER_PATTERNS, bayer_masks, debayer, normalize_bayer_pattern
from skymosaic.io._diagnostics import write_photometry_diagnostics
from skymosaic.io._export import EXPORT_FORMATS
from skymosaic.io._frames import (
    FITS_SUFFIXES,
    FrameError,
    FrameInfo,
    RawLayout,
    discover_inputs,
    find_wcs_sidecar,
    frame_footprint,
    load_frame,
    scan_frame,
    validate_wcs,
)
from skymosaic.io._stretch import STRETCH_CURVES
from skymosaic.io._writer import (
    atomic_path,
    read_mosaic,
    stretch_preview,
    write_json,
    write_mosaic,
    write_preview,
)

__all__ = [
    "BAYER_PATTERNS",
    "EXPORT_FORMATS",
    "FITS_SUFFIXES",
    "STRETCH_CURVES",
    "FrameError",
    "FrameInfo",
    "RawLayout",
    "atomic_path",
    "bayer_masks",
    "debayer",
    "discover_inputs",
    "find_wcs_sidecar",
    "frame_footprint",
    "load_frame",
    "normalize_bayer_pattern",
    "read_mosaic",
    "scan_frame",
    "stretch_preview",
    "validate_wcs",
    "write_json",
    "write_mosaic",
    "write_photometry_diagnostics",
    "write_preview",
]
