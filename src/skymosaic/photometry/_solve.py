"""Global gain/offset solve over the overlap graph (per channel).

Model: corrected tile ``C_k = g_k * T_k + b_k``. A pair relation ``T_j ≈ a*T_i + c``
(fitted on the overlap, `PairRelation`) asks ``C_i == C_j`` there::

    g_i T + b_i = g_j (a T + c) + b_j   for all T   =>   g_i = a g_j,  b_i - b_j = g_j c

Both parts are made linear and solved as two sparse weighted least-squares problems:

1. log-gains ``u_k = log g_k``:  ``u_i - u_j = log a``,  weight ``(a / sigma_a)**2``
   (``ok`` relations only).
2. offsets with the gains fixed, written at the overlap's typical level ``x_ref`` (where
   the relation passes through ``(x_ref, y_ref)``, so gain and offset errors decouple)::

       b_i - b_j = g_j * y_ref - g_i * x_ref,   weight 1 / (g_j * sigma_level)**2

   (``ok`` and ``offset_only`` relations; for the latter ``y_ref - x_ref`` is the robust
   median difference).

Each connected component of each graph is solved on its own with an explicit gauge:
``mean(u) = 0`` and ``mean(b) = 0`` over the component (``gauge="mean"``), or
``u_ref = b_ref = 0`` for a reference tile (other components fall back to the mean
gauge). A weak Tikhonov prior toward ``(u, b) = (0, 0)`` with weight
``prior_weight * median(edge weight of the component)`` per tile keeps weakly tied tiles
sane; with a uniform prior the mean gauge is its exact optimum, so the prior never moves
the gauge. Iteratively re-weighted least squares with Cauchy weights
``1 / (1 + (r / 2.385)**2)`` on the pair residuals ``r`` normalised by their own errors
down-weights pairs inconsistent with the rest (uniform down-weighting of all pairs, e.g.
when errors are underestimated, does not change the solution). The prior follows the
re-weighted pair weights. Offset equations carry the propagated gain uncertainty
``(g_i x_ref)**2 (1/W_i + 1/W_j)`` (``W`` = summed gain weight of a tile). The solved correction is
returned as is: nothing is shrunk or blended toward 1 afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from array_api_compat import array_namespace, device
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import spsolve

from skymosaic.photometry._regression import PairRelation

__all__ = ["Solution", "apply_gains_offsets", "solve_gains_offsets"]

logger = logging.getLogger(__name__)

_CAUCHY_C = 2.385


@dataclass
class Solution:
    """Per-tile gains and offsets for one channel, with diagnostics.

    Attributes
    ----------
    gains, offsets : ndarray, shape (N,)
        Apply as ``g * T + b``.
    status : list of str
        Per tile: ``"ok"`` (gain and offset constrained), ``"offset_only"`` (offset
        constrained, gain 1 relative to its gain component) or ``"fallback"`` (no
        usable relation: ``(1, 0)``).
    component : ndarray of int, shape (N,)
        Connected component of the offset graph (all usable relations).
    gain_component : ndarray of int, shape (N,)
        Connected component of the gain graph (``ok`` relations).
    pair_index : ndarray of int
        Index into the input ``relations`` of each relation used for this channel.
    pair_gain_residual : ndarray
        ``u_i - u_j - log a`` per used relation (NaN when not a gain relation).
    pair_offset_residual : ndarray
        Offset equation residual in data units (NaN for failed relations).
    pair_robust_weight : ndarray
        Final robust factor (0..1) of the offset equation (gain one where it is NaN).
    pair_gain_robust_weight : ndarray
        Final robust factor of the gain equation (NaN when not a gain relation).
    warnings : list of str
    """

    gains: np.ndarray
    offsets: np.ndarray
    status: list[str]
    component: np.ndarray
    gain_component: np.ndarray
    pair_index: np.ndarray
    pair_gain_residual: np.ndarray
    pair_offset_residual: np.ndarray
    pair_robust_weight: np.ndarray
    pair_gain_robust_weight: np.ndarray
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Edges:
    i: np.ndarray
    j: np.ndarray
    d: np.ndarray
    w: np.ndarray


def _components(n: int, edges: _Edges) -> np.ndarray:
    adj = sp.coo_matrix((np.ones(edges.i.size), (edges.i, edges.j)), shape=(n, n))
    return connected_components(adj, directed=False)[1]


def _normal_solve(nodes: np.ndarray, e: _Edges, w: np.ndarray, prior: float) -> np.ndarray:
    """Solve ``min sum w (x_i - x_j - d)^2 + prior * sum x^2`` on one component."""
    m = nodes.size
    a = np.searchsorted(nodes, e.i)  # nodes are sorted (np.flatnonzero)
    b = np.searchsorted(nodes, e.j)
    rows = np.concatenate([a, b, a, b])
    cols = np.concatenate([a, b, b, a])
    vals = np.concatenate([w, w, -w, -w])
    mat = sp.coo_matrix((vals, (rows, cols)), shape=(m, m)).tocsc()
    rhs = np.bincount(a, weights=w * e.d, minlength=m) - np.bincount(
        b, weights=w * e.d, minlength=m
    )
    if prior > 0:
        return np.atleast_1d(spsolve(mat + prior * sp.identity(m, format="csc"), rhs))
    # No prior: pin the first node (the data fix differences only); the gauge shifts later.
    sol = np.zeros(m)
    if m > 1:
        sol[1:] = np.atleast_1d(spsolve(mat[1:, 1:], rhs[1:]))
    return sol


def _solve_graph(
    n: int, e: _Edges, *, ref: int | None, prior_weight: float, robust_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauged, robust weighted LS per component. Returns x (n,), residuals, robust factors."""
    x = np.zeros(n)
    factor = np.ones(e.i.size)
    if e.i.size == 0:
        return x, np.zeros(0), factor
    comp = _components(n, e)
    edge_comp = comp[e.i]
    for c in np.unique(edge_comp):
        nodes = np.flatnonzero(comp == c)
        sel = np.flatnonzero(edge_comp == c)
        ec = _Edges(e.i[sel], e.j[sel], e.d[sel], e.w[sel])
        fac = np.ones(sel.size)
        for it in range(robust_iter + 1):
            # The prior follows the current (re-weighted) pair weights so that uniform
            # down-weighting never lets it dominate and shrink the solution.
            prior = prior_weight * float(np.median(ec.w * fac))
            sol = _normal_solve(nodes, ec, ec.w * fac, prior)
            xc = np.zeros(n)
            xc[nodes] = sol
            r = (xc[ec.i] - xc[ec.j] - ec.d) * np.sqrt(ec.w)
            if it == robust_iter or sel.size < 3:
                break
            # Residuals are normalised by their own errors, so the scale is fixed at 1: a
            # MAD scale would adapt to the error an outlier spreads over a small graph.
            scale = 1.0
            fac = 1.0 / (1.0 + (r / (_CAUCHY_C * scale)) ** 2)
        in_comp = ref is not None and bool(np.any(nodes == ref))
        gauge = sol[np.searchsorted(nodes, ref)] if in_comp else sol.mean()
        x[nodes] = sol - gauge
        factor[sel] = fac
    resid = x[e.i] - x[e.j] - e.d
    return x, resid, factor


