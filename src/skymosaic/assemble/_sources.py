"""Image sources for the coadd: frames on disk or arrays in memory, one interface.

The coadd never cares where pixels come from: it asks a source for the rows and columns it
needs. `FileSource` reads a FITS frame lazily (only the part that is needed), `ArraySource`
wraps arrays already in memory (master tiles, corrected tiles). Both carry the scalar
frame weight and an optional per-channel photometric correction ``gain * x + offset +
S(x, y)``, with ``S`` the source's sky surface (`skymosaic.SkySurface`) in its own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic._surface import SkySurface
from skymosaic.io._frames import FrameError, FrameInfo, frame_footprint, load_frame

__all__ = ["ArraySource", "FileSource", "ImageSource"]


@dataclass
class ImageSource:
    """Common fields of every source (see the subclasses)."""

    name: str
    wcs: WCS
    shape: tuple[int, int, int]  # (C, H, W)
    weight: float = 1.0
    gain: np.ndarray | None = None  # (C,) applied after resampling
    offset: np.ndarray | None = None  # (C,)
    surface: SkySurface | None = None  # added after the gain, in the source's own pixels
    meta: dict = field(default_factory=dict)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Pixels ``[:, rows, cols]`` as float32 (C, h, w), NaN where there is no data."""
        raise NotImplementedError

    def read_weight(self, rows: slice, cols: slice) -> np.ndarray | None:
        """Per-pixel weights ``[rows, cols]`` or None when the source has none."""
        return None

    def edge_points(self, samples: int = 17) -> np.ndarray:
        """Sky positions (deg) along the source's outer pixel edges."""
        return frame_footprint(self.wcs, self.shape[1:], samples=samples)


@dataclass
class FileSource(ImageSource):
    """A frame on disk, read lazily through `skymosaic.io.load_frame`."""

    info: FrameInfo | None = None
    valid_min: float | None = None

    @classmethod
    def from_info(cls, info: FrameInfo, *, weight: float = 1.0,
                  valid_min: float | None = None) -> FileSource:
        if info.wcs is None:
            raise FrameError(f"{info.path.name}: no celestial WCS")
        return cls(
            name=info.name, wcs=info.wcs, shape=info.shape, weight=weight, info=info,
            valid_min=valid_min,
        )

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        assert self.info is not None
        return load_frame(self.info, rows=rows, cols=cols, valid_min=self.valid_min)

    def read_weight(self, rows: slice, cols: slice) -> np.ndarray | None:
        assert self.info is not None
        if not self.info.has_weight:
            return None
        with fits.open(self.info.path, memmap=False) as hdul:
            w = hdul["WEIGHT"]
            if tuple(w.shape) != self.shape[1:]:
                return None
            return np.asarray(w.section[rows, cols], dtype=np.float32)


@dataclass
class ArraySource(ImageSource):
    """Arrays in memory: ``data`` (C, H, W) float32 and an optional ``pixel_weight`` (H, W)."""

    data: np.ndarray | None = None
    pixel_weight: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls, name: str, data: np.ndarray, wcs: WCS, *, pixel_weight: np.ndarray | None = None,
        weight: float = 1.0,
    ) -> ArraySource:
        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ValueError(f"{name}: data must be (C, H, W) or (H, W), got {data.shape}")
        if pixel_weight is not None and pixel_weight.shape != data.shape[1:]:
            raise ValueError(f"{name}: pixel_weight {pixel_weight.shape} does not match "
                             f"{data.shape[1:]}")
        return cls(name=name, wcs=wcs, shape=data.shape, weight=weight, data=data,
                   pixel_weight=pixel_weight)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        assert self.data is not None
        return self.data[:, rows, cols]

    def read_weight(self, rows: slice, cols: slice) -> np.ndarray | None:
        return None if self.pixel_weight is None else self.pixel_weight[rows, cols]
