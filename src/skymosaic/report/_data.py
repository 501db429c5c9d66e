"""The run data the page shows, gathered from ``run.json``, the log and the tile headers.

Everything is converted to what the viewer draws: outlines in DZI image pixels (x right,
y down, pixel centres at ``i + 0.5``: OpenSeadragon's image coordinates), one entry per
coadd input (master tile or single frame) with its solved correction, one per frame, the
rejected frames with their reasons, and the overlap graph with each pair's residual sky
step after correction.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

from skymosaic.io import FrameError, frame_footprint, scan_frame
from skymosaic.report._geometry import clip_polygon, outline_pixels, polygon_area

__all__ = ["collect_run", "image_outline", "log_warnings"]

logger = logging.getLogger(__name__)

_LOG_LINE = re.compile(r"^(\S+ \S+) (WARNING|ERROR|CRITICAL) (\S+): (.*)$")
#: Largest number of log warnings embedded in the page (the log keeps them all).
_MAX_WARNINGS = 500


def image_outline(xy: np.ndarray, height: int) -> list[list[float]]:
    """0-based FITS pixel positions (K, 2) as DZI image coordinates (y down, 0.1 px)."""
    return [[round(float(x) + 0.5, 1), round(height - 0.5 - float(y), 1)] for x, y in xy]


def log_warnings(path: Path) -> list[dict]:
    """The WARNING/ERROR lines of a skymosaic log file (continuation lines appended)."""
    if not path.is_file():
        return []
    out: list[dict] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if m:
            out.append({"time": m.group(1), "level": m.group(2), "logger": m.group(3),
                        "message": m.group(4)})
        elif out and line.startswith((" ", "\t")) and len(out[-1]["message"]) < 4000:
            out[-1]["message"] += "\n" + line
    return out[:_MAX_WARNINGS]


def _tile_outline(path: Path, wcs: WCS) -> np.ndarray | None:
    """A master tile's outline in mosaic pixels, from its FITS header."""
    try:
        info = scan_frame(path)
    except (FrameError, OSError) as err:
        logger.warning("report: no outline for %s: %s", path, err)
        return None
    return outline_pixels(frame_footprint(info.wcs, info.shape[1:], samples=5), wcs)


def _grid_photometry(run: dict) -> tuple[dict, list[dict], dict]:
    """Grid mode: the global solve of the mosaic this report shows (one per filter in
    run.json ``grid``) in the classic shape: ``inputs`` by tile file name (gain, offset,
    sky surface per channel) and the overlap ``pairs``; its tiles; and, when the frames were
    solved before stacking (``grid.frame_photometry``), each frame's ``frame_gain`` and
    ``frame_surface``."""
    mosaic = (run.get("products") or {}).get("mosaic")
    products = list((run.get("grid") or {}).values())
    product = next((g for g in products if g.get("mosaic") == mosaic),
                   products[0] if products else {})
    solve = product.get("photometry") or {}
    names = product.get("tile_names") or []
    inputs = {}
    for k, name in enumerate(names):
        entry = {}
        for key, out_key in (("gains", "gain"), ("offsets", "offset"), ("surfaces", "surface")):
            values = solve.get(key)
            if values is not None and k < len(values):
                entry[out_key] = values[k]
        inputs[f"{name}.fits"] = entry
    placed = set(names)
    tiles = [t for t in product.get("tiles") or [] if t.get("tile_id") in placed]
    frame_solve = product.get("frame_photometry") or {}
    frames: dict[str, dict] = {}
    if frame_solve.get("status") == "ok":
        surfaces = frame_solve.get("surfaces") or {}
        for name, gain in (frame_solve.get("gains") or {}).items():
            frames[name] = {"frame_gain": gain, **({"frame_surface": surfaces[name]}
                                                   if name in surfaces else {})}
    return {"inputs": inputs, "pairs": solve.get("pairs") or []}, tiles, frames


def _stack_stats(tiles: list[dict]) -> dict[str, dict]:
    """Per frame: its tile, stack gain/offset and rejected pixel counts."""
    out = {}
    for t in tiles:
        stack = t.get("stack") or {}
        names = stack.get("frames") or t.get("frames") or []
        for k, name in enumerate(names):
            entry = {"tile": t["tile_id"]}
            for key, src in (("stack_gain", "gains"), ("stack_offset", "offsets"),
                             ("stack_weight", "frame_weights"),
                             ("rejected_pixels", "rejected_per_frame"),
                             ("rejected_fraction", "rejected_fraction_per_frame")):
                values = stack.get(src)
                if values is not None and k < len(values):
                    entry[key] = values[k]
            out[name] = entry
    return out


