"""Reading frames: discovery, header-only classification, and pixel loading.

The frame catalog is built from headers alone (cheap, even for thousands of compressed
frames); pixels are read only when a phase needs them, and only the rows/columns it needs
when the file allows it (uncompressed FITS are memory-mapped).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from skymosaic.io._bayer import debayer, normalize_bayer_pattern

__all__ = [
    "FITS_SUFFIXES",
    "FrameError",
    "FrameInfo",
    "RawLayout",
    "discover_inputs",
    "find_wcs_sidecar",
    "frame_footprint",
    "load_frame",
    "scan_frame",
    "validate_wcs",
]

logger = logging.getLogger(__name__)

#: File name endings recognised as FITS frames (compressed variants included).
FITS_SUFFIXES = (
    ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fit.fz", ".fz",
    ".fits.bz2", ".fit.bz2",
)

_EXPOSURE_KEYS = ("EXPTIME", "EXPOSURE", "ITIME", "EXP_TIME")
_FILTER_KEYS = ("FILTER", "FILTNAM", "FILTER1", "BAND")
_DATE_KEYS = ("DATE-OBS", "DATE_OBS", "DATE")
#: site longitude, degrees east (a number or sexagesimal "+012 30 00" / "12:30:00")
_LONGITUDE_KEYS = ("SITELONG", "LONG-OBS", "OBSGEO-L", "SITE-LON", "OBS-LONG")


class FrameError(ValueError):
    """A frame that cannot be used: the message gives the reason (naming the header field
    where one is to blame), ``path`` the file (`scan_frame` sets it)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


#: the most axes a FITS header may declare (the FITS standard's limit)
_MAX_NAXIS = 999


def _axis_count(header: fits.Header, key: str) -> int:
    """A NAXIS or NAXISn card as a non-negative int, else a `FrameError` naming it."""
    value = header.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0 or (
            key == "NAXIS" and value > _MAX_NAXIS):
        limit = f" <= {_MAX_NAXIS}" if key == "NAXIS" else ""
        raise FrameError(f"bad {key} = {value!r} in the header (an integer >= 0{limit})")
    return int(value)


#: BITPIX -> the big-endian dtype of the stored values (FITS standard, section 5.2)
_BITPIX_DTYPE = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


