"""``OUT/index.html``: the offline report of a run, with a deep-zoom viewer and overlays.

What is written (see docs/report.md)::

    OUT/index.html                 the page (opens from the file system or over http)
    OUT/report/data.js             the run's data, ``window.SKYMOSAIC_REPORT = {...}``
    OUT/report/mosaic.dzi          Deep Zoom descriptor; tiles in report/mosaic_files/
    OUT/report/values/<cx>_<cy>.js linear mosaic values for the cursor readout
    OUT/report/coverage.png        the depth map (coverage) as a colour overlay
    OUT/report/static/             OpenSeadragon (BSD-3, with its licence), report.js/.css

Data goes in as scripts, not JSON files: a page opened from file:// cannot fetch files in
Chromium, but it can load scripts. The value chunks hold float32 of the science mosaic
(binned when the mosaic has more than ``value_max`` values, so the folder stays small;
the page says so), loaded only for the chunk under the cursor.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import shutil
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from skymosaic._version import __version__
from skymosaic.io._stream import preview_binning
from skymosaic.io._stretch import StretchParams, fit_stretch
from skymosaic.io._writer import atomic_path
from skymosaic.report._data import collect_run, log_warnings
from skymosaic.report._dzi import write_dzi
from skymosaic.report._geometry import sky_grid
from skymosaic.report._mosaic import MosaicFile, binning_for

__all__ = ["STATIC_FILES", "ReportError", "write_report"]

logger = logging.getLogger(__name__)

#: The files of ``skymosaic/report/static`` copied next to every report.
STATIC_FILES = ("openseadragon.min.js", "LICENSE-openseadragon.txt", "report.js", "report.css")
#: Values per chunk side of the cursor readout.
VALUE_CHUNK = 256
#: Long side of the coverage overlay image.
_COVERAGE_SIZE = 2048


class ReportError(ValueError):
    """The run folder cannot be reported (the message names the file and the problem)."""


def write_report(
    out: str | os.PathLike,
    *,
    memory_budget: int,
    tile_format: str = "jpg",
    value_max: float = 8e6,
    preview_max_size: int = 4096,
    threads: int = 0,
) -> Path:
    """Write (or rebuild) the report of the finished run in ``out``.

    Parameters
    ----------
    out : path
        A run folder holding ``run.json`` and the mosaic it names.
    memory_budget : int
        Bytes; the mosaic is streamed in bands within it.
    tile_format : ``"jpg"`` or ``"png"``
        Deep-zoom tile format.
    value_max : float
        Most linear values shipped for the cursor readout (the mosaic is binned above it).
    preview_max_size : int
        The preview's long side: the stretch is fitted on the plane the preview is drawn
        from, so the viewer and the PNG preview look the same.
    threads : int
        Threads of the deep-zoom pyramid's stretch and tile encoding (0: all cores); the
        files do not depend on it.

    Returns
    -------
    Path of ``index.html``.

    Raises
    ------
    ReportError
        When ``run.json`` or the mosaic is missing or unreadable.
    """
    out = Path(out)
    run = _read_run(out)
    mosaic_name = (run.get("products") or {}).get("mosaic")
    if not mosaic_name or not (out / mosaic_name).is_file():
        raise ReportError(f"{out / 'run.json'}: no mosaic to report "
                          f"(products.mosaic = {mosaic_name!r}, status {run.get('status')!r})")
    assets = out / "report"
    assets.mkdir(exist_ok=True)
    _copy_static(assets / "static")
    try:
        mosaic = MosaicFile(out / mosaic_name)
    except (OSError, ValueError) as err:
        raise ReportError(f"{out / mosaic_name}: cannot be read: {err}") from err
    with mosaic:
        data = build_data(out, run, mosaic, assets, memory_budget=memory_budget,
                          tile_format=tile_format, value_max=value_max,
                          preview_max_size=preview_max_size,
                          threads=threads or (os.cpu_count() or 1))
    write_data(assets / "data.js", data)
    page = out / "index.html"
    with atomic_path(page, suffix=".html") as tmp:
        tmp.write_text(page_html(run), encoding="utf-8")
    logger.info("report written to %s", page)
    return page


def _read_run(out: Path) -> dict:
    path = out / "run.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ReportError(f"{path}: not found; is {out} a skymosaic run folder?") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot be read: {err}") from err


def _copy_static(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    static = resources.files("skymosaic.report") / "static"
    for name in STATIC_FILES:
        with resources.as_file(static / name) as src:
            shutil.copyfile(src, dest / name)


def build_data(out: Path, run: dict, mosaic: MosaicFile, assets: Path, *, memory_budget: int,
               tile_format: str, value_max: float, preview_max_size: int,
               threads: int = 1) -> dict:
    """Write the pyramid, value chunks and coverage image; return the page's data."""
    c, h, w = mosaic.shape
    factor = preview_binning(mosaic.shape, max_size=preview_max_size, memory_budget=memory_budget)
    params = preview_stretch(run) or fit_stretch(mosaic.binned("data", factor,
                                                               memory_budget=memory_budget))
    pyramid = write_dzi(mosaic, assets, params, memory_budget=memory_budget, fmt=tile_format,
                        threads=threads)
    values = write_values(mosaic, assets / "values", memory_budget=memory_budget,
                          value_max=value_max)
    coverage = write_coverage(mosaic, assets / "coverage.png", memory_budget=memory_budget)
    config_path = out / ((run.get("products") or {}).get("config") or "config.toml")
    return {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "skymosaic": __version__,
        "run": _summary(run),
        "config": config_path.read_text() if config_path.is_file() else None,
        "warnings": log_warnings(out / ((run.get("products") or {}).get("log") or "skymosaic.log")),
        "image": {"width": w, "height": h, "channels": c, "tile_source": pyramid.tile_source(out),
                  "max_level": pyramid.max_level, "stretch": params.to_dict(),
                  "bunit": str(mosaic.header.get("BUNIT", ""))},
        "sky": sky_grid(mosaic.wcs, (h, w)).to_dict(),
        "values": values,
        "coverage": coverage,
        **collect_run(out, run, mosaic.wcs, (h, w)),
    }


