"""Serving a run folder on 127.0.0.1: the report, and live progress while a run is going.

`ReportServer` is a threaded `http.server` bound to the loopback interface only. It serves
the files of the run folder, plus two things from memory:

* ``/status.json``: the phases with their done/total counts (fed by `LiveProgress`, which
  wraps the command line's progress bars), the run state, whether the report is written;
* ``/partial.png``: the partial mosaic, the master tiles finished so far, reprojected onto
  a coarse grid of their own footprints (at most ``partial_size`` px, 768 by default) and
  stretched; it is rebuilt only when the set of finished tiles changed.

Before the run has written ``index.html`` the server answers ``/`` with the report page
without data: it shows the progress panel and reloads itself when the report is ready.
"""

from __future__ import annotations

import http.server
import json
import logging
import math
import os
import threading
import time
import webbrowser
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from reproject import reproject_interp

from skymosaic.io import frame_footprint
from skymosaic.io._stretch import apply_stretch, fit_stretch, to_uint
from skymosaic.report._html import _copy_static, page_html
from skymosaic.reproject import optimal_grid

__all__ = ["LiveProgress", "ReportServer", "partial_mosaic", "serve_report",
           "serve_until_interrupted"]

logger = logging.getLogger(__name__)


class LiveProgress:
    """A progress sink (the `skymosaic.pipeline.Progress` methods) that records every phase
    in ``server`` and forwards each call to ``inner`` (the terminal's bars), if any."""

    def __init__(self, server: ReportServer, inner=None) -> None:
        self.server, self.inner = server, inner

    def _forward(self, name: str, *args) -> None:
        if self.inner is not None:
            getattr(self.inner, name)(*args)

    def start(self, phase: str, total: int) -> None:
        self.server.update_phase(phase, total=total, done=0, ended=False)
        self._forward("start", phase, total)

    def advance(self, phase: str, n: int = 1) -> None:
        self.server.update_phase(phase, step=n)
        self._forward("advance", phase, n)

    def skip(self, phase: str, n: int = 1) -> None:
        self.server.update_phase(phase, step=n)
        self._forward("skip", phase, n)

    def end(self, phase: str) -> None:
        self.server.update_phase(phase, ended=True)
        self._forward("end", phase)


class ReportServer:
    """Serve ``out`` on ``host:port`` (port 0: any free port) in a background thread.

    Parameters
    ----------
    out : path
        The run folder.
    host : str
        Loopback only by default: the report is not meant for the network.
    port : int
        0 picks a free port (see `url`).
    partial_size : int
        Long side of the partial mosaic, px.
    """

    def __init__(self, out: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0,
                 partial_size: int = 768) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        _copy_static(self.out / "report" / "static")
        self.partial_size = partial_size
        self._lock = threading.Lock()
        self._state: dict = {"state": "running", "phases": {}, "partial": 0, "message": ""}
        self._partial: tuple[tuple, bytes | None] = ((), None)
        handler = partial(_Handler, directory=str(self.out), server_ref=self)
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="skymosaic-report",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ReportServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ReportServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state ------------------------------------------------------------------------
    def update_phase(self, phase: str, *, total: int | None = None, done: int | None = None,
                     step: int = 0, ended: bool | None = None) -> None:
        with self._lock:
            p = self._state["phases"].setdefault(phase, {"done": 0, "total": 0, "ended": False})
            if total is not None:
                p["total"] = int(total)
            if done is not None:
                p["done"] = int(done)
            p["done"] += int(step)
            if ended is not None:
                p["ended"] = ended
                if ended:
                    p["done"] = max(p["done"], p["total"])

    def set_state(self, state: str, message: str = "") -> None:
        """``running``, ``done`` or ``failed`` (with a message)."""
        with self._lock:
            self._state["state"], self._state["message"] = state, message

    def status(self) -> dict:
        """What ``/status.json`` answers."""
        tiles = self._tile_paths()
        with self._lock:
            state = json.loads(json.dumps(self._state))
        state["tiles_done"] = len(tiles)
        state["partial"] = _tiles_key(tiles)[1] if tiles else 0
        data = self.out / "report" / "data.js"
        state["report_ready"] = (self.out / "index.html").is_file() and data.is_file()
        if state["report_ready"]:
            state["report_generated"] = _generated(data)
        return state

    def _tile_paths(self) -> list[Path]:
        return sorted((self.out / "tiles").glob("tile_*.fits"))

    def partial_png(self) -> bytes | None:
        """The partial mosaic of the finished master tiles (cached by the tile set)."""
        tiles = self._tile_paths()
        key = _tiles_key(tiles)
        with self._lock:
            if self._partial[0] == key:
                return self._partial[1]
        png = None
        if tiles:
            try:
                png = _encode_png(partial_mosaic(tiles, max_size=self.partial_size))
            except (OSError, ValueError) as err:  # a tile being written: next poll retries
                logger.debug("partial mosaic not built: %s", err)
                return None
        with self._lock:
            self._partial = (key, png)
        return png


def _tiles_key(tiles: list[Path]) -> tuple:
    stamps = []
    for p in tiles:
        try:
            stamps.append((p.name, p.stat().st_mtime_ns))
        except FileNotFoundError:
            continue
    return tuple(stamps), hash(tuple(stamps)) & 0x7FFFFFFF


