"""What a user sees: the colour calibration, the preview and the exports of a mosaic.

Called by the writers of both modes (classic `skymosaic.pipeline`, grid `skymosaic.grid`)
after the mosaic is assembled; the only place that turns the ``[color]`` and
``output.export`` settings into options of the algorithm modules:

1. `plan_display` measures the colour calibration (`skymosaic.photometry.measure_color`)
   on the preview plane, unless ``color.mode = "off"`` or the data are mono, and fits the
   display stretch on the same plane (`skymosaic.io._stretch.fit_stretch`), calibration first.
2. The science FITS is written by the caller, with `Display.cards` / `Display.history`
   and, for ``color.mode = "apply"``, the calibration (`Display.science_color`).
3. `write_display` writes the PNG preview, then the requested exports
   (`skymosaic.io._export`): the linear FITS follows the science FITS (calibrated only
   with ``apply``), the TIFF shows the preview's stretch at full resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.wcs import WCS

from skymosaic.io._export import RowSource, write_linear_fits, write_tiff
from skymosaic.io._stretch import StretchOptions, StretchParams, fit_stretch
from skymosaic.io._writer import write_preview
from skymosaic.photometry._color import ColorCalibration, ColorOptions, measure_color

if TYPE_CHECKING:  # config reads its choices from the algorithm packages: no import cycle
    from skymosaic.config import Config

__all__ = ["Display", "plan_display", "write_display"]

logger = logging.getLogger(__name__)




@dataclass(eq=False)
class Display:
    """The colour calibration and display stretch of one mosaic, and the plane they were
    measured on (the preview is drawn from it)."""

    mode: str
    color: ColorCalibration | None
    params: StretchParams
    plane: np.ndarray = field(repr=False)

    @property
    def science_color(self) -> ColorCalibration | None:
        """The calibration the science FITS gets (``color.mode = "apply"`` only)."""
        return self.color if self.mode == "apply" else None

    def cards(self) -> dict:
        return {} if self.color is None else self.color.header_cards(self.mode)

    def history(self) -> list[str]:
        if self.color is None:
            return []
        scales = ", ".join(f"{v:.6g}" for v in self.color.scale)
        offsets = ", ".join(f"{v:.6g}" for v in self.color.offset)
        if self.mode == "apply":
            return [
                f"colour calibration applied (color.mode apply, still linear): x' = scale*x + "
                f"offset per channel, scale ({scales}), offset ({offsets})"
            ]
        return [
            f"colour calibration recorded, not applied (color.mode record): scale ({scales}), "
            f"offset ({offsets}); see CLRSCLn/CLROFFn"
        ]

    def report(self) -> dict:
        """The ``color`` section of run.json."""
        out: dict = {"mode": self.mode, "stretch": self.params.to_dict()}
        if self.color is not None:
            out.update(self.color.to_dict())
        return out


def plan_display(plane: np.ndarray, config: Config) -> Display:
    """Measure the colour calibration and fit the stretch on ``plane`` (C, H, W)."""
    mode = config.color.mode
    color = None
    if mode != "off" and plane.shape[0] == 3:
        color = measure_color(plane, options=ColorOptions.from_config(config))
    params = fit_stretch(plane, options=StretchOptions.from_config(config), color=color)
    return Display(mode=mode, color=color, params=params, plane=plane)


def write_display(  # the products' folder, name and sources, as the writers
    out: Path,
    name: str,
    config: Config,
    display: Display,
    source: RowSource,
    wcs: WCS,
    *,
    memory_budget: int,
    history: list[str],
    cards: dict,
) -> dict:
    """Write the preview and the exports of ``source`` as ``out/name*``; their file names
    by product (``preview``, ``linear``, ``linear_mask``, ``tiff``)."""
    products: dict = {"preview": None}
    if config.output.preview:
        path = write_preview(
            out / f"{name}_preview.png",
            display.plane,
            max_size=config.output.preview_max_size,
            params=display.params,
        )
        products["preview"] = path.name
    if "siril" in config.output.export:
        image, mask = write_linear_fits(
            out / f"{name}_linear.fits",
            source,
            wcs,
            memory_budget=memory_budget,
            color=display.science_color,
            history=history,
            cards=cards,
        )
        products["linear"], products["linear_mask"] = image.name, mask.name
    if "tiff" in config.output.export:
        products["tiff"] = write_tiff(out / f"{name}.tif", source, display.params).name
    return products