def preview_stretch(run: dict) -> StretchParams | None:
    """The stretch of the run's PNG preview (run.json ``color.stretch``), as it applies to
    the science FITS: with ``color.mode = "apply"`` the calibration is already in the data,
    so only the black/white points and the curve remain. None for runs without one."""
    color = run.get("color") or {}
    if not color and run.get("mode") == "grid":  # one colour record per filter's mosaic
        mosaic = (run.get("products") or {}).get("mosaic")
        color = next((g.get("color") or {} for g in (run.get("grid") or {}).values()
                      if g.get("mosaic") == mosaic), {})
    try:
        params = StretchParams.from_dict(color["stretch"])
    except (KeyError, TypeError, ValueError):
        return None
    if color.get("mode") == "apply":
        c = params.channels
        params = dataclasses.replace(params, scale=(1.0,) * c, offset=(0.0,) * c)
    return params


def _summary(run: dict) -> dict:
    frames = run.get("frames") or {}
    photometry = run.get("photometry") or {}
    keys = ("status", "mode", "skymosaic", "config_digest", "output", "timings_s",
            "peak_memory_bytes",
            "backend", "scheduler", "resume", "preflight", "products", "solve", "coverage_renorm")
    summary = {k: run[k] for k in keys if k in run}
    summary["frames"] = {"found": frames.get("found"), "used": frames.get("used"),
                         "rejected": len(frames.get("rejected") or {})}
    summary["photometry"] = {k: v for k, v in photometry.items() if k not in ("inputs", "pairs")}
    summary["n_tiles"] = len(run.get("tiles") or [])
    if run.get("mode") == "grid":  # the global solve of the filter mosaic shown
        mosaic = (run.get("products") or {}).get("mosaic")
        product = next((g for g in (run.get("grid") or {}).values() if g.get("mosaic") == mosaic),
                       {})
        solve = product.get("photometry") or {}
        gains = [g for row in solve.get("gains") or [] for g in row]
        frames = product.get("frame_photometry") or {}
        if product.get("photometry_mode") == "frames":  # solved on the frames, before stacking
            solve = {**frames, "status": f"{frames.get('status', 'ok')} (on the frames)"}
            gains = [g for row in (frames.get("gains") or {}).values() for g in row]
        summary["photometry"] = {"status": solve.get("status", "off"),
                                 "n_overlaps": solve.get("n_overlaps"),
                                 "gain_range": [min(gains), max(gains)] if gains else None,
                                 "sky_surface": solve.get("sky_surface")}
        summary["n_tiles"] = len(product.get("tile_names") or [])
    return summary


def write_data(path: Path, data: dict) -> None:
    """``window.SKYMOSAIC_REPORT = {...};`` (NaN/inf as null), atomically."""
    text = json.dumps(_clean(data), separators=(",", ":"), allow_nan=False)
    with atomic_path(path, suffix=".js") as tmp:
        tmp.write_text(f"window.SKYMOSAIC_REPORT = {text};\n", encoding="utf-8")


