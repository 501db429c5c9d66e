"""Gaussian and Laplacian pyramids (Burt & Adelson 1983) with NaN/mask handling.

One kernel definition is used everywhere: OpenCV's ``pyrDown`` / ``pyrUp``, i.e. the
separable 5-tap binomial kernel ``[1, 4, 6, 4, 1] / 16`` with ``BORDER_REFLECT_101``.

* **reduce** (level k -> k+1): blur, keep rows/columns 0, 2, 4, ...; the coarser shape is
  ``((h + 1) // 2, (w + 1) // 2)``, so odd sizes keep their last row/column.
* **expand** (level k+1 -> k): insert zeros, blur with ``4 x`` the kernel, and cut to the
  *exact* shape of level k (``dstsize``). Expanding a constant gives the same constant.

Level 0 is the input; a pyramid with ``levels`` entries has its coarsest level at index
``levels - 1`` (a scale of ``2 ** (levels - 1)`` input pixels). The Laplacian pyramid is
``L_k = G_k - expand(G_{k+1})`` for ``k < levels - 1`` and ``L_{levels-1} = G_{levels-1}``,
so `collapse` reproduces the input to float32 rounding for any shape.

All functions accept ``(H, W)`` or ``(C, H, W)`` arrays and return float32 arrays of the
same dimensionality; channels are processed one by one (OpenCV works on 2-D planes).
Device arrays (CuPy, any array-API namespace) stay on their device: the two pyramid steps
go to their array-API twins (`skymosaic.backend.pyr_down` / `pyr_up`, same kernel and
border rule) and everything else here is written against the array API.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj
from array_api_compat import device as device_of

from skymosaic.backend import pyr_down, pyr_up

__all__ = [
    "collapse",
    "expand_to_base",
    "gaussian_pyramid",
    "laplacian_pyramid",
    "levels_for_overlap",
    "masked_gaussian_pyramid",
    "masked_laplacian_pyramid",
    "pyramid_shapes",
]

logger = logging.getLogger(__name__)

#: Reduced certainty below this fraction of the mask maximum counts as "no data" (hole).
_HOLE_FRACTION = 1e-6


# ----------------------------------------------------------------------------- helpers
def _validate_levels(levels: int) -> int:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    return int(levels)


def _as_chw(img: np.ndarray, name: str = "img") -> tuple[np.ndarray, bool]:
    """Return a float32 ``(C, H, W)`` view/copy of ``img`` and whether the input was 2-D."""
    arr = img if is_array_api_obj(img) else np.asarray(img)
    xp = array_namespace(arr)
    if arr.ndim not in (2, 3) or math.prod(arr.shape) == 0:
        raise ValueError(f"{name} must be a non-empty (H, W) or (C, H, W) array, got {arr.shape}")
    if not xp.isdtype(arr.dtype, ("real floating", "integral")):
        raise ValueError(f"{name} must have a real numeric dtype, got {arr.dtype}")
    arr = xp.astype(arr, xp.float32, copy=False)
    if arr.ndim == 2:
        return arr[None, ...], True
    return arr, False


def _out(arr: np.ndarray, was_2d: bool) -> np.ndarray:
    return arr[0, ...] if was_2d else arr


def _copy(arr: np.ndarray) -> np.ndarray:
    return array_namespace(arr).asarray(arr, copy=True)


def _down2d(plane: np.ndarray) -> np.ndarray:
    return pyr_down(plane)  # OpenCV on the host, the array-API twin on a device


def _up2d(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return pyr_up(plane, shape)


def _down(arr: np.ndarray) -> np.ndarray:
    """Reduce a ``(C, H, W)`` array one level."""
    return array_namespace(arr).stack([_down2d(arr[c, ...]) for c in range(arr.shape[0])])


def _up(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Expand a ``(C, h, w)`` array to the exact ``(H, W)`` of the finer level."""
    return array_namespace(arr).stack([_up2d(arr[c, ...], shape) for c in range(arr.shape[0])])


