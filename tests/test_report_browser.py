"""The report in a real browser: headless Chromium driven by selenium (no download: the
Debian ``chromium`` and ``chromium-driver`` packages, `make test` installs them through
scripts/install_browser.sh). Skipped cleanly without a browser, a driver or selenium.

For the report of `skymosaic demo` (36 synthetic frames, 9 master tiles) and of the real
M17 2MASS run: the page opens
from file:// without a console error, the viewer reaches its deepest DZI level, the
overlays toggle (and change the pixels), a mouse click on an input shows its solved gain,
the cursor readout shows the astropy RA/Dec and the mosaic value, and the screenshots are
not blank. Screenshots are left in the test's tmp folder (``report_*.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic.config import load_config
from skymosaic.demo import run_demo
from skymosaic.pipeline import run_pipeline

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

#: Flags for a machine with no network and no display (the closed network refuses others).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,900")


def _browser() -> tuple[str, str] | None:
    binary = os.environ.get("SKYMOSAIC_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None)
    driver = os.environ.get("SKYMOSAIC_CHROMEDRIVER") or shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="module")
def browser():
    found = _browser()
    if found is None:
        pytest.skip("no chromium + chromedriver "
                    "(make test installs them: scripts/install_browser.sh)")
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415 - after the skip

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="skymosaic-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = found[0]
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, script: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def _screenshot(driver, path: Path) -> np.ndarray:
    driver.save_screenshot(str(path))
    return cv2.imread(str(path))


def _viewer_pixels(img: np.ndarray) -> np.ndarray:
    """The viewer's part of a 1400 x 900 screenshot (left of the 380 px side panel)."""
    return img[40:-40, 10:-400]


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _check_report(driver, out: Path, shots: Path, label: str) -> dict:
    """The checks both reports go through; returns what the test may check further."""
    text = (out / "report" / "data.js").read_text()
    data = json.loads(text[len("window.SKYMOSAIC_REPORT = "):-2])
    driver.get((out / "index.html").resolve().as_uri())
    _wait(driver, "return window.skymosaicReport && window.skymosaicReport.state.ready")
    _wait(driver, "return window.skymosaicReport.state.tilesLoaded > 0")
    time.sleep(1.0)  # let the first level draw
    home = _screenshot(driver, shots / f"report_{label}_home.png")
    view = _viewer_pixels(home).astype(float)
    assert view.std() > 10, "the viewer looks blank"
    assert (view.max(axis=2) > 8).mean() > 0.2, "too little of the viewer shows the mosaic"

    # overlays toggle: layer hidden/shown and the pixels change
    for name in ("seams", "coverage", "frames"):
        driver.find_element(By.ID, f"ov-{name}").click()
    time.sleep(1.0)
    assert driver.execute_script("return window.skymosaicReport.state.layer_seams === true "
                                 "&& document.getElementById('layer-seams').style.display === ''")
    toggled = _screenshot(driver, shots / f"report_{label}_overlays.png")
    assert np.abs(_viewer_pixels(toggled).astype(float) - view).mean() > 2.0
    for name in ("seams", "coverage", "frames"):
        driver.find_element(By.ID, f"ov-{name}").click()
    time.sleep(0.5)
    display = "return document.getElementById('layer-seams').style.display"
    assert driver.execute_script(display) == "none"

    # a real mouse click on the centre of the largest input shows its gain
    target = max((i for i in data["inputs"] if i["outline"]), key=lambda i: len(i["outline"]))
    cx, cy = np.mean(np.array(target["outline"]), axis=0)
    offset = driver.execute_script(
        "const m = window.skymosaicReport.mainImage();"
        "const p = m.imageToViewerElementCoordinates("
        "new OpenSeadragon.Point(arguments[0], arguments[1]));"
        "const r = document.getElementById('viewer').getBoundingClientRect();"
        "return [p.x - r.width / 2, p.y - r.height / 2];", float(cx), float(cy))
    viewer = driver.find_element(By.ID, "viewer")
    chain = ActionChains(driver).move_to_element_with_offset(viewer, int(offset[0]), int(offset[1]))
    chain.click().perform()
    _wait(driver, "return window.skymosaicReport.state.selected")
    selection = driver.find_element(By.ID, "selection").text
    picked = driver.execute_script("return window.skymosaicReport.state.selected")
    assert picked["layer"] == "inputs"
    chosen = next(i for i in data["inputs"] if i["name"] == picked["name"])
    assert picked["name"] in selection and "gain" in selection
    assert f"{chosen['gain'][0]:.4f}" in selection
    # the readout under the cursor (the mouse is on the input's centre)
    ActionChains(driver).move_by_offset(3, 2).perform()
    readout = _wait(driver, "const t = document.getElementById('readout').textContent;"
                            "return t.includes('RA') && /[0-9] ?(adu)?$/.test(t.trim()) ? t : null")
    assert "Dec" in readout
    _screenshot(driver, shots / f"report_{label}_selected.png")

    # deepest level: zoom all the way in on the input's centre
    driver.execute_script(
        "const v = window.skymosaicReport.viewer.viewport;"
        "const m = window.skymosaicReport.mainImage();"
        "v.panTo(m.imageToViewportCoordinates(arguments[0], arguments[1]), true);"
        "v.zoomTo(v.getMaxZoom(), null, true);", float(cx), float(cy))
    level = _wait(driver, "const s = window.skymosaicReport.state;"
                          f"return s.maxLevelLoaded >= {data['image']['max_level']} "
                          "? s.maxLevelLoaded : 0", 30)
    assert level == data["image"]["max_level"]
    time.sleep(1.0)
    deep = _viewer_pixels(_screenshot(driver, shots / f"report_{label}_deep.png")).astype(float)
    assert deep.std() > 1.0, "the deepest level looks blank"
    assert _errors(driver) == []
    return data


