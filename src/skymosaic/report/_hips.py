"""HiPS export of the science mosaic (``skymosaic export hips OUT``), readable by Aladin.

The tiles are written by reproject's `reproject.hips.reproject_to_hips` (bilinear
interpolation onto the HEALPix tiles of the order matching the mosaic's resolution, FITS
tiles, the ``properties`` file, an ``index.html`` and an Allsky preview): the field's
library, so the HEALPix geometry is the one Aladin reads. It holds the mosaic plane in
memory, so the export checks that one plane fits the memory budget and says so otherwise.
A colour mosaic gives one HiPS per channel (``hips/R``, ``hips/G``, ``hips/B``): FITS
HiPS are one value per pixel.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from reproject import reproject_interp
from reproject.hips import reproject_to_hips

from skymosaic.report._mosaic import MosaicFile

__all__ = ["export_hips"]

logger = logging.getLogger(__name__)

_CHANNELS = ("R", "G", "B")


def export_hips(
    mosaic_path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    memory_budget: int,
    title: str = "skymosaic mosaic",
    threads: int | bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write the HiPS of ``mosaic_path`` into ``dest`` (one per channel for colour).

    Parameters
    ----------
    mosaic_path : path
        ``mosaic.fits`` of a run.
    dest : path
        The HiPS folder (colour: ``dest/R``, ``dest/G``, ``dest/B``).
    memory_budget : int
        Bytes; one float32 plane and reproject's working copies (about 4 planes) must fit.
    title : str
        ``obs_title`` of the properties file.
    threads : int or bool
        Passed to `reproject_to_hips`.
    overwrite : bool
        Replace an existing ``dest``.

    Returns
    -------
    list of Path
        The HiPS folders written.

    Raises
    ------
    FileExistsError
        When ``dest`` exists and ``overwrite`` is false.
    MemoryError
        When one plane of the mosaic does not fit the budget (the message says how much).
    """
    dest = Path(dest)
    if dest.exists():
        if not overwrite:
            raise FileExistsError(f"{dest} exists; remove it or pass overwrite (--force)")
        shutil.rmtree(dest)
    with MosaicFile(mosaic_path) as mosaic:
        c, h, w = mosaic.shape
        need = h * w * 4 * 4
        if need > memory_budget:
            raise MemoryError(f"{mosaic_path}: HiPS export holds a {w} x {h} plane and its working "
                              f"copies ({need / 2**20:.0f} MiB), more than the memory budget "
                              f"({memory_budget / 2**20:.0f} MiB); raise --memory-budget")
        wcs = mosaic.wcs
        targets = [dest] if c == 1 else [dest / name for name in _CHANNELS[:c]]
        if c > 1:
            dest.mkdir(parents=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
        for ch, target in enumerate(targets):
            plane = mosaic.read_rows("data", 0, h)[ch]
            label = title if c == 1 else f"{title} ({_CHANNELS[ch]})"
            reproject_to_hips(
                (plane, wcs), coord_system_out="equatorial", reproject_function=reproject_interp,
                output_directory=str(target), threads=threads, order="bilinear",
                properties={"obs_title": label, "creator_did": f"ivo://skymosaic/{target.name}"},
            )
            del plane
            logger.info("HiPS written to %s", target)
    return targets


def hips_order(properties: Path) -> int:
    """``hips_order`` of a HiPS ``properties`` file."""
    for line in properties.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "hips_order":
            return int(value)
    raise ValueError(f"{properties}: no hips_order")
