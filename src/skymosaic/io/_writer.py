"""Writing outputs atomically: the science FITS, the preview PNG and JSON reports.

Every file is written to a temporary name in its destination folder and moved over the
final name with ``os.replace`` (atomic on POSIX and Windows), so an existing output is never
left half-written by a crash or a full disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic._space import DiskFullError, is_disk_full
from skymosaic._version import __version__
from skymosaic.io._stretch import (
    ColorMap,
    StretchOptions,
    StretchParams,
    apply_stretch,
    fit_stretch,
    to_uint,
)

__all__ = [
    "atomic_path",
    "mosaic_header",
    "read_mosaic",
    "shrink_planes",
    "stretch_preview",
    "write_json",
    "write_mosaic",
    "write_preview",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched. A write
    that fails because the disk is full raises `skymosaic._space.DiskFullError` naming
    ``path``.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp",
                                   dir=final.parent)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(final, err) from err
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the output the usual permissions (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(final, err) from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, payload: dict, *, indent: int | None = 2) -> Path:
    """Write ``payload`` as JSON, atomically. NaN/inf become ``null``.

    ``indent=None`` writes it on one line with the standard library's C encoder (an
    indented document goes through its pure-Python encoder: 50 ms for a 250 kB manifest,
    which the coadd rewrites after every block)."""

    def clean(obj):
        if isinstance(obj, float):
            return obj if np.isfinite(obj) else None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, (np.generic, np.ndarray)):  # a numpy scalar's tolist() is item()
            return clean(obj.tolist())
        if isinstance(obj, Path):
            return str(obj)
        return obj

    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(clean(payload), indent=indent, allow_nan=False) + "\n")
    return Path(path)


def mosaic_header(wcs: WCS, *, history: Sequence[str] = (),
                  cards: dict | None = None) -> fits.Header:
    """The science header of a mosaic: WCS, BUNIT, CREATOR, ``cards`` and HISTORY lines."""
    header = wcs.to_header(relax=True)
    header["BUNIT"] = header.get("BUNIT", "adu")
    header["CREATOR"] = (f"skymosaic {__version__}", "software that made this mosaic")
    for key, value in (cards or {}).items():
        header[key] = value
    for line in history:
        header.add_history(line)
    return header


def write_mosaic(
    path: str | os.PathLike,
    data: np.ndarray,
    wcs: WCS,
    *,
    weight: np.ndarray | None = None,
    coverage: np.ndarray | None = None,
    history: Sequence[str] = (),
    cards: dict | None = None,
    extra_hdus: Sequence[fits.ImageHDU] = (),
) -> Path:
    """Write the science mosaic: float32, WCS, NaN for no data, WEIGHT/COVERAGE extensions.

    Parameters
    ----------
    path : path
        Destination (``.fits``); replaced atomically.
    data : ndarray, shape (C, H, W)
        The mosaic. Mono mosaics (C = 1) are written as a 2-D image, colour ones as a
        (3, H, W) cube with a 2-D celestial WCS (as Siril and PixInsight do).
    wcs : astropy.wcs.WCS
        The celestial WCS of the output grid.
    weight : ndarray, shape (H, W), optional
        Sum of the weights of every contribution; written as extension ``WEIGHT``.
    coverage : ndarray, shape (H, W), optional
        Number of frames that contributed; written as extension ``COVERAGE``.
    history : sequence of str
        Provenance lines, written as HISTORY cards.
    cards : dict, optional
        Extra header keywords ``{KEY: value}`` or ``{KEY: (value, comment)}``.
    extra_hdus : sequence of HDU, optional
        Further extensions appended after WEIGHT and COVERAGE.
    """
    if data.ndim != 3:
        raise ValueError(f"mosaic data must be (C, H, W), got shape {data.shape}")
    header = mosaic_header(wcs, history=history, cards=cards)
    science = np.asarray(data[0] if data.shape[0] == 1 else data, dtype=np.float32)
    hdus = [fits.PrimaryHDU(science, header=header)]
    wcs_header = wcs.to_header(relax=True)
    if weight is not None:
        hdus.append(fits.ImageHDU(np.asarray(weight, np.float32), header=wcs_header, name="WEIGHT"))
    if coverage is not None:
        hdus.append(fits.ImageHDU(np.asarray(coverage, np.float32), header=wcs_header,
                                  name="COVERAGE"))
    hdus.extend(extra_hdus)
    with atomic_path(path, suffix=".fits") as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return Path(path)


def read_mosaic(path: str | os.PathLike) -> tuple[np.ndarray, WCS, np.ndarray | None]:
    """Read a mosaic written by `write_mosaic`: ``(data (C, H, W), wcs, weight or None)``."""
    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
        wcs = WCS(hdul[0].header).celestial
        weight = np.asarray(hdul["WEIGHT"].data, np.float32) if "WEIGHT" in hdul else None
    if data.ndim == 2:
        data = data[None]
    return data, wcs, weight


def shrink_planes(data: np.ndarray, max_size: int) -> np.ndarray:
    """``data`` (C, H, W) shrunk by area averaging so that its long side is <= ``max_size``.

    A shrunk pixel is the mean of its valid input pixels where more than half are valid,
    NaN elsewhere (as `skymosaic.io._stream.binned_plane`). Unchanged (float32) if small.
    """
    _, h, w = data.shape
    scale = min(1.0, max_size / max(h, w))
    planes = np.asarray(data, dtype=np.float32)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        valid = np.isfinite(planes).all(axis=0).astype(np.float32)
        filled = np.where(np.isfinite(planes), planes, 0.0).astype(np.float32)
        den = cv2.resize(valid, size, interpolation=cv2.INTER_AREA)
        planes = np.stack([cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in filled])
        with np.errstate(invalid="ignore", divide="ignore"):
            planes = np.where(den > 0.5, planes / den, np.nan).astype(np.float32)
    return planes


def stretch_preview(
    data: np.ndarray,
    *,
    max_size: int = 4096,
    options: StretchOptions | None = None,
    color: ColorMap | None = None,
    params: StretchParams | None = None,
) -> np.ndarray:
    """An 8-bit display image of a linear mosaic: colour calibration, then the auto-stretch.

    The stretch (`skymosaic.io._stretch`) is fitted on the shrunk image (unless ``params``
    is given) and linked: one black point, white point and curve for every channel after
    ``color``, so colours keep their calibrated ratios. NaN (no data) is black.

    Returns
    -------
    ndarray, uint8, shape (H', W') or (H', W', 3) in RGB order, long side <= ``max_size``.
    """
    c = data.shape[0]
    planes = shrink_planes(data, max_size)
    if params is None:
        params = fit_stretch(planes, options=options, color=color)
    img = to_uint(apply_stretch(planes, params), 8)
    return img[0] if c == 1 else np.moveaxis(img, 0, -1)


def write_preview(path: str | os.PathLike, data: np.ndarray, *, max_size: int = 4096,
                  options: StretchOptions | None = None, color: ColorMap | None = None,
                  params: StretchParams | None = None) -> Path:
    """Write a stretched PNG preview of an (C, H, W) mosaic (see `stretch_preview`)."""
    img = stretch_preview(data, max_size=max_size, options=options, color=color, params=params)
    # FITS row 0 is the bottom of the image; PNG row 0 is the top.
    img = img[::-1]
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise OSError(f"could not encode preview {path}")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)
