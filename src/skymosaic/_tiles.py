"""A tile placed on the output canvas: the unit that photometry, blending and assembly share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PlacedTile"]


@dataclass
class PlacedTile:
    """Image data already resampled onto the output grid, with its position on the canvas.

    Parameters
    ----------
    data : ndarray, shape (C, h, w), float32
        Pixel values; NaN where the tile has no data.
    y0, x0 : int
        Row and column of ``data[:, 0, 0]`` on the canvas (0-based). Tiles may extend past
        the canvas only if the caller clips them; assembly code clamps with `canvas_slices`.
    weight : ndarray, shape (h, w), float32, optional
        Per-pixel weight (e.g. summed exposure). ``None`` means 1 wherever ``data`` is valid.
    tile_id : str
        A name used in logs and in ``run.json``.
    """

    data: np.ndarray
    y0: int
    x0: int
    weight: np.ndarray | None = None
    tile_id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"tile {self.tile_id!r}: data must be (C, h, w), "
                             f"got {self.data.shape}")
        if self.weight is not None and self.weight.shape != self.data.shape[1:]:
            raise ValueError(
                f"tile {self.tile_id!r}: weight shape {self.weight.shape} does not match "
                f"data shape {self.data.shape[1:]}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` on the canvas, end-exclusive."""
        h, w = self.shape
        return self.y0, self.y0 + h, self.x0, self.x0 + w

    def canvas_slices(self, canvas_shape: tuple[int, int]):
        """Slices ``(canvas_slice, tile_slice)`` of the part of the tile inside the canvas.

        Returns ``None`` when the tile does not touch the canvas.
        """
        h, w = self.shape
        cy0, cx0 = max(self.y0, 0), max(self.x0, 0)
        cy1, cx1 = min(self.y0 + h, canvas_shape[0]), min(self.x0 + w, canvas_shape[1])
        if cy1 <= cy0 or cx1 <= cx0:
            return None
        canvas = (slice(cy0, cy1), slice(cx0, cx1))
        tile = (slice(cy0 - self.y0, cy1 - self.y0), slice(cx0 - self.x0, cx1 - self.x0))
        return canvas, tile
