"""Solved WCS sidecars in the run directory, keyed by the frame's content.

A solution is stored as ``RUN_DIR/wcs/<first 16 hex digits of the SHA-256 of the file>.wcs``,
a header-only FITS file in astrometry.net's ``.wcs`` format (TAN-SIP cards plus
``IMAGEW``/``IMAGEH``, the size of the full-resolution frame it describes). Keyed by
content, not by name: a renamed or copied frame reuses its solution, and a frame whose
pixels changed is solved again. Input files are never touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skymosaic.io._writer import atomic_path

__all__ = ["CACHE_DIRNAME", "content_hash", "read_solution", "solution_path", "write_solution"]

logger = logging.getLogger(__name__)

#: Folder of the run directory holding the solved sidecars.
CACHE_DIRNAME = "wcs"

# Cards of a solver's header that describe the solution (everything else is dropped).
_WCS_PREFIXES = ("WCSAXES", "CTYPE", "CUNIT", "CRVAL", "CRPIX", "CD1_", "CD2_", "CDELT", "PC1_",
                 "PC2_", "CROTA", "LONPOLE", "LATPOLE", "EQUINOX", "RADESYS", "A_", "B_", "AP_",
                 "BP_", "PV1_", "PV2_", "IMAGEW", "IMAGEH")


def content_hash(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def solution_path(run_dir: str | os.PathLike, digest: str) -> Path:
    """Where the solution of the frame with SHA-256 ``digest`` lives in ``run_dir``."""
    return Path(run_dir) / CACHE_DIRNAME / f"{digest[:16]}.wcs"


def write_solution(
    path: str | os.PathLike,
    header: fits.Header,
    *,
    width: int,
    height: int,
    digest: str,
    frame_name: str,
    solver: str,
) -> Path:
    """Write a solver's WCS as a header-only FITS sidecar, atomically.

    Only the WCS cards of ``header`` are kept; ``IMAGEW``/``IMAGEH`` are set to the frame
    size and the provenance (solver, frame name, content hash) is recorded.
    """
    out = fits.Header()
    for card in header.cards:
        if card.keyword.startswith(_WCS_PREFIXES):
            out.append(card)
    out["IMAGEW"] = (int(width), "width of the frame this WCS describes, px")
    out["IMAGEH"] = (int(height), "height of the frame this WCS describes, px")
    out["SMSOLVER"] = (solver, "plate solver that produced this WCS")
    out["SMSHA256"] = digest  # SHA-256 of the solved file (64 digits: no room for a comment)
    out["SMFRAME"] = frame_name[:68]  # the file's name when it was solved
    out.add_history(f"plate-solved by skymosaic with {solver}; SMSHA256 = SHA-256 of the frame")
    hdu = fits.PrimaryHDU(header=out)
    with atomic_path(path, suffix=".wcs") as tmp:
        hdu.writeto(tmp, overwrite=True)
    return Path(path)


def read_solution(
    path: str | os.PathLike, *, width: int, height: int, digest: str | None = None
) -> WCS | None:
    """The celestial WCS of a cached sidecar, or None when it is missing or does not fit.

    A sidecar fits when its ``IMAGEW``/``IMAGEH`` equal the frame's ``width``/``height``
    and, when ``digest`` is given, its ``SMSHA256`` equals it (a 16-digit name clash).
    Unreadable or mismatched sidecars are logged and ignored (the frame is solved again).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        header = fits.getheader(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
    except (OSError, ValueError, KeyError, MemoryError) as err:
        logger.warning("%s: unreadable cached WCS (%s); solving again", path.name, err)
        return None
    size = (header.get("IMAGEW"), header.get("IMAGEH"))
    if size != (width, height):
        logger.warning("%s: cached WCS is for a %sx%s frame, not %dx%d; solving again",
                       path.name, size[0], size[1], width, height)
        return None
    if digest is not None and header.get("SMSHA256", digest) != digest:
        logger.warning("%s: cached WCS belongs to another file (hash %s); solving again",
                       path.name, str(header.get("SMSHA256"))[:16])
        return None
    if not wcs.has_celestial:
        logger.warning("%s: cached WCS is not celestial; solving again", path.name)
        return None
    wcs = wcs.celestial
    wcs.pixel_shape = (width, height)
    return wcs