@dataclass(frozen=True)
class RawLayout:
    """Where an uncompressed image HDU's values lie in its file, and the file it was read
    from (size and modification time: a file changed since is read through astropy).

    Only for values that need no scaling, or the unsigned-16-bit convention (``BZERO =
    32768``, exact in float32): reading rows straight from the file then gives the same
    float32 values as astropy's ``section``, without opening and parsing the file per read
    (about 5 ms per read: a fifth of the photometry's per-overlap reads at Seestar size).
    """

    offset: int  #: byte offset of the first value
    dtype: str  #: stored dtype (big-endian)
    dims: tuple[int, ...]  #: numpy-order shape of the stored array
    bzero: float  #: 0, or 32768 for unsigned 16-bit
    size: int  #: the file's size when scanned
    mtime_ns: int  #: its modification time then

    @classmethod
    def of(cls, path: Path, hdu) -> RawLayout | None:
        """The layout of ``hdu`` (opened from ``path``), or None when it does not qualify."""
        plain = path.suffix.lower() in (".fits", ".fit", ".fts")
        if not plain or isinstance(hdu, fits.CompImageHDU):
            return None
        hdr = hdu.header
        dtype = _BITPIX_DTYPE.get(hdr.get("BITPIX"))
        bscale, bzero = hdr.get("BSCALE", 1), hdr.get("BZERO", 0)
        if dtype is None or bscale != 1 or not (bzero == 0 or (dtype == ">i2" and bzero == 32768)):
            return None
        if dtype[-2] == "i" and "BLANK" in hdr:
            return None
        try:
            offset = int(hdu.fileinfo()["datLoc"])
            st = path.stat()
            dims = tuple(int(hdr[f"NAXIS{i}"]) for i in range(hdr["NAXIS"], 0, -1))
        except (KeyError, TypeError, ValueError, OSError, AttributeError):
            return None
        if offset + math.prod(dims) * np.dtype(dtype).itemsize > st.st_size:
            return None  # truncated: astropy's path reports it
        return cls(offset, dtype, dims, float(bzero), st.st_size, st.st_mtime_ns)

    def read_rows(self, path: Path, key: tuple) -> np.ndarray | None:
        """``key`` (as `_read_section` gets it, numpy order over ``dims``) as float32, reading
        only the rows it needs; None when the file changed or the key is not plain slices
        over the two image axes plus leading integer indices."""
        try:
            st = path.stat()
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns) or len(key) != len(self.dims):
            return None
        lead, (rows, cols) = key[:-2], key[-2:]
        if not (all(isinstance(k, int) for k in lead) and isinstance(rows, slice)
                and isinstance(cols, slice)):
            return None
        h, w = self.dims[-2:]
        r0, r1, step = rows.indices(h)
        if step != 1 or r1 <= r0:
            return None
        item = np.dtype(self.dtype).itemsize
        plane = math.prod(self.dims[-2:])
        index = 0
        for k, n in zip(lead, self.dims[:-2], strict=True):
            index = index * n + k
        start = self.offset + (index * plane + r0 * w) * item
        count = (r1 - r0) * w
        with open(path, "rb") as fh:
            buf = os.pread(fh.fileno(), count * item, start)
        if len(buf) != count * item:
            missing = count * item - len(buf)
            raise FrameError(f"cannot read pixels (file ends {missing} bytes early)")
        values = np.frombuffer(buf, dtype=self.dtype).reshape(r1 - r0, w)[:, cols]
        if self.bzero:
            return (values.astype(np.int32) + int(self.bzero)).astype(np.float32)
        return values.astype(np.float32)


@dataclass
class FrameInfo:
    """What the header says about one frame (no pixels are held).

    ``shape`` is the shape of the image once loaded: (C, H, W) with C = 3 for debayered
    or colour frames. ``footprint`` holds the sky corners (RA, Dec in degrees) of the
    pixel grid's outer edges, in the order (0,0), (W,0), (W,H), (0,H).
    """

    path: Path
    hdu: int
    shape: tuple[int, int, int]
    layout: str  # "2D", "CHW", "HWC" or "BAYER"
    bayer_pattern: str | None = None
    exposure: float | None = None
    filter: str | None = None
    date_obs: str | None = None
    object: str | None = None
    instrument: str | None = None
    mount: str | None = None
    site_longitude: float | None = None  # degrees east, from SITELONG & co. (or OBSGEO-X/Y)
    wcs: WCS | None = None
    wcs_source: str | None = None  # "header" or "sidecar:<path>"
    pixel_scale_arcsec: float | None = None
    footprint: np.ndarray | None = None
    has_weight: bool = False
    extra: dict = field(default_factory=dict)
    #: where the pixels lie in an uncompressed file (`RawLayout`), for reads without astropy
    raw: RawLayout | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    @property
    def kind(self) -> str:
        """``"bayer"``, ``"rgb"`` or ``"mono"``."""
        if self.layout == "BAYER":
            return "bayer"
        return "rgb" if self.channels == 3 else "mono"

    def to_dict(self) -> dict:
        """A JSON-friendly summary (used by ``run.json`` and ``skymosaic inspect``)."""
        center = None
        if self.footprint is not None:
            center = [float(v) for v in _mean_sky_position(self.footprint)]
        return {
            "path": str(self.path),
            "hdu": self.hdu,
            "shape": list(self.shape),
            "kind": self.kind,
            "layout": self.layout,
            "bayer_pattern": self.bayer_pattern,
            "exposure": self.exposure,
            "filter": self.filter,
            "date_obs": self.date_obs,
            "object": self.object,
            "mount": self.mount,
            "wcs": self.wcs_source,
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "center_deg": center,
        }


