"""Debayering of raw one-shot-colour frames, in float32, without quantisation.

OpenCV's own demosaicing (``cv2.cvtColor(..., COLOR_Bayer*)``) accepts only 8- and 16-bit
integers and rounds every interpolated value to an integer. We keep float32 precision by
doing the same bilinear interpolation as a *normalised convolution* with OpenCV's
``filter2D``: each colour plane is the convolution of the samples of that colour divided by
the convolution of their sampling mask. At a site of the colour itself this returns the
sample unchanged; elsewhere it is the mean of the 2 or 4 nearest samples of that colour
(classic bilinear demosaicing). Dividing by the convolved mask makes the borders exact
without any special case.

For a frame without missing samples (the usual raw frame) the sampling masks and their
convolutions depend only on the frame's shape and pattern, so they are computed once and
cached: one ``filter2D`` per colour instead of two.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["BAYER_PATTERNS", "bayer_masks", "debayer", "normalize_bayer_pattern"]

BAYER_PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")

# Bilinear interpolation kernels: green has 4 direct neighbours, red/blue have 2 or 4.
_KERNEL_GREEN = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4.0
_KERNEL_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4.0
_PLANES = (("R", _KERNEL_RB), ("G", _KERNEL_GREEN), ("B", _KERNEL_RB))
_BORDER = cv2.BORDER_REFLECT_101  # keeps the CFA parity at the edges


def normalize_bayer_pattern(pattern: str, *, x_offset: int = 0, y_offset: int = 0) -> str:
    """Return the 2x2 pattern as seen from pixel (0, 0) after an origin offset.

    Parameters
    ----------
    pattern : str
        One of ``RGGB``, ``GRBG``, ``GBRG``, ``BGGR`` (case-insensitive, spaces ignored).
    x_offset, y_offset : int
        ``XBAYROFF`` / ``YBAYROFF`` header values: the pattern starts this many pixels
        before the array origin.

    Raises
    ------
    ValueError
        If the pattern is not one of the four Bayer patterns.
    """
    p = pattern.strip().upper()
    if p not in BAYER_PATTERNS:
        raise ValueError(f"unsupported Bayer pattern {pattern!r}; expected one of {BAYER_PATTERNS}")
    cells = [[p[0], p[1]], [p[2], p[3]]]
    dy, dx = y_offset % 2, x_offset % 2
    return "".join(cells[(r + dy) % 2][(c + dx) % 2] for r in (0, 1) for c in (0, 1))


def bayer_masks(shape: tuple[int, int], pattern: str) -> dict[str, np.ndarray]:
    """Boolean sampling masks ``{"R", "G", "B"}`` of a Bayer pattern on an (H, W) array."""
    p = normalize_bayer_pattern(pattern)
    masks = {c: np.zeros(shape, dtype=bool) for c in "RGB"}
    for r in (0, 1):
        for c in (0, 1):
            masks[p[2 * r + c]][r::2, c::2] = True
    return masks


def debayer(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Bilinear demosaic of a raw CFA frame to float32 (3, H, W) in R, G, B order.

    Parameters
    ----------
    raw : ndarray, shape (H, W)
        Raw sensor values (any real dtype; converted to float32). NaN samples are treated
        as missing: they do not contribute, and a colour plane is NaN where none of its
        nearby samples is valid.
    pattern : str
        The 2x2 pattern at pixel (0, 0), e.g. ``"GRBG"`` for the Seestar S50.

    Returns
    -------
    ndarray, shape (3, H, W), float32

    Examples
    --------
    >>> import numpy as np
    >>> rgb = debayer(np.full((4, 6), 7.0), "RGGB")
    >>> bool(np.all(rgb == 7.0))
    True
    """
    if raw.ndim != 2:
        raise ValueError(f"raw Bayer data must be 2-D, got shape {raw.shape}")
    data = np.asarray(raw, dtype=np.float32)
    finite = np.isfinite(data)
    if finite.all():
        return _debayer_complete(data, normalize_bayer_pattern(pattern))
    masks = bayer_masks(data.shape, pattern)
    out = np.empty((3, *data.shape), dtype=np.float32)
    for k, (colour, kernel) in enumerate(_PLANES):
        m = (masks[colour] & finite).astype(np.float32)
        samples = np.where(m > 0, data, np.float32(0.0))
        num = cv2.filter2D(samples, cv2.CV_32F, kernel, borderType=_BORDER)
        den = cv2.filter2D(m, cv2.CV_32F, kernel, borderType=_BORDER)
        plane = out[k]
        np.divide(num, den, out=plane, where=den > 1e-6)
        plane[den <= 1e-6] = np.nan
        # At a site of this colour the sample itself is exact (no rounding of num/den).
        np.copyto(plane, data, where=m > 0)
    return out


@lru_cache(maxsize=4)
def _sampling(shape: tuple[int, int], pattern: str) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per colour: boolean sites, float32 sites and the convolved sites (never 0).

    Every 3x3 neighbourhood of a Bayer mosaic holds every colour, so the convolved
    sampling mask is positive everywhere, borders included (reflected).
    """
    tables = []
    for colour, kernel in _PLANES:
        sites = bayer_masks(shape, pattern)[colour]
        weights = sites.astype(np.float32)
        den = cv2.filter2D(weights, cv2.CV_32F, kernel, borderType=_BORDER)
        for a in (sites, weights, den):
            a.flags.writeable = False
        tables.append((sites, weights, den))
    return tuple(tables)


def _debayer_complete(data: np.ndarray, pattern: str) -> np.ndarray:
    """`debayer` of a frame without missing samples (same values, cached masks)."""
    out = np.empty((3, *data.shape), dtype=np.float32)
    for k, (sites, weights, den) in enumerate(_sampling(data.shape, pattern)):
        plane = out[k]
        np.multiply(data, weights, out=plane)
        cv2.filter2D(plane, cv2.CV_32F, _PLANES[k][1], dst=plane, borderType=_BORDER)
        np.divide(plane, den, out=plane)
        np.copyto(plane, data, where=sites)
    return out
