"""Photometric normalisation of registered frames onto a reference frame.

Each frame k gets, per channel, a gain and an offset such that
``gain[k, c] * frame_k[c] + offset[k, c]`` is on the photometric scale of the reference
frame (whose own gain/offset are exactly 1 and 0). They are estimated *once*, before the
chunked combine, from a bounded sample: every frame averaged in square blocks, so that at
most ``sample_pixels`` bins (default 65 536) are left per channel (a 1437 x 2119 Seestar
tile is binned 7 x 7). Frames are read one at a time, so the memory does not depend on the
number of frames, and the fits of different frames run in a thread pool.

Why bins rather than a subset of pixels: a gain is constrained by the signal range of the
sample (stars, galaxies, nebula) over its noise. Block averaging keeps all of the signal
of every star and extended source while it lowers the noise by up to the block side, so
the sample has *more* dynamic range than the full-resolution frame, not 1/60th of it as a
row subset has. It also averages away the sub-pixel resampling differences of star cores
between two frames, which otherwise scatter about the line.

Methods
-------
``"none"``            gain 1, offset 0.
``"additive"``        offset = level(reference) - level(frame): a sky-glow change.
``"multiplicative"``  gain = level(reference) / level(frame): a transparency change.
``"linear"``          errors-in-variables line fit of reference against frame over all
                      pixels valid in both (sky *and* stars, so both gain and offset are
                      constrained), via `skymosaic.photometry.fit_linear_relation`.
``"stars"``           (default) gain from aperture fluxes of the reference's stars at full
                      resolution, and a sky surface instead of the offset
                      (`estimate_star_normalization`, `skymosaic.stack._starnorm`).

``level`` is a sigma-clipped median (3 sigma, MAD scale), i.e. the sky level: stars and
trails do not bias it. A frame that cannot be fitted (too few common pixels, a
non-positive level, a failed fit) falls back to (1, 0) with a logged warning naming the
file; a linear fit whose data do not constrain a gain (status ``offset_only``, the normal
case for subs of a star-poor field, whose gain is then 1 within the noise) keeps its
offset with gain 1, and the stack logs one line counting such frames.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from skymosaic.photometry._linefit import fit_linear_relation

__all__ = ["NORMALIZATION_METHODS", "estimate_normalization", "estimate_star_normalization",
           "select_reference"]

logger = logging.getLogger(__name__)

NORMALIZATION_METHODS = ("none", "additive", "multiplicative", "linear", "stars")
_MAD_TO_SIGMA = 1.482602218505602
#: Fewer common valid pixels than this in the sample: the frame keeps (1, 0).
MIN_COMMON_PIXELS = 50
#: A fitted gain with a larger relative error is not used (offset only), as in `fit_overlap`.
MAX_GAIN_ERROR = 0.1
#: Default size of the normalisation sample: bins per channel after block averaging.
SAMPLE_PIXELS = 65536


def _check_cube(cube: object) -> tuple[int, int, int, int]:
    shape = getattr(cube, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"cube must be a 4-d (N, C, H, W) array, got shape {shape!r}")
    if any(int(s) < 1 for s in shape):
        raise ValueError(f"cube must not be empty, got shape {tuple(shape)}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _check_sample(sample_pixels: int) -> None:
    if isinstance(sample_pixels, bool) or not isinstance(sample_pixels, (int, np.integer)):
        raise ValueError(f"sample_pixels must be an integer >= 1, got {sample_pixels!r}")
    if sample_pixels < 1:
        raise ValueError(f"sample_pixels must be an integer >= 1, got {sample_pixels!r}")


def bin_factor(height: int, width: int, sample_pixels: int) -> int:
    """Side of the square blocks that leave at most ``sample_pixels`` bins of a frame."""
    return max(1, math.ceil(math.sqrt(height * width / sample_pixels)))


def block_mean(frame: np.ndarray, factor: int) -> np.ndarray:
    """A (C, H, W) frame averaged in ``factor x factor`` blocks: (C, H // factor, W // factor)
    float64.

    A block with any invalid (NaN) pixel is NaN; the last ``H % factor`` rows and
    ``W % factor`` columns are left out.
    """
    frame = np.asarray(frame, dtype=np.float32)
    if factor == 1:
        return frame.astype(np.float64)
    c, h, w = frame.shape
    hb, wb = h // factor, w // factor
    blocks = frame[:, : hb * factor, : wb * factor].reshape(c, hb, factor, wb, factor)
    return blocks.mean(axis=(2, 4), dtype=np.float64)


def binned_frame(cube: np.ndarray, k: int, factor: int) -> np.ndarray:
    """`block_mean` of frame ``k`` of the cube, read once, whole (a memmap is paged in
    one frame at a time)."""
    return block_mean(cube[k], factor)


def _frame_bins(cube: np.ndarray, binned: np.ndarray | None, factor: int):
    """``k -> binned frame k``: taken from ``binned`` when the caller has it, else read."""
    if binned is None:
        return lambda k: binned_frame(cube, k, factor)
    n, c, h, w = _check_cube(cube)
    expected = (n, c, h // factor, w // factor)
    if tuple(np.shape(binned)) != expected:
        raise ValueError(f"binned must have shape {expected} ({factor}x{factor} blocks), "
                         f"got {tuple(np.shape(binned))}")
    return lambda k: binned[k]


def robust_level(values: np.ndarray, *, clip: float = 3.0, max_iter: int = 5) -> float:
    """Sigma-clipped median of the finite ``values`` (MAD scale): the sky level."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    for _ in range(max_iter):
        med = np.median(v)
        sig = _MAD_TO_SIGMA * np.median(np.abs(v - med))
        if sig <= 0:
            break
        keep = np.abs(v - med) <= clip * sig
        if keep.all():
            break
        v = v[keep]
    return float(np.median(v))


def select_reference(
    cube: np.ndarray,
    *,
    noise: np.ndarray | None = None,
    fwhm: np.ndarray | None = None,
    sample_pixels: int = SAMPLE_PIXELS,
    binned: np.ndarray | None = None,
) -> int:
    """The "auto" reference frame: most coverage, then best quality.

    Candidates are the frames whose valid fraction (bins of the normalisation sample valid
    in every channel) is at least 90 % of the best one; among them the frame with the
    highest quality ``1/mean(noise**2) * (1/fwhm**2)`` (whichever figures are given) wins;
    ties go to the lowest index.

    Parameters
    ----------
    cube : array (N, C, H, W)
        Registered frames (ndarray or memmap), NaN = no data.
    noise : array (N, C) or (N,), optional
        Per-frame noise sigma.
    fwhm : array (N,), optional
        Per-frame star FWHM.
    sample_pixels : int
        Size of the binned sample (see the module docstring).
    binned : array (N, C, H // f, W // f), optional
        The frames' `block_mean` at ``f = bin_factor(H, W, sample_pixels)``, when the
        caller has them (the cube is then not read).

    Returns
    -------
    int
        Index of the reference frame.
    """
    n, _, h, w = _check_cube(cube)
    _check_sample(sample_pixels)
    bins = _frame_bins(cube, binned, bin_factor(h, w, sample_pixels))
    coverage = np.array([np.mean(np.isfinite(bins(k)).all(axis=0)) for k in range(n)])
    quality = np.ones(n)
    if noise is not None:
        sig = np.asarray(noise, dtype=np.float64).reshape(n, -1)
        quality /= np.mean(sig**2, axis=1)
    if fwhm is not None:
        quality /= np.asarray(fwhm, dtype=np.float64).reshape(n) ** 2
    quality = np.where(np.isfinite(quality), quality, 0.0)
    candidates = np.flatnonzero(coverage >= 0.9 * coverage.max())
    ref = int(candidates[np.argmax(quality[candidates])])
    logger.info("auto reference frame: %d (coverage %.3f)", ref, coverage[ref])
    return ref


def _fit_channel(  # noqa: PLR0911 (one return per fallback)
    frame: np.ndarray,
    ref: np.ndarray,
    method: str,
    sigma: tuple[float | None, float | None],
) -> tuple[float, float, str]:
    """Gain/offset mapping one channel's sample onto the reference; plus a status.

    The status is "" for a full fit, starts with ``"offset only"`` when the sample does
    not constrain a gain (the offset is kept, the gain is 1), and says why otherwise
    (the frame keeps (1, 0)).
    """
    both = np.isfinite(frame) & np.isfinite(ref)
    n_common = int(np.count_nonzero(both))
    if n_common < MIN_COMMON_PIXELS:
        return 1.0, 0.0, f"only {n_common} common valid pixels"
    if method == "linear":
        # Fit frame = a * reference + c and invert it. The Deming line is symmetric, but
        # the fit's robust start is not: it resists outliers in y far better than in x.
        # The frame being normalised is where trails and hot pixels usually are (the
        # reference is chosen clean), so the frame goes on the y side.
        rel = fit_linear_relation(
            np.where(both, ref, np.nan),
            np.where(both, frame, np.nan),
            sigma_x=sigma[1],
            sigma_y=sigma[0],
        )
        if rel.status == "failed":
            return 1.0, 0.0, f"linear fit failed: {rel.reason}"
        if not (np.isfinite(rel.gain) and rel.gain > 0):
            return 1.0, 0.0, f"linear fit gave gain {rel.gain!r}"
        if rel.status == "ok" and not rel.gain_err <= MAX_GAIN_ERROR * rel.gain:
            # a slope the data barely constrain (0.0004 +- 0.0005 was seen on a frame of a
            # small test survey): inverting it would scale the frame by thousands. Keep the
            # sky offset only.
            shift = robust_level(frame[both] - ref[both])
            return 1.0, -shift, (f"offset only: gain {rel.gain:.4g} +- {rel.gain_err:.2g} is "
                                 f"looser than {MAX_GAIN_ERROR:.0%}")
        status = "" if rel.status == "ok" else f"offset only: {rel.reason}"
        return 1.0 / float(rel.gain), -float(rel.offset) / float(rel.gain), status
    lvl_f = robust_level(frame[both])
    lvl_r = robust_level(ref[both])
    if method == "additive":
        return 1.0, lvl_r - lvl_f, ""
    if not (lvl_f > 0 and lvl_r > 0):
        return 1.0, 0.0, f"non-positive sky level (frame {lvl_f:.4g}, reference {lvl_r:.4g})"
    return lvl_r / lvl_f, 0.0, ""


def estimate_normalization(
    cube: np.ndarray,
    *,
    reference: int | str = "auto",
    method: str = "linear",
    sample_pixels: int = SAMPLE_PIXELS,
    noise: np.ndarray | None = None,
    fwhm: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    threads: int = 1,
    binned: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame, per-channel gains and offsets onto the reference photometric scale.

    Parameters
    ----------
    cube : array (N, C, H, W)
        Registered frames (ndarray or memmap, read one frame at a time), NaN = no data.
    reference : int or "auto"
        Index of the reference frame, or ``"auto"`` (see `select_reference`).
    method : {"none", "additive", "multiplicative", "linear"}
        See the module docstring.
    sample_pixels : int
        Most bins per channel in the binned sample (see the module docstring).
    noise : array (N, C) or (N,), optional
        Per-frame noise sigma of the unbinned frames: passed to the linear fit when the
        sample is not binned (else the noise is measured on the binned sample, which
        also accounts for the pixel-to-pixel correlation of resampled data), and used by
        ``reference="auto"``.
    fwhm : array (N,), optional
        Per-frame FWHM, used by ``reference="auto"``.
    names : sequence of str, optional
        Frame names for the warnings (default: ``frame <index>``).
    threads : int
        Frames fitted at once (the fits release the GIL in their NumPy kernels).
    binned : array (N, C, H // f, W // f), optional
        As in `select_reference`.

    Returns
    -------
    gains, offsets : ndarray (N, C), float64
        ``gains * frame + offsets`` is on the reference scale; the reference row is (1, 0).

    Raises
    ------
    ValueError
        On a bad cube shape, method, reference or sample size.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> sky = 100 + rng.gamma(0.3, 200, (1, 1, 40, 60)).astype(np.float32)
    >>> cube = np.concatenate([sky, 2 * sky + 10])
    >>> g, b = estimate_normalization(cube, reference=0, method="multiplicative")
    >>> g[0, 0], g[1, 0] < 0.55
    (np.float64(1.0), np.True_)
    """
    n, c, h, w = _check_cube(cube)
    if method not in NORMALIZATION_METHODS:
        raise ValueError(f"method must be one of {NORMALIZATION_METHODS}, got {method!r}")
    if method == "stars":
        raise ValueError("method 'stars' solves sky surfaces: use estimate_star_normalization")
    _check_sample(sample_pixels)
    if reference != "auto" and (
        isinstance(reference, bool)
        or not isinstance(reference, (int, np.integer))
        or not 0 <= reference < n
    ):
        raise ValueError(
            f"reference must be 'auto' or a frame index in [0, {n}), got {reference!r}"
        )
    if names is not None and len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} frames")
    gains = np.ones((n, c))
    offsets = np.zeros((n, c))
    if method == "none":
        return gains, offsets
    if reference == "auto":
        reference = select_reference(
            cube, noise=noise, fwhm=fwhm, sample_pixels=sample_pixels, binned=binned
        )
    ref = int(reference)
    factor = bin_factor(h, w, sample_pixels)
    frame_bins = _frame_bins(cube, binned, factor)
    sig = (
        None
        if noise is None or factor > 1
        else np.broadcast_to(np.asarray(noise, dtype=np.float64).reshape(n, -1), (n, c))
    )

    def label(k: int) -> str:
        return names[k] if names is not None else f"frame {k}"

    ref_bins = frame_bins(ref)

    def fit(k: int) -> list[tuple[float, float, str]]:
        bins = frame_bins(k)
        return [
            _fit_channel(bins[ch], ref_bins[ch], method,
                         (None, None) if sig is None else (float(sig[k, ch]), float(sig[ref, ch])))
            for ch in range(c)
        ]

    others = [k for k in range(n) if k != ref]
    offset_only: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        for k, fits in zip(others, pool.map(fit, others), strict=True):
            for ch, (g, b, status) in enumerate(fits):
                gains[k, ch], offsets[k, ch] = g, b
                if status.startswith("offset only"):
                    offset_only.append(f"{label(k)} channel {ch} ({status[len('offset only: '):]})")
                elif status:
                    logger.warning("%s channel %d: %s normalisation onto %s: %s", label(k), ch,
                                   method, label(ref), status)
    if offset_only:
        # expected for star-poor fields (the gain of a sub is then 1 within its noise):
        # one line for the stack, not one warning per frame
        logger.info(
            "%s normalisation onto %s: %d of %d frame channels offset only, gain kept at 1 "
            "(too little signal range in the %dx%d-binned sample), e.g. %s",
            method, label(ref), len(offset_only), len(others) * c, factor, factor,
            "; ".join(offset_only[:3]),
        )
    logger.info(
        "%s normalisation onto %s (%dx%d bins): gains %.4g..%.4g, offsets %.4g..%.4g",
        method,
        label(ref),
        factor,
        factor,
        gains.min(),
        gains.max(),
        offsets.min(),
        offsets.max(),
    )
    return gains, offsets


def estimate_star_normalization(
    cube: np.ndarray,
    *,
    reference: int,
    surface_order: int = 2,
    sample_pixels: int = SAMPLE_PIXELS,
    names: Sequence[str] | None = None,
    threads: int = 1,
    binned: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame gains and sky surfaces onto the reference frame (method ``"stars"``).

    See `skymosaic.stack._starnorm`: gains from the reference's stars measured in every
    frame at full resolution (the binned ``linear`` fit's gain where a frame has too few),
    and per channel a sky surface of ``surface_order`` (0, 1, 2) in the cube's pixels from
    the binned sample of ``reference - gain * frame``. Every frame is read once, whole.

    Returns
    -------
    gains : ndarray (N, C)
    offsets : ndarray (N, C)
        Zeros (the surfaces' constant terms take their place).
    surfaces : ndarray (N, C, M)
        `skymosaic.SkySurface` coefficients over the ``(H, W)`` frame; the reference's
        row is (1, 0, 0).
    """
    from skymosaic._surface import n_terms  # noqa: PLC0415
    from skymosaic.stack._starnorm import star_normalization  # noqa: PLC0415

    n, c, h, w = _check_cube(cube)
    _check_sample(sample_pixels)
    ref = int(reference)
    if not 0 <= ref < n:
        raise ValueError(f"reference must be a frame index in [0, {n}), got {reference!r}")
    gains, offsets = np.ones((n, c)), np.zeros((n, c))
    surfaces = np.zeros((n, c, n_terms(surface_order)))
    factor = bin_factor(h, w, sample_pixels)
    if binned is not None:
        _frame_bins(cube, binned, factor)  # shape check

    def frame_at(k: int) -> tuple[np.ndarray, np.ndarray]:
        frame = np.asarray(cube[k], dtype=np.float32)
        return frame, (binned[k] if binned is not None else block_mean(frame, factor))

    def linear_gain(bins: np.ndarray, ref_bins: np.ndarray, ch: int) -> float:
        g, _, status = _fit_channel(bins, ref_bins, "linear", (None, None))
        return g if not status or status.startswith("offset only") else float("nan")

    ref_frame, ref_bins = frame_at(ref)
    others = [k for k in range(n) if k != ref]
    fits = star_normalization(frame_at, ref_frame, ref_bins, others, factor=factor,
                              order=surface_order, linear_gain=linear_gain, threads=threads)
    fallbacks = []
    for k, (g, coeffs, notes) in fits.items():
        gains[k], surfaces[k] = g, coeffs
        fallbacks += [f"{names[k] if names is not None else f'frame {k}'} {note}" for note in notes]
    if fallbacks:
        logger.info("star normalisation: %d of %d frame channels without enough stars took the "
                    "binned pixel-fit gain, e.g. %s", len(fallbacks), len(others) * c,
                    "; ".join(fallbacks[:3]))
    logger.info("star normalisation onto frame %d: gains %.4g..%.4g, sky surfaces of order %d",
                ref, gains.min(), gains.max(), surface_order)
    return gains, offsets, surfaces
