"""One source's weighted resampling for the coadd, on the host or on a device.

`resample_weighted` is the per-pixel kernel shared by the Phase 5 photometric matching,
the coadd and the coverage renormalisation: resample the source's pixels, build its
weight map (source weight x footprint x resampled pixel weights) and apply its solved
gain and offset. The pixel weights are resampled with the same edge rule as the pixels.
The maths is written once against the array API; the backend only decides where the
arrays live.

Transfers on a device: the source's input region and pixel weights go to the device once,
the maps one row chunk at a time, and each chunk's result comes back once (the coadd's
float64 accumulators and its on-disk outputs stay on the host, where the other sources'
blocks and the FITS writer are).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as device_of

from skymosaic._surface import SkySurface
from skymosaic.backend._device import Backend, to_host
from skymosaic.reproject._resample import resample

__all__ = ["resample_weighted"]

logger = logging.getLogger(__name__)

#: Device bytes per output pixel and channel of one chunk: output, zero-filled taps,
#: per-tap products (float32), plus per pixel the maps, masks and weights.
_DEVICE_BYTES_PER_CHANNEL, _DEVICE_BYTES_PER_PIXEL = 16, 48


def _weighted(
    pixels: Any,
    xmap: Any,
    ymap: Any,
    *,
    kernel: str,
    edge: str,
    weight: float,
    pixel_weight: Any | None,
    gain: Sequence[float] | np.ndarray | None,
    offset: Sequence[float] | np.ndarray | None,
    surface: SkySurface | None = None,
) -> tuple[Any, Any, Any]:
    """``(data (C, H, W), weight (H, W), footprint (H, W))`` in the namespace of ``pixels``."""
    xp = array_namespace(pixels, xmap, ymap)
    dev = device_of(pixels)
    out, footprint = resample(pixels, xmap, ymap, kernel=kernel, edge=edge)
    zero = xp.asarray(0.0, dtype=xp.float32, device=dev)
    wt = xp.where(footprint, xp.asarray(weight, dtype=xp.float32, device=dev), zero)
    if pixel_weight is not None:
        pw, pw_fp = resample(
            xp.astype(pixel_weight[None, ...], xp.float32), xmap, ymap, kernel="bilinear", edge=edge
        )
        wt = wt * xp.where(pw_fp, xp.maximum(pw[0, ...], zero), zero)
    if gain is not None:
        out = out * xp.asarray(np.asarray(gain, np.float32), device=dev)[:, None, None]
    if offset is not None:
        out = out + xp.asarray(np.asarray(offset, np.float32), device=dev)[:, None, None]
    if surface is not None:
        out = out + surface.evaluate(xmap, ymap, dtype=xp.float32)
    return out, wt, footprint


def resample_weighted(
    pixels: np.ndarray,
    xmap: np.ndarray,
    ymap: np.ndarray,
    *,
    kernel: str,
    weight: float,
    edge: str = "strict",
    pixel_weight: np.ndarray | None = None,
    gain: Sequence[float] | np.ndarray | None = None,
    offset: Sequence[float] | np.ndarray | None = None,
    surface: SkySurface | None = None,
    backend: Backend | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Resample a source region and build its weights, with its gain/offset applied.

    Parameters
    ----------
    pixels : ndarray, shape (C, h, w)
        The source's input region (NaN = no data).
    xmap, ymap : ndarray, shape (H, W), float32
        Input coordinates (relative to the region) of each output pixel.
    kernel : str
        Resampling kernel (see `skymosaic.reproject.resample`).
    edge : {"strict", "half"}
        Edge rule of the resampling (see `skymosaic.reproject.resample`).
    weight : float
        The source's scalar weight.
    pixel_weight : ndarray, shape (h, w), optional
        Per-pixel weights of the region (resampled bilinearly, negative = 0).
    gain, offset : sequence of float, optional
        Per-channel photometric correction ``gain * x + offset``.
    surface : SkySurface, optional
        The source's sky surface, added after the gain; its origin must be the region's
        corner (`SkySurface.at`), so it is evaluated at ``(xmap, ymap)``.
    backend : Backend, optional
        Where to compute (default: the host). On a device the output rows are processed
        in chunks sized to free device memory; a device fault falls back to the host
        (`Backend.run`, step ``"reproject"``).

    Returns
    -------
    (data, weight) : ndarray (C, H, W) float32 and ndarray (H, W) float32, on the host
        NaN data and weight 0 where the source has no valid sample; None when the source
        has no valid output pixel.
    """

    def on_host() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _weighted(
            pixels,
            xmap,
            ymap,
            kernel=kernel,
            edge=edge,
            weight=weight,
            pixel_weight=pixel_weight,
            gain=gain,
            offset=offset,
            surface=surface,
        )

    if backend is None:
        out, wt, footprint = on_host()
    else:
        c = pixels.shape[0]
        h, w = xmap.shape

        def on_device(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            dev_pixels = backend.to_device(pixels)
            dev_pw = None if pixel_weight is None else backend.to_device(pixel_weight)
            out = np.empty((c, h, w), np.float32)
            wt = np.empty((h, w), np.float32)
            fp = np.empty((h, w), bool)
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                res = _weighted(
                    dev_pixels,
                    backend.to_device(xmap[r0:r1]),
                    backend.to_device(ymap[r0:r1]),
                    kernel=kernel,
                    edge=edge,
                    weight=weight,
                    pixel_weight=dev_pw,
                    gain=gain,
                    offset=offset,
                    surface=surface,
                )
                out[:, r0:r1], wt[r0:r1], fp[r0:r1] = (to_host(a) for a in res)
            return out, wt, fp

        per_row = w * (c * _DEVICE_BYTES_PER_CHANNEL + _DEVICE_BYTES_PER_PIXEL)
        out, wt, footprint = backend.run(
            "reproject", on_device, on_host, rows=backend.chunk_rows(h, per_row)
        )
    if not footprint.any():
        return None
    return out, wt