# ------------------------------------------------------------------------------ public
def pyramid_shapes(shape: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """Shapes ``(H_k, W_k)`` of every level of a pyramid built on an ``(H, W)`` image.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of level 0.
    levels : int
        Number of levels (>= 1).

    Returns
    -------
    list of tuple
        ``levels`` shapes, level 0 first; each is ``ceil`` of half the previous one.
    """
    levels = _validate_levels(levels)
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    shapes = [(h, w)]
    for _ in range(levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        shapes.append((h, w))
    return shapes


def expand_to_base(level_img: np.ndarray, shapes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Expand a level-k array back to level 0 through the exact shapes of levels k-1 ... 0.

    Parameters
    ----------
    level_img : ndarray, (h, w) or (C, h, w)
        An array whose spatial shape is ``shapes[k]``.
    shapes : sequence of tuple
        The pyramid shapes (from `pyramid_shapes`); ``shapes[0]`` is the target shape.

    Returns
    -------
    ndarray, float32
        The array at level-0 shape (a float32 copy when k == 0).
    """
    arr, was_2d = _as_chw(level_img, "level_img")
    spatial = tuple(arr.shape[1:])
    try:
        k = [tuple(s) for s in shapes].index(spatial)
    except ValueError as err:
        raise ValueError(f"level_img shape {spatial} is not one of the pyramid shapes") from err
    out = _copy(arr) if k == 0 else arr
    for j in range(k - 1, -1, -1):
        out = _up(out, (int(shapes[j][0]), int(shapes[j][1])))
    return _out(out, was_2d)


def gaussian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """Gaussian pyramid: level 0 is ``img`` (as float32), each next level is reduced.

    Parameters
    ----------
    img : ndarray, (H, W) or (C, H, W)
        Finite input image (use `masked_gaussian_pyramid` for NaN/masked data).
    levels : int
        Number of levels returned (>= 1).

    Returns
    -------
    list of ndarray
        ``levels`` float32 arrays, shapes from `pyramid_shapes`.

    Examples
    --------
    >>> import numpy as np
    >>> [g.shape for g in gaussian_pyramid(np.zeros((5, 9), np.float32), 3)]
    [(5, 9), (3, 5), (2, 3)]
    """
    levels = _validate_levels(levels)
    arr, was_2d = _as_chw(img)
    pyr = [_copy(arr)]
    for _ in range(levels - 1):
        pyr.append(_down(pyr[-1]))
    return [_out(p, was_2d) for p in pyr]


def _laplacian_from_gaussian(gauss: list[np.ndarray]) -> list[np.ndarray]:
    """``L_k = G_k - expand(G_{k+1})``; the coarsest level is kept as is. (C,H,W) input."""
    lap = []
    for k in range(len(gauss) - 1):
        lap.append(gauss[k] - _up(gauss[k + 1], gauss[k].shape[1:]))
    lap.append(gauss[-1])
    return lap


def laplacian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian (band-pass) pyramid of a finite image.

    Parameters
    ----------
    img : ndarray, (H, W) or (C, H, W)
        Finite input image.
    levels : int
        Number of levels (>= 1); the last one is the low-pass residual.

    Returns
    -------
    list of ndarray
        ``levels`` float32 arrays; ``collapse(laplacian_pyramid(x, n))`` equals ``x``.
    """
    levels = _validate_levels(levels)
    arr, was_2d = _as_chw(img)
    gauss = [arr]
    for _ in range(levels - 1):
        gauss.append(_down(gauss[-1]))
    return [_out(p, was_2d) for p in _laplacian_from_gaussian(gauss)]


def collapse(laplacian: Sequence[np.ndarray]) -> np.ndarray:
    """Rebuild the image from a Laplacian pyramid (inverse of `laplacian_pyramid`).

    Parameters
    ----------
    laplacian : sequence of ndarray
        Levels, finest first, as returned by `laplacian_pyramid`.

    Returns
    -------
    ndarray, float32
        Image with the shape of level 0.
    """
    if len(laplacian) == 0:
        raise ValueError("laplacian pyramid is empty")
    levels = [_as_chw(p, f"laplacian[{k}]") for k, p in enumerate(laplacian)]
    was_2d = levels[0][1]
    if any(flag != was_2d for _, flag in levels):
        raise ValueError("laplacian levels mix (H, W) and (C, H, W) arrays")
    out = _copy(levels[-1][0])
    for k in range(len(levels) - 2, -1, -1):
        finer = levels[k][0]
        if finer.shape[0] != out.shape[0]:
            raise ValueError(
                f"laplacian[{k}] has {finer.shape[0]} channels, expected {out.shape[0]}"
            )
        out = finer + _up(out, (finer.shape[1], finer.shape[2]))
    return _out(out, was_2d)


def masked_gaussian_pyramid(
    img: np.ndarray, mask: np.ndarray | None, levels: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gaussian pyramid of masked data by normalized convolution, with holes filled.

    Each level is ``reduce(img * m) / reduce(m)`` (Knutsson & Westin), so a pixel with
    ``m == 0`` never contributes, whatever its value (NaN included). Pixels of a level whose
    reduced certainty is ~0 (holes) are filled top-down from the expanded coarser level
    ("push-pull"); holes at the coarsest level get the certainty-weighted mean of that
    level (0 when there is no valid pixel at all). Every returned level is finite, so the
    Laplacian of it is finite too. At valid pixels level 0 equals ``img`` exactly.

    Parameters
    ----------
    img : ndarray, (H, W) or (C, H, W)
        Data; NaN/inf allowed anywhere (non-finite pixels count as invalid).
    mask : ndarray of bool or float, (H, W), or None
        Validity (True/1) or certainty (>= 0) shared by all channels. ``None`` means
        "finite in every channel". Pixels non-finite in any channel are always invalid.
    levels : int
        Number of levels (>= 1).

    Returns
    -------
    pyramid : list of ndarray
        Filled float32 Gaussian levels (same dimensionality as ``img``).
    certainty : list of ndarray
        The reduced mask, float32 ``(H_k, W_k)``; 0 where the level is pure fill.

    Raises
    ------
    ValueError
        If ``mask`` does not match the image's spatial shape or has negative values.
    """
    levels = _validate_levels(levels)
    arr, was_2d = _as_chw(img)
    xp = array_namespace(arr)
    m = _certainty(arr, mask)
    zero = xp.asarray(0.0, dtype=xp.float32, device=device_of(arr))
    nan = xp.asarray(float("nan"), dtype=xp.float32, device=device_of(arr))
    num = [xp.where(m > 0, arr, zero) * m]
    den = [m]
    for _ in range(levels - 1):
        num.append(_down(num[-1]))
        den.append(_down2d(den[-1]))
    # float32 threshold, compared in float32; one scalar read from a device
    threshold = float(np.float32(_HOLE_FRACTION * max(float(xp.max(m)),
                                                      float(np.finfo(np.float32).tiny))))
    gauss: list[np.ndarray] = []
    for k in range(levels):
        ok = den[k] > threshold
        if k == 0:
            gauss.append(xp.where(ok, arr, nan))
        else:
            gauss.append(xp.where(ok, num[k] / xp.where(ok, den[k], 1.0), nan))
    top_ok = den[-1] > threshold
    if not bool(xp.all(top_ok)):
        total = float(xp.sum(xp.where(top_ok, den[-1], zero)))
        sums = xp.sum(xp.where(top_ok, num[-1], zero), axis=(1, 2))
        fill = sums / total if total > 0 else xp.zeros_like(sums)
        gauss[-1] = xp.where(top_ok, gauss[-1], fill[:, None, None])
    for k in range(levels - 2, -1, -1):
        holes = ~(den[k] > threshold)
        if bool(xp.any(holes)):
            gauss[k] = xp.where(holes, _up(gauss[k + 1], gauss[k].shape[1:]), gauss[k])
    cert = [xp.where(d > threshold, d, zero) for d in den]
    return [_out(g, was_2d) for g in gauss], cert


def masked_laplacian_pyramid(
    img: np.ndarray, mask: np.ndarray | None, levels: int
) -> list[np.ndarray]:
    """Laplacian pyramid of the filled `masked_gaussian_pyramid`.

    ``collapse`` of it equals ``img`` at valid pixels (and the smooth fill elsewhere).
    In holes the band-pass levels are 0 (fill = expanded coarser level).
    """
    gauss, _ = masked_gaussian_pyramid(img, mask, levels)
    chw = [_as_chw(g)[0] for g in gauss]
    was_2d = _as_chw(img)[1]
    return [_out(p, was_2d) for p in _laplacian_from_gaussian(chw)]


def _certainty(arr: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Float32 (H, W) certainty: the mask, zeroed wherever any channel is non-finite."""
    xp = array_namespace(arr)
    finite = xp.all(xp.isfinite(arr), axis=0)
    if mask is None:
        return xp.astype(finite, xp.float32)
    m = mask if is_array_api_obj(mask) and not isinstance(mask, np.ndarray) else np.asarray(mask)
    if tuple(m.shape) != tuple(arr.shape[1:]):
        raise ValueError(f"mask shape {m.shape} does not match image shape {arr.shape[1:]}")
    if isinstance(m, np.ndarray):  # a host mask for device data: one explicit transfer
        m = xp.asarray(m.astype(np.float32), device=device_of(arr))
    m = xp.astype(m, xp.float32)
    if not bool(xp.all(xp.isfinite(m))) or bool(xp.any(m < 0)):
        raise ValueError("mask must be boolean or finite and >= 0")
    return xp.where(finite, m, xp.asarray(0.0, dtype=xp.float32, device=device_of(arr)))


def levels_for_overlap(width_px: float, *, min_size: int = 4, max_levels: int = 8) -> int:
    """Number of pyramid levels suited to an overlap ``width_px`` pixels wide.

    Level k has a scale of ``2 ** k`` px. Levels are added while the overlap still spans
    at least ``min_size`` pixels at the new level's scale, i.e. we stop when
    ``2 ** levels * min_size`` exceeds the width (with ``min_size=1`` this is "stop when
    ``2 ** levels`` exceeds the overlap width"). The result is at least 1 and at most
    ``max_levels``; fewer than 2 levels means "too narrow for a pyramid: feather".

    Parameters
    ----------
    width_px : float
        Overlap width in pixels (>= 0).
    min_size : int, optional
        Minimum overlap width, in coarsest-level pixels (>= 1). Default 4.
    max_levels : int, optional
        Upper bound (>= 1). Default 8 (coarsest scale 128 px).

    Returns
    -------
    int
        Number of levels, ``1 <= levels <= max_levels``.

    Examples
    --------
    >>> levels_for_overlap(32), levels_for_overlap(7), levels_for_overlap(2, min_size=1)
    (4, 1, 2)
    """
    if not np.isfinite(width_px) or width_px < 0:
        raise ValueError(f"width_px must be finite and >= 0, got {width_px!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1, got {min_size!r}")
    max_levels = _validate_levels(max_levels)
    if width_px < min_size:
        return 1
    levels = 1 + math.floor(math.log2(width_px / min_size) + 1e-9)
    return int(min(max(levels, 1), max_levels))
