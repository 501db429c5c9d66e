"""Observing sessions: the frames of one target, filter and instrument taken in one night.

Quality selection (`skymosaic.stack.quality.select_frames`) judges every frame against the
median and MAD of its own session, so a session must be what an observer calls one: a
target through one filter with one instrument *during one night*. Two nights of the same
target differ in sky brightness (Moon, transparency, altitude) by far more than the frames
of one night do; pooled, the brighter night would be rejected wholesale.

The night of a frame comes from DATE-OBS (the UTC start) and EXPTIME (its middle is used):

- with the site longitude in the header (``FrameInfo.site_longitude``: SITELONG,
  LONG-OBS, OBSGEO-L, ... or OBSGEO-X/Y), the night is the local mean solar date of the
  evening: ``date(t_mid + longitude / 15 h - 12 h)``. The boundary is local noon, so a
  night that spans midnight (UTC or local) is one night;
- without it, the frames of one target/filter/instrument are sorted in time and a new
  night starts wherever the gap between the end of a frame and the start of the next
  exceeds ``gap_hours`` (``quality.session_gap_hours``, default 4 h: longer than any
  pause for a meridian flip, refocusing or a passing cloud, shorter than a day). Such a
  night is named after the UTC date of its first frame;
- frames without a readable DATE-OBS form one session per target/filter/instrument, as
  if they had all been taken in one night.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from skymosaic.io import FrameInfo
from skymosaic.stack.quality import FrameQuality

__all__ = ["DEFAULT_GAP_HOURS", "SessionSummary", "observing_nights", "parse_date_obs",
           "session_keys", "summarise_sessions"]

logger = logging.getLogger(__name__)

#: default gap (hours) that separates two nights when the header has no site longitude
DEFAULT_GAP_HOURS = 4.0


def parse_date_obs(value: str | None) -> datetime | None:
    """The UTC time of a FITS DATE-OBS value (ISO 8601, with or without ``Z`` or a UTC
    offset, or the old ``DD/MM/YY`` form), or None when it is missing or unreadable."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    if text.endswith("Z"):
        text = text[:-1]
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        try:  # DD/MM/YY, the pre-2000 FITS form (years 19YY)
            day, month, year = (int(v) for v in text.split("/"))
            t = datetime(1900 + year, month, day)
        except ValueError:
            return None
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    return t


def _mid(start: datetime, exposure: float | None) -> datetime:
    half = 0.0
    if exposure is not None and math.isfinite(exposure) and exposure > 0:
        half = exposure / 2.0
    return start + timedelta(seconds=half)


def _end(start: datetime, exposure: float | None) -> datetime:
    return _mid(start, exposure) + (_mid(start, exposure) - start)


def observing_nights(
    dates: Sequence[str | None],
    *,
    exposures: Sequence[float | None] | None = None,
    longitudes: Sequence[float | None] | None = None,
    groups: Sequence[str] | None = None,
    gap_hours: float = DEFAULT_GAP_HOURS,
) -> list[str | None]:
    """The observing night of each frame (see the module docstring).

    Parameters
    ----------
    dates : sequence of str or None
        DATE-OBS of each frame (UTC start of the exposure).
    exposures : sequence of float or None, optional
        Exposure times, s (the middle of the exposure dates it).
    longitudes : sequence of float or None, optional
        Site longitude of each frame, degrees east; None where unknown.
    groups : sequence of str, optional
        Frames are split on time gaps within each group (target/filter/instrument);
        default: all frames in one group.
    gap_hours : float
        Without a longitude, a gap longer than this starts a new night.

    Returns
    -------
    list of str or None
        ``"YYYY-MM-DD"`` (with longitude: the local date of the evening; without: the UTC
        date of the night's first frame, ``"YYYY-MM-DD#2"`` for a second night starting on
        the same UTC date), None for a frame without a readable DATE-OBS.

    Raises
    ------
    ValueError
        If the lengths differ or ``gap_hours`` is not a positive number.

    Examples
    --------
    >>> observing_nights(["2025-03-26T23:30:00", "2025-03-27T01:30:00"], longitudes=[10.0, 10.0])
    ['2025-03-26', '2025-03-26']
    >>> observing_nights(["2025-03-01T22:00:00", "2025-03-15T22:00:00"])
    ['2025-03-01', '2025-03-15']
    """
    n = len(dates)
    exposures = list(exposures) if exposures is not None else [None] * n
    longitudes = list(longitudes) if longitudes is not None else [None] * n
    groups = list(groups) if groups is not None else [""] * n
    if not len(exposures) == len(longitudes) == len(groups) == n:
        raise ValueError(f"got {n} dates but {len(exposures)} exposures, {len(longitudes)} "
                         f"longitudes and {len(groups)} groups")
    if not (isinstance(gap_hours, (int, float)) and math.isfinite(gap_hours) and gap_hours > 0):
        raise ValueError(f"gap_hours must be a positive number; got {gap_hours!r}")
    starts = [parse_date_obs(d) for d in dates]
    nights: list[str | None] = [None] * n
    by_group: dict[str, list[int]] = {}
    for i, (start, lon) in enumerate(zip(starts, longitudes, strict=True)):
        if start is None:
            if dates[i]:
                logger.warning("frame %d: DATE-OBS %r is not a date; its night is unknown",
                               i, dates[i])
            continue
        if lon is not None and math.isfinite(lon):
            local = _mid(start, exposures[i]) + timedelta(hours=lon / 15.0 - 12.0)
            nights[i] = local.date().isoformat()
        else:
            by_group.setdefault(groups[i], []).append(i)
    gap = timedelta(hours=gap_hours)
    for members in by_group.values():
        members.sort(key=lambda i: (starts[i], i))
        used: dict[str, int] = {}
        label, last_end = "", None
        for i in members:
            start = starts[i]
            assert start is not None
            if last_end is None or start - last_end > gap:
                day = start.date().isoformat()
                used[day] = used.get(day, 0) + 1
                label = day if used[day] == 1 else f"{day}#{used[day]}"
            nights[i] = label
            end = _end(start, exposures[i])
            last_end = end if last_end is None else max(last_end, end)
    return nights


