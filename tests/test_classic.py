"""Classic mode end to end: cluster -> master tiles -> coadd, on a synthetic survey with a
known truth (2 x 1 pointings, 5 exposures each, mono, gain 1, offset 0, no sky gradient).

Known answers used here:

* grouping: the 5 exposures of a pointing form one tile (they overlap ~90 %, neighbouring
  pointings only 30 %);
* noise: a master tile of 5 frames with equal noise has sigma / sqrt(5) where all 5 frames
  cover it, once each frame is resampled with the same kernel onto the tile grid;
* artefacts: with outlier rejection, a hot pixel (+5000 ADU) or a satellite trail
  (peak 800 ADU) in one frame out of 5 leaves no trace: the mosaic minus the truth stays at
  its local level within 5 noise sigma there (winsorized clipping does this; the default
  kappa-sigma clipping cannot with 5 frames, see the xfail reason);
* photometry: two master tiles of identical gain and offset need gain 1 and no offset.

``quality.enabled`` is off: at 96 x 128 px one pointing of this sky holds too few stars and
the session-relative star count would reject its 5 frames ("no stars detected").
"""

from __future__ import annotations

import csv
import logging
import math
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic.assemble import CoaddOptions, FileSource, coadd
from skymosaic.cli import main
from skymosaic.config import load_config
from skymosaic.io import read_mosaic, scan_frame
from skymosaic.io.stack_plan import read_stack_plan
from skymosaic.pipeline import run_pipeline
from skymosaic.reproject import OutputGrid
from skymosaic.synth import make_survey, write_survey

FRAMES = 5
NOISE = 5.0
SKY = 100.0
HOT = 5000.0
TRAIL_PEAK = 800.0


