"""NaN-aware resampling kernels: nearest, bilinear, bicubic and Lanczos-3.

Kernel definitions (one per name, shared by every backend):

- ``nearest``: the input pixel whose centre is nearest.
- ``bilinear`` and ``bicubic``: OpenCV's ``remap`` (bicubic is Keys' cubic convolution
  with a = -0.75), 20-50x faster than exact gathers. OpenCV 4.x quantises the fractional
  sample position to 1/32 pixel (``INTER_TAB_SIZE``, positions exact to +-1/64 px, far below
  a seeing disc); OpenCV 5 interpolates float images at exact positions.
- ``lanczos3``: separable ``sinc(t) sinc(t/3)`` on 6x6 samples, weights normalised to sum 1
  (`skymosaic.backend.lanczos3_weights`, the weights of every backend; the host looks them
  up in a table of 65536 sub-pixel steps, within 1.1e-5 of the formula) with NumPy
  gathers: slower, sharpest.

No-data handling is the same for every kernel: an output pixel is valid only when every
input sample under the kernel's support is valid (finite). Invalid input never bleeds
beyond the kernel support, and valid output values are exactly the kernel applied to valid
data. The support test is done by a bilinear remap of the invalid-pixel mask dilated by
``radius - 1``: the 2x2 bilinear cell grown by ``radius - 1`` on each side *is* the
``2 radius`` wide support of the kernel.

Edge rules (``edge=``), i.e. what the outside of the frame counts as:

- ``"strict"`` (the default): the outside is invalid, like a NaN. A sample position must
  lie within the outermost pixel centres, ``[0, w - 1] x [0, h - 1]``, and bicubic and
  Lanczos-3 lose ``radius - 1`` more pixels at the edges (their outer taps would leave
  the frame). Every value is the kernel applied to real pixels: this is the rule for
  anything that measures (the photometric overlap fits, stacking).
- ``"half"``: a frame covers its pixels' full area, ``[-0.5, w - 0.5] x [-0.5, h - 0.5]``,
  as in astropy's ``reproject`` (which keeps the outer half pixel). Taps beyond the edge
  read the edge pixel (OpenCV ``BORDER_REPLICATE``); only NaN input pixels under the
  support, and positions outside that area, make an output pixel invalid. The rim is
  extrapolated by up to half a pixel, which a coadd wants (no half-pixel gap along every
  frame border, more samples on each seam) and a photometric fit does not (edge values
  repeated under star cores): the Phase 5 coadd uses ``"half"``, its photometric
  matching and the stacking ``"strict"`` (see `skymosaic.assemble.CoaddOptions`).

Device arrays (CuPy, or any array-API namespace) go to the array-API twin of this function,
`skymosaic.backend._kernels.resample`, which implements the same kernels and edge rules
(nearest and bilinear are identical to OpenCV 5's; see ``tests/test_gpu_parity.py``).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from skymosaic.backend import lanczos3_weights
from skymosaic.backend._kernels import EDGES as _EDGES
from skymosaic.backend._kernels import resample as _resample_device

__all__ = ["EDGES", "KERNELS", "KERNEL_RADIUS", "resample"]

KERNELS = ("nearest", "bilinear", "bicubic", "lanczos3")
#: Edge rules of `resample` (see the module docstring).
EDGES = _EDGES

#: Half-width of each kernel's support, in input pixels.
KERNEL_RADIUS = {"nearest": 1, "bilinear": 1, "bicubic": 2, "lanczos3": 3}

_CV_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
              "bicubic": cv2.INTER_CUBIC}


def _invalid_support(
    invalid: np.ndarray, xmap: np.ndarray, ymap: np.ndarray, kernel: str, edge: str
) -> np.ndarray:
    """Output pixels whose kernel support touches an invalid input pixel (or, with
    ``edge="strict"``, the outside of the frame; with ``"half"``, whose position lies
    outside the frame's pixel area)."""
    src = invalid.astype(np.float32)
    # strict: the outside is invalid (constant border 1); half: the outside replicates the
    # edge, so only NaN pixels count (a zero border is the same for a dilation: the
    # replicated edge pixel is already inside every window that reaches past the edge).
    fill, border = (0.0, cv2.BORDER_REPLICATE) if edge == "half" else (1.0, cv2.BORDER_CONSTANT)
    if kernel == "nearest":
        out = cv2.remap(src, xmap, ymap, cv2.INTER_NEAREST, borderMode=border, borderValue=fill)
        invalid_out = ~(out <= 0.5)  # OpenCV 5's vector path returns NaN for a NaN map: invalid
    else:
        r = KERNEL_RADIUS[kernel]
        if r > 1:
            # Grow the invalid pixels (strict: *and the outside of the frame*) by r - 1, so
            # that a cell within r - 1 pixels of them is rejected too (the outer taps of
            # bicubic/Lanczos reach there).
            size = 2 * r - 1
            kernel_ones = np.ones((size, size), np.uint8)
            src = cv2.dilate(src, kernel_ones, borderType=cv2.BORDER_CONSTANT, borderValue=fill)
        out = cv2.remap(src, xmap, ymap, cv2.INTER_LINEAR, borderMode=border, borderValue=fill)
        invalid_out = ~(out <= 1e-6)  # NaN (unmapped pixel) is invalid too
    if edge == "half":
        h, w = invalid.shape
        with np.errstate(invalid="ignore"):
            inside = (xmap >= -0.5) & (xmap <= w - 0.5) & (ymap >= -0.5) & (ymap <= h - 0.5)
        invalid_out |= ~inside  # NaN positions fail every comparison: invalid
    return invalid_out


#: Sub-pixel steps of the host's Lanczos-3 weight table (`_lanczos3_weights`).
LANCZOS_TABLE_STEPS = 2**16


@functools.cache
def _lanczos3_table() -> np.ndarray:
    """`skymosaic.backend.lanczos3_weights` at ``k / LANCZOS_TABLE_STEPS``, k = 0..steps,
    shaped (6, steps + 1), float32 (1.5 MiB, made once)."""
    frac = np.arange(LANCZOS_TABLE_STEPS + 1, dtype=np.float64) / LANCZOS_TABLE_STEPS
    return np.ascontiguousarray(lanczos3_weights(frac).astype(np.float32))


def _lanczos3_weights(frac: np.ndarray) -> np.ndarray:
    """Lanczos-3 weights for taps -2..3 around ``floor(x)``, (6, ...) float32: the one
    definition, `skymosaic.backend.lanczos3_weights`, looked up at the nearest 1/65536 px.

    The host's fast path (4x faster than evaluating the three sines and six quotients per
    position): the position error is at most 7.6e-6 px and the weights differ from the
    exact ones by at most 1.1e-5 (``tests/test_reproject.py``), far below a float32 image's
    own rounding of a sharp star after any resampling. The device evaluates the formula.
    """
    idx = np.rint(np.asarray(frac, dtype=np.float32) * LANCZOS_TABLE_STEPS).astype(np.intp)
    np.clip(idx, 0, LANCZOS_TABLE_STEPS, out=idx)
    return np.take(_lanczos3_table(), idx, axis=1)


def _lanczos3(planes: np.ndarray, xmap: np.ndarray, ymap: np.ndarray) -> np.ndarray:
    """Lanczos-3 at ``(xmap, ymap)``; taps beyond the edge read the edge pixel.

    Each plane is padded by 3 edge pixels, so that every tap of a position within
    ``[-1, w] x [-1, h]`` is inside; positions further out (all invalid, see `resample`)
    are clamped there. Per tap row, the six neighbours are gathered from the flat padded
    plane at one precomputed index, from a view shifted by the tap's offset (`numpy.take`:
    contiguous outputs, no (H, W, 6) temporary) and weighted by the x weights, then the six
    rows by the y weights.
    """
    c, h, w = planes.shape
    fx, fy = np.floor(xmap), np.floor(ymap)
    wx, wy = _lanczos3_weights(xmap - fx), _lanczos3_weights(ymap - fy)
    col = np.clip(fx, -1, w - 1).astype(np.intp) + 1  # first tap (x - 2) in the padded plane
    row = np.clip(fy, -1, h - 1).astype(np.intp) + 1
    out = np.zeros((c, *xmap.shape), dtype=np.float32)
    row_sum, tap = np.empty(xmap.shape, np.float32), np.empty(xmap.shape, np.float32)
    stride = w + 6  # of the padded planes
    first = row * stride + col
    for ch in range(c):
        flat = np.pad(planes[ch], 3, mode="edge").ravel()
        for ky in range(6):
            row_sum.fill(0.0)
            for kx in range(6):
                flat[ky * stride + kx:].take(first, out=tap, mode="clip")
                tap *= wx[kx]
                row_sum += tap
            row_sum *= wy[ky]
            out[ch] += row_sum
    return out


def resample(
    data: np.ndarray,
    xmap: np.ndarray,
    ymap: np.ndarray,
    *,
    kernel: str = "bilinear",
    edge: str = "strict",
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``data`` at input coordinates ``(xmap, ymap)``.

    Parameters
    ----------
    data : ndarray, shape (C, h, w), float32
        Input image, NaN where there is no data (a pixel invalid in any channel is invalid
        in all). A device array (with device maps) is resampled on its device.
    xmap, ymap : ndarray, shape (H, W), float32
        0-based input pixel coordinates of each output pixel (NaN = unmapped).
    kernel : {"nearest", "bilinear", "bicubic", "lanczos3"}
    edge : {"strict", "half"}
        What the outside of the frame counts as (see the module docstring): ``"strict"``,
        invalid (positions within the outermost pixel centres, full support inside the
        frame); ``"half"``, the edge pixel repeated (positions within the frame's pixel
        area ``[-0.5, w - 0.5] x [-0.5, h - 0.5]``).

    Returns
    -------
    out : ndarray, shape (C, H, W), float32
        Resampled values, NaN where the kernel support is not entirely valid.
    footprint : ndarray, shape (H, W), bool
        True where ``out`` is valid.

    Raises
    ------
    ValueError
        For an unknown kernel or edge rule, or mismatched shapes.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    if edge not in EDGES:
        raise ValueError(f"unknown edge rule {edge!r}; expected one of {EDGES}")
    if data.ndim != 3:
        raise ValueError(f"data must be (C, h, w), got shape {data.shape}")
    if xmap.shape != ymap.shape:
        raise ValueError(f"xmap {xmap.shape} and ymap {ymap.shape} differ in shape")
    if not isinstance(data, np.ndarray):
        return _resample_device(data, xmap, ymap, kernel, KERNEL_RADIUS[kernel], edge=edge)
    xmap = np.ascontiguousarray(xmap, dtype=np.float32)
    ymap = np.ascontiguousarray(ymap, dtype=np.float32)
    invalid_in = ~np.isfinite(data).all(axis=0)
    if invalid_in.any():
        planes = np.where(invalid_in, np.float32(0.0), data).astype(np.float32, copy=False)
    else:  # a complete frame (the usual raw sub): no zero-filled copy
        planes = data.astype(np.float32, copy=False)
    invalid = _invalid_support(invalid_in, xmap, ymap, kernel, edge)
    if kernel == "lanczos3":  # taps beyond the edge repeat it (only "half" keeps them)
        out = _lanczos3(planes, np.nan_to_num(xmap, nan=-1e6), np.nan_to_num(ymap, nan=-1e6))
    else:
        flag = _CV_INTERP[kernel]
        border = cv2.BORDER_REPLICATE if edge == "half" else cv2.BORDER_CONSTANT
        out = np.empty((data.shape[0], *xmap.shape), dtype=np.float32)
        for ch in range(data.shape[0]):
            plane = np.ascontiguousarray(planes[ch])
            out[ch] = cv2.remap(plane, xmap, ymap, flag, borderMode=border, borderValue=0.0)
    np.copyto(out, np.float32(np.nan), where=invalid)  # faster than boolean indexing
    return out, ~invalid