def _clean(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def write_values(mosaic: MosaicFile, dest: Path, *, memory_budget: int, value_max: float) -> dict:
    """Chunks of the linear mosaic for the cursor readout (binned above ``value_max``).

    Chunk ``<cx>_<cy>.js`` calls ``SKYMOSAIC_VALUES(key, h, w, base64)`` with the
    little-endian float32 (C, h, w) values of binned pixels ``[cy*256, ...)`` x
    ``[cx*256, ...)``, FITS row order (row 0 at the bottom); NaN is no data.
    """
    c, h, w = mosaic.shape
    by_memory = math.ceil(math.sqrt(c * h * w * 4 * 2 / max(memory_budget // 4, 1)))
    factor = max(binning_for(mosaic.shape, value_max), by_memory, 1)
    plane = mosaic.binned("data", factor, memory_budget=memory_budget)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    hb, wb = plane.shape[1:]
    for cy in range(math.ceil(hb / VALUE_CHUNK)):
        for cx in range(math.ceil(wb / VALUE_CHUNK)):
            block = plane[:, cy * VALUE_CHUNK:(cy + 1) * VALUE_CHUNK,
                          cx * VALUE_CHUNK:(cx + 1) * VALUE_CHUNK]
            raw = np.ascontiguousarray(block, dtype="<f4").tobytes()
            key = f"{cx}_{cy}"
            (dest / f"{key}.js").write_text(
                f'SKYMOSAIC_VALUES("{key}",{block.shape[1]},{block.shape[2]},'
                f'"{base64.b64encode(raw).decode()}");\n')
    return {"factor": factor, "chunk": VALUE_CHUNK, "width": wb, "height": hb, "channels": c,
            "url": "report/values/"}


def write_coverage(mosaic: MosaicFile, path: Path, *, memory_budget: int) -> dict | None:
    """The COVERAGE plane (frames per pixel) as an RGBA colour map PNG (no data clear)."""
    if not mosaic.has("coverage"):
        return None
    _, h, w = mosaic.shape
    factor = max(1, math.ceil(max(h, w) / _COVERAGE_SIZE))
    cov = mosaic.binned("coverage", factor, memory_budget=memory_budget)[::-1]  # top row first
    top = float(np.nanmax(cov)) if np.isfinite(cov).any() else 0.0
    level = np.zeros(cov.shape, np.uint8)
    if top > 0:
        level = np.round(np.clip(np.nan_to_num(cov) / top, 0, 1) * 255).astype(np.uint8)
    bgra = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = np.where(np.isfinite(cov) & (cov > 0), 255, 0).astype(np.uint8)
    ok, buf = cv2.imencode(".png", bgra)
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buf.tobytes())
    hb, wb = cov.shape
    return {"url": "report/coverage.png", "max": top, "factor": factor,
            "width": wb * factor / w, "height": hb * factor / w}


def page_html(run: dict) -> str:
    """The page: the viewer, the panels, the overlay switches; data in report/data.js."""
    title = f"skymosaic report: {(run.get('products') or {}).get('mosaic', 'mosaic')}"
    return _PAGE.replace("{title}", title)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="report/static/report.css">
</head>
<body>
<header>
  <h1>{title}</h1>
  <span id="status" class="status"></span>
</header>
<main>
  <section id="viewer-wrap">
    <div id="viewer"></div>
    <div id="toolbar">
      <button id="zoom-in" title="zoom in">+</button>
      <button id="zoom-out" title="zoom out">&minus;</button>
      <button id="zoom-home" title="whole field">&#8962;</button>
      <button id="zoom-pixel" title="1 screen pixel = 1 mosaic pixel">1:1</button>
      <label><input type="checkbox" id="ov-inputs" checked> inputs</label>
      <label><input type="checkbox" id="ov-frames"> frames</label>
      <label><input type="checkbox" id="ov-seams"> seams</label>
      <label><input type="checkbox" id="ov-coverage"> coverage</label>
      <label><input type="checkbox" id="ov-rejected" checked> rejected</label>
    </div>
    <div id="readout">&nbsp;</div>
    <div id="legend"></div>
  </section>
  <aside>
    <details open><summary>Selection</summary><div id="selection">Click on the mosaic to see
      the input under the cursor (click again to cycle through overlapping ones).</div></details>
    <details open><summary>Run summary</summary><div id="summary"></div></details>
    <details id="progress-box" hidden open><summary>Progress</summary><div id="progress"></div>
      <img id="partial" alt="partial mosaic" hidden>
      <small>Partial mosaic: the master tiles finished so far, as stacked (before the
      photometric matching).</small></details>
    <details><summary>Rejected frames</summary><div id="rejected"></div></details>
    <details><summary>Warnings</summary><div id="warnings"></div></details>
    <details><summary>Configuration</summary><pre id="config"></pre></details>
  </aside>
</main>
<script src="report/static/openseadragon.min.js"></script>
<script src="report/data.js"></script>
<script src="report/static/report.js"></script>
</body>
</html>
"""