def _validate(n_tiles, relations, channel, gauge, prior_weight, robust_iter) -> None:
    if int(n_tiles) < 0:
        raise ValueError(f"n_tiles must be >= 0, got {n_tiles!r}")
    if isinstance(gauge, str):
        if gauge != "mean":
            raise ValueError(f"gauge must be 'mean' or a tile index, got {gauge!r}")
    elif not (isinstance(gauge, (int, np.integer)) and 0 <= gauge < n_tiles):
        raise ValueError(f"gauge tile index must be in [0, {n_tiles}), got {gauge!r}")
    if not (np.isfinite(prior_weight) and prior_weight >= 0):
        raise ValueError(f"prior_weight must be a finite number >= 0, got {prior_weight!r}")
    if int(robust_iter) < 0:
        raise ValueError(f"robust_iter must be >= 0, got {robust_iter!r}")
    for r in relations:
        if r.channel == channel and not (0 <= r.i < n_tiles and 0 <= r.j < n_tiles and r.i != r.j):
            raise ValueError(f"relation ({r.i}, {r.j}) invalid for {n_tiles} tiles")


def solve_gains_offsets(
    n_tiles: int,
    relations: list[PairRelation],
    *,
    channel: int = 0,
    gauge: str | int = "mean",
    prior_weight: float = 1e-3,
    robust_iter: int = 3,
) -> Solution:
    """Solve per-tile gains and offsets that make all overlaps agree (one channel).

    Parameters
    ----------
    n_tiles : int
        Number of tiles (relations index into ``range(n_tiles)``).
    relations : list of PairRelation
        From `pairwise_relations`; only those of ``channel`` are used.
    channel : int
        The channel to solve.
    gauge : "mean" or int
        ``"mean"``: mean log-gain 0 and mean offset 0 per connected component; an int:
        that reference tile gets exactly (1, 0) (other components use the mean gauge).
    prior_weight : float
        Weak prior toward (1, 0) per tile, relative to the component's median pair
        weight. 0 disables it.
    robust_iter : int
        Cauchy re-weighting iterations after the first solve.

    Returns
    -------
    Solution

    Raises
    ------
    ValueError
        For an invalid gauge, prior weight, iteration count or relation index.
    """
    _validate(n_tiles, relations, channel, gauge, prior_weight, robust_iter)
    n = int(n_tiles)
    ref = None if isinstance(gauge, str) else int(gauge)
    idx = np.array([k for k, r in enumerate(relations) if r.channel == channel], dtype=np.int64)
    rels = [relations[k] for k in idx]
    gw = np.array([r.gain_weight for r in rels], dtype=np.float64)
    lw = np.array([r.level_weight for r in rels], dtype=np.float64)
    pi = np.array([r.i for r in rels], dtype=np.int64)
    pj = np.array([r.j for r in rels], dtype=np.int64)

    g_sel = np.flatnonzero(gw > 0)
    log_a = np.array([np.log(rels[k].relation.gain) for k in g_sel], dtype=np.float64)
    ge = _Edges(pi[g_sel], pj[g_sel], log_a, gw[g_sel])
    u, g_res, g_fac = _solve_graph(
        n, ge, ref=ref, prior_weight=prior_weight, robust_iter=robust_iter
    )
    gains = np.exp(u)
    # Information on each tile's log-gain (diagonal approximation of the posterior; exact
    # effective resistance for a regular grid): var(u_i - u_j) ~ 1/W_i + 1/W_j.
    info = np.bincount(ge.i, ge.w * g_fac, minlength=n) + np.bincount(
        ge.j, ge.w * g_fac, minlength=n
    )
    with np.errstate(divide="ignore"):
        var_u = np.where(info > 0, 1.0 / info, 0.0)

    o_sel = np.flatnonzero(lw > 0)
    x_ref = np.array([rels[k].relation.x_ref for k in o_sel], dtype=np.float64)
    y_ref = np.array([rels[k].relation.y_ref for k in o_sel], dtype=np.float64)
    oi, oj = pi[o_sel], pj[o_sel]
    d = gains[oj] * y_ref - gains[oi] * x_ref
    # var(d) = g_j^2 var(y_ref) + (g_i x_ref)^2 var(u_i - u_j): gain errors leak into the
    # level, and the robust step must not mistake that for an inconsistent pair.
    var_d = gains[oj] ** 2 / lw[o_sel] + (gains[oi] * x_ref) ** 2 * (var_u[oi] + var_u[oj])
    oe = _Edges(oi, oj, d, 1.0 / var_d)
    offsets, o_res, o_fac = _solve_graph(
        n, oe, ref=ref, prior_weight=prior_weight, robust_iter=robust_iter
    )

    return _assemble(n, idx, ge, oe, g_sel, o_sel, gains, offsets, g_res, g_fac, o_res, o_fac)


