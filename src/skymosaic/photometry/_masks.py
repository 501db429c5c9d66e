"""Valid-pixel masks (backend-agnostic).

A pixel is *valid* when it carries data in every channel. Two definitions apply:

- ``eps`` a float (default ``1e-6``): finite **and** ``> eps`` in every channel. This is
  the DESIGN.md rule for frames and tiles that are *not* sky-subtracted: zero-filled
  borders of rotated or resampled frames are "no data", not dark sky.
- ``eps=None``: finite only. Use it for sky-subtracted (or otherwise offset) data where
  values ``<= 0`` are legitimate, and whose no-data pixels are already NaN.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from array_api_compat import array_namespace

__all__ = ["distance_inside", "grow_mask", "nanmedian_rows", "valid_mask"]

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def valid_mask(data: Any, *, eps: float | None = 1e-6) -> Any:
    """Boolean ``(H, W)`` mask of pixels valid in every channel of ``(C, H, W)`` data.

    Parameters
    ----------
    data : array, shape (C, H, W)
        Any array-API array (NumPy, CuPy, ...); the mask has the same array type.
    eps : float or None
        Pixels must be ``> eps`` in every channel (default, for raw/unsubtracted data);
        ``None`` means finite only (sky-subtracted data, where ``<= 0`` is legal).

    Returns
    -------
    array of bool, shape (H, W)

    Raises
    ------
    ValueError
        If ``data`` is not 3-D or ``eps`` is not a finite number or None.

    Examples
    --------
    >>> import numpy as np
    >>> d = np.array([[[1.0, 0.0, np.nan]]], dtype=np.float32)
    >>> valid_mask(d).tolist(), valid_mask(d, eps=None).tolist()
    ([[True, False, False]], [[True, True, False]])
    """
    if getattr(data, "ndim", None) != 3:
        raise ValueError(f"data must be shaped (C, H, W), got shape {getattr(data, 'shape', None)}")
    if eps is not None and not (isinstance(eps, (int, float)) and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number or None, got {eps!r}")
    xp = array_namespace(data)
    ok = xp.isfinite(data)
    if eps is not None:
        ok = ok & (data > eps)
    return xp.all(ok, axis=0)


def grow_mask(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``mask`` grown by ``iterations`` steps of the 4-connected cross (host arrays).

    The same pixels as ``scipy.ndimage.binary_dilation(mask, iterations=iterations)`` (its
    default structure, nothing grown in from outside the image), about 15 times faster.
    """
    m = np.ascontiguousarray(mask, dtype=bool)
    if m.ndim != 2 or m.size == 0 or iterations <= 0:
        return m.copy()
    return cv2.dilate(m.view(np.uint8), _CROSS, iterations=int(iterations)).astype(bool)


def distance_inside(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of each pixel of ``mask`` to the nearest pixel that is not
    in it, the outside of the image counting as not in it (0 outside ``mask``).

    Exact (OpenCV's ``DIST_MASK_PRECISE``, the Felzenszwalb transform), equal to
    ``scipy.ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]`` to float32
    rounding and about 4 times faster.
    """
    m = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    return cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def nanmedian_rows(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian(values, axis=-1)`` of a 2-D array, NaN for rows without a finite value.

    One sort of the whole array instead of NumPy's per-row loop over rows holding NaN
    (the same values; about 10 times faster for thousands of short rows).
    """
    a = np.sort(np.asarray(values), axis=-1)  # NaN sort last
    n = np.count_nonzero(np.isfinite(a), axis=-1)
    rows = np.arange(a.shape[0])
    lo = a[rows, np.maximum(n - 1, 0) // 2]
    hi = a[rows, np.minimum(n // 2, a.shape[-1] - 1)]
    return np.where(n > 0, (lo + hi) / 2, np.nan)
