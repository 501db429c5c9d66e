"""Photometric normalisation of registered frames onto a reference frame.

Each frame k gets, per channel, a gain and an offset such that
``gain[k, c] * frame_k[c] + offset[k, c]`` is on the photometric scale of the reference
frame (whose own gain/offset are exactly 1 and 0). They are estimated *once*, before the
chunked combine, from a bounded sample: ``sample_rows`` rows drawn at random (seeded) and
read one frame at a time, so the cost and the memory do not depend on the cube size and
a memory-mapped cube is never loaded whole.

Methods
-------
``"none"``            gain 1, offset 0.
``"additive"``        offset = level(reference) - level(frame): a sky-glow change.
``"multiplicative"``  gain = level(reference) / level(frame): a transparency change.
``"linear"``          errors-in-variables line fit of reference against frame over all
                      pixels valid in both (sky *and* stars, so both gain and offset are
                      constrained), via `skymosaic.photometry.fit_linear_relation`.

``level`` is a sigma-clipped median (3 sigma, MAD scale), i.e. the sky level: stars and
trails do not bias it. A frame that cannot be fitted (too few common pixels, a
non-positive level, a failed fit) falls back to (1, 0) with a logged warning; a linear fit
whose data do not constrain a gain (status ``offset_only``) keeps its offset with gain 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from skymosaic.photometry._linefit import fit_linear_relation

__all__ = ["NORMALIZATION_METHODS", "estimate_normalization", "select_reference"]

logger = logging.getLogger(__name__)

NORMALIZATION_METHODS = ("none", "additive", "multiplicative", "linear")
_MAD_TO_SIGMA = 1.482602218505602
#: Fewer common valid pixels than this in the sample: the frame keeps (1, 0).
MIN_COMMON_PIXELS = 50


def _check_cube(cube: object) -> tuple[int, int, int, int]:
    shape = getattr(cube, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"cube must be a 4-d (N, C, H, W) array, got shape {shape!r}")
    if any(int(s) < 1 for s in shape):
        raise ValueError(f"cube must not be empty, got shape {tuple(shape)}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _check_rows(sample_rows: int) -> None:
    if isinstance(sample_rows, bool) or not isinstance(sample_rows, (int, np.integer)):
        raise ValueError(f"sample_rows must be an integer >= 1, got {sample_rows!r}")
    if sample_rows < 1:
        raise ValueError(f"sample_rows must be an integer >= 1, got {sample_rows!r}")


def sample_row_indices(height: int, sample_rows: int, seed: int) -> np.ndarray:
    """Sorted distinct row indices: all rows if ``height <= sample_rows``, else a seeded draw."""
    if height <= sample_rows:
        return np.arange(height)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(height, size=sample_rows, replace=False))


def _read_rows(cube: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of frame ``k`` as float64 (C, R, W); reads only those rows."""
    return np.asarray(cube[k][:, rows, :], dtype=np.float64)


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
    sample_rows: int = 64,
    seed: int = 0,
) -> int:
    """The "auto" reference frame: most coverage, then best quality.

    Candidates are the frames whose valid fraction (finite in every channel, on the
    sampled rows) is at least 90 % of the best one; among them the frame with the
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
    sample_rows, seed : int
        Row sample (see module docstring).

    Returns
    -------
    int
        Index of the reference frame.
    """
    n, _, h, w = _check_cube(cube)
    _check_rows(sample_rows)
    rows = sample_row_indices(h, sample_rows, seed)
    coverage = np.array(
        [np.count_nonzero(np.isfinite(_read_rows(cube, k, rows)).all(axis=0)) for k in range(n)],
        dtype=np.float64,
    ) / (rows.size * w)
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
    """Gain/offset mapping one channel's sampled rows onto the reference; plus a status."""
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
    sample_rows: int = 64,
    seed: int = 0,
    noise: np.ndarray | None = None,
    fwhm: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame, per-channel gains and offsets onto the reference photometric scale.

    Parameters
    ----------
    cube : array (N, C, H, W)
        Registered frames (ndarray or memmap; only sampled rows are read), NaN = no data.
    reference : int or "auto"
        Index of the reference frame, or ``"auto"`` (see `select_reference`).
    method : {"none", "additive", "multiplicative", "linear"}
        See the module docstring.
    sample_rows : int
        Number of rows sampled (all rows when the frame is shorter).
    seed : int
        Seed of the row draw.
    noise : array (N, C) or (N,), optional
        Per-frame noise sigma: passed to the linear fit (else measured from neighbouring
        pixels) and used by ``reference="auto"``.
    fwhm : array (N,), optional
        Per-frame FWHM, used by ``reference="auto"``.
    names : sequence of str, optional
        Frame names for the warnings (default: ``frame <index>``).

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
    n, c, h, _ = _check_cube(cube)
    if method not in NORMALIZATION_METHODS:
        raise ValueError(f"method must be one of {NORMALIZATION_METHODS}, got {method!r}")
    _check_rows(sample_rows)
    if reference != "auto" and (
        isinstance(reference, bool)
        or not isinstance(reference, (int, np.integer))
        or not 0 <= reference < n
    ):
        raise ValueError(
            f"reference must be 'auto' or a frame index in [0, {n}), got {reference!r}"
        )
    sig = (
        None
        if noise is None
        else np.broadcast_to(np.asarray(noise, dtype=np.float64).reshape(n, -1), (n, c))
    )
    gains = np.ones((n, c))
    offsets = np.zeros((n, c))
    if method == "none":
        return gains, offsets
    if reference == "auto":
        reference = select_reference(
            cube, noise=noise, fwhm=fwhm, sample_rows=sample_rows, seed=seed
        )
    ref = int(reference)
    if names is not None and len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} frames")

    def label(k: int) -> str:
        return names[k] if names is not None else f"frame {k}"

    rows = sample_row_indices(h, sample_rows, seed)
    ref_rows = _read_rows(cube, ref, rows)
    for k in range(n):
        if k == ref:
            continue
        rows_k = _read_rows(cube, k, rows)
        for ch in range(c):
            s = (None, None) if sig is None else (float(sig[k, ch]), float(sig[ref, ch]))
            g, b, status = _fit_channel(rows_k[ch], ref_rows[ch], method, s)
            if status:
                logger.warning("%s channel %d: %s normalisation onto %s: %s", label(k), ch, method,
                               label(ref), status)
            gains[k, ch], offsets[k, ch] = g, b
    logger.info(
        "%s normalisation onto frame %d: gains %.4g..%.4g, offsets %.4g..%.4g",
        method,
        ref,
        gains.min(),
        gains.max(),
        offsets.min(),
        offsets.max(),
    )
    return gains, offsets