def _generated(data_js: Path) -> str | None:
    """The ``generated`` stamp of report/data.js (it leads the data, see `write_data`)."""
    with open(data_js, encoding="utf-8") as fh:
        head = fh.read(200)
    start = head.find('"generated":"')
    if start < 0:
        return None
    start += len('"generated":"')
    return head[start:head.find('"', start)]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, server_ref: ReportServer, **kwargs) -> None:
        self.report = server_ref
        super().__init__(*args, **kwargs)

    def log_message(self, fmt: str, *args) -> None:
        logger.debug("report server: " + fmt, *args)

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/status.json":
            self._send(json.dumps(self.report.status()).encode(), "application/json")
        elif path == "/partial.png":
            png = self.report.partial_png()
            if png is None:
                self.send_error(404, "no master tile finished yet")
            else:
                self._send(png, "image/png")
        elif path in ("/", "/index.html") and not (self.report.out / "index.html").is_file():
            self._send(page_html({}).encode(), "text/html; charset=utf-8")
        else:
            super().do_GET()


def partial_mosaic(tiles: list[Path], *, max_size: int = 768) -> np.ndarray:
    """The finished master tiles on one coarse grid (long side <= ``max_size``), stretched:
    an 8-bit (H, W) or (H, W, 3) image, top row first (north up)."""
    infos = []
    for path in tiles:
        with fits.open(path, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, np.float32)
            wcs = WCS(hdul[0].header).celestial
        infos.append((data if data.ndim == 3 else data[None], wcs))
    scale = float(np.sqrt(abs(np.linalg.det(infos[0][1].pixel_scale_matrix)))) * 3600.0
    footprints = [frame_footprint(w, d.shape[1:], samples=3) for d, w in infos]
    grid = optimal_grid(footprints, pixel_scale_arcsec=scale)
    factor = max(1, math.ceil(max(grid.shape) / max_size))
    if factor > 1:
        grid = optimal_grid(footprints, pixel_scale_arcsec=scale * factor)
    c = infos[0][0].shape[0]
    acc = np.zeros((c, *grid.shape), np.float64)
    n = np.zeros(grid.shape, np.float64)
    for (tile_data, tile_wcs), fp in zip(infos, footprints, strict=True):
        # only the tile's bounding box of the grid (reproject_interp maps its whole output)
        x, y = grid.wcs.world_to_pixel_values(fp[:, 0], fp[:, 1])
        x0, y0 = max(0, int(np.floor(np.nanmin(x)))), max(0, int(np.floor(np.nanmin(y))))
        x1 = min(grid.shape[1], int(np.ceil(np.nanmax(x))) + 1)
        y1 = min(grid.shape[0], int(np.ceil(np.nanmax(y))) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        if factor > 1:  # bin the tile first: each output pixel then reads ~1 input pixel
            data, wcs = _bin(tile_data, tile_wcs, factor)
        else:
            data, wcs = tile_data, tile_wcs
        box = grid.wcs[y0:y1, x0:x1]
        for ch in range(c):
            plane, foot = reproject_interp((data[ch], wcs), box, shape_out=(y1 - y0, x1 - x0),
                                           order="bilinear")
            ok = (foot > 0) & np.isfinite(plane)
            acc[ch, y0:y1, x0:x1][ok] += plane[ok]
            if ch == 0:
                n[y0:y1, x0:x1][ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, acc / n, np.nan).astype(np.float32)
    img = to_uint(apply_stretch(mean, fit_stretch(mean)))[:, ::-1]
    return img[0] if c == 1 else np.moveaxis(img, 0, -1)


def _bin(data: np.ndarray, wcs: WCS, factor: int) -> tuple[np.ndarray, WCS]:
    """(C, H, W) data binned ``factor`` x ``factor`` (NaN-aware mean) and its WCS."""
    c, h, w = data.shape
    hb, wb = h // factor, w // factor
    boxes = data[:, :hb * factor, :wb * factor].reshape(c, hb, factor, wb, factor)
    count = np.isfinite(boxes).sum(axis=(2, 4))
    mean = np.nansum(boxes, axis=(2, 4)) / np.maximum(count, 1)
    binned = np.where(count > 0, mean, np.nan).astype(np.float32)
    return binned, wcs[::factor, ::factor]


def _encode_png(img: np.ndarray) -> bytes:
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise OSError("could not encode the partial mosaic")
    return buf.tobytes()


def serve_report(out: str | os.PathLike, *, port: int = 8000, open_browser: bool = True,
                 block: bool = True) -> ReportServer:
    """Serve the run folder ``out`` on 127.0.0.1 (``skymosaic view``).

    With ``block`` it serves until interrupted (Ctrl-C) and then stops; otherwise it returns
    the started server (call ``stop()``).
    """
    server = ReportServer(out, port=port).start()
    if (Path(out) / "run.json").is_file():
        server.set_state("done")
    logger.info("serving %s at %s", out, server.url)
    if open_browser:
        webbrowser.open(server.url)
    if block:
        serve_until_interrupted(server)
    return server


def serve_until_interrupted(server: ReportServer) -> None:
    """Keep ``server`` serving until Ctrl-C, then stop it."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
