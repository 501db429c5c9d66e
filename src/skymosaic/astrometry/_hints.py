"""What a frame's header says about where it points and how big its pixels are on the sky.

Smart telescopes (ZWO Seestar, Dwarf, ASIAIR, NINA captures) write the mount's rough
pointing and the optics instead of a WCS. These hints narrow a plate solver's search:

* position: ``RA``/``DEC`` (degrees, or sexagesimal strings), ``OBJCTRA``/``OBJCTDEC``
  (sexagesimal, RA in hours: MaxIm DL, NINA, SharpCap), ``RA_OBJ``/``DEC_OBJ``, and as a
  last resort the ``CRVAL1/2`` of an equatorial WCS that failed validation;
* pixel scale: ``PIXSCALE``/``SECPIX``/``SCALE`` (arcsec/px) when present, else
  206.265 * pixel size [um] / focal length [mm] from ``FOCALLEN`` and ``XPIXSZ`` (MaxIm DL
  convention: the pixel size *after* binning, as Seestar, NINA and ASIAIR write it) or
  ``PIXSIZE``/``PIXSIZE1``/``PIXELSIZE`` (the physical pixel, multiplied by
  ``XBINNING``/``CCDXBIN``/``BINX``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits

__all__ = ["SolveHints", "parse_dec", "parse_ra", "read_hints", "solve_hints"]

logger = logging.getLogger(__name__)

#: arcsec per radian / 1000: scale ["/px] = ARCSEC_PER_UM_MM * pixel [um] / focal length [mm]
ARCSEC_PER_UM_MM = 206.264806

_POSITION_KEYS = (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC"), ("RA_OBJ", "DEC_OBJ"))
_SCALE_KEYS = ("PIXSCALE", "SECPIX", "SECPIX1", "SCALE")
_FOCAL_KEYS = ("FOCALLEN", "FOCAL", "FOCLEN")
_BINNED_PIXEL_KEYS = ("XPIXSZ",)
_PHYSICAL_PIXEL_KEYS = ("PIXSIZE", "PIXSIZE1", "PIXELSIZE")
_BINNING_KEYS = ("XBINNING", "CCDXBIN", "BINX")
_UNITS = str.maketrans({c: " " for c in "hHdDmMsS:°'\""})


@dataclass(frozen=True)
class SolveHints:
    """Search hints for a plate solver, from a frame's header.

    Attributes
    ----------
    ra_deg, dec_deg : float or None
        Approximate centre of the field (ICRS degrees), None when the header has none.
    scale_arcsec : float or None
        Pixel scale of the frame as stored (arcsec/px), None when unknown.
    position_source, scale_source : str or None
        Which header keys the values come from (for messages and run.json).
    """

    ra_deg: float | None = None
    dec_deg: float | None = None
    scale_arcsec: float | None = None
    position_source: str | None = None
    scale_source: str | None = None

    @property
    def has_position(self) -> bool:
        return self.ra_deg is not None and self.dec_deg is not None

    def to_dict(self) -> dict:
        return {"ra_deg": self.ra_deg, "dec_deg": self.dec_deg, "scale_arcsec": self.scale_arcsec,
                "position_source": self.position_source, "scale_source": self.scale_source}


def _sexagesimal(text: str) -> tuple[float, bool] | None:
    """``(value, sexagesimal)`` of "12 50 53.1", "+41:07:16", "12h50m53s", "6h" or "193.07".

    ``sexagesimal`` is True when the text has fields or units (then an RA is in hours).
    """
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-").strip()
    fields = body.translate(_UNITS).split()
    if not 1 <= len(fields) <= 3:
        return None
    try:
        numbers = [float(f) for f in fields]
    except ValueError:
        return None
    if any(n < 0 for n in numbers):
        return None
    value = sum(n / 60.0**k for k, n in enumerate(numbers))
    return sign * value, len(fields) > 1 or body != fields[0]


def _header_angle(value, key: str, what: str) -> tuple[float, bool] | None:
    """``(number, written in hours)`` from a header number or sexagesimal string, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value), False
    parsed = _sexagesimal(str(value))
    if parsed is None:
        logger.debug("%s = %r is not %s", key, value, what)
    return parsed


