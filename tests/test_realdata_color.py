"""Real Seestar S50 frames of M94 (../shared/testdata/seestar_s50_osc): the preview of a
raw one-shot-colour mosaic is neutral, at the chosen sky level, and not clipped; the
linear export opens in Siril with finite statistics equal to ours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits

from skymosaic.config import load_config
from skymosaic.pipeline import run_pipeline

pytest.importorskip("sep")

pytestmark = pytest.mark.realdata

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


@pytest.fixture(scope="module")
def m94_run(tmp_path_factory):
    folder = TESTDATA / "seestar_s50_osc"
    if not folder.is_dir():
        pytest.skip(f"real test data {folder} is absent")
    paths = sorted((folder / "raw").glob("2_Light_M_94_*.fit.gz"))[:3]
    if len(paths) < 3:
        pytest.skip(f"expected >= 3 M94 Seestar frames in {folder / 'raw'}, found {len(paths)}")
    out = tmp_path_factory.mktemp("m94_colour")
    config = load_config(
        None,
        {
            "input.wcs_dirs": [str(folder / "wcs")],
            "run.threads": 2,
            "stack.enabled": False,
            "photometry.enabled": False,
            "output.export": "siril,tiff",
        },
    )
    result = run_pipeline(paths, out, config)
    with fits.open(result.mosaic_path) as hdul:
        data = hdul[0].data.astype(np.float32)
    return result, data, json.loads((out / "run.json").read_text())


def test_m94_preview_neutral_in_band_unclipped(m94_run):
    result, data, report = m94_run
    color = report["color"]
    assert color["status"] == "ok" and color["n_stars"] >= 30
    # the raw OSC cast: green is the strongest channel before the calibration
    assert color["white"][1] > max(color["white"][0], color["white"][2])
    img = cv2.cvtColor(cv2.imread(str(result.preview_path)), cv2.COLOR_BGR2RGB)
    valid = np.isfinite(data).all(axis=0)[::-1]
    assert img.shape[:2] == valid.shape
    medians = [float(np.median(img[..., c][valid])) for c in range(3)]
    assert np.ptp(medians) <= 3, medians  # 8-bit levels
    assert 0.1 * 255 <= np.mean(medians) <= 0.25 * 255
    # clipped pixels outside saturated stars: the science data below 90 % of its maximum
    saturated = (data >= 0.9 * np.nanmax(data, axis=(1, 2), keepdims=True)).any(axis=0)[::-1]
    grown = cv2.dilate(saturated.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    clipped = (img == 255).any(axis=-1) & valid & ~grown
    assert clipped.sum() / valid.sum() < 0.0005


@pytest.mark.skipif(shutil.which("siril-cli") is None, reason="siril-cli is not installed")
def test_m94_linear_export_in_siril(m94_run):
    from test_color_pipeline import check_siril_export  # noqa: PLC0415 - shared helper

    result, _, _ = m94_run
    check_siril_export(result.out_dir)
