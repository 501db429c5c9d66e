"""Per-frame, per-channel combination weights.

The weight of frame k in channel c is a product of independent factors, each chosen by
name in ``methods``:

``"exposure"``
    ``t_k`` — once frames are on a common photometric scale, the noise variance of a
    sub-exposure falls as 1/t, so the inverse-variance weight grows as t.
``"noise"``
    ``1 / (sigma_kc * gain_kc)**2`` — inverse variance of the frame *after*
    normalisation (``frame' = gain*frame + offset`` scales the noise by ``gain``).
``"fwhm"``
    ``(median(fwhm) / fwhm_k)**2`` — star-based quality: a point source's peak signal
    to noise scales as 1/FWHM**2, so sharper frames count more.

The product is normalised to mean 1 in every channel, so a weight map built from these
weights reads as "equivalent number of average frames".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from array_api_compat import array_namespace

__all__ = ["WEIGHTING_METHODS", "frame_weights"]

logger = logging.getLogger(__name__)

WEIGHTING_METHODS = ("exposure", "noise", "fwhm")


def _positive(name: str, arr: object, shape: tuple[int, ...]) -> np.ndarray:
    """Validate a per-frame figure: finite, > 0, broadcastable to ``shape``."""
    try:
        out = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {arr!r}") from err
    try:
        out = np.broadcast_to(out, shape)
    except ValueError as err:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}") from err
    bad = ~(np.isfinite(out) & (out > 0))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite and > 0, got {float(out[idx])!r} at index {idx}")
    return out


def normalize_methods(methods: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical, de-duplicated tuple of weighting method names; raises on unknown names."""
    if isinstance(methods, str):
        methods = () if methods in ("", "none") else (methods,)
    out = []
    for m in methods:
        if m not in WEIGHTING_METHODS:
            raise ValueError(f"weighting method must be among {WEIGHTING_METHODS}, got {m!r}")
        if m not in out:
            out.append(m)
    return tuple(m for m in WEIGHTING_METHODS if m in out)


def frame_weights(
    n_frames: int,
    n_channels: int,
    *,
    exposure: np.ndarray | None = None,
    noise: np.ndarray | None = None,
    fwhm: np.ndarray | None = None,
    gains: np.ndarray | None = None,
    methods: str | Iterable[str] = (),
) -> np.ndarray:
    """Combination weight of each frame and channel, normalised to mean 1 per channel.

    Parameters
    ----------
    n_frames, n_channels : int
        Number of frames N and channels C.
    exposure : array (N,), optional
        Exposure times (> 0); required when ``"exposure"`` is in ``methods``.
    noise : array (N, C) or (N,), optional
        Noise sigma of each frame (per channel) *before* normalisation; required when
        ``"noise"`` is in ``methods``.
    fwhm : array (N,), optional
        Star FWHM of each frame (any unit, > 0); required when ``"fwhm"`` is in
        ``methods``.
    gains : array (N, C), optional
        Normalisation gains; the noise weight uses ``noise * gains``. Default 1.
    methods : str or iterable of str
        Any combination of ``"exposure"``, ``"noise"``, ``"fwhm"``; empty = uniform.

    Returns
    -------
    ndarray, shape (N, C), float64
        Positive weights with mean 1 over the frames of every channel.

    Raises
    ------
    ValueError
        If a method is unknown, its input is missing, or an input has the wrong shape or
        a non-finite / non-positive value.

    Examples
    --------
    >>> frame_weights(2, 1, noise=[1.0, 2.0], methods="noise").ravel().tolist()
    [1.6, 0.4]
    """
    for name, val in (("n_frames", n_frames), ("n_channels", n_channels)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {val!r}")
    methods = normalize_methods(methods)
    shape = (n_frames, n_channels)
    given = {"exposure": exposure, "noise": noise, "fwhm": fwhm}
    for m in methods:
        if given[m] is None:
            raise ValueError(f"weighting {m!r} requested but {m}=None was given")

    w = np.ones(shape, dtype=np.float64)
    if "exposure" in methods:
        w *= _positive("exposure", exposure, (n_frames,))[:, None]
    if "noise" in methods:
        sig = np.asarray(noise, dtype=np.float64)
        sig = sig[:, None] if sig.ndim == 1 else sig
        sig = _positive("noise", sig, shape)
        g = np.ones(shape) if gains is None else _positive("gains", gains, shape)
        w *= 1.0 / (sig * g) ** 2
    if "fwhm" in methods:
        f = _positive("fwhm", fwhm, (n_frames,))
        w *= ((np.median(f) / f) ** 2)[:, None]
    xp = array_namespace(w)
    w = w / xp.mean(w, axis=0, keepdims=True)
    logger.debug("frame weights (%s): min %.3g max %.3g", methods or "uniform", w.min(), w.max())
    return w
