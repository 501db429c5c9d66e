"""Array-API implementations of the primitives no array API provides.

Each function here is the device implementation of a kernel whose CPU implementation is
OpenCV or SciPy; both follow one kernel definition and one edge rule, stated below and in
the CPU modules, and ``tests/test_gpu_parity.py`` checks they agree. Everything is written
against the array API standard (``xp`` taken from the inputs), so it runs unchanged on
CuPy and on array-api-strict (the CI stand-in); no array ever leaves its device.

Kernels
-------
resampling (`remap`)
    ``nearest``: the input pixel at ``round(x), round(y)`` (round half to even, as
    OpenCV). ``bilinear``: the 2x2 cell at exact positions (OpenCV 5 interpolates float
    images at exact positions; OpenCV 4 quantised them to 1/32 px, see
    `skymosaic.reproject._resample`). ``bicubic``: Keys' cubic convolution, a = -0.75, 4x4
    taps. ``lanczos3``: normalised ``sinc(t) sinc(t/3)``, 6x6 taps (`lanczos3_weights`,
    also the host's weights). Taps outside the
    input read the ``fill`` value (``border="constant"``, OpenCV ``BORDER_CONSTANT``) or
    the nearest edge pixel (``border="replicate"``, OpenCV ``BORDER_REPLICATE``).
Gaussian blur (`gaussian_filter`)
    SciPy's ``gaussian_filter(mode="nearest", truncate=4.0)`` over the two image axes: a
    normalised sampled Gaussian of radius ``int(4 sigma + 0.5)``, edges replicated,
    separable; each plane of a ``(C, H, W)`` array is blurred on its own.
pyramid steps (`pyr_down`, `pyr_up`)
    OpenCV's ``pyrDown``/``pyrUp``: the 5-tap ``[1, 4, 6, 4, 1] / 16`` kernel with
    ``BORDER_REFLECT_101``; reduce keeps even rows/columns, expand inserts zeros on the
    finer grid and blurs with 4x the kernel.
box dilation (`dilate`)
    Maximum over a ``size x size`` window, outside = ``fill`` (OpenCV ``dilate`` with a
    constant border).
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

__all__ = [
    "dilate",
    "gaussian_filter",
    "lanczos3_weights",
    "pyr_down",
    "pyr_up",
    "remap",
    "resample",
]

#: First tap (relative to floor(x)) and number of taps of each kernel.
_TAPS = {"nearest": (0, 1), "bilinear": (0, 2), "bicubic": (-1, 4), "lanczos3": (-2, 6)}
_CUBIC_A = -0.75
#: NaN map coordinates are sent here: far outside any frame, so every tap reads ``fill``
#: (with a replicated border they read the edge; the callers mark them invalid).
_FAR = -1.0e6
#: Edge rules of `resample` (see `skymosaic.reproject._resample`).
EDGES = ("half", "strict")


# ------------------------------------------------------------------ resampling
def _weights(xp: Any, frac: Any, kernel: str) -> list[Any]:
    """Per-tap weights (a list of arrays shaped like ``frac``) for ``floor``-based taps."""
    if kernel == "bilinear":
        return [1.0 - frac, frac]
    if kernel == "bicubic":
        a = _CUBIC_A
        t0, t1, t2 = frac + 1.0, frac, 1.0 - frac
        w0 = ((a * t0 - 5.0 * a) * t0 + 8.0 * a) * t0 - 4.0 * a
        w1 = ((a + 2.0) * t1 - (a + 3.0)) * t1 * t1 + 1.0
        w2 = ((a + 2.0) * t2 - (a + 3.0)) * t2 * t2 + 1.0
        return [w0, w1, w2, 1.0 - w0 - w1 - w2]
    w = lanczos3_weights(frac)  # taps -2..3 around floor(x), normalised to sum 1
    return [w[m, ...] for m in range(6)]


#: Lanczos-3 taps relative to floor(x), and per tap the sign of sin(pi t) and the cosine
#: and sine of pi k / 3 (see `lanczos3_weights`).
_LANCZOS_TAPS = range(-2, 4)
_TAP_SIGN = [1.0 if k % 2 == 0 else -1.0 for k in _LANCZOS_TAPS]
_TAP_COS3 = [math.cos(math.pi * k / 3.0) for k in _LANCZOS_TAPS]
_TAP_SIN3 = [math.sin(math.pi * k / 3.0) for k in _LANCZOS_TAPS]


def lanczos3_weights(frac: Any) -> Any:
    """Normalised Lanczos-3 weights for taps -2..3 around ``floor(x)``; shape (6, ...).

    ``sinc(t) sinc(t / 3)`` at ``t = frac - k``, with the common factor ``3 / pi^2`` left
    out (the weights are normalised), from three sines of ``frac`` instead of twelve
    sincs: ``sin(pi t) = (-1)^k sin(pi f)`` and ``sin(pi t / 3) = sin(pi f / 3) cos(pi k / 3)
    - cos(pi f / 3) sin(pi k / 3)``. Computed in the dtype of ``frac`` (float32 for the
    maps), exactly at every position (no quantisation); the one kernel of the host
    (`skymosaic.reproject`) and device resampling.

    Parameters
    ----------
    frac : array of float
        ``x - floor(x)``, in ``[0, 1]``.

    Returns
    -------
    array, shape ``(6, *frac.shape)``, dtype of ``frac``.

    Examples
    --------
    >>> import numpy as np
    >>> w = lanczos3_weights(np.array([0.0, 0.5], dtype=np.float32))
    >>> (w[:, 0].round(6) + 0.0).tolist()  # at a pixel centre: that pixel only
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    >>> bool(np.allclose(w[:, 1], w[::-1, 1])), round(float(w[:, 1].sum()), 6)  # symmetric
    (True, 1.0)
    """
    xp = array_namespace(frac)
    s1 = xp.sin(math.pi * frac)
    s3, c3 = xp.sin((math.pi / 3) * frac), xp.cos((math.pi / 3) * frac)
    limit = xp.full_like(frac, math.pi**2 / 3)
    ws = []
    for m, k in enumerate(_LANCZOS_TAPS):
        t = frac - float(k)
        num = (_TAP_SIGN[m] * s1) * (s3 * _TAP_COS3[m] - c3 * _TAP_SIN3[m])
        if k not in (0, 1):  # |t| >= 1 for frac in [0, 1]
            ws.append(num / (t * t))
            continue
        # the limit at t -> 0 (the formula loses precision below 1e-4): tap 0 at frac 0,
        # and tap 1 at frac 1 (x - floor(x) rounds to 1 in float32 just below an integer)
        near = xp.abs(t) < 1e-4
        t2 = xp.where(near, xp.ones_like(t), t * t)  # no 0/0 where the limit is taken
        ws.append(xp.where(near, limit, num / t2))
    w = xp.stack(ws, axis=0)
    return w / xp.sum(w, axis=0, keepdims=True)


def remap(
    planes: Any, xmap: Any, ymap: Any, kernel: str, *, fill: float = 0.0, border: str = "constant"
) -> Any:
    """Sample ``planes`` ``(C, h, w)`` at ``(xmap, ymap)`` ``(H, W)`` with ``kernel``.

    Parameters
    ----------
    planes : array, shape (C, h, w), float32
        Finite input values.
    xmap, ymap : array, shape (H, W), float32
        0-based input coordinates; NaN = unmapped (reads ``fill``, or the corner pixel with
        a replicated border).
    kernel : {"nearest", "bilinear", "bicubic", "lanczos3"}
    fill : float
        Value of every tap outside the input (``border="constant"``).
    border : {"constant", "replicate"}
        Taps outside the input read ``fill``, or the nearest edge pixel.

    Returns
    -------
    array, shape (C, H, W), float32, on the device of ``planes``.
    """
    xp = array_namespace(planes, xmap, ymap)
    if kernel not in _TAPS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {tuple(_TAPS)}")
    if border not in ("constant", "replicate"):
        raise ValueError(f"unknown border {border!r}; expected 'constant' or 'replicate'")
    c, h, w = planes.shape
    out_shape = xmap.shape
    x = xp.reshape(xp.where(xp.isnan(xmap), _FAR, xmap), (-1,))
    y = xp.reshape(xp.where(xp.isnan(ymap), _FAR, ymap), (-1,))
    if kernel == "nearest":
        ix0, iy0 = xp.astype(xp.round(x), xp.int64), xp.astype(xp.round(y), xp.int64)
        wx = wy = [xp.ones_like(x)]
    else:
        fx, fy = xp.floor(x), xp.floor(y)
        ix0, iy0 = xp.astype(fx, xp.int64), xp.astype(fy, xp.int64)
        wx, wy = _weights(xp, x - fx, kernel), _weights(xp, y - fy, kernel)
    first, n = _TAPS[kernel]
    flat = xp.reshape(planes, (c, h * w))
    out = xp.zeros((c, x.shape[0]), dtype=planes.dtype, device=device_of(planes))
    for ky in range(n):
        iy = iy0 + (first + ky)
        in_y = (iy >= 0) & (iy < h)
        row = xp.clip(iy, 0, h - 1) * w
        for kx in range(n):
            ix = ix0 + (first + kx)
            taps = xp.take(flat, row + xp.clip(ix, 0, w - 1), axis=1)  # clipped = replicated
            if border == "constant":
                inside = in_y & (ix >= 0) & (ix < w)
                taps = xp.where(
                    inside, taps, xp.asarray(fill, dtype=planes.dtype, device=device_of(planes))
                )
            out = out + xp.astype(wy[ky] * wx[kx], planes.dtype) * taps
    return xp.reshape(out, (c, *out_shape))


def dilate(mask: Any, size: int, *, fill: float = 1.0) -> Any:
    """Maximum of a float ``(h, w)`` array over ``size x size`` windows, outside = ``fill``."""
    xp = array_namespace(mask)
    if size <= 1:
        return mask
    r = size // 2
    out = mask
    for axis in (0, 1):
        n = out.shape[axis]
        pad_shape = list(out.shape)
        pad_shape[axis] = r
        pad = xp.full(tuple(pad_shape), fill, dtype=out.dtype, device=device_of(out))
        padded = xp.concat([pad, out, pad], axis=axis)
        acc = None
        for k in range(size):
            part = padded[k : k + n, :] if axis == 0 else padded[:, k : k + n]
            acc = part if acc is None else xp.maximum(acc, part)
        out = acc
    return out


# ------------------------------------------------------------------ filters
def _border_take(xp: Any, arr: Any, axis: int, before: int, after: int, *, mode: str) -> Any:
    """``arr`` extended by ``before``/``after`` samples along ``axis``.

    ``mode`` is ``"nearest"`` (edge replicated) or ``"reflect101"`` (``2 1 | 0 1 2``).
    """
    n = arr.shape[axis]
    idx = xp.arange(-before, n + after, device=device_of(arr))
    if mode == "nearest" or n == 1:
        idx = xp.clip(idx, 0, n - 1)
    else:  # reflect101: ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...
        period = 2 * (n - 1)
        idx = xp.abs(idx) % period
        idx = xp.where(idx > n - 1, period - idx, idx)
    return xp.take(arr, idx, axis=axis)


def _correlate1d(xp: Any, arr: Any, weights: list[float], axis: int, mode: str) -> Any:
    """``sum_k weights[k] * arr[i + k - r]`` along ``axis`` (centred, odd length)."""
    r = len(weights) // 2
    n = arr.shape[axis]
    padded = _border_take(xp, arr, axis, r, r, mode=mode)
    out = None
    for k, wk in enumerate(weights):
        sl = [slice(None)] * arr.ndim
        sl[axis] = slice(k, k + n)
        term = padded[tuple(sl)] * wk
        out = term if out is None else out + term
    return out


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> list[float]:
    """SciPy's sampled, normalised Gaussian (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    w = [math.exp(-0.5 * (k * k) / (sigma * sigma)) for k in range(-radius, radius + 1)]
    total = math.fsum(w)
    return [v / total for v in w]


