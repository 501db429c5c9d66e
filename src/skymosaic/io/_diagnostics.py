"""The photometry diagnostics picture: coverage map, tile outlines, overlap graph, gains."""

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
    pairs: Sequence[tuple[int, int, float]],
    *,
    max_size: int = 1600,
) -> Path:
    """Draw the coverage map with every input's outline, its gain, and the overlap graph.

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
    pairs : sequence of (i, j, robust_weight)
        Overlap graph edges; green = trusted, red = down-weighted (robust weight < 0.5).
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
    for i, j, weight in pairs:
        if i in centres and j in centres:
            colour = (0, 200, 0) if weight >= 0.5 else (0, 0, 230)
            cv2.line(img, centres[i], centres[j], colour, 1, cv2.LINE_AA)
    for k, (cx, cy) in centres.items():
        label = f"{float(np.mean(gains[k])):.3f}"
        cv2.putText(img, label, (cx - 18, cy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1,
                    cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)