def _mean_sky_position(points: np.ndarray) -> tuple[float, float]:
    ra, dec = np.radians(points[:, 0]), np.radians(points[:, 1])
    v = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    lon = np.degrees(np.arctan2(v[1], v[0])) % 360.0
    lat = np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1])))
    return float(lon), float(lat)


def _is_fits_name(name: str) -> bool:
    low = name.lower()
    return any(low.endswith(s) for s in FITS_SUFFIXES)


def discover_inputs(inputs: Sequence[str | os.PathLike], *, recursive: bool = True) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of FITS files.

    Parameters
    ----------
    inputs : sequence of str or path
        Files (used whatever their suffix), folders (searched for FITS names, recursively
        by default) and glob patterns (``"night1/*.fit"``, ``"**/*.fits"``).
    recursive : bool
        Search folders recursively.

    Raises
    ------
    FileNotFoundError
        If an input names nothing that exists (the message names the input).
    """
    found: dict[Path, None] = {}
    for item in inputs:
        text = os.fspath(item)
        p = Path(text).expanduser()
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.glob("*")
            for f in sorted(walker):
                if f.is_file() and _is_fits_name(f.name) and not f.name.startswith("."):
                    found[f.resolve()] = None
        elif p.is_file():
            found[p.resolve()] = None
        elif glob.has_magic(text):
            matches = sorted(glob.glob(str(p), recursive=True))
            for m in matches:
                if Path(m).is_file():
                    found[Path(m).resolve()] = None
            if not matches:
                logger.warning("pattern %r matched no file", text)
        else:
            raise FileNotFoundError(f"input {text!r} does not exist")
    return sorted(found)  # the same frame order (and mosaic) whatever the order of the inputs


def _strip_fits_suffix(name: str) -> str:
    low = name.lower()
    for s in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return Path(name).stem


def find_wcs_sidecar(path: Path, *, search_dirs: Iterable[Path] = ()) -> Path | None:
    """The astrometry.net ``.wcs`` header file of a frame, if there is one.

    Looked for next to the frame first, then in each of ``search_dirs``, as
    ``<stem>.wcs`` where ``<stem>`` is the file name without its FITS/compression suffix.
    """
    stem = _strip_fits_suffix(path.name)
    for folder in (path.parent, *[Path(d) for d in search_dirs]):
        candidate = folder / f"{stem}.wcs"
        if candidate.is_file():
            return candidate
    return None


@contextlib.contextmanager
def _open_fits(path: Path) -> Iterator[fits.HDUList]:
    """Open a FITS file for reading (headers loaded lazily).

    astropy only *warns* when a file is shorter than its headers say (and then fails later
    or reads garbage), so that warning is turned into a `FrameError` here. The file handle
    is our own, so it is closed whatever astropy raises while parsing.
    """
    _check_primary_naxis(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="File may have been truncated",
                                category=AstropyUserWarning)
        try:
            with open(path, "rb") as fh, fits.open(fh, memmap=False, lazy_load_hdus=True) as hdul:
                yield hdul
        except AstropyUserWarning as err:
            raise FrameError(f"truncated file ({err})") from err


def _check_primary_naxis(path: Path) -> None:
    """Refuse a primary header whose NAXIS is not a FITS axis count before astropy reads
    it: astropy loops over NAXIS axes to size the data (NAXIS = 10**12 never ends)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2880 * 36)
    except OSError:
        return  # astropy reports it
    for k in range(0, len(head) - 79, 80):
        card = head[k:k + 80]
        if card.startswith(b"END") and card[3:].strip() == b"":
            return
        if card[:8] == b"NAXIS   " and card[8:10] == b"= ":
            text = card[10:].split(b"/")[0].strip()
            if not text.isdigit() or int(text) > _MAX_NAXIS:
                raise FrameError(f"bad NAXIS = {text.decode('ascii', 'replace')} in the header "
                                 f"(an integer from 0 to {_MAX_NAXIS})")
            return