def gaussian_filter(arr: Any, sigma: float) -> Any:
    """Gaussian blur of each plane of ``arr`` ``(H, W)`` or ``(C, H, W)``, SciPy
    ``gaussian_filter(mode="nearest")`` over the last two axes (channels never mix)."""
    xp = array_namespace(arr)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"gaussian_filter expects an (H, W) or (C, H, W) array, got shape {arr.shape}"
        )
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    w = gaussian_kernel(sigma)
    rows, cols = arr.ndim - 2, arr.ndim - 1
    return _correlate1d(xp, _correlate1d(xp, arr, w, rows, "nearest"), w, cols, "nearest")


_BINOMIAL = [1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16]


def pyr_down(plane: Any) -> Any:
    """``cv2.pyrDown`` of a 2-D plane: blur (reflect-101) and keep even rows/columns."""
    xp = array_namespace(plane)
    out = _correlate1d(
        xp, _correlate1d(xp, plane, _BINOMIAL, 0, "reflect101"), _BINOMIAL, 1, "reflect101"
    )
    return out[::2, ::2]


def _insert_zeros(xp: Any, arr: Any, axis: int) -> Any:
    """``arr`` on a grid twice as fine along ``axis``: samples at even indices, zeros between."""
    stacked = xp.stack([arr, xp.zeros_like(arr)], axis=axis + 1)
    shape = list(arr.shape)
    shape[axis] *= 2
    return xp.reshape(stacked, tuple(shape))


