"""Grid/survey mode: tile geometry, `assemble_tiles` with known answers, the pipeline via a plan.

Known answers:

* tiles of a regular grid cover the canvas, overlap by the configured fraction, end at the
  canvas edge, and every frame is assigned to exactly the tiles its footprint touches;
* ``assemble_tiles`` on tiles observed as ``(S + noise - b_k) / g_k`` of one smooth sky
  ``S`` gives a seam score within 10% of the truth-corrected assembly's and far below the
  uncorrected one, a continuous gradient across every tile border, and data wherever a
  tile had data.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy import ndimage

from skymosaic import grid as grid_mod
from skymosaic._tiles import PlacedTile
from skymosaic.cli import main
from skymosaic.config import load_config
from skymosaic.grid import _assemble, assemble_tiles, make_tile_grid, tile_grid_of
from skymosaic.io import FrameInfo, read_mosaic, scan_frame
from skymosaic.photometry import PhotometryOptions
from skymosaic.pipeline import choose_grid, run_pipeline
from skymosaic.synth import make_survey, seam_score, write_survey

SIGMA = 1.0


# ----------------------------------------------------------------------------- geometry
@pytest.fixture(scope="module")
def survey_frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid_geom")
    survey = make_survey(n_x=3, n_y=2, frame_shape=(96, 128), channels=1, frames_per_pointing=2,
                         gain_range=(0.8, 1.25), offset_range=(0.0, 60.0), seed=4)
    paths = write_survey(survey, root / "frames")
    infos = [scan_frame(p) for p in paths]
    return survey, paths, infos, root


def test_tiles_cover_canvas_clamped_with_overlap(survey_frames):
    _, _, infos, _ = survey_frames
    canvas = choose_grid(infos, load_config(None, {}))
    tiles = make_tile_grid(infos, canvas, tile_factor=1.0, overlap=0.3)
    h, w = canvas.shape
    assert tiles
    for t in tiles:
        y0, y1, x0, x1 = t.bbox
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert t.shape == tiles[0].shape  # all the same size (edge tiles clamped, not cut)
    th, tw = tiles[0].shape
    assert abs(tw - 128) <= 2 and abs(th - 96) <= 2  # factor 1 x the frame size (same scale)
    xs = sorted({t.bbox[2] for t in tiles})
    steps = np.diff(xs)
    assert np.all(steps[:-1] == pytest.approx(0.7 * tw, abs=1))  # 30% overlap
    assert max(t.bbox[3] for t in tiles) == w and max(t.bbox[1] for t in tiles) == h
    covered = np.zeros(canvas.shape, bool)
    for t in tiles:
        covered[t.bbox[0]:t.bbox[1], t.bbox[2]:t.bbox[3]] = True
    assert covered.all()


def test_frames_assigned_to_every_tile_they_touch(survey_frames):
    _, _, infos, _ = survey_frames
    canvas = choose_grid(infos, load_config(None, {}))
    tiles = make_tile_grid(infos, canvas, tile_factor=0.5, overlap=0.25)
    # exact test: project a dense grid of each frame's pixels onto the canvas
    for k, f in enumerate(infos):
        yy, xx = np.mgrid[0:f.height:4, 0:f.width:4]
        ra, dec = f.wcs.pixel_to_world_values(xx.ravel(), yy.ravel())
        cx, cy = canvas.wcs.world_to_pixel_values(ra, dec)
        for t in tiles:
            y0, y1, x0, x1 = t.bbox
            inside = np.any((cx >= x0 + 1) & (cx < x1 - 2) & (cy >= y0 + 1) & (cy < y1 - 2))
            if inside:
                assert k in t.frames, (f.name, t.tile_id)
    for t in tiles:
        assert t.frames  # empty tiles are dropped


def test_empty_tiles_are_dropped(survey_frames):
    _, _, infos, _ = survey_frames
    corners = [f for f in infos if f.name.startswith(("p00_00", "p01_02"))] or [infos[0], infos[-1]]
    canvas = choose_grid(infos, load_config(None, {}))
    all_tiles = make_tile_grid(infos, canvas, tile_factor=0.5, overlap=0.2)
    some = make_tile_grid(corners, canvas, tile_factor=0.5, overlap=0.2)
    assert 0 < len(some) < len(all_tiles)


def test_tile_wcs_is_a_cutout_of_the_canvas(survey_frames):
    _, _, infos, _ = survey_frames
    canvas = choose_grid(infos, load_config(None, {}))
    sub = tile_grid_of(canvas, (10, 60, 20, 90))
    assert sub.shape == (50, 70)
    a = np.array(sub.wcs.pixel_to_world_values([0.0, 33.5], [0.0, 12.25]))
    b = np.array(canvas.wcs.pixel_to_world_values([20.0, 53.5], [10.0, 22.25]))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_bad_grid_parameters_raise(survey_frames):
    _, _, infos, _ = survey_frames
    canvas = choose_grid(infos, load_config(None, {}))
    with pytest.raises(ValueError, match="overlap"):
        make_tile_grid(infos, canvas, overlap=0.95)
    with pytest.raises(ValueError, match="tile_factor"):
        make_tile_grid(infos, canvas, tile_factor=0)
    with pytest.raises(ValueError, match="at least one frame"):
        make_tile_grid([], canvas)


# ----------------------------------------------------------------------------- assembly
def _smooth_sky(channels: int, h: int, w: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sky = np.empty((channels, h, w))
    for c in range(channels):
        sky[c] = 100 + 20 * c + 8 * np.sin(xx / 70.0 + c) + 6 * np.cos(yy / 55.0)
        n = h * w // 150
        sy, sx = rng.uniform(0, h, n), rng.uniform(0, w, n)
        stars = np.zeros((h, w))
        np.add.at(stars, (sy.astype(int), sx.astype(int)), rng.pareto(1.5, n) * 600 + 200)
        sky[c] += ndimage.gaussian_filter(stars, 1.4)
    return sky


def _grid_tiles(n=3, channels=1, *, tile=(96, 112), overlap=(28, 36), seed=0):
    rng = np.random.default_rng(seed)
    th, tw = tile
    sh, sw = th - overlap[0], tw - overlap[1]
    h, w = sh * (n - 1) + th, sw * (n - 1) + tw
    truth = _smooth_sky(channels, h, w, rng)
    gains = rng.uniform(0.8, 1.25, (n * n, channels))
    offsets = rng.uniform(-40, 40, (n * n, channels))
    tiles, fixed = [], []
    for k in range(n * n):
        r, q = divmod(k, n)
        y0, x0 = r * sh, q * sw
        patch = truth[:, y0:y0 + th, x0:x0 + tw] + rng.normal(0, SIGMA, (channels, th, tw))
        obs = (patch - offsets[k][:, None, None]) / gains[k][:, None, None]
        tiles.append(PlacedTile(obs.astype(np.float32), y0, x0, tile_id=f"t{k}"))
        fixed.append(PlacedTile(patch.astype(np.float32), y0, x0, tile_id=f"t{k}"))
    borders = np.zeros((h, w), bool)
    for t in tiles:
        for yy in (t.y0, t.y0 + th - 1):
            borders[max(yy - 2, 0):yy + 3, t.x0:t.x0 + tw] = True
        for xx in (t.x0, t.x0 + tw - 1):
            borders[t.y0:t.y0 + th, max(xx - 2, 0):xx + 3] = True
    return tiles, fixed, truth, borders, (h, w)


OPTS = PhotometryOptions(background=False)


@pytest.mark.parametrize("channels", [1, 3])
def test_assembly_seams_match_truth_corrected(channels, caplog):
    tiles, fixed, truth, borders, shape = _grid_tiles(channels=channels, seed=3 + channels)
    caplog.set_level(logging.INFO, logger="skymosaic")
    res = assemble_tiles(tiles, shape, photometry=OPTS)
    ideal = assemble_tiles(fixed, shape, photometry=None)
    plain = assemble_tiles(tiles, shape, photometry=None, blend="mean")  # the plain coadd
    s_res = seam_score(res.data, truth, borders)
    s_ideal = seam_score(ideal.data, truth, borders)
    s_plain = seam_score(plain.data, truth, borders)
    # measured (1 ch): solved 1.00, truth-corrected 1.00, plain 7.4
    assert s_res <= 1.10 * s_ideal
    assert s_plain > 3.0 * s_res
    assert np.isfinite(res.data).all()  # every pixel was covered by some tile
    assert res.report["photometry_mode"] == "gain+offset"
    assert res.report["blend"] == "pyramid" and res.report["n_pyramid"] > 0
    # [GRID] log lines carry the counts of this survey (9 tiles, 20 overlaps on a 3x3 grid
    # with diagonals)
    text = "\n".join(r.getMessage() for r in caplog.records if "[GRID]" in r.getMessage())
    n_ov = res.report["photometry"]["n_overlaps"]
    assert n_ov == 20
    assert f"[GRID] 9 tiles, {n_ov} overlaps" in text
    ph = res.report["photometry"]
    assert (f"[GRID] regressions: {ph['n_relations_ok']} ok, {ph['n_relations_offset_only']} "
            f"offset-only, {ph['n_relations_failed']} failed") in text
    assert "[GRID] background matching not applied" in text
    assert f"[GRID] blending: {res.report['n_pyramid']} overlaps with the pyramid" in text


def test_gradient_is_continuous_across_every_tile_border():
    tiles, _, truth, _, shape = _grid_tiles(seed=11)
    res = assemble_tiles(tiles, shape, photometry=OPTS)
    # the solve's gauge leaves one global (gain, offset): fit it, then compare residuals
    a, b = np.polyfit(truth[0].ravel(), res.data[0].ravel(), 1)
    resid = ndimage.gaussian_filter((res.data[0] - (a * truth[0] + b)).astype(np.float64), 3.0)
    th, tw = tiles[0].data.shape[1:]
    jumps = []
    for t in tiles:
        for x in (t.x0, t.x0 + tw - 1):  # vertical borders inside the canvas
            if 2 <= x < shape[1] - 3:
                rows = slice(t.y0 + 5, t.y0 + th - 5)
                jumps.append(np.abs(resid[rows, x + 2] - resid[rows, x - 2]).mean())
        for y in (t.y0, t.y0 + th - 1):
            if 2 <= y < shape[0] - 3:
                cols = slice(t.x0 + 5, t.x0 + tw - 5)
                jumps.append(np.abs(resid[y + 2, cols] - resid[y - 2, cols]).mean())
    # smoothed noise differences 4 px apart are ~0.1 sigma; a 1% gain error at level 100
    # would be a 1-sigma step
    assert max(jumps) < 0.2 * SIGMA, max(jumps)


def test_edge_and_odd_tiles_never_break_placement():
    rng = np.random.default_rng(0)
    tiles = [
        PlacedTile(rng.normal(100, 1, (1, 37, 53)).astype(np.float32), -5, -7),  # off the canvas
        PlacedTile(rng.normal(100, 1, (1, 41, 29)).astype(np.float32), 20, 30),
        PlacedTile(rng.normal(100, 1, (1, 33, 47)).astype(np.float32), 40, 51),  # past the edge
    ]
    res = assemble_tiles(tiles, (61, 83), photometry=OPTS)
    assert res.data.shape == (1, 61, 83)
    cover = np.zeros((61, 83), bool)
    for t in tiles:
        h, w = t.data.shape[1:]
        cover[max(t.y0, 0):t.y0 + h, max(t.x0, 0):t.x0 + w] = True
    assert np.array_equal(np.isfinite(res.data[0]), cover)


def test_failed_solve_falls_back_to_offset_only_then_none(monkeypatch, caplog):
    tiles, _, _, _, shape = _grid_tiles(seed=5)
    real = _assemble.normalize_tiles
    calls = []

    def flaky(t, config):
        calls.append(config.gain_from)
        if config.gain_from != "none":
            _, rep = real(t, config=config)
            rep.status = "fallback"
            return list(t), rep
        return real(t, config=config)

    monkeypatch.setattr(_assemble, "normalize_tiles", flaky)
    caplog.set_level(logging.WARNING, logger="skymosaic")
    res = assemble_tiles(tiles, shape, photometry=OPTS)
    assert calls == ["auto", "none"]
    assert res.report["photometry_mode"] == "offset-only"
    assert any("[GRID] photometric solve failed" in r.getMessage() for r in caplog.records)
    gains = np.array(res.report["photometry"]["gains"])
    np.testing.assert_allclose(gains, 1.0)


def test_failed_blend_falls_back_to_weighted_mean(monkeypatch, caplog):
    tiles, _, _, _, shape = _grid_tiles(seed=6)
    def boom(*a, **k):
        raise ValueError("synthetic blend failure")

    monkeypatch.setattr(_assemble, "blend_tiles", boom)
    caplog.set_level(logging.WARNING, logger="skymosaic")
    res = assemble_tiles(tiles, shape, photometry=OPTS)
    assert res.report["blend"] == "mean"
    assert np.isfinite(res.data).all()
    assert any("[GRID] pyramid blending failed" in r.getMessage() for r in caplog.records)


def test_assemble_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one tile"):
        assemble_tiles([], (10, 10))
    a = PlacedTile(np.zeros((1, 5, 5), np.float32), 0, 0)
    b = PlacedTile(np.zeros((3, 5, 5), np.float32), 0, 2)
    with pytest.raises(ValueError, match="channel counts"):
        assemble_tiles([a, b], (10, 10))


# ----------------------------------------------------------------------------- pipeline
def _config(**extra):
    base = {"run.threads": 2, "quality.enabled": False, "output.preview": False}
    base.update(extra)
    return load_config(None, base)


def test_plan_in_folder_selects_grid_mode_per_filter(survey_frames, tmp_path, caplog):
    _, paths, _, _ = survey_frames
    folder = paths[0].parent
    # half the frames in filter L, half in R; one bad row (missing file) and one bad number
    rows = ["path,exptime,filter"]
    for k, p in enumerate(paths):
        rows.append(f"{p},10,{'L' if k % 2 == 0 else 'R'}")
    rows.append("missing_frame.fits,10,L")
    rows.append(f"{paths[1]},ten,L")
    plan = tmp_path / "stack_plan.csv"
    plan.write_text("\n".join(rows) + "\n")
    caplog.set_level(logging.INFO, logger="skymosaic")
    result = run_pipeline([folder], tmp_path / "out", _config(**{"grid.plan": str(plan)}))
    rep = result.report
    assert rep["mode"] == "grid"
    assert set(rep["products"]["mosaics"]) == {"L", "R"}
    for name in rep["products"]["mosaics"].values():
        data, _, weight = read_mosaic(tmp_path / "out" / name)
        assert data.shape[1:] == result.data_shape[1:]  # both filters on one canvas
        assert np.isfinite(data).any() and weight is not None
    # data rows are numbered from 1 (the reason also gives the file line)
    assert {r["row_number"] for r in rep["plan"]["rejected"]} == {len(paths) + 1, len(paths) + 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"row {len(paths) + 1}" in m and "missing_frame.fits" in m for m in warnings)
    assert any(f"row {len(paths) + 2}" in m and "exposure" in m.lower() for m in warnings)
    assert any("[GRID]" in m and "tiles of" in m for m in (r.getMessage() for r in caplog.records))


def test_grid_mode_from_cli_and_no_plan_flag(survey_frames, tmp_path):
    _, paths, _, _ = survey_frames
    folder = tmp_path / "frames"
    folder.mkdir()
    for p in paths:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "stack_plan.csv").write_text(
        "file\n" + "".join(f"{p.name}\n" for p in paths))
    assert main(["run", str(folder), "-o", str(tmp_path / "g"), "--no-preview",
                 "--threads", "2"]) == 0
    assert json.loads((tmp_path / "g" / "run.json").read_text())["mode"] == "grid"
    assert main(["run", str(folder), "-o", str(tmp_path / "c"), "--no-preview", "--threads", "2",
                 "--no-plan"]) == 0
    assert json.loads((tmp_path / "c" / "run.json").read_text())["mode"] == "classic"


def test_unreadable_plan_is_a_usage_error(survey_frames, tmp_path):
    _, paths, _, _ = survey_frames
    plan = tmp_path / "stack_plan.csv"
    plan.write_text("colour,size\nred,3\n")  # no path column
    code = main(["run", str(paths[0].parent), "-o", str(tmp_path / "o"), "--plan", str(plan),
                 "--no-preview"])
    assert code == 2


def test_grid_module_exports():
    assert {"assemble_tiles", "make_tile_grid", "run_grid", "find_plan"} <= set(grid_mod.__all__)
    assert isinstance(FrameInfo, type)


def test_mounts_and_sessions_are_stacked_apart(survey_frames, tmp_path):
    _, paths, _, _ = survey_frames
    rows = ["file_path,mount,batch_id"]
    for k, p in enumerate(paths):  # two frames per pointing: one EQ night 1, one ALTZ night 2
        rows.append(f"{p},{'EQ' if k % 2 == 0 else 'ALTZ'},{'n1' if k % 2 == 0 else 'n2'}")
    plan = tmp_path / "plan.csv"
    plan.write_text("\n".join(rows) + "\n")
    result = run_pipeline([paths[0].parent], tmp_path / "out", _config(**{"grid.plan": str(plan)}))
    grid = result.report["grid"][""]
    ids = grid["tile_names"]
    assert any(i.endswith("_EQ_n1") for i in ids) and any(i.endswith("_ALTZ_n2") for i in ids)
    boxes = {}
    for t in grid["tiles"]:
        boxes.setdefault(tuple(t["bbox"]), []).append(t["tile_id"])
    assert any(len(v) == 2 for v in boxes.values())  # both sessions on the same box
    assert grid["photometry_mode"] == "frames"  # sessions matched by the frames' solve
    assert grid["frame_photometry"]["status"] == "ok"
    data, _, _ = read_mosaic(result.mosaic_path)
    assert np.isfinite(data).mean() > 0.8