def _first_image_hdu(hdul: fits.HDUList) -> int:
    for i, hdu in enumerate(hdul):
        if (isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
                and hdu.header.get("NAXIS", 0) >= 2):
            return i
    raise FrameError("no image HDU with 2 or more axes")


def _header_value(header: fits.Header, keys: Sequence[str], kind: type):
    for key in keys:
        if key in header:
            value = header[key]
            try:
                return kind(value.strip() if isinstance(value, str) else value)
            except (TypeError, ValueError):
                continue
    return None


def _longitude(value) -> float | None:
    """Degrees east from a number or a sexagesimal string (``"-5 30 00"``, ``"-5:30:00"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        lon = float(value)
    elif isinstance(value, str):
        parts = value.strip().replace(":", " ").split()
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            return None
        if not 1 <= len(nums) <= 3:
            return None
        sign = -1.0 if parts[0].startswith("-") else 1.0
        lon = sign * sum(abs(v) / 60.0**k for k, v in enumerate(nums))
    else:
        return None
    return ((lon + 180.0) % 360.0) - 180.0 if math.isfinite(lon) else None


def _site_longitude(header: fits.Header) -> float | None:
    """The observatory longitude (degrees east) written by the capture software, if any:
    one of `_LONGITUDE_KEYS`, else the geocentric OBSGEO-X/Y (metres)."""
    for key in _LONGITUDE_KEYS:
        if key in header:
            lon = _longitude(header[key])
            if lon is not None:
                return lon
    x, y = header.get("OBSGEO-X"), header.get("OBSGEO-Y")
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.hypot(x, y) > 1e3:
        return math.degrees(math.atan2(y, x))
    return None


def _classify(header: fits.Header,
              bayer_override: str | None) -> tuple[str, tuple[int, int, int], str | None]:
    naxis = _axis_count(header, "NAXIS")
    dims = [_axis_count(header, f"NAXIS{i}") for i in range(1, naxis + 1)]  # FITS order
    extra = [d for d in dims[2:] if d != 1] if naxis > 2 else []
    if naxis == 2 or (naxis > 2 and not extra and naxis <= 4):
        w, h = dims[0], dims[1]
        pattern = bayer_override or header.get("BAYERPAT")
        if isinstance(pattern, str) and pattern.strip().upper() not in ("", "NONE", "MONO"):
            try:
                pattern = normalize_bayer_pattern(
                    pattern,
                    x_offset=int(header.get("XBAYROFF", 0) or 0),
                    y_offset=int(header.get("YBAYROFF", 0) or 0),
                )
            except (TypeError, ValueError, OverflowError) as err:
                raise FrameError(f"bad BAYERPAT/XBAYROFF/YBAYROFF in the header: {err}") from err
            if w % 2 or h % 2:
                logger.debug("Bayer frame with odd size %dx%d", w, h)
            return "BAYER", (3, h, w), pattern
        return "2D", (1, h, w), None
    if naxis == 3 and dims[2] == 3:
        return "CHW", (3, dims[1], dims[0]), None
    if naxis == 3 and dims[0] == 3:
        return "HWC", (3, dims[2], dims[1]), None
    raise FrameError(
        f"unsupported image shape {tuple(reversed(dims))} (numpy order): expected (H, W), "
        "(3, H, W) or (H, W, 3)"
    )


def _celestial_wcs(header: fits.Header, layout: str = "2D") -> WCS | None:
    """The celestial part of a header's WCS (None if it has none).

    Colour cubes carry a 2-D celestial WCS on the image axes; SIP distortion only works
    on a 2-axis WCS, so the image axes are selected explicitly (FITS axes 1-2, or 2-3 for
    pixel-interleaved (H, W, 3) data).
    """
    axes = [2, 3] if layout == "HWC" else 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=axes)
        except Exception as err:  # astropy raises several types for broken WCS cards
            reason = " ".join(str(err).split())
            raise FrameError(f"unreadable WCS ({reason})") from err
    if not wcs.has_celestial:
        return None
    return wcs.celestial


def validate_wcs(wcs: WCS, shape: tuple[int, int]) -> float:
    """Check that a celestial WCS is usable on an (H, W) frame; return the scale in arcsec/px.

    Raises
    ------
    FrameError
        For a degenerate or non-invertible WCS (the message says what is wrong).
    """
    try:
        scales = proj_plane_pixel_scales(wcs)
    except Exception as err:  # singular matrices surface as various numpy/astropy errors
        raise FrameError(f"degenerate WCS matrix: {err}") from err
    units = [str(u) for u in wcs.wcs.cunit]
    if any(u not in ("deg", "") for u in units):
        raise FrameError(f"celestial WCS in unsupported units {units}")
    scale = float(np.sqrt(abs(np.prod(scales)))) * 3600.0
    if not np.isfinite(scale) or scale <= 0:
        raise FrameError(f"degenerate WCS: pixel scale {scale} arcsec/px")
    h, w = shape
    probe = np.array([[w / 2 - 0.5, h / 2 - 0.5], [0.0, 0.0], [w - 1.0, h - 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        world = wcs.pixel_to_world_values(probe[:, 0], probe[:, 1])
        back = wcs.world_to_pixel_values(*world)
    if not (np.all(np.isfinite(world)) and np.allclose(np.stack(back, 1), probe, atol=0.05)):
        raise FrameError("WCS transform is not invertible over the frame")
    return scale


def frame_footprint(wcs: WCS, shape: tuple[int, int], *, samples: int = 2) -> np.ndarray:
    """Sky positions (deg) along the outer edge of an (H, W) pixel grid.

    With ``samples=2`` these are the 4 corners; larger values sample each edge more finely
    (useful for wide or distorted fields).
    """
    h, w = shape
    t = np.linspace(0.0, 1.0, samples)[:-1]
    x0, x1, y0, y1 = -0.5, w - 0.5, -0.5, h - 0.5
    xs = np.concatenate([x0 + t * (x1 - x0), np.full_like(t, x1), x1 - t * (x1 - x0),
                         np.full_like(t, x0)])
    ys = np.concatenate([np.full_like(t, y0), y0 + t * (y1 - y0), np.full_like(t, y1),
                         y1 - t * (y1 - y0)])
    ra, dec = wcs.pixel_to_world_values(xs, ys)
    return np.stack([np.asarray(ra) % 360.0, np.asarray(dec)], axis=1)


def scan_frame(
    path: str | os.PathLike,
    *,
    wcs_dirs: Iterable[Path] = (),
    bayer_pattern: str | None = None,
    on_bad_wcs: str = "raise",
) -> FrameInfo:
    """Classify one frame from its header (no pixels are read).

    Parameters
    ----------
    path : path
        A FITS file (``.fits``, ``.fit``, ``.fts``, gzip/bzip2 or tile-compressed).
    wcs_dirs : iterable of path
        Extra folders to search for a ``.wcs`` sidecar when the header has no celestial
        WCS.
    bayer_pattern : str, optional
        Force this Bayer pattern (for cameras that do not write ``BAYERPAT``).
    on_bad_wcs : {"raise", "drop"}
        What to do with a header or sidecar WCS that is unreadable or unusable (singular
        matrix, not invertible over the frame): raise `FrameError`, or drop it (``info.wcs``
        is None, the reason is in ``info.extra["bad_wcs"]``) so that it can be plate-solved.

    Raises
    ------
    FrameError
        If the file cannot be read, has no image, has an unsupported shape, or (with
        ``on_bad_wcs="raise"``) its WCS is unusable. A frame without any WCS is *not* an
        error here: ``info.wcs`` is None.
    """
    path = Path(path)
    try:
        return _scan(path, wcs_dirs=wcs_dirs, bayer_pattern=bayer_pattern, on_bad_wcs=on_bad_wcs)
    except FrameError as err:
        if err.path is None:
            err.path = path
        raise


def _scan(path: Path, *, wcs_dirs: Iterable[Path], bayer_pattern: str | None,
          on_bad_wcs: str) -> FrameInfo:
    try:
        with _open_fits(path) as hdul:
            index = _first_image_hdu(hdul)
            header = hdul[index].header.copy()
            raw = RawLayout.of(path, hdul[index])
            has_weight = "WEIGHT" in [h.name for h in hdul]
    except FrameError:
        raise
    except (OSError, ValueError, TypeError, EOFError, IndexError) as err:
        raise FrameError(f"not a readable FITS file ({type(err).__name__}: {err})") from err
    layout, shape, pattern = _classify(header, bayer_pattern)
    info = FrameInfo(
        path=path,
        hdu=index,
        shape=shape,
        layout=layout,
        bayer_pattern=pattern,
        exposure=_header_value(header, _EXPOSURE_KEYS, float),
        filter=_header_value(header, _FILTER_KEYS, str),
        date_obs=_header_value(header, _DATE_KEYS, str),
        object=_header_value(header, ("OBJECT",), str),
        instrument=_header_value(header, ("INSTRUME",), str),
        site_longitude=_site_longitude(header),
        has_weight=has_weight,
        raw=raw,
    )
    mount = _header_value(header, ("MOUNT", "EQMODE", "MOUNTMOD"), str)
    if mount is not None:
        info.mount = "ALTZ" if mount.upper().replace("-", "") in ("ALTZ", "ALTAZ", "0") else "EQ"
    if on_bad_wcs not in ("raise", "drop"):
        raise ValueError(f"on_bad_wcs must be 'raise' or 'drop', got {on_bad_wcs!r}")
    source = "header"
    wcs, scale = _usable_wcs(lambda: _celestial_wcs(header, layout), source, shape, on_bad_wcs,
                             info)
    if wcs is None:
        sidecar = find_wcs_sidecar(path, search_dirs=wcs_dirs)
        if sidecar is not None:
            source = f"sidecar:{sidecar}"
            wcs, scale = _usable_wcs(lambda: _sidecar_wcs(sidecar), source, shape, on_bad_wcs, info)
    if wcs is not None:
        info.pixel_scale_arcsec = scale
        info.wcs, info.wcs_source = wcs, source
        info.footprint = frame_footprint(wcs, shape[1:], samples=2)
    return info


def _sidecar_wcs(sidecar: Path) -> WCS | None:
    try:
        return _celestial_wcs(fits.getheader(sidecar))
    except (OSError, FrameError) as err:
        raise FrameError(f"unreadable WCS sidecar {sidecar.name}: {err}") from err


def _usable_wcs(load, source: str, shape, on_bad_wcs: str, info: FrameInfo):
    """``(wcs, scale)`` of one WCS candidate, ``(None, None)`` if absent (or bad and dropped).

    With ``on_bad_wcs="drop"`` a WCS that fails `validate_wcs` is skipped and the reason
    kept in ``info.extra["bad_wcs"]`` (plate solving replaces it).
    """
    try:
        wcs = load()
        return wcs, (None if wcs is None else validate_wcs(wcs, shape[1:]))
    except FrameError as err:
        if on_bad_wcs == "raise":
            name = Path(source.split(":", 1)[1]).name if ":" in source else None
            if name is None or name in str(err):
                raise
            raise FrameError(f"WCS sidecar {name}: {err}") from err
        reason = f"{source.split(':', 1)[0]} WCS unusable: {err}"
        info.extra["bad_wcs"] = "; ".join(filter(None, [info.extra.get("bad_wcs"), reason]))
        return None, None


def _native_float32(a: np.ndarray) -> np.ndarray:
    out = np.asarray(a, dtype=np.float32)  # also converts big-endian to native
    return out if out.flags.c_contiguous else np.ascontiguousarray(out)


def load_frame(
    info: FrameInfo,
    *,
    rows: slice | None = None,
    cols: slice | None = None,
    valid_min: float | None = None,
) -> np.ndarray:
    """Read a frame's pixels as float32 (C, H, W), NaN where there is no data.

    Parameters
    ----------
    info : FrameInfo
        From `scan_frame`.
    rows, cols : slice, optional
        Read only this part of the frame (in loaded-image pixel coordinates). For an
        uncompressed file only those rows are read from disk. For a Bayer frame the cut is
        widened to even bounds plus a 2-pixel margin for the interpolation, then trimmed.
    valid_min : float, optional
        Pixels not above this value in every channel are set to NaN (zero-filled borders
        of rotated or registered frames are no data, not dark sky). ``None`` keeps every
        finite value.

    Raises
    ------
    FrameError
        If the pixels cannot be read (truncated file, corrupt compression).
    """
    h, w = info.height, info.width
    r0, r1, _ = (rows or slice(0, h)).indices(h)
    c0, c1, _ = (cols or slice(0, w)).indices(w)
    if info.layout == "BAYER":
        m = 2
        rr0, cc0 = max(0, (r0 - m) // 2 * 2), max(0, (c0 - m) // 2 * 2)
        rr1, cc1 = min(h, r1 + m), min(w, c1 + m)
        raw = _read_section(info, (slice(rr0, rr1), slice(cc0, cc1)))
        data = debayer(raw, info.bayer_pattern or "RGGB")
        data = data[:, r0 - rr0 : r1 - rr0, c0 - cc0 : c1 - cc0]
    elif info.layout == "2D":
        data = _read_section(info, (slice(r0, r1), slice(c0, c1)))[None]
    elif info.layout == "CHW":
        data = _read_section(info, (slice(None), slice(r0, r1), slice(c0, c1)))
    else:  # HWC
        data = np.moveaxis(_read_section(info, (slice(r0, r1), slice(c0, c1), slice(None))), -1, 0)
    data = np.ascontiguousarray(data, dtype=np.float32)
    invalid = ~np.isfinite(data).all(axis=0)
    if valid_min is not None:
        with np.errstate(invalid="ignore"):
            invalid |= ~(data > valid_min).all(axis=0)
    if invalid.any():
        data[:, invalid] = np.nan
    return data


def _read_section(info: FrameInfo, key: tuple) -> np.ndarray:
    """Read part of the image HDU, squeezing degenerate (length-1) FITS axes."""
    plain = info.path.suffix.lower() in (".fits", ".fit", ".fts")
    raw = getattr(info, "raw", None)  # None in catalogs pickled before it existed
    if raw is not None and info.layout in ("2D", "BAYER"):
        lead = (0,) * (len(raw.dims) - 2)
        try:
            data = raw.read_rows(info.path, (*lead, *key))
        except OSError as err:
            raise FrameError(f"cannot read pixels ({type(err).__name__}: {err})") from err
        if data is not None:
            return data
    try:
        with _open_fits(info.path) as hdul:
            hdu = hdul[info.hdu]
            naxis = hdu.header["NAXIS"]
            if naxis > 2 and info.layout in ("2D", "BAYER"):
                key = (0,) * (naxis - 2) + key
            # ``section`` reads (and scales) only the requested rows of an uncompressed or
            # tile-compressed HDU; gzip/bzip2 streams must be decompressed whole anyway.
            col = len(key) - (2 if info.layout == "HWC" else 1)  # the columns' axis
            cut = key[col]
            if plain and not isinstance(hdu, fits.CompImageHDU) and cut != slice(None):
                # An uncompressed section with a column cut is read one row at a time;
                # whole rows are one contiguous read, cut in memory (5x faster measured).
                whole = hdu.section[(*key[:col], slice(None), *key[col + 1:])]
                axis = sum(isinstance(k, slice) for k in key[:col])
                data = whole[(slice(None),) * axis + (cut,)]
            elif plain or isinstance(hdu, fits.CompImageHDU):
                data = hdu.section[key]
            else:
                data = hdu.data[key]
            return _native_float32(data)
    except FrameError:
        raise
    except (OSError, ValueError, TypeError, EOFError, IndexError, KeyError) as err:
        raise FrameError(f"cannot read pixels ({type(err).__name__}: {err})") from err
