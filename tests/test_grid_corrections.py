"""Grid mode's frame photometry is applied while the tiles resample the frames (issue 19):
the master tile equals the one stacked from corrected copies of the frames (how grid mode
did it before), and a grid run writes no corrected frame to its scratch folder."""

from __future__ import annotations

import types

import numpy as np
import pytest
from astropy.io import fits

from skymosaic._surface import SkySurface
from skymosaic.assemble._coadd import CoaddOptions
from skymosaic.config import load_config
from skymosaic.io import load_frame, scan_frame
from skymosaic.io.stack_plan import PlanRow, write_stack_plan
from skymosaic.pipeline import _driver, run_pipeline
from skymosaic.stack._combine import StackSettings
from skymosaic.stack.master import FrameCorrection, TileInputs, build_master_tile, tile_fingerprint
from skymosaic.synth import make_survey, write_survey

MIB = 2**20


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    # one pointing of 4 dithered, rotated colour frames (NaN corners on the tile grid)
    survey = make_survey(n_x=1, n_y=1, frame_shape=(60, 72), channels=3, frames_per_pointing=4,
                         gain_range=(0.9, 1.1), offset_range=(0.0, 30.0), noise_sigma=2.0, seed=5)
    return [scan_frame(p) for p in write_survey(survey, tmp_path_factory.mktemp("frames"))]


def _corrections(frames) -> list[FrameCorrection]:
    rng = np.random.default_rng(7)
    h, w = frames[0].shape[1:]
    return [FrameCorrection(gain=rng.uniform(0.7, 1.4, 3).astype(np.float32),
                            offset=rng.uniform(-50.0, 50.0, 3).astype(np.float32),
                            surface=SkySurface(rng.uniform(-20.0, 20.0, (3, 6)), (h, w)))
            for _ in frames]


def _write_copy(info, fix: FrameCorrection, path):
    """The corrected copy grid mode used to write: ``gain * frame + offset + S``, NaN = no data."""
    data = load_frame(info)
    invalid = ~np.isfinite(data).all(axis=0)
    data = data * fix.gain[:, None, None] + fix.offset[:, None, None]
    yy, xx = np.indices(data.shape[1:], dtype=np.float32)
    data += fix.surface.evaluate(xx, yy, dtype=np.float32)
    data[:, invalid] = np.nan
    fits.PrimaryHDU(data.astype(np.float32), info.wcs.to_header(relax=True)).writeto(path)
    return scan_frame(path)


def _tile(frames, corrections, out, noise):
    inputs = TileInputs("tile_0000", frames, noise=noise, fwhm=[None] * len(frames),
                        corrections=corrections)
    tile = build_master_tile(
        inputs, settings=StackSettings(normalization="none", weighting=("noise",), rejection="none",
                                       memory_budget_bytes=16 * MIB),
        options=CoaddOptions(memory_budget=256 * MIB, threads=2),
        pixel_scale_arcsec=frames[0].pixel_scale_arcsec, out_dir=out, scratch_dir=out / ".scratch",
        reuse=False)
    with fits.open(tile.path) as hdul:
        return np.asarray(hdul[0].data), np.asarray(hdul["WEIGHT"].data)


def test_tile_applies_the_corrections_as_the_copies_did(frames, tmp_path):
    fixes = _corrections(frames)
    (tmp_path / "copies").mkdir()
    copies = [_write_copy(f, c, tmp_path / "copies" / f"{k}.fits")
              for k, (f, c) in enumerate(zip(frames, fixes, strict=True))]
    noise = [(2.0 * np.abs(c.gain)).tolist() for c in fixes]  # the copies' noise
    direct, w_direct = _tile(frames, fixes, tmp_path / "direct", noise)
    copied, w_copied = _tile(copies, [], tmp_path / "copied", noise)
    plain, _ = _tile(frames, [], tmp_path / "plain", noise)
    ok = np.isfinite(copied)
    assert ok.mean() > 0.5
    np.testing.assert_array_equal(np.isfinite(direct), ok)
    np.testing.assert_allclose(w_direct, w_copied, rtol=1e-6)
    # the same within 1e-4 (measured: 6e-3 ADU at most on levels of ~100-500 ADU, noise
    # sigma 2-3): the copy resampled its S with the Lanczos kernel, the tile evaluates S at
    # the sample, and Lanczos does not reproduce a quadratic exactly
    np.testing.assert_allclose(direct[ok], copied[ok], rtol=1e-4)
    # and the corrections do matter: uncorrected, the tile is tens of ADU away
    assert np.median(np.abs(plain - copied)[ok]) > 10.0


