"""The offline report (skymosaic.report): stretch, streamed DZI pyramid, sky lookup grid,
page data of a run, the CLI commands, the local server and the HiPS export.

The browser side (the page renders, zooms, toggles overlays) is in test_report_browser.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import tracemalloc
import types
import urllib.request

import cv2
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skymosaic import cli
from skymosaic.cli import main
from skymosaic.config import load_config
from skymosaic.io import write_mosaic
from skymosaic.io._stretch import StretchParams, apply_stretch, fit_stretch, to_uint
from skymosaic.pipeline import run_pipeline
from skymosaic.report import (
    LiveProgress,
    MosaicFile,
    ReportServer,
    export_hips,
    write_dzi,
)
from skymosaic.report._dzi import _shrink, level_sizes
from skymosaic.report._geometry import clip_polygon, polygon_area, sky_grid
from skymosaic.report._html import preview_stretch
from skymosaic.synth import make_survey, write_survey


def _wcs(shape, *, ctype="TAN", crval=(150.0, 2.0), scale_arcsec=2.0) -> WCS:
    h, w = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = [f"RA---{ctype}", f"DEC--{ctype}"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [w / 2 + 0.5, h / 2 + 0.5]
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return wcs


def _unit(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _mosaic_file(path, data, *, wcs=None):
    _, h, w = data.shape
    cov = np.where(np.isfinite(data).all(axis=0), 2.0, 0.0).astype(np.float32)
    write_mosaic(path, data, wcs or _wcs((h, w)), weight=cov, coverage=cov)
    return path


def _read_level(pyramid, level, shape, fmt):
    """Reassemble one DZI level from its tiles (overlaps cut off)."""
    h, w = shape
    t, ov = pyramid.tile_size, pyramid.overlap
    out = None
    for row in range(math.ceil(h / t)):
        for col in range(math.ceil(w / t)):
            img = cv2.imread(str(pyramid.tiles_dir / str(level) / f"{col}_{row}.{fmt}"),
                             cv2.IMREAD_UNCHANGED)
            assert img is not None, f"missing tile {level}/{col}_{row}"
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img[..., None]
            if out is None:
                out = np.zeros((h, w, img.shape[-1]), np.uint8)
            y0, x0 = max(0, row * t - ov), max(0, col * t - ov)
            exp_h = min(h, (row + 1) * t + ov) - y0
            exp_w = min(w, (col + 1) * t + ov) - x0
            assert img.shape[:2] == (exp_h, exp_w)
            out[y0:y0 + exp_h, x0:x0 + exp_w] = img
    return out


# -- stretch ----------------------------------------------------------------------------


def _params(black: float, white: float, beta: float = 0.02, channels: int = 1) -> StretchParams:
    """An asinh stretch without colour calibration."""
    c = channels
    return StretchParams((1.0,) * c, (0.0,) * c, (black,) * c, (white,) * c, (beta,) * c)


def test_the_report_shows_the_preview_stretch_of_run_json():
    fitted = fit_stretch(np.random.default_rng(1).normal(100, 5, (3, 64, 64)).astype(np.float32))
    calibrated = dataclasses.replace(fitted, scale=(1.2, 0.8, 1.1), offset=(-3.0, 4.0, 0.5))
    run = {"color": {"mode": "record", "stretch": calibrated.to_dict()}}
    assert preview_stretch(run) == calibrated  # record: the preview calibrates on the fly
    run["color"]["mode"] = "apply"  # the science FITS is already calibrated
    applied = preview_stretch(run)
    assert applied.scale == (1.0,) * 3 and applied.offset == (0.0,) * 3
    assert applied.black == calibrated.black and applied.midtones == calibrated.midtones
    assert preview_stretch({}) is None and preview_stretch({"color": {"mode": "off"}}) is None


# -- DZI pyramid ------------------------------------------------------------------------


def test_dzi_levels_and_tile_geometry(tmp_path):
    data = np.random.default_rng(0).normal(100, 5, (1, 300, 530)).astype(np.float32)
    path = _mosaic_file(tmp_path / "m.fits", data)
    with MosaicFile(path) as m:
        pyr = write_dzi(m, tmp_path / "dzi", _params(80, 120), memory_budget=2**26, fmt="png",
                        tile_size=128)
    assert pyr.max_level == 10  # ceil(log2(530))
    assert level_sizes(530, 300)[0] == (1, 1) and level_sizes(530, 300)[9] == (265, 150)
    assert sorted(int(p.name) for p in pyr.tiles_dir.iterdir()) == list(range(11))
    assert cv2.imread(str(pyr.tiles_dir / "0" / "0_0.png"), cv2.IMREAD_UNCHANGED).shape == (1, 1)
    # 530 x 300 in 128 px tiles: 5 x 3, the last column 530 - 511 = 19 px wide
    assert len(list((pyr.tiles_dir / "10").iterdir())) == 15
    assert cv2.imread(str(pyr.tiles_dir / "10" / "4_2.png"),
                      cv2.IMREAD_UNCHANGED).shape == (300 - 255, 530 - 511)
    xml = pyr.dzi_path.read_text()
    assert 'TileSize="128"' in xml and 'Overlap="1"' in xml
    assert 'Width="530"' in xml and 'Height="300"' in xml
    assert not list(tmp_path.glob("dzi/.*"))  # no staging or scratch left behind


def test_dzi_of_a_mosaic_larger_than_the_budget_is_streamed_and_exact(tmp_path):
    """A 12 MiB mosaic with an 8 MiB budget: the pyramid's allocations stay within the
    budget, the deepest level is exactly the stretch of the full-resolution mosaic, and the
    next level is its 2 x 2 mean."""
    h, w = 4096, 768
    rng = np.random.default_rng(7)
    data = rng.normal(100, 10, (1, h, w)).astype(np.float32)
    data[0, :500, :300] = np.nan
    data[0, 2000:2010] += 500.0
    path = _mosaic_file(tmp_path / "big.fits", data)
    budget = 8 * 2**20
    assert data.nbytes > budget
    params = fit_stretch(data[:, ::4, ::4])
    expected = to_uint(np.moveaxis(apply_stretch(data, params), 0, -1)[::-1])  # top row first
    half = to_uint(_shrink(np.moveaxis(apply_stretch(data, params), 0, -1)[::-1]))
    del data
    with MosaicFile(path) as m:
        tracemalloc.start()
        try:
            pyr = write_dzi(m, tmp_path / "dzi", params, memory_budget=budget, fmt="png")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < budget, f"peak {peak / 2**20:.1f} MiB over the {budget / 2**20:.0f} MiB budget"
    np.testing.assert_array_equal(_read_level(pyr, pyr.max_level, (h, w), "png"), expected)
    np.testing.assert_array_equal(_read_level(pyr, pyr.max_level - 1, (h // 2, w // 2), "png"),
                                  half)


def test_dzi_on_threads_writes_the_same_files_within_the_budget(tmp_path):
    # write_dzi(threads=3): the band stretched in row chunks, tiles encoded in a pool; the
    # same bytes in every file, and the same budget as one thread.
    rng = np.random.default_rng(3)
    data = rng.normal(100, 10, (3, 1500, 700)).astype(np.float32)
    data[:, :200, :90] = np.nan
    path = _mosaic_file(tmp_path / "c.fits", data)
    params = fit_stretch(data[:, ::4, ::4])
    budget = 64 * 2**20  # bands of one tile row (254 rows): six of them
    pyramids = {}
    with MosaicFile(path) as m:
        for threads in (1, 3):
            tracemalloc.start()
            try:
                pyramids[threads] = write_dzi(m, tmp_path / f"dzi{threads}", params,
                                              memory_budget=budget, threads=threads)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < budget
    one, three = pyramids[1], pyramids[3]
    files = sorted(p.relative_to(one.tiles_dir) for p in one.tiles_dir.rglob("*.jpg"))
    assert files == sorted(p.relative_to(three.tiles_dir) for p in three.tiles_dir.rglob("*.jpg"))
    assert one.n_tiles == three.n_tiles == len(files) > 30
    for f in files:
        assert (one.tiles_dir / f).read_bytes() == (three.tiles_dir / f).read_bytes(), f


def test_dzi_colour_jpeg_tiles_are_rgb(tmp_path):
    data = np.zeros((3, 200, 260), np.float32)
    data[0], data[1], data[2] = 100.0, 50.0, 0.0  # red-orange: R > G > B after the linked stretch
    path = _mosaic_file(tmp_path / "c.fits", data)
    with MosaicFile(path) as m:
        pyr = write_dzi(m, tmp_path / "dzi", _params(0.0, 100.0, channels=3), memory_budget=2**26)
    img = _read_level(pyr, pyr.max_level, (200, 260), "jpg").astype(float)
    assert img[..., 0].mean() > 250 and 200 < img[..., 1].mean() < 240 and img[..., 2].mean() < 5


# -- geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize(("ctype", "crval", "scale"), [
    ("TAN", (150.0, 2.0), 2.0), ("SIN", (10.0, -30.0), 20.0), ("ZEA", (200.0, 60.0), 20.0),
    ("STG", (300.0, 10.0), 20.0), ("ARC", (45.0, -70.0), 20.0), ("CAR", (120.0, 0.0), 20.0),
    ("TAN", (0.05, 20.0), 10.0),  # crosses RA = 0/360
    ("TAN", (30.0, 89.8), 5.0),   # holds the celestial pole
])
def test_sky_grid_matches_astropy(ctype, crval, scale):
    shape = (1500, 2200)
    wcs = _wcs(shape, ctype=ctype, crval=crval, scale_arcsec=scale)
    grid = sky_grid(wcs, shape, tolerance=0.01)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-0.5, shape[1] - 0.5, 400), rng.uniform(-0.5, shape[0] - 0.5, 400)
    ra, dec = grid.sky_at(x, y)
    tra, tdec = wcs.pixel_to_world_values(x, y)
    err_px = np.degrees(np.linalg.norm(_unit(ra, dec) - _unit(tra, tdec), axis=-1)) * 3600 / scale
    assert err_px.max() < 0.02
    assert grid.vectors.shape[0] <= 257 and grid.vectors.shape[1] <= 257


def test_clip_polygon_of_two_squares():
    a = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    b = np.array([[6, -2], [16, -2], [16, 8], [6, 8]], float)
    assert abs(polygon_area(clip_polygon(a, b))) == pytest.approx(4 * 8)
    assert abs(polygon_area(clip_polygon(a, b[::-1]))) == pytest.approx(32)  # orientation-free
    assert clip_polygon(a, b + 20).shape == (0, 2)


# -- the report of a run -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A classic run: 2 x 2 pointings, 2 frames each (4 master tiles), one frame rejected."""
    root = tmp_path_factory.mktemp("report_run")
    survey = make_survey(n_x=2, n_y=2, frame_shape=(96, 120), channels=3, frames_per_pointing=2,
                         seed=4)
    paths = write_survey(survey, root / "frames", prefix="f")
    bad = root / "frames" / "f_bad.fits"
    with fits.open(paths[0]) as hdul:
        hdul[0].data = np.full_like(hdul[0].data, np.nan)
        hdul.writeto(bad)
    config = load_config(None, {"run.threads": 2})
    result = run_pipeline([root / "frames"], root / "out", config)
    return result, root / "out"