def collect_run(out: Path, run: dict, wcs: WCS, shape: tuple[int, int]) -> dict:
    """Inputs, frames, rejected frames and overlap pairs of a run, for the page.

    Parameters
    ----------
    out : Path
        The run folder (master tiles are read from ``out/tiles``).
    run : dict
        ``run.json``.
    wcs, shape
        The mosaic's celestial WCS and (H, W).
    """
    height = shape[0]
    footprints = run.get("footprints") or {}
    photometry = run.get("photometry") or {}
    run_tiles = run.get("tiles") or []
    frame_solve: dict[str, dict] = {}
    if run.get("mode") == "grid":
        photometry, run_tiles, frame_solve = _grid_photometry(run)
    solved = photometry.get("inputs") or {}
    tiles = {f"{t['tile_id']}.fits": t for t in run_tiles}
    stack = _stack_stats(list(tiles.values()))
    for name, solved_frame in frame_solve.items():
        stack.setdefault(name, {}).update(solved_frame)
    renorm = run.get("coverage_renorm") or {}
    frame_list = (run.get("frames") or {}).get("list") or []
    by_name = {Path(f["path"]).name: f for f in frame_list}

    names = list(solved) or [*tiles, *(n for n, f in by_name.items()
                                       if f.get("used") and n not in stack)]
    pixel_outlines: dict[str, np.ndarray | None] = {}
    inputs = []
    for name in names:
        tile = tiles.get(name)
        if tile is not None:
            xy = _tile_outline(out / "tiles" / name, wcs)
        else:
            fp = footprints.get(name)
            xy = None if fp is None else outline_pixels(np.asarray(fp), wcs)
        pixel_outlines[name] = xy
        entry = {"name": name, "kind": "tile" if tile is not None else "frame",
                 "outline": None if xy is None else image_outline(xy, height)}
        entry.update({k: v for k, v in (solved.get(name) or {}).items()
                      if k in ("gain", "offset", "surface")})
        if name in renorm:
            entry["coverage_renorm"] = renorm[name]
        if tile is not None:
            entry.update(n_frames=tile.get("n_frames"), frames=tile.get("frames"),
                         exposure_sum=tile.get("exposure_sum"), shape=tile.get("shape"))
        elif name in by_name:
            entry["frame"] = _frame_entry(by_name[name], stack.get(name))
        inputs.append(entry)

    frames = []
    for name, f in by_name.items():
        fp = footprints.get(name)
        xy = None if fp is None else outline_pixels(np.asarray(fp), wcs)
        frames.append({**_frame_entry(f, stack.get(name)),
                       "outline": None if xy is None else image_outline(xy, height)})

    rejected = []
    for path, reason in ((run.get("frames") or {}).get("rejected") or {}).items():
        name = Path(path).name
        fp = footprints.get(name)
        xy = None if fp is None else outline_pixels(np.asarray(fp), wcs)
        rejected.append({"name": name, "path": path, "reason": reason,
                         "outline": None if xy is None else image_outline(xy, height)})

    return {"inputs": inputs, "frames": frames, "rejected": rejected,
            "pairs": _pairs(photometry.get("pairs") or [], names, pixel_outlines, height)}


def _frame_entry(f: dict, stack: dict | None) -> dict:
    date = f.get("date_obs") or ""
    entry = {"name": Path(f["path"]).name, "path": f["path"], "exposure": f.get("exposure"),
             "filter": f.get("filter"), "object": f.get("object"), "date_obs": f.get("date_obs"),
             "night": date[:10] or None, "kind": f.get("kind"), "wcs": f.get("wcs"),
             "used": f.get("used"), "weight": f.get("weight"), "quality": f.get("quality"),
             "stats": f.get("stats")}
    if stack:
        entry.update(stack)
    return entry


def _pairs(pairs: list[dict], names: list[str], outlines: dict, height: int) -> list[dict]:
    """One entry per overlapping pair: the residual sky step per channel after correction
    and the overlap polygon (image coordinates)."""
    merged: dict[tuple[int, int], dict] = {}
    for p in pairs:
        key = (int(p["i"]), int(p["j"]))
        entry = merged.setdefault(key, {"i": key[0], "j": key[1], "sky_step": [], "status": [],
                                        "robust_weight": [], "n_used": []})
        for field in ("sky_step", "status", "robust_weight", "n_used"):
            entry[field].append(p.get(field))
    out = []
    for (i, j), entry in merged.items():
        if i >= len(names) or j >= len(names):
            continue
        a, b = outlines.get(names[i]), outlines.get(names[j])
        poly = None
        if a is not None and b is not None:
            clipped = clip_polygon(a, b)
            if len(clipped) >= 3 and abs(polygon_area(clipped)) > 0:
                poly = image_outline(clipped, height)
        steps = [abs(s) for s in entry["sky_step"] if s is not None]
        entry.update(a=names[i], b=names[j], max_step=max(steps) if steps else None, polygon=poly)
        out.append(entry)
    return out
