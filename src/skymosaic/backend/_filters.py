"""Backend dispatch of the image primitives: host arrays to OpenCV/SciPy/NumPy, others to
the array-API kernels (`skymosaic.backend._kernels`, `skymosaic.backend._stats`).

Both sides implement one kernel definition each (see `skymosaic.backend._kernels`);
``tests/test_gpu_parity.py`` runs both on the same data.
"""

from __future__ import annotations

import warnings
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from skymosaic.backend import _kernels, _stats

__all__ = ["gaussian_filter", "nanmedian", "nanpercentile", "pyr_down", "pyr_up"]


def gaussian_filter(arr: Any, sigma: float) -> Any:
    """2-D Gaussian blur, SciPy ``gaussian_filter(mode="nearest", truncate=4)`` semantics.

    Parameters
    ----------
    arr : array, shape (H, W)
        NumPy (SciPy kernel, computed in the input's float dtype) or device array.
    sigma : float
        Standard deviation in pixels (> 0).

    Returns
    -------
    array, shape (H, W), same namespace and device as ``arr``.
    """
    if isinstance(arr, np.ndarray):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        return ndimage.gaussian_filter(arr, sigma, mode="nearest")
    return _kernels.gaussian_filter(arr, sigma)


def pyr_down(plane: Any) -> Any:
    """One pyramid reduction of a 2-D plane (``cv2.pyrDown`` semantics, see `_kernels`)."""
    if isinstance(plane, np.ndarray):
        h, w = plane.shape
        return cv2.pyrDown(np.ascontiguousarray(plane), dstsize=((w + 1) // 2, (h + 1) // 2))
    return _kernels.pyr_down(plane)


def pyr_up(plane: Any, shape: tuple[int, int]) -> Any:
    """One pyramid expansion of a 2-D plane to the exact ``shape`` (``cv2.pyrUp`` semantics)."""
    if isinstance(plane, np.ndarray):
        return cv2.pyrUp(np.ascontiguousarray(plane), dstsize=(shape[1], shape[0]))
    return _kernels.pyr_up(plane, shape)


def nanmedian(values: Any) -> Any:
    """Median along axis 0 ignoring NaN (NaN where no sample is valid), input dtype."""
    if isinstance(values, np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: NaN, by definition
            return np.nanmedian(values, axis=0).astype(values.dtype)
    return _stats.nanmedian(values)


def nanpercentile(values: Any, q: float) -> Any:
    """``q``-th percentile along axis 0 ignoring NaN (linear interpolation), float64."""
    if isinstance(values, np.ndarray):
        if not 0 <= q <= 100:
            raise ValueError(f"q must be in [0, 100], got {q!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanpercentile(values.astype(np.float64), q, axis=0)
    return _stats.nanpercentile(values, q)