def _data(out) -> dict:
    text = (out / "report" / "data.js").read_text()
    assert text.startswith("window.SKYMOSAIC_REPORT = ") and text.endswith(";\n")
    return json.loads(text[len("window.SKYMOSAIC_REPORT = "):-2])


def test_run_writes_the_report(small_run):
    result, out = small_run
    run = json.loads((out / "run.json").read_text())
    page = (out / "index.html").read_text()
    assert "report/static/openseadragon.min.js" in page and "report/data.js" in page
    # no CDN
    assert "http" not in re.sub(r"http://www\.w3\.org/\S+|https?://openseadragon\S*", "", page)
    for name in ("openseadragon.min.js", "LICENSE-openseadragon.txt", "report.js", "report.css"):
        assert (out / "report" / "static" / name).is_file()
    assert "BSD" in (out / "report" / "static" / "LICENSE-openseadragon.txt").read_text() or \
        "Redistribution" in (out / "report" / "static" / "LICENSE-openseadragon.txt").read_text()
    data = _data(out)
    _, h, w = result.data_shape
    size = data["image"]["tile_source"]["Image"]["Size"]
    assert (int(size["Width"]), int(size["Height"])) == (w, h)
    assert data["image"]["max_level"] == math.ceil(math.log2(max(h, w)))
    assert "report" in run["timings_s"] and run["peak_memory_bytes"] > 0
    assert data["run"]["frames"] == {"found": 9, "used": 8, "rejected": 1}


