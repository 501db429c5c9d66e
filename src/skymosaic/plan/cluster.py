"""Classic-mode planning: group frames by sky position.

Frames are linked when their footprints overlap enough (or, optionally, when
their centres are close); groups are the connected components of that graph,
split into spatially compact parts when they exceed a frame or byte budget.
Everything is computed on unit vectors and local gnomonic (tangent) planes, so
RA wrap-around at 0/360 and the celestial poles need no special cases.

Candidate pairs come from a KD-tree on the unit vectors (chord distance), so
the cost grows with the number of *near* pairs, not with N**2; the overlap of
all candidate pairs is computed in vectorised chunks (Sutherland-Hodgman
clipping of convex quads).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = [
    "Clustering",
    "candidate_pairs",
    "cluster_frames",
    "pair_overlaps",
]

logger = logging.getLogger(__name__)

_ISOLATION_DIAGONALS = 3.0  # an unlinked frame this far from all others is suspicious
_PAIR_CHUNK = 65536  # pairs per vectorised overlap chunk: ~16 arrays x 16 x 8 B x 64k = 130 MB max
_MOUNTS = ("EQ", "ALTZ")


@dataclass
class Clustering:
    """Groups of frames that are stacked together.

    Attributes
    ----------
    labels : ndarray of int, shape (N,)
        Group index of each frame. Groups are numbered by decreasing size, ties
        broken by the mean RA then Dec of their centres.
    groups : list of list of int
        Frame indices of each group, ascending; ``groups[k]`` holds the frames
        with ``labels == k``.
    isolated : list of int
        Frames linked to no other frame whose centre is more than 3 field
        diagonals from every other frame (a warning names each one).
    names : list of str
        Frame names used in messages.
    n_links : int
        Number of links found. Pairs whose frames were already connected are
        not tested, so this is a spanning subset of all overlapping pairs.
    """

    labels: np.ndarray
    groups: list[list[int]]
    isolated: list[int]
    names: list[str] = field(default_factory=list)
    n_links: int = 0

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return len(self.groups)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict for ``run.json``."""
        return {
            "n_groups": self.n_groups,
            "labels": [int(v) for v in self.labels],
            "groups": [list(map(int, g)) for g in self.groups],
            "isolated": [int(i) for i in self.isolated],
            "names": list(self.names),
            "n_links": int(self.n_links),
        }


# --------------------------------------------------------------------------- geometry