def _base_key(info: FrameInfo) -> str:
    return "|".join(str(v or "") for v in (info.object, info.filter, info.instrument, info.kind))


def session_keys(frames: Sequence[FrameInfo], *, gap_hours: float = DEFAULT_GAP_HOURS,
                 targets: Mapping[str, str] | None = None) -> list[str]:
    """The session of each frame: ``target|object|filter|instrument|kind|night``.

    ``targets`` maps a frame path to its sky-disjoint target (`skymosaic.plan.targets`),
    so that two targets without OBJECT are never judged together; the night is
    `observing_nights` (empty without DATE-OBS).
    """
    targets = targets or {}
    base = [f"{targets.get(str(f.path), '')}|{_base_key(f)}" for f in frames]
    nights = observing_nights([f.date_obs for f in frames], exposures=[f.exposure for f in frames],
                              longitudes=[f.site_longitude for f in frames], groups=base,
                              gap_hours=gap_hours)
    return [f"{b}|{night or ''}" for b, night in zip(base, nights, strict=True)]


@dataclass
class SessionSummary:
    """One session as run.json lists it (``"sessions"``)."""

    id: str
    night: str | None
    object: str | None
    filter: str | None
    instrument: str | None
    start: str | None
    end: str | None
    frames: int
    used: int
    rejected: int
    median_background: float | None
    median_noise: float | None
    median_fwhm: float | None
    frame_names: list[str]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else None


def summarise_sessions(frames: Sequence[FrameInfo], keys: Sequence[str],
                       qualities: Mapping[str, FrameQuality],
                       rejected: Mapping[str, str]) -> list[SessionSummary]:
    """Per session: its night, time span, frames used and rejected and the median
    background, noise and FWHM of its frames (all of them, rejected ones included: the
    figures the cuts were relative to). ``qualities`` and ``rejected`` are keyed by path."""
    members: dict[str, list[FrameInfo]] = {}
    for f, key in zip(frames, keys, strict=True):
        members.setdefault(key, []).append(f)
    out = []
    for key, group in members.items():
        q = [qualities[str(f.path)] for f in group if str(f.path) in qualities]
        times = [t for t in (parse_date_obs(f.date_obs) for f in group) if t is not None]
        ends = [_end(t, f.exposure) for f in group if (t := parse_date_obs(f.date_obs)) is not None]
        n_rejected = sum(1 for f in group if str(f.path) in rejected)
        first = group[0]
        night = key.rsplit("|", 1)[-1] or None
        out.append(SessionSummary(
            id=key.split("|", 1)[1] if key.startswith("|") else key, night=night,
            object=first.object, filter=first.filter, instrument=first.instrument,
            start=min(times).isoformat() if times else None,
            end=max(ends).isoformat() if ends else None,
            frames=len(group), used=len(group) - n_rejected, rejected=n_rejected,
            median_background=_median([x.background for x in q]),
            median_noise=_median([x.noise for x in q]),
            median_fwhm=_median([x.fwhm for x in q]),
            frame_names=[f.name for f in group],
        ))
    return out