def test_report_inputs_carry_the_solved_corrections(small_run):
    _, out = small_run
    run = json.loads((out / "run.json").read_text())
    data = _data(out)
    solved = run["photometry"]["inputs"]
    assert [i["name"] for i in data["inputs"]] == list(solved)
    for entry in data["inputs"]:
        assert entry["gain"] == pytest.approx(solved[entry["name"]]["gain"])
        assert entry["kind"] == "tile" and entry["n_frames"] == 2
        # the outline of a master tile covers about its own pixel area (same pixel scale)
        tile_h, tile_w = entry["shape"][1:]
        assert abs(polygon_area(np.array(entry["outline"]))) == pytest.approx(tile_h * tile_w,
                                                                              rel=0.03)
    framed = {f["name"]: f for f in data["frames"]}
    stacked = run["tiles"][0]
    first = framed[stacked["frames"][0]]
    assert first["tile"] == stacked["tile_id"]
    assert first["rejected_pixels"] == stacked["stack"]["rejected_per_frame"][0]
    assert first["outline"] is not None and first["exposure"] is not None


def test_report_shows_rejected_frames_and_seams(small_run):
    _, out = small_run
    run = json.loads((out / "run.json").read_text())
    data = _data(out)
    (rej,) = data["rejected"]
    assert rej["name"] == "f_bad.fits" and "no valid pixel" in rej["reason"]
    good = next(f for f in data["frames"] if f["name"] == "f_0000.fits")
    assert rej["outline"] == good["outline"]  # the NaN copy lies where its original does
    assert any("f_bad.fits" in w["message"] for w in data["warnings"])
    steps = {}
    for p in run["photometry"]["pairs"]:
        steps.setdefault((p["i"], p["j"]), []).append(abs(p["sky_step"]))
    assert {(p["i"], p["j"]) for p in data["pairs"]} == set(steps)
    for p in data["pairs"]:
        assert p["max_step"] == pytest.approx(max(steps[(p["i"], p["j"])]))
        assert p["polygon"] is not None and abs(polygon_area(np.array(p["polygon"]))) > 100