def _unit_vectors(radec: np.ndarray) -> np.ndarray:
    """(..., 2) degrees -> (..., 3) unit vectors."""
    ra = np.deg2rad(radec[..., 0])
    dec = np.deg2rad(radec[..., 1])
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def _radec(vectors: np.ndarray) -> np.ndarray:
    """(..., 3) vectors -> (..., 2) degrees, RA in [0, 360)."""
    v = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    ra = np.rad2deg(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    dec = np.rad2deg(np.arcsin(np.clip(v[..., 2], -1.0, 1.0)))
    return np.stack([ra, dec], axis=-1)


def _angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle in radians between unit vectors (numerically safe for tiny angles)."""
    return 2.0 * np.arcsin(np.clip(np.linalg.norm(u - v, axis=-1) / 2.0, 0.0, 1.0))


def _chord(angle_rad: float) -> float:
    return 2.0 * math.sin(min(angle_rad, math.pi) / 2.0)


def _tangent_basis(center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """East and north unit vectors of the tangent planes at (..., 3) centres."""
    z = np.zeros_like(center)
    z[..., 2] = 1.0
    east = np.cross(z, center)
    norm = np.linalg.norm(east, axis=-1, keepdims=True)
    at_pole = norm[..., 0] < 1e-12
    if np.any(at_pole):  # any orthonormal basis will do at a pole
        east[at_pole] = (0.0, 1.0, 0.0)
        norm[at_pole] = 1.0
    east = east / norm
    north = np.cross(center, east)
    return east, north


def _project(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Gnomonic projection of (P, K, 3) points around (P, 3) centres -> (P, K, 2)."""
    east, north = _tangent_basis(center)
    dot = np.einsum("pkc,pc->pk", points, center)
    x = np.einsum("pkc,pc->pk", points, east) / dot
    y = np.einsum("pkc,pc->pk", points, north) / dot
    return np.stack([x, y], axis=-1)


def _shoelace(poly: np.ndarray, count: np.ndarray | None = None) -> np.ndarray:
    """Signed areas of (P, K, 2) polygons; vertices beyond ``count`` are ignored."""
    if count is None:
        nxt = np.roll(poly, -1, axis=1)
    else:
        k = np.arange(poly.shape[1])
        idx = np.where(k[None, :] + 1 < count[:, None], k[None, :] + 1, 0)
        nxt = np.take_along_axis(poly, idx[..., None], axis=1)
        poly = np.where((k[None, :] < count[:, None])[..., None], poly, 0.0)
        nxt = np.where((k[None, :] < count[:, None])[..., None], nxt, 0.0)
    cross = poly[..., 0] * nxt[..., 1] - poly[..., 1] * nxt[..., 0]
    return 0.5 * cross.sum(axis=1)


def _clip_edge(
    poly: np.ndarray, count: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One Sutherland-Hodgman step: keep the part of each polygon left of a->b."""
    n_pairs, width, _ = poly.shape
    k = np.arange(width)
    valid = k[None, :] < count[:, None]
    prev_idx = np.where(k[None, :] == 0, np.maximum(count[:, None] - 1, 0), k[None, :] - 1)
    prev = np.take_along_axis(poly, prev_idx[..., None], axis=1)
    edge = b - a

    def side(p: np.ndarray) -> np.ndarray:
        return edge[:, None, 0] * (p[..., 1] - a[:, None, 1]) - edge[:, None, 1] * (
            p[..., 0] - a[:, None, 0]
        )

    s_cur, s_prev = side(poly), side(prev)
    in_cur, in_prev = s_cur >= 0, s_prev >= 0
    denom = s_prev - s_cur
    t = np.divide(s_prev, denom, out=np.zeros_like(denom), where=denom != 0)
    cross_pt = prev + t[..., None] * (poly - prev)
    emit_cross = valid & (in_cur != in_prev)
    emit_cur = valid & in_cur
    n_emit = emit_cross.astype(np.int64) + emit_cur
    start = np.cumsum(n_emit, axis=1) - n_emit
    out = np.zeros((n_pairs, 2 * width, 2))
    rows = np.broadcast_to(np.arange(n_pairs)[:, None], (n_pairs, width))
    out[rows[emit_cross], start[emit_cross]] = cross_pt[emit_cross]
    pos_cur = start + emit_cross
    out[rows[emit_cur], pos_cur[emit_cur]] = poly[emit_cur]
    new_count = n_emit.sum(axis=1)
    return out[:, : max(int(new_count.max(initial=0)), 1)], new_count


def _ccw(poly: np.ndarray) -> np.ndarray:
    """Orient (P, 4, 2) quads counter-clockwise."""
    flip = _shoelace(poly) < 0
    out = poly.copy()
    out[flip] = poly[flip][:, ::-1]
    return out


# numpy reductions over a short middle axis are slow; the corners are always 4
def _corner_sum(q: np.ndarray) -> np.ndarray:
    return q[:, 0] + q[:, 1] + q[:, 2] + q[:, 3]


def _cmax(a: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(a[:, 0], a[:, 1]), np.maximum(a[:, 2], a[:, 3]))


def _cmin(a: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(a[:, 0], a[:, 1]), np.minimum(a[:, 2], a[:, 3]))


def _lens_area(r1: np.ndarray, r2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Area of the intersection of two discs of radii r1, r2 at distance d."""
    rmin = np.minimum(r1, r2)
    with np.errstate(invalid="ignore", divide="ignore"):
        c1 = np.clip((d**2 + r1**2 - r2**2) / (2 * d * r1), -1.0, 1.0)
        c2 = np.clip((d**2 + r2**2 - r1**2) / (2 * d * r2), -1.0, 1.0)
        k = (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)
        lens = r1**2 * np.arccos(c1) + r2**2 * np.arccos(c2) - 0.5 * np.sqrt(np.maximum(k, 0.0))
    lens = np.where(d >= r1 + r2, 0.0, lens)
    return np.where(d <= np.abs(r1 - r2), np.pi * rmin**2, lens)


def _overlap_bound(qa: np.ndarray, qb: np.ndarray, smaller: np.ndarray) -> np.ndarray:
    """Cheap upper bound of the overlap fraction of (P, 4, 2) projected quads.

    Along the centre-to-centre direction u the intersection lies in the overlap
    of the two extents (length L); across u it is no wider than either quad, so
    its area is at most ``L * min(width_a, width_b)``.
    """
    d = _corner_sum(qb) - _corner_sum(qa)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    u = np.where(norm > 0, d / np.where(norm > 0, norm, 1.0), [[1.0, 0.0]])
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    pa, pb = np.einsum("pkc,pc->pk", qa, u), np.einsum("pkc,pc->pk", qb, u)
    length = np.minimum(_cmax(pa), _cmax(pb)) - np.maximum(_cmin(pa), _cmin(pb))
    wa, wb = np.einsum("pkc,pc->pk", qa, v), np.einsum("pkc,pc->pk", qb, v)
    width = np.minimum(_cmax(wa) - _cmin(wa), _cmax(wb) - _cmin(wb))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(smaller > 0, np.maximum(length, 0.0) * width / smaller, 0.0)


def _overlap_chunk(va: np.ndarray, vb: np.ndarray, skip_below: float | None = None) -> np.ndarray:
    """Overlap fraction of (P, 4, 3) footprint pairs (vector corners).

    With ``skip_below``, pairs whose cheap upper bound is at most that value are
    not clipped and get the bound instead (only the link decision is needed).
    """
    center = _corner_sum(va) + _corner_sum(vb)
    center /= np.linalg.norm(center, axis=1, keepdims=True)
    qa = _ccw(_project(va, center))
    qb = _ccw(_project(vb, center))
    smaller = np.minimum(_shoelace(qa), _shoelace(qb))
    frac = np.zeros(len(qa))
    todo = np.ones(len(qa), dtype=bool)
    if skip_below is not None:
        bound = _overlap_bound(qa, qb, smaller)
        todo = bound > skip_below
        frac[~todo] = np.clip(bound[~todo], 0.0, 1.0)
    if not np.any(todo):
        return frac
    qa, qb, smaller = qa[todo], qb[todo], smaller[todo]
    poly, count = qa, np.full(len(qa), 4, dtype=np.int64)
    for e in range(4):
        poly, count = _clip_edge(poly, count, qb[:, e], qb[:, (e + 1) % 4])
    inter = np.where(count >= 3, _shoelace(poly, count), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac[todo] = np.clip(np.where(smaller > 0, inter / smaller, 0.0), 0.0, 1.0)
    return frac


def pair_overlaps(footprints: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Overlap fraction of frame pairs, relative to the smaller footprint.

    Parameters
    ----------
    footprints : ndarray, shape (N, 4, 2)
        Sky corners (RA, Dec in degrees) of each frame, in order around the
        frame (either direction).
    pairs : ndarray of int, shape (P, 2)
        Index pairs.

    Returns
    -------
    ndarray, shape (P,)
        Area of the intersection divided by the area of the smaller footprint,
        both measured on the gnomonic plane tangent at the pair's mean centre.

    Examples
    --------
    >>> sq = np.array([[[0, 0], [1, 0], [1, 1], [0, 1]]], float)
    >>> fp = np.concatenate([sq, sq + [0.5, 0.0]])
    >>> round(float(pair_overlaps(fp, np.array([[0, 1]]))[0]), 2)
    0.5
    """
    fp = np.asarray(footprints, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    vec = _unit_vectors(fp)
    out = np.empty(len(pairs))
    for lo in range(0, len(pairs), _PAIR_CHUNK):
        p = pairs[lo : lo + _PAIR_CHUNK]
        out[lo : lo + len(p)] = _overlap_chunk(vec[p[:, 0]], vec[p[:, 1]])
    return out


def candidate_pairs(vectors: np.ndarray, max_angle_deg: float) -> np.ndarray:
    """All pairs ``i < j`` of unit vectors closer than ``max_angle_deg``.

    Uses a KD-tree on the unit vectors with the equivalent chord distance, so
    the cost scales with the number of near pairs, not N**2.

    Parameters
    ----------
    vectors : ndarray, shape (N, 3)
        Unit vectors.
    max_angle_deg : float
        Largest separation, degrees.

    Returns
    -------
    ndarray of int, shape (P, 2)
        Pairs sorted lexicographically.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(vectors) < 2:
        return np.empty((0, 2), dtype=np.int64)
    # a hair more than the exact chord so that rounding never drops a pair at the limit
    chord = _chord(math.radians(max_angle_deg)) * (1 + 1e-12) + 1e-15
    pairs = cKDTree(vectors).query_pairs(chord, output_type="ndarray").astype(np.int64)
    pairs.sort(axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


# --------------------------------------------------------------------------- validation


def _validate(
    footprints: Any,
    *,
    centers: Any,
    fov_deg: Any,
    min_overlap: float,
    center_fraction: Any,
    max_frames: Any,
    max_bytes: Any,
    frame_bytes: Any,
    mounts: Any,
    names: Any,
) -> tuple[np.ndarray | None, np.ndarray, float | None, np.ndarray | None, list[str], np.ndarray]:
    """Check every argument; return footprints, centres, fov, bytes, names, mount codes."""
    fp = None
    if footprints is not None:
        fp = np.asarray(footprints, dtype=np.float64)
        if fp.ndim != 3 or fp.shape[1:] != (4, 2):
            raise ValueError(f"footprints must have shape (N, 4, 2); got {fp.shape}")
        if not np.all(np.isfinite(fp)):
            bad = sorted(set(np.flatnonzero(~np.isfinite(fp).all(axis=(1, 2))).tolist()))
            raise ValueError(f"footprints contain non-finite corners (frames {bad[:10]})")
    if centers is not None:
        ctr = np.asarray(centers, dtype=np.float64)
        if ctr.ndim != 2 or ctr.shape[1] != 2 or not np.all(np.isfinite(ctr)):
            raise ValueError(f"centers must be a finite (N, 2) array; got shape {ctr.shape}")
        if fp is not None and len(ctr) != len(fp):
            raise ValueError(f"got {len(ctr)} centers for {len(fp)} footprints")
    elif fp is None:
        raise ValueError("give footprints, or centers together with fov_deg")
    else:
        ctr = _radec(_unit_vectors(fp).mean(axis=1))
    n = len(ctr)
    if fov_deg is not None and not (math.isfinite(fov_deg) and 0 < fov_deg < 180):
        raise ValueError(f"fov_deg must be in (0, 180) degrees; got {fov_deg!r}")
    if fp is None and (fov_deg is None or center_fraction is None):
        raise ValueError("without footprints, both fov_deg and center_fraction are required")
    if not (0.0 <= min_overlap < 1.0):
        raise ValueError(f"min_overlap must be in [0, 1); got {min_overlap!r}")
    if center_fraction is not None and not (0 < center_fraction <= 10):
        raise ValueError(f"center_fraction must be in (0, 10]; got {center_fraction!r}")
    if max_frames is not None and (
        isinstance(max_frames, bool) or int(max_frames) != max_frames or max_frames < 1
    ):
        raise ValueError(f"max_frames must be a positive integer; got {max_frames!r}")
    sizes = None
    if max_bytes is not None:
        if not max_bytes > 0:
            raise ValueError(f"max_bytes must be positive; got {max_bytes!r}")
        if frame_bytes is None:
            raise ValueError("max_bytes needs frame_bytes (bytes per frame, scalar or per frame)")
        sizes = np.broadcast_to(np.asarray(frame_bytes, dtype=np.float64), (n,)).copy()
        if np.any(~np.isfinite(sizes)) or np.any(sizes < 0):
            raise ValueError("frame_bytes must be finite and >= 0")
    if names is None:
        names = [f"frame {i}" for i in range(n)]
    elif len(names) != n:
        raise ValueError(f"got {len(names)} names for {n} frames")
    codes = np.zeros(n, dtype=np.int64)
    if mounts is not None:
        if len(mounts) != n:
            raise ValueError(f"got {len(mounts)} mount modes for {n} frames")
        for i, m in enumerate(mounts):
            key = None if m is None else str(m).upper()
            if key is not None and key not in _MOUNTS:
                raise ValueError(
                    f"mount of frame {names[i]!r} must be 'EQ', 'ALTZ' or None; got {m!r}"
                )
            codes[i] = 0 if key is None else 1 + _MOUNTS.index(key)
    return fp, ctr, fov_deg, sizes, [str(s) for s in names], codes


# --------------------------------------------------------------------------- grouping


def _diagonals_deg(vec_fp: np.ndarray) -> np.ndarray:
    """Largest corner-to-corner angle of each (N, 4, 3) footprint, degrees."""
    d1 = _angle(vec_fp[:, 0], vec_fp[:, 2])
    d2 = _angle(vec_fp[:, 1], vec_fp[:, 3])
    return np.rad2deg(np.maximum(d1, d2))


class _Linker:
    """Link test and pruning data for one call of :func:`cluster_frames`."""

    def __init__(
        self,
        fp: np.ndarray | None,
        vec: np.ndarray,
        min_overlap: float,
        center_radius_deg: float | None,
    ) -> None:
        self.vec = vec
        self.min_overlap = min_overlap
        self.center_radius = None if center_radius_deg is None else math.radians(center_radius_deg)
        self.vfp = None if fp is None else _unit_vectors(fp)
        if self.vfp is not None:
            self.radii = _angle(self.vfp, vec[:, None, :]).max(axis=1)
            self.areas = np.abs(_shoelace(_project(self.vfp, vec)))  # radians^2
            # discs bound the footprints: exact enough on the tangent plane below 5 deg
            self.use_discs = bool(self.radii.max() <= math.radians(5.0))

    def reach(self) -> float:
        """Largest centre distance (radians) at which a pair can link."""
        if self.center_radius is not None:
            return self.center_radius
        r = float(self.radii.max())
        if self.min_overlap <= 0 or not self.use_discs:
            return 2.0 * r  # footprints overlap only within r_i + r_j
        # beyond this distance even the two largest discs overlap less than needed
        target = self.min_overlap * float(self.areas.min()) / 1.05
        lo, hi = 0.0, 2.0 * r
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if _lens_area(np.array(r), np.array(r), np.array(mid)) >= target:
                lo = mid
            else:
                hi = mid
        return hi

    def test(self, pairs: np.ndarray) -> np.ndarray:
        """Boolean link flag of each (P, 2) pair of global indices."""
        i, j = pairs[:, 0], pairs[:, 1]
        dist = _angle(self.vec[i], self.vec[j])
        if self.center_radius is not None:
            return dist <= self.center_radius
        assert self.vfp is not None
        maybe = np.ones(len(pairs), dtype=bool)
        if self.use_discs:
            # each footprint lies in a disc around its centre, so the overlap is at
            # most the discs' lens (5 % margin: sphere vs tangent plane < 1 % below 5 deg)
            lens = _lens_area(self.radii[i], self.radii[j], dist)
            maybe = lens * 1.05 >= self.min_overlap * np.minimum(self.areas[i], self.areas[j])
        out = np.zeros(len(pairs), dtype=bool)
        for lo in range(0, len(pairs), _PAIR_CHUNK):
            m = np.flatnonzero(maybe[lo : lo + _PAIR_CHUNK]) + lo
            if len(m):
                frac = _overlap_chunk(self.vfp[i[m]], self.vfp[j[m]], skip_below=self.min_overlap)
                out[m] = frac > self.min_overlap
        return out


def _knn_pairs(vec: np.ndarray, reach: float, k: int = 12) -> np.ndarray:
    """Local pairs of each frame with its k nearest neighbours within ``reach`` radians."""
    n = len(vec)
    k = min(k, n - 1)
    if k < 1:
        return np.empty((0, 2), dtype=np.int64)
    dist, nb = cKDTree(vec).query(vec, k=k + 1, distance_upper_bound=_chord(reach) * (1 + 1e-12))
    rows = np.repeat(np.arange(n)[:, None], k + 1, axis=1)
    ok = np.isfinite(dist) & (nb != rows)
    pairs = np.sort(np.column_stack([rows[ok], nb[ok]]), axis=1).astype(np.int64)
    return np.unique(pairs, axis=0)


def _hulls_may_link(linker: _Linker, ga: np.ndarray, gb: np.ndarray) -> bool:
    """False when no pair of frames of components ``ga`` and ``gb`` can link.

    Every pairwise intersection lies inside the intersection of the two
    components' convex hulls (all corners, on one tangent plane), so when that
    area is below ``min_overlap`` times the smallest footprint no pair can link
    and the component pair is skipped without enumerating its frame pairs.
    """
    if linker.vfp is None or not linker.use_discs or linker.min_overlap <= 0:
        return True
    pa, pb = linker.vfp[ga].reshape(-1, 3), linker.vfp[gb].reshape(-1, 3)
    center = pa.sum(axis=0) + pb.sum(axis=0)
    center /= np.linalg.norm(center)
    both = _project(np.concatenate([pa, pb])[None], center[None])[0]
    scale = float(np.abs(both).max()) or 1.0  # float32 for OpenCV: work in units of the extent
    both = (both / scale).astype(np.float32)
    hull_a = cv2.convexHull(both[: len(pa)])
    hull_b = cv2.convexHull(both[len(pa) :])
    area, _ = cv2.intersectConvexConvex(hull_a, hull_b)
    smallest = float(min(linker.areas[ga].min(), linker.areas[gb].min()))
    return bool(area * scale**2 * 1.05 + 1e-12 * scale**2 >= linker.min_overlap * smallest)


def _cross_pairs(
    vec: np.ndarray, ma: np.ndarray, mb: np.ndarray, chord: float, near: int | None
) -> np.ndarray:
    """Local pairs between two components closer than ``chord``, nearest first.

    With ``near``, only the ``near`` frames of each side closest to the other
    side's centre are paired (a cheap first try); otherwise all close pairs,
    found with a KD-tree (vectorised, no Python loop over pairs).
    """
    if near is not None:
        ca, cb = vec[ma].sum(axis=0), vec[mb].sum(axis=0)
        ma = ma[np.argsort(-(vec[ma] @ cb), kind="stable")[:near]]
        mb = mb[np.argsort(-(vec[mb] @ ca), kind="stable")[:near]]
    if near is not None or len(ma) * len(mb) <= 4096:
        cross = np.stack(np.meshgrid(ma, mb, indexing="ij"), axis=-1).reshape(-1, 2)
    else:
        sdm = cKDTree(vec[ma]).sparse_distance_matrix(
            cKDTree(vec[mb]), chord, output_type="ndarray"
        )
        cross = np.column_stack([ma[sdm["i"]], mb[sdm["j"]]]).astype(np.int64)
    d = np.linalg.norm(vec[cross[:, 0]] - vec[cross[:, 1]], axis=1)
    cross, d = cross[d <= chord], d[d <= chord]
    return cross[np.argsort(d, kind="stable")]


def _link_subset(members: np.ndarray, linker: _Linker, reach: float) -> list[np.ndarray]:
    """Links among ``members`` whose components equal those of the full overlap graph.

    1. Each frame is tested against its k nearest neighbours: inside a dense cloud
       of dithered subs this connects almost everything at O(N k) cost.
    2. Then only pairs between *different* components are searched, component pair
       by component pair (nearest first), stopping at the first link.
    Every pair that could link is either tested or joins frames already connected,
    so the components are exact without enumerating the O(k^2) pairs of a panel.
    """
    vec = linker.vec[members]
    knn = _knn_pairs(vec, reach)
    local = knn[linker.test(members[knn])] if len(knn) else knn
    comp = _components(len(members), local)
    found = [members[local]]
    n_comp = int(comp.max()) + 1
    if n_comp == 1:
        return found
    cmembers = np.split(np.argsort(comp, kind="stable"), np.cumsum(np.bincount(comp))[:-1])
    cvec = np.array([vec[m].sum(axis=0) for m in cmembers])
    cvec /= np.linalg.norm(cvec, axis=1, keepdims=True)
    caps = np.array([_angle(vec[m], cvec[c]).max() for c, m in enumerate(cmembers)])
    cpairs = candidate_pairs(cvec, math.degrees(2 * caps.max() + reach))
    cdist = _angle(cvec[cpairs[:, 0]], cvec[cpairs[:, 1]])
    keep = cdist <= caps[cpairs[:, 0]] + caps[cpairs[:, 1]] + reach
    cpairs = cpairs[keep][np.argsort(cdist[keep], kind="stable")]
    parent = np.arange(n_comp)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    chord = _chord(reach) * (1 + 1e-12)
    for a, b in cpairs.tolist():
        ra, rb = find(a), find(b)
        if ra == rb or not _hulls_may_link(linker, members[cmembers[a]], members[cmembers[b]]):
            continue
        link = _first_link(linker, members, vec, cmembers[a], cmembers[b], chord=chord)
        if link is not None:
            found.append(link)
            parent[ra] = rb
    return found


def _first_link(
    linker: _Linker,
    members: np.ndarray,
    vec: np.ndarray,
    ma: np.ndarray,
    mb: np.ndarray,
    *,
    chord: float,
) -> np.ndarray | None:
    """One linking pair (1, 2) of global indices between two components, or None."""
    for near in (64, None):  # the facing frames first, then every close pair
        cross = _cross_pairs(vec, ma, mb, chord, near)
        for lo in range(0, len(cross), 8192):  # nearest first; stop at the first link
            part = members[cross[lo : lo + 8192]]
            ok = linker.test(part)
            if ok.any():
                return part[ok][:1]
        if near is not None and len(ma) <= near and len(mb) <= near:
            break  # the first try already covered every pair
    return None


def _find_links(
    fp: np.ndarray | None,
    vec: np.ndarray,
    *,
    diag: float,
    min_overlap: float,
    center_fraction: float | None,
    codes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the component label of every frame and the links that were found."""
    n = len(vec)
    linker = _Linker(
        fp, vec, min_overlap, None if center_fraction is None else center_fraction * diag
    )
    reach = linker.reach()
    found: list[np.ndarray] = []
    for code in np.unique(codes):  # frames of different mount modes never link
        found.extend(_link_subset(np.flatnonzero(codes == code), linker, reach))
    links = np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)
    return _components(n, links), links


def _components(n: int, links: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _split(
    members: np.ndarray,
    vec: np.ndarray,
    *,
    max_frames: int | None,
    max_bytes: float | None,
    sizes: np.ndarray | None,
) -> list[np.ndarray]:
    """Recursive bisection along the principal axis of the centres."""
    n = len(members)
    k_frames = math.ceil(n / max_frames) if max_frames else 1
    total = float(sizes[members].sum()) if sizes is not None and max_bytes else 0.0
    k_bytes = math.ceil(total / max_bytes) if max_bytes and total > max_bytes else 1
    parts = max(k_frames, k_bytes)
    if parts <= 1 or n <= 1:
        if n == 1 and k_bytes > 1:
            logger.warning("a single frame exceeds max_bytes (%.3g > %.3g)", total, max_bytes)
        return [members]
    center = vec[members].sum(axis=0)
    center /= np.linalg.norm(center)
    xy = _project(vec[members][None], center[None])[0]
    xy -= xy.mean(axis=0)
    _, _, vt = np.linalg.svd(xy, full_matrices=False)  # principal axis = longest extent
    coord = xy @ vt[0]
    order = np.lexsort((members, coord))  # ties broken by index: deterministic
    left_parts = parts // 2
    if k_bytes >= k_frames and sizes is not None:
        cum = np.cumsum(sizes[members][order])
        cut = int(np.searchsorted(cum, total * left_parts / parts, side="left")) + 1
    else:
        cut = round(n * left_parts / parts)
    cut = min(max(cut, 1), n - 1)
    left, right = np.sort(members[order[:cut]]), np.sort(members[order[cut:]])
    return [
        part
        for half in (left, right)
        for part in _split(half, vec, max_frames=max_frames, max_bytes=max_bytes, sizes=sizes)
    ]


def _order_groups(groups: list[np.ndarray], vec: np.ndarray) -> list[list[int]]:
    """Sort by decreasing size, then mean RA, then mean Dec."""
    keyed = []
    for g in groups:
        ra, dec = _radec(vec[g].sum(axis=0))
        keyed.append((-len(g), round(float(ra), 9), round(float(dec), 9), int(g[0])))
    order = sorted(range(len(groups)), key=lambda i: keyed[i])
    return [sorted(int(i) for i in groups[k]) for k in order]


def _find_isolated(
    singletons: list[int], vec: np.ndarray, diag: float, names: list[str]
) -> list[int]:
    """Singletons whose nearest other frame is farther than a few field diagonals."""
    if len(vec) < 2 or not singletons:
        return []
    tree = cKDTree(vec)
    dist, _ = tree.query(vec[singletons], k=2)
    limit = _chord(math.radians(_ISOLATION_DIAGONALS * diag))
    isolated = [i for i, d in zip(singletons, dist[:, 1], strict=False) if d > limit]
    for i in isolated:
        logger.warning(
            "isolated frame %s forms its own group; check its WCS "
            "(nearest frame %.3g deg away, field diagonal %.3g deg)",
            names[i],
            math.degrees(2 * math.asin(min(dist[singletons.index(i), 1] / 2, 1.0))),
            diag,
        )
    return isolated


def cluster_frames(
    footprints: np.ndarray | None,
    *,
    centers: np.ndarray | None = None,
    fov_deg: float | None = None,
    min_overlap: float = 0.3,
    center_fraction: float | None = None,
    max_frames: int | None = None,
    max_bytes: float | None = None,
    frame_bytes: float | Sequence[float] | np.ndarray | None = None,
    mounts: Sequence[str | None] | None = None,
    names: Sequence[str] | None = None,
) -> Clustering:
    """Group frames by sky position for classic-mode stacking.

    Parameters
    ----------
    footprints : ndarray, shape (N, 4, 2), or None
        Sky corners (RA, Dec in degrees) of each frame, in order around it
        (e.g. ``WCS.calc_footprint()``). May be None when ``centers``,
        ``fov_deg`` and ``center_fraction`` are given.
    centers : ndarray, shape (N, 2), optional
        Frame centres (RA, Dec degrees); by default the normalised mean of the
        corners' unit vectors.
    fov_deg : float, optional
        Field diagonal in degrees, used for ``center_fraction`` and the
        isolation test; by default the median footprint diagonal.
    min_overlap : float, optional
        Frames are linked when their overlap, relative to the smaller
        footprint, exceeds this fraction.
    center_fraction : float, optional
        If set, link frames whose centres are closer than
        ``center_fraction * fov_deg`` instead of testing overlaps.
    max_frames : int, optional
        Split groups with more frames into spatially compact parts.
    max_bytes : float, optional
        Split groups whose total ``frame_bytes`` exceeds this.
    frame_bytes : float or array of float, optional
        Size of each frame (scalar: all the same); required with ``max_bytes``.
    mounts : sequence of {"EQ", "ALTZ", None}, optional
        Mount mode per frame; frames of different modes are never grouped
        (None is its own mode: unknown).
    names : sequence of str, optional
        Frame names for messages.

    Returns
    -------
    Clustering
        ``labels``, ``groups`` (largest first), ``isolated``.

    Raises
    ------
    ValueError
        If an argument has the wrong shape or an out-of-range value.

    Notes
    -----
    Candidate pairs are found with a KD-tree on unit vectors within the sum
    of the two largest centre-to-corner radii, then their overlaps are
    computed (vectorised). Groups are connected components of the links, so
    a chain of overlapping frames forms one group. A frame that overlaps no
    other frame forms its own group; when it is also more than 3 field
    diagonals from every other frame a warning names it. Splitting bisects a
    group recursively along the principal axis of its centres into
    ``ceil(size / max_frames)`` (or bytes) balanced parts; each frame lands
    in exactly one part, none is duplicated.
    """
    fp, ctr, fov, sizes, name_list, codes = _validate(
        footprints,
        centers=centers,
        fov_deg=fov_deg,
        min_overlap=min_overlap,
        center_fraction=center_fraction,
        max_frames=max_frames,
        max_bytes=max_bytes,
        frame_bytes=frame_bytes,
        mounts=mounts,
        names=names,
    )
    n = len(ctr)
    if n == 0:
        return Clustering(np.empty(0, dtype=np.int64), [], [], [], 0)
    vec = _unit_vectors(ctr)
    if fov is not None:
        diag = float(fov)
    else:
        assert fp is not None
        diag = float(np.median(_diagonals_deg(_unit_vectors(fp))))
    comp, links = _find_links(
        fp, vec, diag=diag, min_overlap=min_overlap, center_fraction=center_fraction, codes=codes
    )
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    components = np.split(order, bounds)
    singletons = sorted(int(c[0]) for c in components if len(c) == 1)
    isolated = _find_isolated(singletons, vec, diag, name_list)
    parts: list[np.ndarray] = []
    for members in components:
        parts.extend(_split(members, vec, max_frames=max_frames, max_bytes=max_bytes, sizes=sizes))
    groups = _order_groups(parts, vec)
    labels = np.empty(n, dtype=np.int64)
    for k, g in enumerate(groups):
        labels[g] = k
    logger.info(
        "clustered %d frames into %d groups (%d links, %d isolated)",
        n,
        len(groups),
        len(links),
        len(isolated),
    )
    return Clustering(labels, groups, isolated, name_list, len(links))
