"""The offline report of a run: deep-zoom viewer, overlays, live progress, HiPS export.

`write_report` writes ``OUT/index.html`` (docs/report.md); `write_dzi` the streamed Deep
Zoom pyramid; `serve_report` serves a run folder on 127.0.0.1 (live progress while a run is
going); `export_hips` a HiPS of the science mosaic (readable by Aladin).
"""

from skymosaic.report._dzi import DziPyramid, write_dzi
from skymosaic.report._hips import export_hips
from skymosaic.report._html import ReportError, write_report
from skymosaic.report._mosaic import MosaicFile
from skymosaic.report._serve import (
    LiveProgress,
    ReportServer,
    serve_report,
    serve_until_interrupted,
)
from skymosaic.report._targets import write_targets_index

__all__ = [
    "DziPyramid",
    "LiveProgress",
    "MosaicFile",
    "ReportError",
    "ReportServer",
    "export_hips",
    "serve_report",
    "serve_until_interrupted",
    "write_dzi",
    "write_report",
    "write_targets_index",
]