def _mad_sigma(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(1.482602218505602 * np.median(np.abs(a - np.median(a))))


def _config(**overrides):
    base = {"run.threads": 2, "quality.enabled": False, "output.preview": False}
    base.update(overrides)
    return load_config(None, base)


def _trail_pixels(h: int, w: int):
    """Centre line of the injected trail: through the frame centre at 30 degrees."""
    t = math.radians(30.0)
    s = np.arange(-40, 41, 2, dtype=np.float64)
    x = (w - 1) / 2 + s * math.cos(t)
    y = (h - 1) / 2 + s * math.sin(t)
    keep = (x > 12) & (x < w - 13) & (y > 12) & (y < h - 13)
    return x[keep], y[keep]


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    """The survey (frame 0 with injected hot pixels and a trail), its files and one run."""
    root = tmp_path_factory.mktemp("classic")
    survey = make_survey(n_x=2, n_y=1, frame_shape=(96, 128), channels=1,
                         frames_per_pointing=FRAMES, gain_range=(1, 1), offset_range=(0, 0),
                         noise_sigma=NOISE, sky_level=SKY, sky_gradient=0.0, seed=3)
    f0 = survey.frames[0]
    h, w = f0.shape
    truth0 = survey.truth_image(f0.wcs, (h, w))[0]
    # hot pixels on faint sky well inside frame 0 (all 5 exposures cover them)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (yy > 20) & (yy < h - 21) & (xx > 20) & (xx < w - 21) & (truth0 < 1.0)
    inside &= np.isfinite(f0.data[0])
    cand = np.argwhere(inside)
    hot = cand[np.linspace(0, len(cand) - 1, 8).astype(int)]
    f0.data[0, hot[:, 0], hot[:, 1]] += HOT
    tx, ty = _trail_pixels(h, w)
    t = math.radians(30.0)
    dist = (xx - (w - 1) / 2) * math.sin(t) - (yy - (h - 1) / 2) * math.cos(t)
    f0.data[0] += (TRAIL_PEAK * np.exp(-0.5 * dist**2)).astype(np.float32)
    frames_dir = root / "frames"
    paths = write_survey(survey, frames_dir)
    out = root / "run"
    result = run_pipeline([frames_dir], out, _config())
    data, wcs, _ = read_mosaic(result.mosaic_path)
    return {"survey": survey, "paths": paths, "frames_dir": frames_dir, "out": out,
            "result": result, "mosaic": data, "wcs": wcs, "hot": hot, "trail": (tx, ty),
            "root": root}


def test_one_master_tile_per_pointing(classic):
    report, out = classic["result"].report, classic["out"]
    assert report["mode"] == "classic" and report["status"] == "ok"
    tiles = report["tiles"]
    assert len(tiles) == 2
    names = [p.name for p in classic["paths"]]
    expected = [set(names[:FRAMES]), set(names[FRAMES:])]
    got = [set(t["frames"]) for t in tiles]
    assert sorted(got, key=sorted) == sorted(expected, key=sorted)
    for t in tiles:
        assert t["n_frames"] == FRAMES and t["reused"] is False
        path = out / "tiles" / f"{t['tile_id']}.fits"
        assert path.is_file()
        with fits.open(path) as hdul:
            assert int(np.nanmax(hdul["COVERAGE"].data)) == FRAMES
    assert report["clusters"]["n_groups"] == 2
    assert report["output"]["inputs_coadded"] == 2  # the coadd sees the 2 tiles only
    assert report["frames"]["used"] == 2 * FRAMES


def test_master_tile_noise_is_sqrt_n_lower(classic):
    survey, out = classic["survey"], classic["out"]
    ratios = []
    for t in classic["result"].report["tiles"]:
        with fits.open(out / "tiles" / f"{t['tile_id']}.fits") as hdul:
            tile = hdul[0].data.astype(np.float64).reshape(-1, *hdul[0].data.shape[-2:])[0]
            cov = hdul["COVERAGE"].data
            wcs = WCS(hdul[0].header).celestial
        grid = OutputGrid(wcs, tile.shape)
        truth = survey.truth_image(wcs, tile.shape)[0]
        sky = (cov == FRAMES) & (truth < 1.0)  # star-free, every frame present
        # Winsorized clipping (the default) drops a few % of noise samples, so fewer
        # pixels keep all frames than with no rejection; 1000 pixels still give a ~3% MAD.
        assert sky.sum() > 1000
        # each frame resampled exactly as the stacker does (bilinear onto the tile grid)
        singles = [
            _mad_sigma((coadd([FileSource.from_info(scan_frame(classic["frames_dir"] / n))], grid,
                              options=CoaddOptions(threads=1)).data[0] - truth)[sky])
            for n in t["frames"]
        ]
        ratios.append(float(np.median(singles)) / _mad_sigma((tile - truth)[sky]))
    # measured 2.24 and 2.15
    for r in ratios:
        assert r == pytest.approx(math.sqrt(FRAMES), rel=0.15)


def _assert_artefacts_absent(classic, data, wcs):
    survey = classic["survey"]
    truth = survey.truth_image(wcs, data.shape)[0]
    res = data.astype(np.float64) - truth
    f0 = survey.frames[0]
    h, w = f0.shape
    # reference level and noise: faint mosaic pixels inside frame 0's interior (the same
    # master tile, after whatever photometric correction the run applied to it)
    my, mx = np.mgrid[0:data.shape[0], 0:data.shape[1]]
    fx, fy = f0.wcs.world_to_pixel_values(*wcs.pixel_to_world_values(mx.ravel(), my.ravel()))
    fx, fy = fx.reshape(data.shape), fy.reshape(data.shape)
    interior = (fx > 15) & (fx < w - 16) & (fy > 15) & (fy < h - 16)
    ref = interior & np.isfinite(res) & (truth < 1.0)
    assert ref.sum() > 1000
    level, sigma = float(np.median(res[ref])), _mad_sigma(res[ref])
    assert sigma < NOISE  # stacked: well below one frame's noise
    hot = classic["hot"]
    tx, ty = classic["trail"]
    for label, (x, y) in {"hot pixel": (hot[:, 1].astype(float), hot[:, 0].astype(float)),
                          "trail": (tx, ty)}.items():
        px, py = wcs.world_to_pixel_values(*f0.wcs.pixel_to_world_values(x, y))
        ix, iy = np.rint(px).astype(int), np.rint(py).astype(int)
        dev = res[iy, ix] - level
        # an unrejected hot pixel would add ~HOT/5 = 1000, the trail ~100-160 (x gain)
        assert np.all(np.isfinite(dev)), label
        assert np.abs(dev).max() < 5 * sigma, (label, dev, sigma)


def test_hot_pixels_and_trail_are_rejected(classic):
    _assert_artefacts_absent(classic, classic["mosaic"][0], classic["wcs"])


def test_hot_pixels_and_trail_are_rejected_winsorized(classic):
    result = run_pipeline([classic["frames_dir"]], classic["root"] / "winsorized",
                          _config(**{"stack.rejection": "winsorized"}))
    rejected = [sum(t["stack"]["rejected_per_frame"]) for t in result.report["tiles"]]
    assert max(rejected) > 0
    data, wcs, _ = read_mosaic(result.mosaic_path)
    _assert_artefacts_absent(classic, data[0], wcs)


def test_photometry_keeps_identical_tiles_at_unit_gain(classic):
    report = classic["result"].report
    for entry in report["photometry"]["inputs"].values():
        assert entry["gain"][0] == pytest.approx(1.0, abs=0.05)
    data, wcs = classic["mosaic"][0], classic["wcs"]
    truth = classic["survey"].truth_image(wcs, data.shape)[0]
    faint = np.isfinite(data) & (truth < 1.0)
    assert float(np.median(data[faint] - truth[faint])) == pytest.approx(SKY, abs=3.0)


def test_rerun_reuses_tiles_and_gives_identical_mosaic(classic):
    again = run_pipeline([classic["frames_dir"]], classic["out"], _config())
    assert [t["reused"] for t in again.report["tiles"]] == [True, True]
    data, _, _ = read_mosaic(again.mosaic_path)
    np.testing.assert_array_equal(data, classic["mosaic"])


def test_master_tiles_are_stacked_with_the_strict_edge_rule(classic):
    """``reproject.edge`` is the final coadd's rule; the frames are always resampled into
    the master tiles with "strict" (the stack's normalisation fits them against each
    other). A fresh run with ``reproject.edge = "strict"`` stacks the very same tiles."""
    out = classic["root"] / "edge_strict"
    strict = run_pipeline([classic["frames_dir"]], out,
                          _config(**{"reproject.edge": "strict", "run.fresh": True}))
    assert [t["reused"] for t in strict.report["tiles"]] == [False, False]
    for t in strict.report["tiles"]:
        name = f"tiles/{t['tile_id']}.fits"
        with fits.open(classic["out"] / name) as a, fits.open(out / name) as b:
            np.testing.assert_array_equal(a[0].data, b[0].data)
            np.testing.assert_array_equal(a["WEIGHT"].data, b["WEIGHT"].data)


def test_plan_cli_writes_one_tile_per_pointing(classic):
    csv_path = classic["root"] / "plan" / "stack_plan.csv"
    csv_path.parent.mkdir()
    assert main(["plan", str(classic["frames_dir"]), "-o", str(csv_path)]) == 0
    plan = read_stack_plan(csv_path)
    assert plan.rejected == []
    groups: dict[str, set[str]] = {}
    for row in plan.rows:
        groups.setdefault(row.tile_id, set()).add(row.path.name)
    names = [p.name for p in classic["paths"]]
    assert sorted(groups.values(), key=sorted) == [set(names[:FRAMES]), set(names[FRAMES:])]
    with open(csv_path, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * FRAMES


def test_stack_disabled_is_direct_mode(classic):
    out = classic["root"] / "direct"
    result = run_pipeline([classic["frames_dir"]], out, _config(**{"stack.enabled": False}))
    assert result.report["mode"] == "direct"
    assert "tiles" not in result.report and "clusters" not in result.report
    assert not (out / "tiles").exists()
    assert result.report["output"]["inputs_coadded"] == 2 * FRAMES


def test_frame_moved_ten_degrees_is_its_own_group(classic, caplog):
    """With ``targets.split = false`` (one mosaic of every frame) a far frame is its own
    group, coadded alone; by default it is a lone frame, left out (next test)."""
    folder = classic["root"] / "moved"
    shutil.copytree(classic["frames_dir"], folder)
    moved = folder / "frame_0009.fits"
    with fits.open(moved, mode="update") as hdul:
        hdul[0].header["CRVAL2"] = hdul[0].header["CRVAL2"] + 10.0
    caplog.set_level(logging.WARNING, logger="skymosaic")
    result = run_pipeline([folder], classic["root"] / "moved_run",
                          _config(**{"photometry.enabled": False, "targets.split": False}))
    report = result.report
    assert report["status"] == "ok"
    names = report["clusters"]["names"]
    k = names.index("frame_0009.fits")
    assert report["clusters"]["isolated"] == [k]
    assert [k] in report["clusters"]["groups"]
    assert sorted(t["n_frames"] for t in report["tiles"]) == [FRAMES - 1, FRAMES]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "frame_0009.fits" in r.getMessage()]
    assert len(warnings) == 1 and "own group" in warnings[0]
    entry = next(f for f in report["frames"]["list"] if f["path"].endswith("frame_0009.fits"))
    assert entry["used"] is True and entry["tile"] is None


def test_frame_moved_ten_degrees_is_left_out_by_default(classic, caplog):
    folder = classic["root"] / "moved_default"
    shutil.copytree(classic["frames_dir"], folder)
    with fits.open(folder / "frame_0009.fits", mode="update") as hdul:
        hdul[0].header["CRVAL2"] = hdul[0].header["CRVAL2"] + 10.0
    caplog.set_level(logging.WARNING, logger="skymosaic")
    result = run_pipeline([folder], classic["root"] / "moved_default_run",
                          _config(**{"photometry.enabled": False}))
    report = result.report
    assert report["status"] == "ok" and not result.targets
    assert report["targets"]["lone"] == ["frame_0009.fits"]
    assert sorted(t["n_frames"] for t in report["tiles"]) == [FRAMES - 1, FRAMES]
    assert "lone frame" in report["frames"]["rejected"][str(folder / "frame_0009.fits")]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "frame_0009.fits" in r.getMessage()]
    assert len(warnings) == 1 and "lone frame" in warnings[0]
