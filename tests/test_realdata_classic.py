"""Classic mode and phase-5 photometry on real sky data (../shared/testdata, see SOURCES.md).

* M94, 6 raw Seestar S50 frames of one session (Bayer GRBG, 10 s, dithered 0.01-0.04 deg,
  astrometry.net sidecar WCS): they overlap almost entirely, so classic mode must stack
  them into one master tile whose green-channel background noise is well below one
  frame's (1/sqrt(6) = 0.41 before any resampling smoothing) and whose stars stay single
  and round (a misregistered stack doubles or elongates them).
* M17, 8 2MASS Ks Atlas tiles (2 x 4, overlaps 4-13 %, sky 640-655 ADU): the sky mismatch
  between overlapping tiles, measured as the median difference of the two tiles on their
  overlap (resampled onto the mosaic grid, corrected with the gains/offsets of run.json),
  must shrink when photometry is on. The tiles' MAGZP agree within 0.0026 mag, so their
  true relative gains are 1 within 0.25 %.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from scipy.spatial import cKDTree

from skymosaic import SkySurface
from skymosaic._tiles import PlacedTile
from skymosaic.assemble import CoaddOptions, FileSource, resample_source, source_bbox
from skymosaic.assemble._phase5 import place_sources
from skymosaic.config import load_config
from skymosaic.io import load_frame, read_mosaic, scan_frame
from skymosaic.pipeline import run_pipeline
from skymosaic.reproject import OutputGrid

sep = pytest.importorskip("sep")

pytestmark = pytest.mark.realdata


def _background(img: np.ndarray, valid: np.ndarray | None = None):
    """NaN/invalid -> 0 with a mask, and sep's 64 px background mesh."""
    img = np.asarray(img, dtype=np.float64)
    mask = ~np.isfinite(img) if valid is None else ~(valid & np.isfinite(img))
    img = np.ascontiguousarray(np.where(mask, 0.0, img))
    return img, mask, sep.Background(img, mask=mask, bw=64, bh=64)


@pytest.fixture(scope="module")
def runs() -> dict:
    """Pipeline runs shared by the tests of this module (built on first use)."""
    return {}


# -- M94: Seestar S50 frames stacked into one master tile ----------------------------------


def _m94(testdata, runs, tmp_path_factory):
    if "m94" not in runs:
        folder = testdata / "seestar_s50_osc"
        paths = sorted((folder / "raw").glob("2_*.fit.gz"))
        if len(paths) != 6:
            pytest.skip(f"expected the 6 M94 frames in {folder / 'raw'}, found {len(paths)}")
        out = tmp_path_factory.mktemp("m94_classic")
        config = load_config(None, {"run.threads": 2, "input.wcs_dirs": [str(folder / "wcs")],
                                    "output.preview": False})
        # full resolution, defaults (quality on): ~11 s on 2 cores, ~9.6 s of it stacking
        runs["m94"] = (folder, paths, run_pipeline(paths, out, config))
    return runs["m94"]


def test_m94_six_frames_stack_into_one_master_tile(testdata, runs, tmp_path_factory):
    _, paths, result = _m94(testdata, runs, tmp_path_factory)
    report = result.report
    assert report["mode"] == "classic" and report["status"] == "ok"
    assert report["frames"]["rejected"] == {}
    (tile,) = report["tiles"]
    assert tile["n_frames"] == 6 and set(tile["frames"]) == {p.name for p in paths}
    assert (result.out_dir / "tiles" / f"{tile['tile_id']}.fits").is_file()
    assert report["output"]["inputs_coadded"] == 1


def test_m94_master_tile_is_deeper_with_round_single_stars(testdata, runs, tmp_path_factory):
    folder, _, result = _m94(testdata, runs, tmp_path_factory)
    tile = result.report["tiles"][0]
    with fits.open(result.out_dir / "tiles" / f"{tile['tile_id']}.fits") as hdul:
        green = hdul[0].data[1].astype(np.float64)
        coverage = hdul["COVERAGE"].data
    # noise: sep background rms where all 6 frames overlap, against the stack's reference
    # frame (the photometric scale the tile is normalised to), debayered, measured alike
    img, mask, bkg = _background(green, coverage == 6)
    assert (~mask).mean() > 0.6
    ref_name = tile["frames"][tile["stack"]["reference"]]
    ref = load_frame(scan_frame(folder / "raw" / ref_name, wcs_dirs=[folder / "wcs"]))[1]
    _, _, ref_bkg = _background(ref)
    ratio = bkg.globalrms / ref_bkg.globalrms
    assert ratio < 0.8  # measured 0.35 (1/sqrt(6) = 0.41, plus resampling smoothing)
    # stars: bright, unsaturated, isolated, away from the edges
    sub = img - bkg.back()
    cat = sep.extract(sub, 5.0, err=bkg.globalrms, mask=mask)
    xy = np.column_stack([cat["x"], cat["y"]])
    nearest = cKDTree(xy).query(xy, k=2)[0][:, 1]
    h, w = sub.shape
    sel = ((cat["flag"] == 0) & (cat["peak"] > 20 * bkg.globalrms) & (cat["peak"] < 20000)
           & (nearest > 15) & (cat["x"] > 15) & (cat["x"] < w - 16)
           & (cat["y"] > 15) & (cat["y"] < h - 16))
    assert sel.sum() >= 30  # measured 74
    elongation = cat["a"][sel] / cat["b"][sel]
    assert np.median(elongation) < 1.3  # measured 1.07
    assert np.mean(elongation > 2.0) < 0.1  # no population of doubled stars


