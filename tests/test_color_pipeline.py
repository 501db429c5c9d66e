"""Colour calibration and exports through the pipeline: ``color.mode`` off / record / apply,
``output.export = ["siril", "tiff"]``, and the linear FITS opened by Siril (when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest
from astropy.io import fits

from skymosaic.config import load_config
from skymosaic.io._stretch import StretchParams, apply_stretch, to_uint
from skymosaic.pipeline import run_pipeline
from skymosaic.synth import SEESTAR_RESPONSE, make_survey, write_survey

OVERRIDES = {
    "run.threads": 2,
    "quality.enabled": False,
    "stack.enabled": False,
    "photometry.diagnostics": False,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    survey = make_survey(
        n_x=2,
        n_y=2,
        frame_shape=(200, 240),
        channels=3,
        overlap=0.3,
        channel_response=SEESTAR_RESPONSE,
        noise_sigma=2.0,
        sky_gradient=0.0,
        pixel_scale_arcsec=4.0,
        fwhm_arcsec=10.0,
        seed=7,
    )
    frames = write_survey(survey, root / "frames")[0].parent
    out = {}
    for mode in ("off", "record", "apply"):
        extra = {"color.mode": mode}
        if mode == "record":
            extra["output.export"] = "siril,tiff"
        result = run_pipeline([frames], root / mode, load_config(None, {**OVERRIDES, **extra}))
        with fits.open(result.mosaic_path) as hdul:
            out[mode] = {
                "data": hdul[0].data.astype(np.float32),
                "header": hdul[0].header,
                "report": json.loads((root / mode / "run.json").read_text()),
                "dir": root / mode,
                "result": result,
            }
    return out


def test_record_leaves_the_science_data_bit_identical(runs):
    assert np.array_equal(runs["record"]["data"], runs["off"]["data"], equal_nan=True)
    header = runs["record"]["header"]
    assert header["CLRMODE"] == "record" and header["CLRNSTAR"] >= 10
    assert "CLRMODE" not in runs["off"]["header"]
    assert any("recorded, not applied" in str(h) for h in header["HISTORY"])
    color = runs["record"]["report"]["color"]
    assert color["mode"] == "record" and color["status"] == "ok"
    assert [header[f"CLRSCL{c}"] for c in (1, 2, 3)] == color["scale"]
    # the cast is measured: green is the strongest channel, so it gets the smallest scale
    assert color["scale"][1] < min(color["scale"][0], color["scale"][2])


def test_apply_changes_the_data_by_exactly_the_recorded_factors(runs):
    color = runs["apply"]["report"]["color"]
    assert color["scale"] == runs["record"]["report"]["color"]["scale"]
    off = runs["off"]["data"]
    expect = np.stack(
        [off[c] * np.float32(color["scale"][c]) + np.float32(color["offset"][c]) for c in range(3)]
    )
    assert np.array_equal(runs["apply"]["data"], expect, equal_nan=True)
    header = runs["apply"]["header"]
    assert header["CLRMODE"] == "apply"
    assert any("calibration applied" in str(h) for h in header["HISTORY"])


def _png(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def test_preview_is_neutral_and_unclipped(runs):
    record, off = runs["record"], runs["off"]
    valid = np.isfinite(record["data"]).all(axis=0)[::-1]  # PNG rows top-down
    img = _png(record["result"].preview_path)
    medians = [float(np.median(img[..., c][valid])) for c in range(3)]
    assert np.ptp(medians) <= 3
    assert 0.1 * 255 <= np.mean(medians) <= 0.25 * 255
    assert (img == 255).any(axis=-1)[valid].mean() < 0.0005
    raw = _png(off["result"].preview_path)  # mode off: the cast is visible
    raw_medians = [float(np.median(raw[..., c][valid])) for c in range(3)]
    assert raw_medians[1] > max(raw_medians[0], raw_medians[2]) + 10


def test_linear_export_for_siril(runs):
    record = runs["record"]
    products = record["report"]["products"]
    assert (
        products["linear"] == "mosaic_linear.fits"
        and products["linear_mask"] == "mosaic_linear_mask.fits"
    )
    with fits.open(record["dir"] / "mosaic_linear.fits") as hdul:
        assert len(hdul) == 1
        image, header = hdul[0].data.astype(np.float32), hdul[0].header
    mask = fits.getdata(record["dir"] / "mosaic_linear_mask.fits")
    science = record["data"]
    assert header["BITPIX"] == -32 and header["NAXIS3"] == 3 and image.shape == science.shape
    assert mask.dtype == np.uint8 and np.array_equal(mask == 1, np.isfinite(science).all(axis=0))
    assert np.isfinite(image).all() and image.min() == 0.0 and image.max() == 1.0
    assert not image[:, mask == 0].any()
    low, high = header["LINLOW"], header["LINHIGH"]
    ok = mask == 1
    assert low == pytest.approx(float(science[:, ok].min())) and high == pytest.approx(
        float(science[:, ok].max())
    )
    np.testing.assert_allclose(image[:, ok], (science[:, ok] - low) / (high - low), atol=2e-7)
    assert header["CTYPE1"].startswith("RA---")  # same WCS, same (FITS, bottom-up) row order


def test_tiff_export_is_the_stretch_at_full_resolution(runs):
    tifffile = pytest.importorskip("tifffile")
    record = runs["record"]
    assert record["report"]["products"]["tiff"] == "mosaic.tif"
    with tifffile.TiffFile(record["dir"] / "mosaic.tif") as tif:
        page = tif.pages[0]
        img = page.asarray()
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        icc = page.tags.get(34675)
        icc = None if icc is None else bytes(icc.value)
    params = StretchParams.from_dict(record["report"]["color"]["stretch"])
    expect = np.moveaxis(to_uint(apply_stretch(record["data"], params), 16), 0, -1)[::-1]
    assert img.dtype == np.uint16 and np.array_equal(img, expect)
    if icc is not None:
        assert b"sRGB" in icc or b"s\x00R\x00G\x00B" in icc


def siril_stats(folder, name: str) -> tuple[list[dict], str]:
    """``load`` + ``stat`` of ``folder/name`` with siril-cli: per-layer figures and the log."""
    script = folder / "stat.ssf"
    script.write_text(f"requires 1.0.0\nload {name}\nstat\n")
    proc = subprocess.run(
        ["siril-cli", "-d", str(folder), "-s", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = proc.stdout + proc.stderr
    layers = []
    for m in re.finditer(
        r"layer: Mean: ([-\d.naninf]+), Median: ([-\d.naninf]+), Sigma: ([-\d.naninf]+)", log
    ):
        layers.append({"mean": float(m[1]), "median": float(m[2]), "sigma": float(m[3])})
    return layers, log


def check_siril_export(folder) -> None:
    """Siril opens NAME_linear.fits without a warning, and its statistics (which skip the
    0 = no-data pixels, in 16-bit units) are finite and equal ours."""
    layers, log = siril_stats(folder, "mosaic_linear.fits")
    assert "another image" not in log and "rror" not in log, log
    assert len(layers) == 3, log
    image = fits.getdata(folder / "mosaic_linear.fits").astype(np.float64)
    mask = fits.getdata(folder / "mosaic_linear_mask.fits") == 1
    for c, layer in enumerate(layers):
        values = image[c][mask & (image[c] > 0)] * 65535.0
        assert all(np.isfinite(v) for v in layer.values())
        assert layer["mean"] == pytest.approx(values.mean(), rel=1e-3, abs=0.1)
        assert layer["median"] == pytest.approx(np.median(values), rel=5e-3, abs=0.5)
        assert layer["sigma"] == pytest.approx(values.std(), rel=1e-2, abs=0.1)


@pytest.mark.skipif(shutil.which("siril-cli") is None, reason="siril-cli is not installed")
def test_siril_opens_the_linear_export(runs):
    check_siril_export(runs["record"]["dir"])
    # the science FITS, by contrast, has NaN for no data: Siril's figures are NaN
    layers, _ = siril_stats(runs["record"]["dir"], "mosaic.fits")
    assert layers and np.isnan(layers[0]["mean"])


def test_grid_mode_applies_records_and_exports(runs, tmp_path):
    """Grid mode (a stack_plan.csv) shares the colour step: apply, cards, exports."""
    frames = sorted(runs["off"]["dir"].parent.joinpath("frames").glob("*.fits"))
    plan = tmp_path / "stack_plan.csv"
    plan.write_text("path,exptime\n" + "".join(f"{p},10\n" for p in frames))
    config = load_config(None, {**OVERRIDES, "grid.plan": str(plan), "color.mode": "apply",
                                "output.export": "siril,tiff"})
    result = run_pipeline([frames[0].parent], tmp_path / "grid", config)
    report = result.report["grid"][""]
    color = report["color"]
    assert result.report["mode"] == "grid" and color["mode"] == "apply" and color["status"] == "ok"
    assert report["linear"] == "mosaic_linear.fits" and report["tiff"] == "mosaic.tif"
    with fits.open(result.mosaic_path) as hdul:
        header = hdul[0].header
    assert header["CLRMODE"] == "apply" and header["CLRSCL1"] == color["scale"][0]
    img = _png(result.preview_path)
    valid = (img > 0).any(axis=-1)
    medians = [float(np.median(img[..., c][valid])) for c in range(3)]
    assert np.ptp(medians) <= 3
    assert (tmp_path / "grid" / "mosaic_linear_mask.fits").is_file()
