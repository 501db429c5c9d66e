"""Backend dispatch of the image primitives: host arrays to their OpenCV/SciPy fast paths,
others to the array-API kernels (`skymosaic.backend._kernels`).

Both sides implement one kernel definition each (see `skymosaic.backend._kernels`);
``tests/test_backend.py`` runs the array-API kernels on NumPy against the fast paths and
``tests/test_gpu_parity.py`` on a device. (The NaN statistics `nanmedian` and
`nanpercentile` have no host fast path: their array-API kernels, `skymosaic.backend._stats`,
are faster on NumPy than ``np.nanmedian`` / ``np.nanpercentile``.)
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from skymosaic.backend import _kernels

__all__ = ["gaussian_filter", "pyr_down", "pyr_up"]


def gaussian_filter(arr: Any, sigma: float) -> Any:
    """Gaussian blur of each image plane, SciPy ``gaussian_filter(mode="nearest",
    truncate=4)`` semantics over the last two axes.

    Parameters
    ----------
    arr : array, shape (H, W) or (C, H, W)
        NumPy (SciPy kernel, computed in the input's float dtype) or device array. The
        planes of a ``(C, H, W)`` array are blurred one by one: channels never mix.
    sigma : float
        Standard deviation in pixels (> 0).

    Returns
    -------
    array, shape of ``arr``, same namespace and device as ``arr``.

    Raises
    ------
    ValueError
        If ``arr`` is not 2-D or 3-D, or ``sigma`` is not > 0.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((2, 11, 11)); a[0, 5, 5] = 1.0
    >>> b = gaussian_filter(a, 1.0)
    >>> round(float(b[0].sum()), 6), float(b[1].max())  # flux kept, no bleed into channel 1
    (1.0, 0.0)
    """
    if isinstance(arr, np.ndarray):
        # SciPy fast path: 3-4x the array-API kernel on NumPy at sigma 4-32 (3x512x512)
        if arr.ndim not in (2, 3):
            raise ValueError(
                f"gaussian_filter expects an (H, W) or (C, H, W) array, got shape {arr.shape}"
            )
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        # sigma 0 on the channel axis: SciPy skips that axis (no blur across channels)
        sigmas = (0.0,) * (arr.ndim - 2) + (sigma, sigma)
        return ndimage.gaussian_filter(arr, sigmas, mode="nearest")
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
