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

from array_api_compat import array_namespace

__all__ = ["valid_mask"]


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