def parse_ra(value, *, key: str = "RA") -> float | None:
    """Right ascension in degrees from a header value.

    Numbers are degrees. Strings with separators (``"12 50 53.1"``, ``"12:50:53"``,
    ``"12h50m53s"``) are hours; a plain numeric string is degrees. Returns None for
    anything unparseable or out of range.

    Examples
    --------
    >>> parse_ra("12 00 00")
    180.0
    >>> parse_ra(193.07)
    193.07
    """
    parsed = _header_angle(value, key, "a right ascension")
    if parsed is None:
        return None
    number, hours = parsed
    deg = number * 15.0 if hours else number
    if not (math.isfinite(deg) and 0.0 <= deg < 360.0 + 1e-9):
        return None
    return deg % 360.0


def parse_dec(value, *, key: str = "DEC") -> float | None:
    """Declination in degrees from a header value (number, or ``"+41 07 16"``/``"-02:45:19"``).

    Examples
    --------
    >>> parse_dec("-00 30 00")
    -0.5
    """
    parsed = _header_angle(value, key, "a declination")
    if parsed is None:
        return None
    deg = parsed[0]
    if not (math.isfinite(deg) and -90.0 <= deg <= 90.0):
        return None
    return deg


def _positive(header: fits.Header, keys) -> tuple[str, float] | None:
    for key in keys:
        value = header.get(key)
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number) and number > 0:
            return key, number
    return None


def _position(header: fits.Header) -> tuple[float | None, float | None, str | None]:
    for ra_key, dec_key in _POSITION_KEYS:
        if ra_key in header and dec_key in header:
            ra, dec = parse_ra(header[ra_key], key=ra_key), parse_dec(header[dec_key], key=dec_key)
            if ra is not None and dec is not None:
                return ra, dec, f"{ra_key}/{dec_key}"
    ctype = str(header.get("CTYPE1", "")).upper()
    if ctype.startswith("RA--") and "CRVAL1" in header and "CRVAL2" in header:
        ra = parse_ra(header["CRVAL1"], key="CRVAL1")
        dec = parse_dec(header["CRVAL2"], key="CRVAL2")
        if ra is not None and dec is not None:
            return ra, dec, "CRVAL1/CRVAL2"
    return None, None, None


def _scale(header: fits.Header) -> tuple[float | None, str | None]:
    direct = _positive(header, _SCALE_KEYS)
    if direct is not None and direct[1] < 3600:
        return direct[1], f"{direct[0]} {direct[1]:g}\"/px"
    focal = _positive(header, _FOCAL_KEYS)
    if focal is None:
        return None, None
    pixel = _positive(header, _BINNED_PIXEL_KEYS)
    binning = 1.0
    if pixel is None:
        pixel = _positive(header, _PHYSICAL_PIXEL_KEYS)
        if pixel is None:
            return None, None
        found = _positive(header, _BINNING_KEYS)
        binning = found[1] if found is not None else 1.0
    scale = ARCSEC_PER_UM_MM * pixel[1] * binning / focal[1]
    source = f"{focal[0]} {focal[1]:g} mm, {pixel[0]} {pixel[1]:.3g} um"
    if binning != 1.0:
        source += f" x{binning:g} binning"
    return scale, source


def solve_hints(header: fits.Header) -> SolveHints:
    """The plate-solving hints of a header (see the module docstring for the keys).

    Examples
    --------
    >>> h = fits.Header({"RA": 193.07, "DEC": 40.98, "FOCALLEN": 250, "XPIXSZ": 2.9})
    >>> round(solve_hints(h).scale_arcsec, 3)
    2.393
    """
    ra, dec, position_source = _position(header)
    scale, scale_source = _scale(header)
    return SolveHints(ra_deg=ra, dec_deg=dec, scale_arcsec=scale,
                      position_source=position_source, scale_source=scale_source)


def read_hints(path: str | os.PathLike, hdu: int = 0) -> SolveHints:
    """`solve_hints` of the header of HDU ``hdu`` of a FITS file (headers only are read)."""
    return solve_hints(read_header(path, hdu))


def read_header(path: str | os.PathLike, hdu: int = 0) -> fits.Header:
    """The header of HDU ``hdu`` (compressed files included), without reading pixels."""
    with open(Path(path), "rb") as fh, fits.open(fh, memmap=False, lazy_load_hdus=True) as hdul:
        return hdul[hdu].header.copy()
