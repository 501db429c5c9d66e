"""Master tiles stacked from memory or from a scratch cube: the budget picks the path, the
tile is the same bit for bit, and the in-memory path writes no scratch file."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits

from skymosaic.assemble._coadd import CoaddOptions
from skymosaic.io._frames import scan_frame
from skymosaic.stack import master
from skymosaic.stack._combine import StackSettings
from skymosaic.stack.master import TileInputs, build_master_tile, fits_in_memory
from skymosaic.synth import make_survey, write_survey

MIB = 2**20


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    # one pointing of 7 colour frames, dithered and rotated, with hot pixels (rejected)
    # and NaN corners (pixel weights 0), so that every step of the stack has work to do
    survey = make_survey(n_x=1, n_y=1, frame_shape=(60, 72), channels=3, frames_per_pointing=7,
                         gain_range=(0.9, 1.1), offset_range=(0.0, 30.0), noise_sigma=4.0,
                         hot_pixels=4, seed=11)
    paths = write_survey(survey, tmp_path_factory.mktemp("frames"))
    return [scan_frame(p) for p in paths]


_ORIGINAL_CREATE = master.NpyReader.create


def _build(frames, tmp_path, name, budget_mb, monkeypatch, **settings):
    created = []

    def spy(path, shape, dtype):  # every scratch file the tile creates
        created.append(path)
        return _ORIGINAL_CREATE(path, shape, dtype)

    monkeypatch.setattr(master.NpyReader, "create", staticmethod(spy))
    stack = StackSettings(memory_budget_bytes=16 * MIB, **settings)
    options = CoaddOptions(memory_budget=budget_mb * MIB, threads=2)
    tile = build_master_tile(
        TileInputs("tile_0000", frames, noise=[[4.0 + k, 4.0, 5.0] for k in range(len(frames))],
                   fwhm=[None] * len(frames)),
        settings=stack, options=options, pixel_scale_arcsec=frames[0].pixel_scale_arcsec,
        out_dir=tmp_path / name, scratch_dir=tmp_path / name / ".scratch", reuse=False,
    )
    with fits.open(tile.path) as hdul:
        planes = [np.asarray(hdul[k].data) for k in ("PRIMARY", "WEIGHT", "COVERAGE")]
    return tile, planes, created


@pytest.mark.parametrize("settings", [
    {},  # the defaults: star normalisation, kappa-sigma clipping, mean
    {"normalization": "linear", "rejection": "winsorized", "weighting": ("noise",)},
])
def test_in_memory_and_scratch_tiles_are_identical(frames, tmp_path, monkeypatch, caplog, settings):
    with caplog.at_level(logging.INFO, logger="skymosaic.stack.master"):
        mem, mem_planes, mem_files = _build(frames, tmp_path, "memory", 512, monkeypatch,
                                            **settings)
        disk, disk_planes, disk_files = _build(frames, tmp_path, "disk", 16, monkeypatch,
                                               **settings)
    assert mem_files == []  # no scratch file when the cube fits
    assert [p.name for p in disk_files] == ["tile_0000_cube.npy", "tile_0000_pw.npy"]
    assert not any(p.exists() for p in disk_files)  # and the scratch files are removed
    assert "stacked in memory" in caplog.text and "from a scratch cube" in caplog.text
    for a, b in zip(mem_planes, disk_planes, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit (NaN where no frame covers)
    assert np.isfinite(mem_planes[0]).mean() > 0.5
    assert mem.summary["rejected_per_frame"] == disk.summary["rejected_per_frame"]
    assert sum(mem.summary["rejected_per_frame"]) > 0  # the hot pixels
    assert mem.summary["gains"] == disk.summary["gains"]


def test_budget_decides_where_the_cube_lives(frames):
    # the cube of 7 frames of 3 channels on a ~80 x 90 tile is ~0.6 MB: it fits 64 MiB beside
    # 16 MiB of chunks, not 16 MiB (the chunks' budget alone fills it)
    settings = StackSettings(memory_budget_bytes=16 * MIB)
    shape = (80, 90)
    def fits(frames, budget_mb):
        options = CoaddOptions(memory_budget=budget_mb * MIB)
        return fits_in_memory(frames, shape, settings=settings, options=options)

    assert fits(frames, 64)
    assert not fits(frames, 16)
    # the cube itself counts: 1000 frames of that tile (~100 MB) do not fit 64 MiB
    assert not fits(frames * 143, 64)
