"""Several targets in one folder: sky-disjoint groups of frames, each its own mosaic.

A folder of a smart telescope's captures often holds several objects (M94 one night,
NGC 7023 the next). One grid over all of them would be tens of degrees wide and mostly
empty, so classic mode splits the frames into *targets* first:

- two frames are on one target when their centres are closer than ``link_diagonals``
  (default 1.5) field diagonals (the median diagonal of the frames); overlapping frames
  of one camera always are, and a mosaic with small gaps between its panels is not torn
  apart. Targets are the connected components of these links (a chain of frames links
  its two ends), computed with `skymosaic.plan.cluster_frames` (``center_fraction``);
- a target is named after the OBJECT its frames share (sanitised for a folder name:
  ``"M 94"`` -> ``M_94``), or after its centre, ``RA083.82_DEC-05.39``, when OBJECT is
  missing, contradictory, or shared with another target;
- a frame alone on its target while other targets have several frames is a *lone frame*
  (a stray capture or a wrong WCS): it is left out of every mosaic with a warning naming
  it, rather than stretching a grid across the sky;
- ``select`` (``--target NAME``) keeps one target, matched on its name or OBJECT
  (case and punctuation ignored); ``region`` (``--region RA,DEC,RADIUS``, degrees)
  keeps the frames whose centre lies within RADIUS of (RA, DEC) before the split.

Only positions and OBJECT are read (headers), so the split costs nothing next to a run.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from skymosaic.plan.cluster import cluster_frames

__all__ = ["Target", "TargetError", "TargetSplit", "quiet_clustering", "split_targets",
           "target_key"]

logger = logging.getLogger(__name__)

#: folder names a run writes into OUT itself: a target is never named like one of them
_RESERVED = {"tiles", "coadd", "coadd_renorm", "wcs", ".scratch"}


class TargetError(ValueError):
    """A ``select`` or ``region`` that matches no frame (the message lists the targets)."""


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence the logger ``name`` for the block (its callers log what matters to them)."""
    log = logging.getLogger(name)
    disabled, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = disabled


def quiet_clustering():
    """Silence the clustering's log lines (its callers log what matters to them)."""
    return quiet_logger("skymosaic.plan.cluster")


@dataclass
class Target:
    """One sky-disjoint group of frames.

    Attributes
    ----------
    name : str
        Folder name (``OUT/<name>/``).
    frames : list of int
        Indices of its frames in the input order.
    center : (float, float)
        RA, Dec (degrees) of the mean of its frames' centres.
    object : str or None
        The OBJECT its frames share (None when missing or contradictory).
    """

    name: str
    frames: list[int]
    center: tuple[float, float]
    object: str | None = None

    def to_dict(self, names: Sequence[str] | None = None) -> dict:
        out: dict[str, object] = {
            "name": self.name, "object": self.object, "n_frames": len(self.frames),
            "center_deg": [round(self.center[0], 6), round(self.center[1], 6)]}
        if names is not None:
            out["frames"] = [names[k] for k in self.frames]
        return out


@dataclass
class TargetSplit:
    """What `split_targets` found: the targets kept, the lone frames left out (index ->
    reason) and the frames not selected (outside ``region`` or another target than
    ``select``)."""

    targets: list[Target]
    lone: dict[int, str] = field(default_factory=dict)
    not_selected: list[int] = field(default_factory=list)
    all_targets: list[str] = field(default_factory=list)


def _unit(radec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(radec[..., 0]), np.radians(radec[..., 1])
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _radec(v: np.ndarray) -> tuple[float, float]:
    ra = math.degrees(math.atan2(v[1], v[0])) % 360.0
    return ra, math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))


def _sanitise(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9.+-]+", "_", text.strip())
    return name.strip("._-")


def target_key(text: str) -> str:
    """The form names are matched on: lower case, letters and digits only
    (``"M 94"``, ``"m94"`` and ``"M_94"`` all give ``"m94"``)."""
    return re.sub(r"[^a-z0-9+-]", "", text.lower())


def _coordinate_name(center: tuple[float, float]) -> str:
    return f"RA{center[0]:06.2f}_DEC{center[1]:+06.2f}"


def _name_targets(targets: list[Target]) -> None:
    """OBJECT names where unique among the targets, coordinates otherwise."""
    proposed = [_sanitise(t.object) if t.object else "" for t in targets]
    counts: dict[str, int] = {}
    for p in proposed:
        if p:
            counts[p.lower()] = counts.get(p.lower(), 0) + 1
    used: set[str] = set()
    for t, p in zip(targets, proposed, strict=True):
        usable = p and counts[p.lower()] == 1 and p.lower() not in _RESERVED
        name = p if usable else _coordinate_name(t.center)
        base, k = name, 2
        while name.lower() in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name.lower())
        t.name = name