def test_fingerprint_follows_the_corrections(frames):
    settings, options = StackSettings(normalization="none"), CoaddOptions()
    fixes = _corrections(frames)

    def fp(corrections):
        return tile_fingerprint(TileInputs("t", frames, corrections=corrections), settings,
                                options, 3.0)

    assert fp([]) == fp([None] * len(frames))  # no correction: the fingerprint as before
    moved = [FrameCorrection(c.gain * 1.01, c.offset, c.surface) for c in fixes]
    assert len({fp([]), fp(fixes), fp(moved)}) == 3


def test_grid_run_writes_no_corrected_frame(tmp_path, monkeypatch):
    survey = make_survey(n_x=2, n_y=1, frame_shape=(64, 80), channels=1, overlap=0.3,
                         gain_range=(0.8, 1.25), offset_range=(50.0, 150.0), seed=2)
    paths = write_survey(survey, tmp_path / "frames")
    plan = write_stack_plan([PlanRow(path=p.resolve()) for p in paths], tmp_path / "plan.csv")
    # keep the scratch folder after the run, to see what was written there
    monkeypatch.setattr(_driver, "shutil", types.SimpleNamespace(rmtree=lambda *a, **k: None))
    config = load_config(None, {"run.threads": 2, "quality.enabled": False, "output.preview": False,
                                "photometry.diagnostics": False, "grid.plan": str(plan),
                                "run.memory_budget_mb": 256})
    res = run_pipeline([tmp_path / "frames"], tmp_path / "out", config)
    rep = res.report["grid"][""]
    assert rep["frame_photometry"]["status"] == "ok" and rep["photometry_mode"] == "frames"
    scratch = tmp_path / "out" / ".scratch"
    assert scratch.is_dir()
    assert [p for p in scratch.rglob("*") if p.is_file()] == []


def test_failed_frame_solve_falls_back_to_the_tiles_solve(tmp_path, monkeypatch, caplog):
    """An error in the frames' solve is one [GRID] warning: the tiles then normalise their
    frames and the global solve of the tiles runs, as with `grid.frame_photometry` off."""
    survey = make_survey(n_x=2, n_y=1, frame_shape=(64, 80), channels=1, overlap=0.3,
                         gain_range=(0.8, 1.25), offset_range=(50.0, 150.0), seed=2)
    paths = write_survey(survey, tmp_path / "frames")
    plan = write_stack_plan([PlanRow(path=p.resolve()) for p in paths], tmp_path / "plan.csv")

    def broken(*args, **kwargs):
        raise ValueError("singular overlap system")

    monkeypatch.setattr("skymosaic.grid._frames.match_sources", broken)
    config = load_config(None, {"run.threads": 2, "quality.enabled": False, "output.preview": False,
                                "photometry.diagnostics": False, "grid.plan": str(plan)})
    res = run_pipeline([tmp_path / "frames"], tmp_path / "out", config)
    rep = res.report["grid"][""]
    assert rep["frame_photometry"]["status"] == "fallback: ValueError: singular overlap system"
    assert rep["photometry_mode"] != "frames" and rep["photometry"]["status"] == "ok"
    assert any("[GRID] frame photometry not applied" in r.message for r in caplog.records)
    assert (tmp_path / "out" / "mosaic.fits").exists()