def test_report_values_are_the_linear_mosaic(small_run):
    result, out = small_run
    data = _data(out)
    values = data["values"]
    assert values["factor"] == 1
    with fits.open(result.mosaic_path) as hdul:
        science = hdul[0].data.astype(np.float32)
    c, h, w = science.shape
    for x, y in [(5, 7), (w // 2, h // 2), (w - 1, h - 1), (w - 1, 0)]:
        cx, cy = x // values["chunk"], y // values["chunk"]
        text = (out / "report" / "values" / f"{cx}_{cy}.js").read_text()
        _, ch, cw, b64 = re.match(r'SKYMOSAIC_VALUES\("(\S+)",(\d+),(\d+),"(\S+)"\);',
                                    text).groups()
        chunk = np.frombuffer(base64.b64decode(b64), "<f4").reshape(c, int(ch), int(cw))
        got = chunk[:, y % values["chunk"], x % values["chunk"]]
        np.testing.assert_array_equal(got, science[:, y, x])


def test_report_cli_rebuilds_and_names_bad_folders(small_run, tmp_path, capsys):
    _, out = small_run
    (out / "index.html").unlink()
    assert main(["report", str(out), "--tile-format", "png"]) == 0
    assert (out / "index.html").is_file()
    data = _data(out)
    assert data["image"]["tile_source"]["Image"]["Format"] == "png"
    # the deepest level is the PNG preview (unbinned here) pixel for pixel: one stretch
    run = json.loads((out / "run.json").read_text())
    preview = cv2.cvtColor(cv2.imread(str(out / run["products"]["preview"])), cv2.COLOR_BGR2RGB)
    h, w = preview.shape[:2]
    tiles = data["image"]["tile_source"]["Image"]
    pyramid = types.SimpleNamespace(tile_size=int(tiles["TileSize"]), overlap=int(tiles["Overlap"]),
                                    tiles_dir=out / tiles["Url"].rstrip("/"))
    deepest = _read_level(pyramid, data["image"]["max_level"], (h, w), "png")
    assert np.abs(deepest.astype(int) - preview).max() <= 1
    assert main(["report", str(out)]) == 0  # back to the default jpg for the other tests
    assert main(["report", str(tmp_path)]) == 2
    assert "run.json: not found" in capsys.readouterr().err.replace("\n", "")


def test_no_report_option(tmp_frames, tmp_path):
    paths = tmp_frames()
    config = load_config(None, {"run.threads": 1, "stack.enabled": False, "output.report": False})
    run_pipeline(paths, tmp_path / "out", config)
    assert not (tmp_path / "out" / "index.html").exists()
    assert not (tmp_path / "out" / "report").exists()


def test_server_serves_the_report_status_and_partial_mosaic(small_run):
    _, out = small_run
    inner = []

    class Bars:
        def start(self, phase, total):
            inner.append(("start", phase, total))

        def advance(self, phase, n=1):
            inner.append(("advance", phase, n))

        def skip(self, phase, n=1):
            inner.append(("skip", phase, n))

        def end(self, phase):
            inner.append(("end", phase))

    with ReportServer(out, port=0) as server:
        progress = LiveProgress(server, Bars())
        progress.start("stack", 8)
        progress.advance("stack", 3)
        status = json.loads(urllib.request.urlopen(server.url + "status.json", timeout=10).read())
        assert status["phases"]["stack"] == {"done": 3, "total": 8, "ended": False}
        assert status["state"] == "running" and status["report_ready"] and status["tiles_done"] == 4
        progress.end("stack")
        server.set_state("done")
        status = json.loads(urllib.request.urlopen(server.url + "status.json", timeout=10).read())
        assert status["phases"]["stack"]["done"] == 8 and status["state"] == "done"
        assert inner == [("start", "stack", 8), ("advance", "stack", 3), ("end", "stack")]
        page = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert "report/data.js" in page
        assert urllib.request.urlopen(server.url + "report/data.js",
                                      timeout=10).read().startswith(b"window.")
        png = urllib.request.urlopen(server.url + "partial.png", timeout=30).read()
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.ndim == 3 and max(img.shape[:2]) > 100 and img.std() > 5  # 4 tiles, not blank
        assert server.url.startswith("http://127.0.0.1:")


# -- HiPS --------------------------------------------------------------------------------


def test_export_hips_tiles_hold_the_mosaic_values(tmp_path):
    from astropy_healpix import HEALPix  # noqa: PLC0415 - only this test needs it

    h, w = 240, 300
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    data = (1000.0 + 2.0 * xx + 3.0 * yy)[None]  # a plane: bilinear interpolation is exact
    wcs = _wcs((h, w), crval=(150.0, 2.0), scale_arcsec=6.0)
    path = _mosaic_file(tmp_path / "m.fits", data, wcs=wcs)
    (folder,) = export_hips(path, tmp_path / "hips", memory_budget=2**28)
    props = dict(line.split("=", 1) for line in (folder / "properties").read_text().splitlines()
                 if "=" in line)
    props = {k.strip(): v.strip() for k, v in props.items()}
    order = int(props["hips_order"])
    assert props["hips_tile_format"] == "fits" and props["hips_frame"] == "equatorial"
    assert (folder / f"Norder{order}").is_dir() and (folder / "Norder0").is_dir()
    tiles = sorted((folder / f"Norder{order}").glob("Dir*/Npix*.fits"))
    assert tiles
    best = max(tiles, key=lambda p: np.isfinite(fits.getdata(p)).sum())
    tile = fits.getdata(best).astype(np.float64)
    tile_wcs = WCS(fits.getheader(best))
    npix = int(best.stem[4:])
    # the file's HEALPix cell (from its name) is where its header puts its centre
    lon, lat = HEALPix(nside=2**order, order="nested").healpix_to_lonlat([npix])
    cra, cdec = tile_wcs.pixel_to_world_values(tile.shape[1] / 2 - 0.5, tile.shape[0] / 2 - 0.5)
    assert abs(cdec - lat.deg[0]) < 0.01 and abs((cra - lon.deg[0] + 180) % 360 - 180) < 0.01
    jj, ii = np.nonzero(np.isfinite(tile))
    pick = np.linspace(0, len(ii) - 1, 50).astype(int)
    ra, dec = tile_wcs.pixel_to_world_values(ii[pick], jj[pick])
    x, y = wcs.world_to_pixel_values(ra, dec)
    inside = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2)
    assert inside.sum() > 20
    np.testing.assert_allclose(tile[jj[pick], ii[pick]][inside], (1000 + 2 * x + 3 * y)[inside],
                               rtol=1e-4)
    with pytest.raises(FileExistsError, match="exists"):
        export_hips(path, tmp_path / "hips", memory_budget=2**28)
    with pytest.raises(MemoryError, match="memory budget"):
        export_hips(path, tmp_path / "hips2", memory_budget=1000)


def test_export_hips_cli(small_run):
    _, out = small_run
    assert main(["export", "hips", str(out), "-o", str(out / "hips_cli")]) == 0
    for channel in ("R", "G", "B"):
        assert (out / "hips_cli" / channel / "properties").is_file()


def test_run_serve_feeds_the_live_server(tmp_frames, tmp_path, monkeypatch):
    """`skymosaic run --serve`: the served status follows the run's phases and ends "done"
    with the report ready (the wait for Ctrl-C replaced by a stop)."""
    seen = {}

    def stop(server):
        seen.update(server.status())
        seen["page"] = urllib.request.urlopen(server.url, timeout=10).read().decode()
        server.stop()

    monkeypatch.setattr(cli, "_serve_until_interrupted", stop)
    paths = tmp_frames()
    out = tmp_path / "out"
    code = main(["run", *map(str, paths), "-o", str(out), "--serve", "--port", "0", "--no-browser",
                 "--threads", "1"])
    assert code == 0
    assert seen["state"] == "done" and seen["report_ready"]
    assert seen["phases"]["discover"] == {"done": 2, "total": 2, "ended": True}
    assert all(p["ended"] and p["done"] == p["total"] for p in seen["phases"].values())
    assert "report/data.js" in seen["page"]


def test_grid_mode_report_carries_the_global_solve(tmp_path):
    """Grid mode: every placed tile is an input with its solved gain, offset and sky
    surface per channel (run.json ``grid``), its outline on the canvas and its overlaps."""
    survey = make_survey(n_x=2, n_y=2, frame_shape=(96, 120), channels=3, frames_per_pointing=2,
                         seed=5)
    paths = write_survey(survey, tmp_path / "frames", prefix="g")
    plan = tmp_path / "stack_plan.csv"
    plan.write_text("path,exptime\n" + "".join(f"{p},10\n" for p in paths))
    # the tiles' solve (the frames' solve is not in the report yet)
    config = load_config(None, {"run.threads": 2, "grid.plan": str(plan),
                                 "grid.frame_photometry": False})
    result = run_pipeline([tmp_path / "frames"], tmp_path / "out", config)
    out = tmp_path / "out"
    run = json.loads((out / "run.json").read_text())
    assert run["mode"] == "grid"
    (product,) = run["grid"].values()
    solve = product["photometry"]
    data = _data(out)
    assert [i["name"] for i in data["inputs"]] == [f"{n}.fits" for n in product["tile_names"]]
    c, h, w = result.data_shape
    for k, entry in enumerate(data["inputs"]):
        assert entry["gain"] == pytest.approx(solve["gains"][k])
        assert entry["offset"] == pytest.approx(solve["offsets"][k])
        assert len(entry["surface"]) == c
        xs, ys = np.array(entry["outline"]).T
        assert xs.min() >= -1 and xs.max() <= w + 1 and ys.min() >= -1 and ys.max() <= h + 1
    assert len(data["pairs"]) == len({(p["i"], p["j"]) for p in solve["pairs"]}) > 0
    assert data["image"]["stretch"] == product["color"]["stretch"]  # the preview's own
    assert data["run"]["n_tiles"] == len(product["tile_names"])
    assert data["run"]["photometry"]["n_overlaps"] == solve["n_overlaps"]


def test_grid_mode_report_carries_the_frames_solve(tmp_path):
    """Grid mode with `grid.frame_photometry` (the default): each frame of the page carries
    the gain and sky surface per channel that the frames' solve gave it (run.json
    ``grid.<filter>.frame_photometry``), and the tiles list their frames."""
    survey = make_survey(n_x=2, n_y=2, frame_shape=(96, 120), channels=3, frames_per_pointing=2,
                         seed=5)
    paths = write_survey(survey, tmp_path / "frames", prefix="g")
    plan = tmp_path / "stack_plan.csv"
    plan.write_text("path,exptime\n" + "".join(f"{p},10\n" for p in paths))
    config = load_config(None, {"run.threads": 2, "grid.plan": str(plan)})
    run_pipeline([tmp_path / "frames"], tmp_path / "out", config)
    out = tmp_path / "out"
    run = json.loads((out / "run.json").read_text())
    (product,) = run["grid"].values()
    solve = product["frame_photometry"]
    assert solve["status"] == "ok" and product["photometry_mode"] == "frames"
    data = _data(out)
    frames = {f["name"]: f for f in data["frames"] if f["used"]}
    assert set(solve["gains"]) == set(frames) and len(frames) >= len(paths) - 2
    for name, gain in solve["gains"].items():
        assert frames[name]["frame_gain"] == pytest.approx(gain)
        assert len(frames[name]["frame_gain"]) == 3
        np.testing.assert_allclose(frames[name]["frame_surface"], solve["surfaces"][name])
    # the solved gains are not all 1: the survey has per-frame gains
    assert max(abs(g - 1.0) for gains in solve["gains"].values() for g in gains) > 0.01
    assert all(i["kind"] == "tile" and set(i["frames"]) <= set(frames) for i in data["inputs"])
    summary = data["run"]["photometry"]
    assert summary["status"] == "ok (on the frames)"
    assert summary["n_overlaps"] == solve["n_overlaps"]
    all_gains = [g for gains in solve["gains"].values() for g in gains]
    assert summary["gain_range"] == pytest.approx([min(all_gains), max(all_gains)])
    assert sum(len(i["frames"]) for i in data["inputs"]) >= len(frames)