def _assemble(n, idx, ge, oe, g_sel, o_sel, gains, offsets, g_res, g_fac, o_res, o_fac) -> Solution:
    m = idx.size
    pair_g = np.full(m, np.nan)
    pair_g[g_sel] = g_res
    pair_gf = np.full(m, np.nan)
    pair_gf[g_sel] = g_fac
    pair_o = np.full(m, np.nan)
    pair_o[o_sel] = o_res
    pair_of = np.full(m, np.nan)
    pair_of[o_sel] = o_fac
    has_gain = np.zeros(n, dtype=bool)
    has_gain[ge.i] = has_gain[ge.j] = True
    has_off = np.zeros(n, dtype=bool)
    has_off[oe.i] = has_off[oe.j] = True
    status = [
        "ok" if g else ("offset_only" if o else "fallback")
        for g, o in zip(has_gain, has_off, strict=True)
    ]
    warnings: list[str] = []
    lonely = np.flatnonzero(~has_off)
    if n > 1 and lonely.size:
        msg = (
            f"{lonely.size} tile(s) without any usable relation keep gain 1, offset 0: "
            f"{lonely[:20].tolist()}{' ...' if lonely.size > 20 else ''}"
        )
        logger.warning(msg)
        warnings.append(msg)
    return Solution(
        gains=gains,
        offsets=offsets,
        status=status,
        component=_components(n, oe),
        gain_component=_components(n, ge),
        pair_index=idx,
        pair_gain_residual=pair_g,
        pair_offset_residual=pair_o,
        pair_robust_weight=pair_of,
        pair_gain_robust_weight=pair_gf,
        warnings=warnings,
    )


def apply_gains_offsets(data: Any, gain: Any, offset: Any) -> Any:
    """Return ``gain * data + offset`` per channel (backend-agnostic; NaN stays NaN).

    Parameters
    ----------
    data : array, shape (C, H, W)
    gain, offset : float or array of shape (C,)
        Per-channel scalars (Python numbers or arrays of any backend; converted to the
        namespace and dtype of ``data``).

    Returns
    -------
    array, shape (C, H, W), same namespace and dtype as ``data``.
    """
    xp = array_namespace(data)
    if getattr(data, "ndim", None) != 3:
        raise ValueError(f"data must be shaped (C, H, W), got {getattr(data, 'shape', None)}")
    c = data.shape[0]
    g = _channel_vector(xp, gain, c, data)
    b = _channel_vector(xp, offset, c, data)
    return data * g + b


def _channel_vector(xp: Any, value: Any, c: int, data: Any) -> Any:
    """A ``(C, 1, 1)`` array of ``value`` on the namespace/device of ``data``."""
    if isinstance(value, (int, float, np.generic, np.ndarray, list, tuple)):
        host = np.broadcast_to(np.asarray(value, dtype=np.float64), (c,)).copy()
        vec = xp.asarray(host.tolist(), dtype=data.dtype, device=device(data))
    else:  # already an array of the data's backend
        vec = xp.broadcast_to(xp.astype(xp.asarray(value), data.dtype), (c,))
    return xp.reshape(vec, (c, 1, 1))