def _check_sky_and_values(driver, out: Path, mosaic: Path) -> None:
    """The page's RA/Dec (lookup grid) against astropy; its values against the FITS."""
    with fits.open(mosaic) as hdul:
        wcs = WCS(hdul[0].header).celestial
        science = np.asarray(hdul[0].data, np.float32)
    science = science if science.ndim == 3 else science[None]
    h, w = science.shape[1:]
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600
    for x, y in [(0, 0), (w - 1, h - 1), (w // 3, 2 * h // 3), (w // 2, h // 2)]:
        ra, dec = driver.execute_script(
            "return window.skymosaicReport.skyAt(arguments[0], arguments[1])", x, y)
        tra, tdec = wcs.pixel_to_world_values(x, y)
        dra = ((ra - tra + 180) % 360 - 180) * np.cos(np.radians(tdec))
        assert np.hypot(dra, dec - tdec) * 3600 / scale < 0.02, (x, y, ra, dec, tra, tdec)
        got = driver.execute_async_script(
            "const done = arguments[2];"
            "window.skymosaicReport.valueAt(arguments[0], arguments[1]).then(done);", x, y)
        expect = science[:, y, x]
        for g, e in zip(got, expect, strict=True):
            assert (g is None and not np.isfinite(e)) or g == pytest.approx(float(e), rel=1e-6)


def test_report_of_the_demo_run_in_chromium(browser, tmp_path):
    result, _ = run_demo(tmp_path / "out", config=load_config(None, {"run.threads": 2}))  # ~25 s
    data = _check_report(browser, tmp_path / "out", tmp_path, "demo")
    assert {i["kind"] for i in data["inputs"]} == {"tile"} and len(data["inputs"]) == 9
    _check_sky_and_values(browser, tmp_path / "out", result.mosaic_path)


@pytest.mark.realdata
def test_report_of_a_real_run_in_chromium(browser, testdata, tmp_path):
    paths = sorted((testdata / "m17_2mass_k").glob("*.fits.gz"))
    if len(paths) != 8:
        pytest.skip(f"expected 8 M17 2MASS tiles, found {len(paths)}")
    config = load_config(None, {"run.threads": 2, "stack.enabled": False, "output.preview": False})
    result = run_pipeline(paths, tmp_path / "out", config)  # ~12 s on 2 cores
    data = _check_report(browser, tmp_path / "out", tmp_path, "m17")
    assert len(data["inputs"]) == 8 and len(data["pairs"]) >= 8
    _check_sky_and_values(browser, tmp_path / "out", result.mosaic_path)