def pyr_up(plane: Any, shape: tuple[int, int]) -> Any:
    """``cv2.pyrUp`` of a 2-D plane ``(h, w)`` to the exact ``shape`` of the finer level.

    The expansion runs on the ``(2h, 2w)`` grid and is then cut to ``shape`` (``2h - 1``
    or ``2h`` rows, likewise columns), as OpenCV does.
    """
    xp = array_namespace(plane)
    h, w = plane.shape
    if not (2 * h - 1 <= shape[0] <= 2 * h and 2 * w - 1 <= shape[1] <= 2 * w):
        raise ValueError(f"cannot expand {plane.shape} to {shape}: need 2n - 1 or 2n per axis")
    up2 = [2.0 * v for v in _BINOMIAL]  # 4x the 2-D kernel: 2x per axis
    fine = _correlate1d(xp, _insert_zeros(xp, plane, 0), up2, 0, "reflect101")
    fine = _correlate1d(xp, _insert_zeros(xp, fine, 1), up2, 1, "reflect101")
    return fine[: shape[0], : shape[1]]


def resample(
    data: Any, xmap: Any, ymap: Any, kernel: str, radius: int, *, edge: str = "strict"
) -> tuple[Any, Any]:
    """Device twin of `skymosaic.reproject.resample` (validated there; same edge rules).

    An output pixel is valid only when every input sample under the kernel's support is
    valid: the invalid-input mask, dilated by ``radius - 1``, is resampled bilinearly and
    any output above 1e-6 is invalid (nearest: the nearest sample is invalid).
    ``edge="strict"``: the outside of the frame is invalid too (dilation and remap with
    outside = 1). ``edge="half"``: the outside is not invalid (dilation with outside = 0,
    mask and values remapped with a replicated border) and positions must lie within
    ``[-0.5, w - 0.5] x [-0.5, h - 0.5]``.
    """
    xp = array_namespace(data, xmap, ymap)
    invalid_in = ~xp.all(xp.isfinite(data), axis=0)
    planes = xp.astype(xp.where(invalid_in, xp.zeros_like(data), data), xp.float32)
    bad = xp.astype(invalid_in, xp.float32)
    if edge == "half":
        fill, border = 0.0, "replicate"
    else:
        fill, border = 1.0, "constant"
    if kernel == "nearest":
        invalid = (
            remap(bad[None, ...], xmap, ymap, "nearest", fill=fill, border=border)[0, ...] > 0.5
        )
    else:
        if radius > 1:
            bad = dilate(bad, 2 * radius - 1, fill=fill)
        invalid = (
            remap(bad[None, ...], xmap, ymap, "bilinear", fill=fill, border=border)[0, ...] > 1e-6
        )
    if edge == "half":
        h, w = data.shape[-2:]
        inside = (xmap >= -0.5) & (xmap <= w - 0.5) & (ymap >= -0.5) & (ymap <= h - 0.5)
        invalid = invalid | ~inside  # NaN positions fail every comparison: invalid
    out = remap(planes, xmap, ymap, kernel, fill=0.0, border=border)
    out = xp.where(
        invalid[None, ...], xp.asarray(float("nan"), dtype=out.dtype, device=device_of(out)), out
    )
    return out, ~invalid
