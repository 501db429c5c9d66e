"""Cheap, robust per-frame statistics (read once, used for weights and rejection)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FrameStats", "frame_stats", "median"]

_MAD_TO_SIGMA = 1.4826


def median(values: np.ndarray) -> np.floating:
    """``np.median`` of all of ``values``, the same number of the same type, 3-5 times faster.

    NumPy's median partitions around the two middle positions and the last one (to find
    NaN) at once, which costs five times one partition (measured on 10**5 float32 values:
    1.1 ms against 0.22 ms; the robust statistics of the photometry take thousands of
    medians per run). Here: one partition at the upper middle, the largest value below it
    for an even count, their mean as NumPy takes it; NaN when any value is NaN.

    Examples
    --------
    >>> import numpy as np
    >>> float(median(np.array([3.0, 1.0, 4.0, 1.0]))), float(median(np.array([2.0, np.nan])))
    (2.0, nan)
    """
    v = np.asarray(values).ravel()
    n = v.size
    if n == 0 or v.dtype.kind not in "fc":
        return np.median(v)
    part = np.partition(v, n // 2)
    if np.isnan(part[n // 2:]).any():  # NaN sorts last: it is in the upper part if anywhere
        return np.median(v)
    hi = part[n // 2]
    if n % 2:
        return hi
    return np.mean(np.array([part[: n // 2].max(), hi], dtype=v.dtype))


@dataclass(frozen=True)
class FrameStats:
    """Valid fraction, robust background (median) and noise per channel of one frame.

    ``noise`` is estimated from the median absolute deviation of differences between
    pixels 3 apart along rows, divided by sqrt(2): smooth structure (gradients, nebulae)
    cancels in the difference, the median ignores stars, and at 3 px the correlation that
    debayering or resampling put between neighbours is gone.
    """

    valid_fraction: float
    background: tuple[float, ...]
    noise: tuple[float, ...]

    def to_dict(self) -> dict:
        return {
            "valid_fraction": self.valid_fraction,
            "background": list(self.background),
            "noise": list(self.noise),
        }


def frame_stats(data: np.ndarray, *, max_samples: int = 250_000) -> FrameStats:
    """Statistics of a (C, H, W) frame with NaN for no data (see `FrameStats`).

    Background and noise are measured on whole rows taken every ``ceil(H*W/max_samples)``
    rows (about ``max_samples`` pixels per channel): a median of 250 000 values is known
    to 0.3 % of the noise, and a 2 Mpx plane costs a ninth of a full one.
    """
    c, h, w = data.shape
    valid = np.isfinite(data).all(axis=0)
    fraction = float(valid.mean()) if valid.size else 0.0
    if fraction == 0.0:
        return FrameStats(0.0, (float("nan"),) * c, (float("nan"),) * c)
    stride = max(1, -(-h * w // max_samples))
    sub = data[:, ::stride, :]
    bg, noise = [], []
    for ch in range(c):
        plane = sub[ch]
        values = plane[np.isfinite(plane)]
        bg.append(float(np.median(values)))
        lag = 3 if plane.shape[1] > 3 else 1
        diff = (plane[:, lag:] - plane[:, :-lag]).ravel()
        diff = diff[np.isfinite(diff)]
        if diff.size < 16:
            noise.append(float("nan"))
            continue
        mad = np.median(np.abs(diff - np.median(diff)))
        noise.append(float(_MAD_TO_SIGMA * mad / np.sqrt(2.0)))
    return FrameStats(fraction, tuple(bg), tuple(noise))
