"""Is a WCS believable? Checks that catch headers that would silently ruin a mosaic.

`skymosaic.io.validate_wcs` already rejects what cannot be used at all (singular or
degenerate matrix, non-invertible over the frame, wrong units). Here we add what only the
optics can tell: a pixel scale far from 206.265 * pixel size / focal length means the
WCS belongs to another frame, another binning or another telescope, and a frame placed
with it would land in the wrong place at the wrong size.
"""

from __future__ import annotations

import logging

from astropy.io import fits
from astropy.wcs import WCS

from skymosaic.astrometry._hints import SolveHints, read_header, solve_hints
from skymosaic.io._frames import FrameError, FrameInfo, validate_wcs

__all__ = ["check_wcs", "describe_non_celestial", "review_wcs"]

logger = logging.getLogger(__name__)


def check_wcs(
    wcs: WCS,
    shape: tuple[int, int],
    *,
    hints: SolveHints | None = None,
    max_scale_ratio: float = 1.5,
) -> str | None:
    """Why a celestial WCS should not be trusted on an (H, W) frame, or None if it is fine.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        The celestial WCS (header or sidecar).
    shape : (int, int)
        ``(H, W)`` of the frame.
    hints : SolveHints, optional
        From the frame's header; when it knows the optics' pixel scale, a WCS scale off by
        more than ``max_scale_ratio`` (either way) is reported.
    max_scale_ratio : float
        Largest accepted ratio between the WCS and the optics' pixel scales (> 1).

    Returns
    -------
    str or None
        The reason, with the figures (e.g. ``"WCS pixel scale 4.80\"/px is 2.01x the
        optics' 2.39\"/px (FOCALLEN 250 mm, XPIXSZ 2.9 um)"``), or None.

    Examples
    --------
    >>> w = WCS(naxis=2)
    >>> w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.cdelt = [-2.39 / 3600, 2.39 / 3600]
    >>> check_wcs(w, (100, 100), hints=SolveHints(scale_arcsec=2.39)) is None
    True
    """
    if max_scale_ratio <= 1:
        raise ValueError(f"max_scale_ratio must be > 1, got {max_scale_ratio}")
    try:
        scale = validate_wcs(wcs, shape)
    except FrameError as err:
        return str(err)
    if hints is not None and hints.scale_arcsec:
        ratio = scale / hints.scale_arcsec
        if not (1.0 / max_scale_ratio <= ratio <= max_scale_ratio):
            return (f"WCS pixel scale {scale:.3f}\"/px is {ratio:.2f}x the optics' "
                    f"{hints.scale_arcsec:.3f}\"/px ({hints.scale_source}); allowed factor "
                    f"{max_scale_ratio:g}")
    return None


def review_wcs(info: FrameInfo, *, check_scale: bool = True,
               max_scale_ratio: float = 1.5) -> str | None:
    """Distrust a frame's WCS when it is clearly wrong, so that the frame gets plate-solved.

    A WCS that `skymosaic.io.scan_frame` (with ``on_bad_wcs="drop"``) found unusable, a
    header whose WCS axes are not celestial, and (with ``check_scale``) a WCS whose pixel
    scale is off by more than ``max_scale_ratio`` from the optics' (FOCALLEN, XPIXSZ) are
    reported with one warning naming the file and the figures. In the last case the WCS
    is removed from ``info``. The reason is kept in ``info.extra["bad_wcs"]`` and returned
    (None when the WCS is fine or the frame simply has none).
    """
    reason = info.extra.get("bad_wcs")
    if reason is None and info.wcs is None:
        try:
            reason = describe_non_celestial(read_header(info.path, info.hdu))
        except (OSError, ValueError):
            reason = None
    elif reason is None and check_scale:
        try:
            hints = solve_hints(read_header(info.path, info.hdu))
        except (OSError, ValueError):
            hints = None
        if hints is not None and hints.scale_arcsec:
            problem = check_wcs(info.wcs, info.shape[1:], hints=hints,
                                max_scale_ratio=max_scale_ratio)
            if problem is not None:
                kind = "sidecar" if (info.wcs_source or "").startswith("sidecar") else "header"
                reason = f"{kind} WCS distrusted: {problem}"
                info.wcs = info.wcs_source = info.pixel_scale_arcsec = info.footprint = None
    if reason is not None:
        info.extra["bad_wcs"] = reason
        logger.warning("%s: %s; plate-solving it instead", info.name, reason)
    return reason


def describe_non_celestial(header: fits.Header) -> str | None:
    """A reason when a header *has* WCS axes but none is celestial (e.g. ``LINEAR``), else None."""
    ctypes = [str(header.get(f"CTYPE{i}", "")).strip() for i in (1, 2)]
    if not any(ctypes):
        return None
    upper = [c.upper() for c in ctypes]
    celestial = ("RA--", "DEC-", "GLON", "GLAT", "ELON", "ELAT", "SLON", "SLAT", "HLON", "HLAT")
    if any(c.startswith(celestial) for c in upper):
        return None
    return f"header WCS is not celestial (CTYPE1={ctypes[0]!r}, CTYPE2={ctypes[1]!r})"
