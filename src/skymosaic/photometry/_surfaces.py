"""Per-input sky surfaces solved jointly over the overlap graph.

Model (one channel): the corrected input ``k`` is ``C_k = g_k T_k + S_k``, with ``S_k`` a
low-order polynomial in the input's *own* normalised pixel coordinates
(`skymosaic.SkySurface`: constant, plane or quadratic). On an overlap of inputs ``i`` and
``j`` the corrected images must agree on the sky, so at every sky sample ``p``::

    S_i(u_i(p)) - S_j(u_j(p)) = g_j T_j(p) - g_i T_i(p)

with the gains fixed beforehand (they come from stars, which no sky gradient can fake).
The samples are **binned and star-masked** (`sky_samples`): blocks of ``block`` x
``block`` output pixels aligned to the output grid (so the samples do not depend on how
the work is cut), each the mean of both images over the same pixels, those valid in both
and not within 2 px of a source (a pixel more than ``star_sigma`` noise sigmas above its
block's median in either image). A mean over a common pixel set is linear, so nebulosity
under the block cancels exactly in ``g_j T_j - g_i T_i`` with the right gains.

All coefficients of all inputs are solved in one sparse weighted least-squares problem
(`solve_sky_surfaces`), weights the inverse variance of each sample's difference, Cauchy
re-weighting (scale: the robust spread of the normalised residuals) against trails,
satellites and moved sources.

**The degeneracy and its choice.** A surface common to all inputs -- a sky gradient
across the whole field, up to the chosen order, seen by every input in its own pixels --
cancels in every overlap difference: the overlaps cannot tell it from the sky. The solve
adds a ridge on the **non-constant** terms, ``lambda * sum |c_k,m>0|^2`` (``lambda = ridge``
times the median diagonal of the normal matrix), and a far weaker one (``1e-4 lambda``) on
the constant terms, and so returns the **smallest gradients consistent with the
overlaps**: the common gradient it leaves is the one that makes the inputs' own gradients
average to zero (a global gradient also shifts each input's constant by its value at the
input, so penalising constants alongside would trade the inputs' random pedestals against
a fake field-wide gradient; measured: 12 ADU across six frames). The constants' own
common part is then set to zero (the ``"median"`` level target) or to the configured
level. A true gradient across the whole field therefore stays in the mosaic, exactly like
real large-scale sky (nebulae), and no input's own mesh background is ever subtracted;
what is lost is only the part of the inputs' gradients that is common to all of them (with
N inputs of random gradients, about 1/sqrt(N) of one input's).

The ridge is also a weak prior on the directions the overlaps barely fix: the far corner
of an input at a corner of the mosaic, where nothing overlaps, is pinned only through the
cross term ``u v`` against the slopes. ``ridge = 1e-6`` (the default) damps such
directions where the data say next to nothing and leaves the rest to the data; a ridge of
1e-3 biased them measurably (large-scale residual after removing a global quadratic:
2.8 ADU at 1e-3, 1.5 at 1e-5 and 1e-7, on 12 frames of 270 x 480 px).

**Support.** A surface is only as good as the overlaps that pin it: an input with fewer
than `MIN_SAMPLES_PER_TERM` samples per term of the requested order (small frames, thin
overlaps) gets the highest order its samples support (quadratic -> plane -> constant), so
no badly pinned curvature is extrapolated into the part of the input nothing overlaps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from skymosaic._stats import median as _median
from skymosaic._surface import n_terms, surface_terms
from skymosaic.photometry._linefit import estimate_noise
from skymosaic.photometry._masks import grow_mask, nanmedian_rows

__all__ = ["MIN_SAMPLES_PER_TERM", "SkySamples", "SurfaceSolution", "overlap_block", "sky_samples",
           "solve_sky_surfaces", "to_samples"]

logger = logging.getLogger(__name__)

_CAUCHY_C = 2.385
#: Fewest usable pixels of a block, as a fraction of its area.
_MIN_FILL = 0.25
#: Sky samples an input needs per surface term to get that order (see "Support").
MIN_SAMPLES_PER_TERM = 4


@dataclass(frozen=True)
class SkySamples:
    """Binned sky levels of inputs ``i`` and ``j`` on their overlap, in one channel.

    ``ui, vi`` / ``uj, vj`` are the normalised coordinates of the sample centres in each
    input's own frame; ``level_*`` the means of the raw (uncorrected) inputs over the same
    pixels; ``var_*`` the variances of those means.
    """

    i: int
    j: int
    channel: int
    ui: np.ndarray
    vi: np.ndarray
    uj: np.ndarray
    vj: np.ndarray
    level_i: np.ndarray
    level_j: np.ndarray
    var_i: np.ndarray
    var_j: np.ndarray

    @property
    def size(self) -> int:
        return int(self.level_i.size)


@dataclass(frozen=True)
class BinnedSky:
    """Sky blocks of one overlap and channel on the output grid (`sky_samples`)."""

    y: np.ndarray  # mean output-pixel row of the block's used pixels
    x: np.ndarray
    level_i: np.ndarray
    level_j: np.ndarray
    var_i: np.ndarray
    var_j: np.ndarray


def _blocks(a: np.ndarray, y0: int, x0: int, block: int, fill: float) -> np.ndarray:
    """``a`` (h, w) padded with ``fill`` to whole blocks aligned to multiples of ``block``
    of the output grid, shaped (nby, nbx, block * block)."""
    h, w = a.shape
    py, px = y0 % block, x0 % block
    nby, nbx = -(-(py + h) // block), -(-(px + w) // block)
    out = np.full((nby * block, nbx * block), fill, dtype=a.dtype)
    out[py:py + h, px:px + w] = a
    return out.reshape(nby, block, nbx, block).transpose(0, 2, 1, 3).reshape(nby, nbx, -1)


def sky_samples(
    x: np.ndarray,
    y: np.ndarray,
    valid: np.ndarray,
    *,
    y0: int = 0,
    x0: int = 0,
    block: int = 32,
    star_sigma: float = 3.0,
) -> BinnedSky:
    """Star-masked block means of two images of one overlap (see the module docstring).

    Parameters
    ----------
    x, y : ndarray, shape (h, w)
        The two inputs on the same output pixels (raw values, NaN = no data).
    valid : ndarray of bool, shape (h, w)
        Pixels valid in both.
    y0, x0 : int
        Output-grid position of ``[0, 0]``: blocks are aligned to multiples of ``block``
        of the output grid, whatever cutout the images come from.
    block : int
        Block size in output pixels.
    star_sigma : float
        A pixel this many noise sigmas above its block's median, in either image, is a
        source; it and its neighbours within 2 px are left out.

    Returns
    -------
    BinnedSky
        One entry per block with at least a quarter of its pixels usable.
    """
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    both = np.asarray(valid, bool) & np.isfinite(xa) & np.isfinite(ya)
    empty = np.zeros(0)
    if not both.any():
        return BinnedSky(empty, empty, empty, empty, empty, empty)
    sig_x, sig_y = estimate_noise(xa, mask=both), estimate_noise(ya, mask=both)
    sources = np.zeros_like(both)
    for img, sig in ((xa, sig_x), (ya, sig_y)):
        if not (np.isfinite(sig) and sig > 0):
            continue
        blocks = _blocks(np.where(both, img, np.nan), y0, x0, block, np.nan)
        med = nanmedian_rows(blocks.reshape(-1, blocks.shape[-1])).reshape(blocks.shape[:2])
        h, w = img.shape
        py, px = y0 % block, x0 % block
        rows, cols = (np.arange(h) + py) // block, (np.arange(w) + px) // block
        with np.errstate(invalid="ignore"):
            sources |= img - med[rows[:, None], cols[None, :]] > star_sigma * sig
    sources = grow_mask(sources, 2)
    use = both & ~sources
    # Block sums without the (nby, nbx, block**2) copies: pad once, sum over the block axes.
    py, px = y0 % block, x0 % block
    nby, nbx = -(-(py + use.shape[0]) // block), -(-(px + use.shape[1]) // block)

    def padded(a: np.ndarray) -> np.ndarray:
        out = np.zeros((nby * block, nbx * block), dtype=np.float64)
        out[py:py + a.shape[0], px:px + a.shape[1]] = a
        return out

    per_row = padded(use).reshape(nby * block, nbx, block)  # used pixels, by row and block
    n = per_row.sum(axis=-1).reshape(nby, block, nbx).sum(axis=1)
    keep = n >= _MIN_FILL * block * block
    if not keep.any():
        return BinnedSky(empty, empty, empty, empty, empty, empty)
    nk = n[keep]

    def mean(a: np.ndarray) -> np.ndarray:
        sums = padded(np.where(use, a, 0.0)).reshape(nby, block, nbx, block).sum(axis=(1, 3))
        return sums[keep] / nk

    # mean row and column of the used pixels: per-row (per-column) counts times the index
    rows = np.arange(nby * block, dtype=np.float64) - py + y0
    cols = np.arange(nbx * block, dtype=np.float64) - px + x0
    y_mean = (per_row.sum(axis=-1) * rows[:, None]).reshape(nby, block, nbx).sum(axis=1)
    x_mean = (per_row * cols.reshape(nbx, block)[None]).sum(axis=-1).reshape(
        nby, block, nbx).sum(axis=1)
    var_x = (sig_x**2 if np.isfinite(sig_x) else 0.0) / nk
    var_y = (sig_y**2 if np.isfinite(sig_y) else 0.0) / nk
    return BinnedSky(y_mean[keep] / nk, x_mean[keep] / nk, mean(xa), mean(ya), var_x, var_y)


def overlap_block(height: int, width: int, block: int) -> int:
    """The sky-block size for an overlap of ``height x width`` output pixels: ``block``,
    or smaller for a narrow overlap so it still spans at least 4 blocks across (never
    below 4 px). It depends on the overlap's geometry only, never on how work is cut."""
    return int(max(4, min(block, min(height, width) // 4)))


def to_samples(
    binned: BinnedSky,
    i: int,
    j: int,
    channel: int,
    frame_i: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    frame_j: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> SkySamples:
    """`SkySamples` from binned output-grid blocks and each input's map from output pixel
    ``(x, y)`` to its normalised frame coordinates ``(u, v)``."""
    ui, vi = frame_i(binned.x, binned.y)
    uj, vj = frame_j(binned.x, binned.y)
    ok = np.isfinite(ui) & np.isfinite(vi) & np.isfinite(uj) & np.isfinite(vj)
    return SkySamples(i, j, channel, ui[ok], vi[ok], uj[ok], vj[ok], binned.level_i[ok],
                      binned.level_j[ok], binned.var_i[ok], binned.var_j[ok])


@dataclass
class SurfaceSolution:
    """Solved surface coefficients of one channel and the fit's diagnostics.

    ``coeffs`` is (N, M) (terms above an input's ``orders[k]`` are 0); ``pair_step`` maps
    ``(i, j)`` to the median absolute residual
    sky step of the overlap after the correction (data units), ``pair_step_before`` the
    same with the gains alone; ``n_samples`` per input.
    """

    coeffs: np.ndarray
    order: int
    pair_step: dict[tuple[int, int], float] = field(default_factory=dict)
    pair_step_before: dict[tuple[int, int], float] = field(default_factory=dict)
    n_samples: np.ndarray | None = None
    orders: np.ndarray | None = None
    rms: float = float("nan")


def _design(samples: Sequence[SkySamples], gains: np.ndarray, order: int, n: int):
    m = n_terms(order)
    rows, cols, vals, rhs, wts, pair = [], [], [], [], [], []
    start = 0
    for k, s in enumerate(samples):
        if s.size == 0:
            continue
        r = np.arange(start, start + s.size)
        for sign, idx, u, v in ((1.0, s.i, s.ui, s.vi), (-1.0, s.j, s.uj, s.vj)):
            for t, term in enumerate(surface_terms(u, v, order)):
                rows.append(r)
                cols.append(np.full(s.size, idx * m + t))
                vals.append(sign * np.broadcast_to(term, (s.size,)))
        gi, gj = gains[s.i], gains[s.j]
        rhs.append(gj * s.level_j - gi * s.level_i)
        var = gj**2 * s.var_j + gi**2 * s.var_i
        wts.append(1.0 / np.maximum(var, 1e-12 * max(float(_median(var)), 1e-30)))
        pair.append(np.full(s.size, k))
        start += s.size
    if start == 0:
        return None
    a = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(start, n * m))
    return a, np.concatenate(rhs), np.concatenate(wts), np.concatenate(pair)


def solve_sky_surfaces(
    n_inputs: int,
    samples: Sequence[SkySamples],
    gains: np.ndarray,
    *,
    order: int = 2,
    ridge: float = 1e-6,
    robust_iter: int = 3,
) -> SurfaceSolution:
    """Solve every input's sky surface in one channel (see the module docstring).

    Parameters
    ----------
    n_inputs : int
        Number of inputs (the samples index into it).
    samples : sequence of SkySamples
        The overlaps' sky samples of this channel.
    gains : ndarray, shape (n_inputs,)
        The solved gains of this channel (applied before the surfaces).
    order : int
        0 (constant), 1 (plane) or 2 (quadratic).
    ridge : float
        Relative weight of the smallest-surface regularisation (> 0).
    robust_iter : int
        Cauchy re-weighting iterations after the first solve.

    Returns
    -------
    SurfaceSolution
        Inputs without any sample keep a zero surface.
    """
    if not ridge > 0:
        raise ValueError("ridge must be > 0 (the overlaps never fix a common surface), "
                         f"got {ridge!r}")
    m = n_terms(order)
    n = int(n_inputs)
    g = np.asarray(gains, dtype=np.float64)
    sol = SurfaceSolution(np.zeros((n, m)), order, n_samples=np.zeros(n, int),
                          orders=np.zeros(n, int))
    design = _design(samples, g, order, n)
    if design is None:
        return sol
    a, d, w, pair = design
    for s in samples:
        sol.n_samples[s.i] += s.size
        sol.n_samples[s.j] += s.size
    for k in range(n):
        sol.orders[k] = max((o for o in range(order + 1)
                             if sol.n_samples[k] >= MIN_SAMPLES_PER_TERM * n_terms(o)), default=0)
    terms = np.array([n_terms(o) for o in sol.orders])
    cols = np.flatnonzero(np.arange(m)[None, :] < terms[:, None])
    a = a[:, cols]
    fac = np.ones_like(w)
    for it in range(robust_iter + 1):
        wf = w * fac
        aw = a.multiply(wf[:, None]).tocsr()
        normal = (a.T @ aw).tocsc()
        diag = normal.diagonal()
        lam = ridge * float(_median(diag[diag > 0])) if np.any(diag > 0) else ridge
        penalty = sp.diags(np.where(cols % m == 0, 1e-4 * lam, lam), format="csc")
        c = np.atleast_1d(spsolve(normal + penalty, aw.T @ d))
        r = (a @ c - d) * np.sqrt(w)
        if it == robust_iter:
            break
        scale = 1.4826 * float(_median(np.abs(r))) or 1.0
        fac = 1.0 / (1.0 + (r / (_CAUCHY_C * scale)) ** 2)
    sol.coeffs.reshape(-1)[cols] = c
    resid = a @ c - d
    sol.rms = float(np.sqrt(np.mean(resid**2)))
    for k, s in enumerate(samples):
        sel = pair == k
        if np.any(sel):
            sol.pair_step[(s.i, s.j)] = float(_median(np.abs(resid[sel])))
            sol.pair_step_before[(s.i, s.j)] = float(_median(np.abs(d[sel] - _median(d[sel]))))
    return sol