def _common_object(objects: Sequence[str | None]) -> str | None:
    values = {o.strip() for o in objects if o and o.strip()}
    return values.pop() if len(values) == 1 else None


def _nearest_deg(k: int, vec: np.ndarray) -> float:
    dots = np.clip(vec @ vec[k], -1.0, 1.0)
    dots[k] = -2.0
    return math.degrees(math.acos(float(dots.max()))) if len(vec) > 1 else math.inf


def split_targets(
    footprints: np.ndarray,
    *,
    objects: Sequence[str | None],
    names: Sequence[str],
    link_diagonals: float = 1.5,
    select: str | None = None,
    region: tuple[float, float, float] | None = None,
) -> TargetSplit:
    """Split frames into sky-disjoint targets (see the module docstring).

    Parameters
    ----------
    footprints : ndarray, shape (N, 4, 2)
        Sky corners (RA, Dec degrees) of each frame.
    objects : sequence of str or None
        OBJECT of each frame.
    names : sequence of str
        Frame names, for messages.
    link_diagonals : float
        Frames whose centres are closer than this many (median) field diagonals are on
        one target.
    select : str, optional
        Keep only the target of this name or OBJECT.
    region : (float, float, float), optional
        ``(ra, dec, radius)`` in degrees: keep only the frames whose centre is inside.

    Returns
    -------
    TargetSplit
        Targets ordered by decreasing number of frames (then RA, Dec), each with its
        folder name.

    Raises
    ------
    TargetError
        When ``region`` holds no frame or ``select`` names no target.
    ValueError
        When the lengths differ or ``link_diagonals`` is not in (0, 10].
    """
    fp = np.asarray(footprints, dtype=np.float64).reshape(-1, 4, 2)
    n = len(fp)
    if not len(objects) == len(names) == n:
        raise ValueError(f"got {n} footprints, {len(objects)} objects and {len(names)} names")
    if not (0 < link_diagonals <= 10):
        raise ValueError(f"link_diagonals must be in (0, 10]; got {link_diagonals!r}")
    vec = _unit(fp).mean(axis=1)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    keep = np.arange(n)
    out = TargetSplit(targets=[])
    if region is not None:
        ra, dec, radius = region
        cosine = np.clip(vec @ _unit(np.array([ra, dec], float)), -1.0, 1.0)
        inside = np.degrees(np.arccos(cosine)) <= radius
        keep = np.flatnonzero(inside)
        out.not_selected = np.flatnonzero(~inside).tolist()
        if not len(keep):
            raise TargetError(f"no frame has its centre within {radius:g} deg of RA {ra:g}, Dec "
                              f"{dec:g} (--region, targets.region)")
    if not len(keep):
        return out
    with quiet_clustering():
        clustering = cluster_frames(fp[keep], center_fraction=link_diagonals,
                                    names=[names[int(k)] for k in keep])
    targets = []
    for members in clustering.groups:
        idx = [int(keep[m]) for m in members]
        centre = vec[idx].sum(axis=0)
        targets.append(Target("", idx, _radec(centre / np.linalg.norm(centre)),
                              _common_object([objects[k] for k in idx])))
    _name_targets(targets)
    out.all_targets = [t.name for t in targets]
    if select is not None:
        wanted = target_key(select)
        chosen = [t for t in targets if wanted in (target_key(t.name), target_key(t.object or ""))]
        if not chosen:
            raise TargetError(f"no target named {select!r} (--target, targets.select); the frames "
                              f"form {len(targets)} target(s): {', '.join(out.all_targets)}")
        out.not_selected += [k for t in targets if t not in chosen for k in t.frames]
        targets = chosen[:1]
    if len(targets) > 1 and max(len(t.frames) for t in targets) > 1:
        for t in [t for t in targets if len(t.frames) == 1]:
            k = t.frames[0]
            out.lone[k] = (f"far from every other frame (nearest {_nearest_deg(k, vec):.2f} deg "
                           "away): a lone frame, left out of every mosaic (run it alone, or "
                           f"with --target {t.name}, to mosaic it)")
            logger.warning("%s: %s", names[k], out.lone[k])
        targets = [t for t in targets if len(t.frames) > 1]
    out.targets = targets
    return out
