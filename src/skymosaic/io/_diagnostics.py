"""The photometry diagnostics picture: coverage map, tile outlines, overlap graph, gains and
a heat map of the residual sky step of every overlap after the correction."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from skymosaic.io._writer import atomic_path

__all__ = ["write_photometry_diagnostics"]


def write_photometry_diagnostics(
    path: str | os.PathLike,
    coverage: np.ndarray,
    boxes: Sequence[tuple[int, int, int, int] | None],
    gains: np.ndarray,
    pairs: Sequence[tuple[int, int, float] | tuple[int, int, float, float | None]],
    *,
    max_size: int = 1600,
) -> Path:
    """Draw the coverage map with every input's outline, its gain, the overlap graph and
    the residual sky steps.

    Parameters
    ----------
    path : path
        PNG to write (atomically).
    coverage : ndarray, shape (H, W)
        Weight sum of the coadd (shown in grey, log-scaled; black = no data).
    boxes : sequence of (y0, y1, x0, x1) or None
        Each input's bounding box on the output grid.
    gains : ndarray, shape (N, C)
        Solved gains; the label shows the mean over channels.
    pairs : sequence of (i, j, robust_weight[, sky_step])
        Overlap graph edges; green = trusted, red = down-weighted (robust weight < 0.5).
        With a ``sky_step`` (median absolute sky difference of the overlap after the
        correction, data units; None = not measured), the overlap's box is filled with its
        colour on an inferno scale from 0 to the largest step, shown in a bar at the
        bottom left.
    """
    h, w = coverage.shape
    scale = min(1.0, max_size / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    cov = np.nan_to_num(coverage.astype(np.float32), nan=0.0)
    grey = np.log1p(np.clip(cov, 0, None))
    top = float(grey.max()) or 1.0
    # FITS row 0 is the bottom of the picture: flip once, and flip y when drawing.
    img = cv2.resize((grey[::-1] / top * 180).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    height = size[1]
    centres = {}
    for k, box in enumerate(boxes):
        if box is None:
            continue
        y0, y1, x0, x1 = (v * scale for v in box)
        y0, y1 = height - y1, height - y0
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (200, 160, 0), 1)
        centres[k] = (int((x0 + x1) / 2), int((y0 + y1) / 2))
    steps = [(p[0], p[1], float(p[3])) for p in pairs
             if len(p) > 3 and p[3] is not None and np.isfinite(p[3])]
    top_step = max((v for *_, v in steps), default=0.0)
    if top_step > 0:
        heat = img.copy()
        for i, j, step in steps:
            if boxes[i] is None or boxes[j] is None:
                continue
            bi, bj = boxes[i], boxes[j]
            y0, y1 = max(bi[0], bj[0]) * scale, min(bi[1], bj[1]) * scale
            x0, x1 = max(bi[2], bj[2]) * scale, min(bi[3], bj[3]) * scale
            if y1 <= y0 or x1 <= x0:
                continue
            cv2.rectangle(heat, (int(x0), int(height - y1)), (int(x1) - 1, int(height - y0) - 1),
                          _inferno(step / top_step), -1)
        img = cv2.addWeighted(heat, 0.55, img, 0.45, 0)
        _colour_bar(img, top_step)
    for i, j, weight, *_ in pairs:
        if i in centres and j in centres:
            colour = (0, 200, 0) if weight >= 0.5 else (0, 0, 230)
            cv2.line(img, centres[i], centres[j], colour, 1, cv2.LINE_AA)
    for k, (cx, cy) in centres.items():
        label = f"{float(np.mean(gains[k])):.3f}"
        cv2.putText(img, label, (cx - 18, cy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255),
                    1,
                    cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)


def _inferno(t: float) -> tuple[int, int, int]:
    """BGR colour of ``t`` in [0, 1] on OpenCV's inferno map."""
    v = np.uint8(round(min(max(t, 0.0), 1.0) * 255))
    b, g, r = cv2.applyColorMap(np.array([[v]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0]
    return int(b), int(g), int(r)


def _colour_bar(img: np.ndarray, top: float) -> None:
    """A labelled inferno bar (0 .. ``top``) in the bottom-left corner of ``img``."""
    h, w = img.shape[:2]
    bw, bh = min(160, max(w // 3, 40)), 10
    x0, y0 = 8, h - bh - 22
    if y0 < 0:
        return
    ramp = np.linspace(0, 255, bw).astype(np.uint8)[None, :].repeat(bh, 0)
    img[y0:y0 + bh, x0:x0 + bw] = cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO)
    cv2.putText(img, f"sky step after correction: 0 .. {top:.3g}", (x0, y0 + bh + 14),
                cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