# -- M17: 2MASS Ks tiles, phase-5 photometry on and off ------------------------------------


def _m17(testdata, runs, tmp_path_factory):
    if "m17" not in runs:
        paths = sorted((testdata / "m17_2mass_k").glob("*.fits.gz"))
        if len(paths) != 8:
            pytest.skip(f"expected 8 M17 2MASS tiles, found {len(paths)}")
        root = tmp_path_factory.mktemp("m17_phase5")
        results = {}
        for enabled in (True, False):
            config = load_config(None, {"run.threads": 2, "stack.enabled": False,
                                        "photometry.enabled": enabled, "output.preview": False})
            results[enabled] = run_pipeline(paths, root / f"photometry_{enabled}", config)
        # the raw tiles resampled once onto the (common) mosaic grid
        _, wcs, _ = read_mosaic(results[True].mosaic_path)
        grid = OutputGrid(wcs, tuple(results[True].data_shape[1:]))
        placed = place_sources([FileSource.from_info(scan_frame(p)) for p in paths], grid,
                               CoaddOptions(threads=2))
        runs["m17"] = (paths, results, placed, grid)
    return runs["m17"][:3]


def _corrected_placed(paths, grid, inputs) -> list[PlacedTile]:
    """The tiles resampled onto the grid with their solved gain and sky surface applied, as
    the coadd applies them."""
    out = []
    for p, inp in zip(paths, inputs, strict=True):
        s = FileSource.from_info(scan_frame(p))
        s.gain = np.asarray(inp["gain"], np.float32)
        s.offset = np.asarray(inp["offset"], np.float32)
        s.surface = None if inp.get("surface") is None else SkySurface(np.asarray(inp["surface"]),
                                                                       s.shape[1:])
        cut, data, weight = resample_source(s, grid, source_bbox(s, grid), CoaddOptions(threads=2))
        out.append(PlacedTile(data, cut[0], cut[2], weight=weight, tile_id=s.name))
    return out


def _overlap_jumps(placed, correction) -> np.ndarray:
    """Median of (corrected tile i - corrected tile j) over each overlap of >= 1000 px."""
    jumps = []
    for i in range(len(placed)):
        for j in range(i + 1, len(placed)):
            a, b = placed[i], placed[j]
            (ha, wa), (hb, wb) = a.data.shape[-2:], b.data.shape[-2:]
            y0, y1 = max(a.y0, b.y0), min(a.y0 + ha, b.y0 + hb)
            x0, x1 = max(a.x0, b.x0), min(a.x0 + wa, b.x0 + wb)
            if y1 <= y0 or x1 <= x0:
                continue
            pa = a.data[0, y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0].astype(np.float64)
            pb = b.data[0, y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0].astype(np.float64)
            ok = np.isfinite(pa) & np.isfinite(pb)
            if ok.sum() < 1000:
                continue
            (ga, oa), (gb, ob) = correction(i), correction(j)
            jumps.append(float(np.median((ga * pa + oa - (gb * pb + ob))[ok])))
    return np.array(jumps)


def test_m17_photometry_shrinks_sky_jumps(testdata, runs, tmp_path_factory):
    paths, results, placed = _m17(testdata, runs, tmp_path_factory)
    assert all(r.report["status"] == "ok" for r in results.values())
    ph = results[True].report["photometry"]
    assert ph["status"] == "ok" and ph["relations_ok"] > 0
    assert "photometry" not in results[False].report
    inputs = [ph["inputs"][p.name] for p in paths]
    corrected = _corrected_placed(paths, runs["m17"][3], inputs)
    with_ph = np.abs(_overlap_jumps(corrected, lambda k: (1.0, 0.0)))
    without = np.abs(_overlap_jumps(placed, lambda k: (1.0, 0.0)))
    assert len(with_ph) == len(without) >= 10  # measured 13 overlapping pairs
    # measured: median |jump| 0.03 vs 2.03 ADU, max 0.10 vs 6.6 ADU (with one offset per
    # tile instead of sky surfaces: median 0.67, max 2.3)
    assert np.median(with_ph) < 0.2
    assert np.median(with_ph) < 0.1 * np.median(without)
    assert with_ph.max() < 0.1 * without.max()


def test_m17_relative_gains_match_zero_points(testdata, runs, tmp_path_factory):
    paths, results, _ = _m17(testdata, runs, tmp_path_factory)
    ph = results[True].report["photometry"]
    zp = np.array([fits.getheader(p)["MAGZP"] for p in paths])
    true_rel = 10 ** (0.4 * (zp - zp.mean()))  # DN per unit flux, relative
    gains = np.array([ph["inputs"][p.name]["gain"][0] for p in paths])
    product = gains * true_rel  # corrected DN per unit flux: the same for every tile
    # MAGZP is a per-scan calibration good to ~1-2 %, so this bounds gross errors only.
    # measured 0.983-1.029 (gain_from="pixels": 0.989-1.018, "stars": 0.976-1.024); before
    # the pair fits removed each image's sky plane and cross-checked pixel gains with star
    # aperture fluxes: 0.972-1.045
    np.testing.assert_allclose(product / product.mean(), 1.0, atol=0.035)
