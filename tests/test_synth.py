"""Tests of skymosaic.synth: the synthetic sky, surveys, Seestar frames and metrics."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from hypothesis import given, settings
from hypothesis import strategies as st

from skymosaic.synth import (
    SEESTAR_PIXEL_SCALE_ARCSEC,
    TruthSky,
    celestial_wcs,
    coverage_fraction,
    fit_affine,
    frame_border_mask,
    make_seestar_frames,
    make_survey,
    make_truth_sky,
    residual_map,
    residual_rms,
    seam_score,
    star_color_scatter,
    star_flux_scatter,
    write_seestar_frames,
    write_survey,
)
from skymosaic.synth._sky import _tan_deproject, _tan_project

CENTER = (150.0, 2.0)


def _one_star(flux: float = 1e5, channels: int = 1, fwhm: float = 5.0) -> TruthSky:
    return make_truth_sky(center=CENTER, size_deg=(0.002, 0.002), n_stars=1, n_galaxies=0,
                          nebula_amplitude=0.0, channels=channels, fwhm_arcsec=fwhm,
                          flux_range=(flux, flux * 1.0001), seed=3)


def _centroid(img: np.ndarray, x0: float, y0: float, r: int = 6) -> tuple[float, float]:
    ix, iy = round(x0), round(y0)
    stamp = img[iy - r:iy + r + 1, ix - r:ix + r + 1].astype(np.float64)
    yy, xx = np.mgrid[iy - r:iy + r + 1, ix - r:ix + r + 1]
    return float((stamp * xx).sum() / stamp.sum()), float((stamp * yy).sum() / stamp.sum())


# -- truth sky --------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.2, 3.0])
@pytest.mark.parametrize("rotation", [0.0, 37.0])
def test_star_flux_is_conserved(scale, rotation):
    sky = _one_star(channels=3)
    wcs = sky.wcs_for((64, 64), pixel_scale_arcsec=scale, rotation_deg=rotation)
    img = sky.render(wcs, (64, 64))
    assert img.shape == (3, 64, 64) and img.dtype == np.float32
    np.testing.assert_allclose(img.sum(axis=(1, 2)), sky.star_flux[0], rtol=0.01)


def test_star_lands_where_the_wcs_says_on_rotated_and_sin_grids():
    sky = _one_star(fwhm=6.0)
    ra, dec = sky.star_ra[0], sky.star_dec[0]
    for wcs in (sky.wcs_for((48, 48), rotation_deg=0.0),
                sky.wcs_for((48, 48), rotation_deg=23.0),
                sky.wcs_for((48, 48), rotation_deg=-71.0, projection="SIN")):
        img = sky.render(wcs, (48, 48))[0]
        x, y = wcs.world_to_pixel_values(ra, dec)
        cx, cy = _centroid(img, float(x), float(y))
        assert abs(cx - x) < 0.05 and abs(cy - y) < 0.05


def test_surface_brightness_scales_with_pixel_area():
    sky = make_truth_sky(center=CENTER, size_deg=(0.2, 0.2), n_stars=0, n_galaxies=0,
                         nebula_amplitude=30.0, nebula_scale_arcsec=300.0, seed=5)
    fine = sky.render(sky.wcs_for((40, 40), pixel_scale_arcsec=2.0), (40, 40))[0]
    coarse = sky.render(sky.wcs_for((20, 20), pixel_scale_arcsec=4.0), (20, 20))[0]
    binned = fine.reshape(20, 2, 20, 2).sum(axis=(1, 3))
    assert coarse.max() > 1.0  # the test region does contain nebulosity
    np.testing.assert_allclose(coarse, binned, rtol=0.02, atol=0.02 * coarse.max())


def test_truth_sky_is_seeded_and_in_range():
    a = make_truth_sky(size_deg=(0.3, 0.3), seed=11, channels=3)
    b = make_truth_sky(size_deg=(0.3, 0.3), seed=11, channels=3)
    assert a.n_stars == round(3000 * 0.09)
    np.testing.assert_array_equal(a.star_flux, b.star_flux)
    total = a.star_flux.mean(axis=1)
    assert total.min() >= 10**1.5 * 0.999 and total.max() <= 10**5.5 * 1.001
    with pytest.raises(ValueError, match="read-only"):
        a.star_flux[0, 0] = 1.0


def test_render_and_factory_validate_arguments():
    sky = _one_star()
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        sky.render(sky.wcs_for((8, 8)), (8, 8), channels=2)
    with pytest.raises(ValueError, match="celestial"):
        sky.render(WCS(naxis=2), (8, 8))
    with pytest.raises(ValueError, match="size_deg"):
        make_truth_sky(size_deg=(0.0, 1.0))
    with pytest.raises(ValueError, match="projection"):
        celestial_wcs((8, 8), center=CENTER, pixel_scale_arcsec=1.0, projection="XYZ")


@settings(max_examples=50, deadline=None)
@given(st.floats(-2000, 2000), st.floats(-2000, 2000), st.floats(0, 359.9), st.floats(-80, 80))
def test_tangent_plane_round_trip(xi, eta, ra0, dec0):
    ra, dec = _tan_deproject(xi, eta, ra0, dec0)
    xi2, eta2 = _tan_project(ra, dec, ra0, dec0)
    assert abs(xi2 - xi) < 1e-6 and abs(eta2 - eta) < 1e-6


# -- surveys ----------------------------------------------------------------------------


def test_frames_recover_documented_gain_and_offset():
    s = make_survey(n_x=2, n_y=1, frame_shape=(96, 96), channels=3, sky_gradient=0.0,
                    noise_sigma=0.05, rotation_deg=3.0, seed=7)
    assert len(s.frames) == 2
    for f in s.frames:
        truth = s.truth.render(f.wcs, f.shape)
        scale, offset = fit_affine(f.data, truth)
        np.testing.assert_allclose(scale, f.gain, rtol=0.01)
        np.testing.assert_allclose(offset, f.gain * f.sky_level + f.offset, rtol=0.01)
    assert not np.allclose(s.frames[0].gain, s.frames[1].gain)


def test_sky_gradient_is_in_the_data():
    s = make_survey(n_x=1, n_y=1, frame_shape=(64, 64), sky_gradient=0.5, noise_sigma=0.5,
                    rotation_deg=0.0, seed=2)
    f = s.frames[0]
    model = f.gain[0] * (s.truth.render(f.wcs, f.shape)[0] + f.sky_model()) + f.offset[0]
    assert np.ptp(f.sky_model()) > 0.4 * f.sky_level
    assert np.std(f.data[0] - model) == pytest.approx(0.5, rel=0.1)


def test_frames_per_pointing_repeat_each_pointing():
    s = make_survey(n_x=2, n_y=2, frame_shape=(32, 32), frames_per_pointing=3, jitter_px=2.0,
                    seed=1)
    assert len(s.frames) == 12
    assert len({f.name for f in s.frames}) == 12
    by_pointing: dict = {}
    for f in s.frames:
        by_pointing.setdefault(f.pointing, []).append(f)
    assert sorted(by_pointing) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for group in by_pointing.values():
        assert [f.exposure for f in group] == [0, 1, 2]
        ref = group[0].wcs.wcs.crval
        for f in group[1:]:
            sep_px = math.hypot((f.wcs.wcs.crval[0] - ref[0]) * math.cos(math.radians(2.0)),
                                f.wcs.wcs.crval[1] - ref[1]) * 3600 / 2.0
            assert 0.0 < sep_px < 20.0  # jittered, but the same pointing (step is 22 px)


def test_nan_corners_only_on_rotated_frames():
    rotated = make_survey(n_x=2, n_y=2, frame_shape=(64, 64), rotation_deg=3.0, seed=4)
    for f in rotated.frames:
        if abs(f.rotation_deg) > 0.1:
            assert f.nan_corners and np.isnan(f.data).any()
            h, w = f.shape
            corner = {"y0x0": (0, 0), "y0x1": (0, w - 1), "y1x0": (h - 1, 0),
                      "y1x1": (h - 1, w - 1)}[f.nan_corners[0]]
            assert np.isnan(f.data[(0, *corner)])
            assert np.isfinite(f.data[0, h // 2, w // 2])
    straight = make_survey(n_x=1, n_y=2, frame_shape=(64, 64), rotation_deg=0.0, seed=4)
    assert all(np.isfinite(f.data).all() and not f.nan_corners for f in straight.frames)


def test_hot_pixels_trails_and_sip_are_injected_and_flagged():
    s = make_survey(n_x=1, n_y=1, frame_shape=(64, 64), hot_pixels=4, satellite_prob=1.0,
                    sip=True, nan_corners=False, seed=9)
    f = s.frames[0]
    assert f.hot_pixels.shape == (4, 2)
    assert np.all(f.data[0, f.hot_pixels[:, 0], f.hot_pixels[:, 1]] > 2000)
    assert f.has_trail and f.trail is not None
    assert f.wcs.sip is not None
    corners = np.array([[0.0, 0.0], [63.0, 0.0], [0.0, 63.0], [63.0, 63.0]])
    lin = f.wcs.wcs_pix2world(corners, 0)
    full = f.wcs.all_pix2world(corners, 0)
    shift_px = np.hypot((full[:, 0] - lin[:, 0]) * math.cos(math.radians(2.0)),
                        full[:, 1] - lin[:, 1]) * 3600 / 2.0
    assert 0.3 < shift_px.max() < 2.5
    with pytest.raises(ValueError, match="overlap must be in"):
        make_survey(overlap=1.5)


@pytest.mark.parametrize(("channels", "layout"), [(1, "CHW"), (3, "CHW"), (3, "HWC")])
def test_write_survey_round_trip(tmp_path, channels, layout):
    s = make_survey(n_x=2, n_y=1, frame_shape=(24, 40), channels=channels, rotation_deg=4.0,
                    seed=3)
    paths = write_survey(s, tmp_path, layout=layout)
    assert [p.name for p in paths] == ["frame_0000.fits", "frame_0001.fits"]
    assert not list(tmp_path.glob(".*tmp"))
    for path, f in zip(paths, s.frames, strict=True):
        with fits.open(path) as hdul:
            data, hdr = hdul[0].data, hdul[0].header
        expected = {1: (24, 40), 3: (3, 24, 40) if layout == "CHW" else (24, 40, 3)}
        assert data.shape == expected[channels] and data.dtype.kind == "f"
        assert data.dtype.itemsize == 4
        chw = data[None] if channels == 1 else (data if layout == "CHW" else
                                                np.moveaxis(data, -1, 0))
        np.testing.assert_array_equal(chw, f.data)
        assert hdr["EXPTIME"] > 0 and hdr["OBJECT"] and hdr["FILTER"] and hdr["DATE-OBS"]
        wcs = WCS(hdr).celestial
        x, y = np.array([0.0, 39.0]), np.array([0.0, 23.0])
        np.testing.assert_allclose(wcs.pixel_to_world_values(x, y),
                                   f.wcs.pixel_to_world_values(x, y), atol=1e-9)


# -- Seestar ----------------------------------------------------------------------------


def test_seestar_frames_look_like_raw_grbg_subs(tmp_path):
    truth = make_truth_sky(center=(189.0, 41.1), size_deg=(1.6, 1.6), n_stars=600,
                           pixel_scale_arcsec=SEESTAR_PIXEL_SCALE_ARCSEC, channels=3, seed=2)
    (f,) = make_seestar_frames(1, truth=truth, seed=2)
    assert f.data.dtype == np.uint16 and f.data.shape == (1920, 1080)
    assert f.header["BAYERPAT"] == "GRBG" and f.header["INSTRUME"] == "Seestar S50"
    assert abs(SEESTAR_PIXEL_SCALE_ARCSEC - 2.39) < 0.01
    g1, r = np.median(f.data[0::2, 0::2]), np.median(f.data[0::2, 1::2])
    b, g2 = np.median(f.data[1::2, 0::2]), np.median(f.data[1::2, 1::2])
    assert abs(g1 - g2) < 0.02 * g1 and g1 > 1.15 * r and g1 > 1.15 * b
    path = write_seestar_frames([f], tmp_path, wcs_mode="header")[0]
    with fits.open(path) as hdul:
        assert hdul[0].header["BZERO"] == 32768 and hdul[0].header["BITPIX"] == 16
        np.testing.assert_array_equal(hdul[0].data, f.data)
        assert WCS(hdul[0].header).has_celestial


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
@pytest.mark.parametrize("mode", ["sidecar", "none"])
def test_seestar_wcs_modes(tmp_path, mode):
    truth = make_truth_sky(center=(189.0, 41.1), size_deg=(0.3, 0.3), n_stars=50, channels=3,
                           pixel_scale_arcsec=SEESTAR_PIXEL_SCALE_ARCSEC, seed=1)
    frames = make_seestar_frames(2, truth=truth, shape=(64, 48), dither_deg=0.002,
                                 wcs_mode=mode, seed=1)
    assert "CTYPE1" not in frames[0].header
    paths = write_seestar_frames(frames, tmp_path, wcs_mode=mode)
    assert "CTYPE1" not in fits.getheader(paths[0])
    sidecar = paths[0].with_suffix(".wcs")
    assert sidecar.exists() == (mode == "sidecar")
    if mode == "sidecar":
        wcs = WCS(fits.getheader(sidecar))
        np.testing.assert_allclose(wcs.pixel_to_world_values(5.0, 7.0),
                                   frames[0].wcs.pixel_to_world_values(5.0, 7.0), atol=1e-9)
    with pytest.raises(ValueError, match="wcs_mode must be one of"):
        make_seestar_frames(1, wcs_mode="astrometry")


# -- metrics ----------------------------------------------------------------------------


def test_fit_affine_and_residual_are_exact_for_an_affine_image():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 100, (3, 20, 30)).astype(np.float32)
    mosaic = truth * np.array([1.5, 0.8, 2.0], np.float32)[:, None, None] + np.array(
        [10.0, -3.0, 0.5], np.float32)[:, None, None]
    mosaic[:, :5] = np.nan
    scale, offset = fit_affine(mosaic, truth)
    np.testing.assert_allclose(scale, [1.5, 0.8, 2.0], rtol=1e-5)
    np.testing.assert_allclose(offset, [10.0, -3.0, 0.5], atol=1e-3)
    res = residual_map(mosaic, truth)
    assert np.isnan(res[:, :5]).all()
    assert np.nanmax(np.abs(res)) < 1e-3
    with pytest.raises(ValueError, match="constant"):
        fit_affine(mosaic, np.ones_like(truth))


def test_residual_rms_measures_noise():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 1000, (1, 100, 100)).astype(np.float32)
    mosaic = 2.0 * truth + 5.0 + rng.normal(0, 3.0, truth.shape).astype(np.float32)
    assert residual_rms(mosaic, truth) == pytest.approx(3.0, rel=0.05)
    lo, hi = np.percentile(2.0 * truth + 5.0, [0.1, 99.9])
    assert residual_rms(mosaic, truth, relative=True) == pytest.approx(3.0 / (hi - lo), rel=0.05)


def test_coverage_fraction_of_half_nan_image():
    img = np.ones((3, 10, 8), np.float32)
    img[:, :5] = np.nan
    assert coverage_fraction(img) == 0.5
    img[1, 7, 0] = np.nan  # one channel missing makes the pixel uncovered
    assert coverage_fraction(img) == pytest.approx(0.5 - 1 / 80)


def test_frame_border_mask_follows_the_footprint():
    out = celestial_wcs((60, 60), center=CENTER, pixel_scale_arcsec=2.0)
    # A 24 x 20 (H x W) frame centred on out pixel (39.5, 41.5), same scale and orientation.
    frame = celestial_wcs((24, 20), center=tuple(out.pixel_to_world_values(39.5, 41.5)),
                          pixel_scale_arcsec=2.0)
    mask = frame_border_mask([(frame, (24, 20))], out, (60, 60), width=2)
    # The frame spans out pixels x 30..49, y 30..53: its edges are at x=29.5/49.5, y=29.5/53.5.
    assert mask[40, 29] and mask[40, 30] and mask[40, 50] and mask[30, 40] and mask[53, 40]
    assert not mask[40, 40] and not mask[40, 25] and not mask[10, 10] and not mask[58, 40]
    valid = np.ones((24, 20), bool)
    valid[:12, :10] = False  # a missing quadrant adds an inner edge
    mask2 = frame_border_mask([(frame, valid)], out, (60, 60), width=1)
    assert mask2[36, 40] and mask2[42, 35] and not mask2[47, 44]
    with pytest.raises(ValueError, match="width must be >= 0"):
        frame_border_mask([(frame, (24, 20))], out, (60, 60), width=-1)


@pytest.fixture(scope="module")
def seam_case():
    """A seamless 2x2 mosaic: the exact truth plus uniform noise on the frames' union."""
    s = make_survey(n_x=2, n_y=2, frame_shape=(96, 96), rotation_deg=0.0, jitter_px=0.0,
                    nan_corners=False, seed=4)
    wcs, shape = s.mosaic_grid()
    truth = s.truth_image(wcs, shape)
    footprints = []
    for f in s.frames:
        out_xy = np.stack(np.meshgrid(np.arange(shape[1]), np.arange(shape[0])), 0)
        fx, fy = f.wcs.world_to_pixel_values(*wcs.pixel_to_world_values(*out_xy))
        footprints.append((fx > -0.5) & (fx < 95.5) & (fy > -0.5) & (fy < 95.5))
    mosaic = truth + np.random.default_rng(0).normal(0, 3.0, truth.shape).astype(np.float32)
    mosaic[:, ~np.any(footprints, axis=0)] = np.nan
    border = frame_border_mask([(f.wcs, f.shape) for f in s.frames], wcs, shape)
    return truth, mosaic, footprints, border


def test_seam_score_is_one_without_seams_and_large_with_a_step(seam_case):
    truth, mosaic, footprints, border = seam_case
    assert 0.5 < coverage_fraction(mosaic) < 1.0
    assert 0.8 < seam_score(mosaic, truth, border) < 1.2
    stepped = mosaic.copy()
    stepped[:, footprints[0]] += 15.0  # 5 sigma offset on one frame
    assert seam_score(stepped, truth, border) > 2.0
    with pytest.raises(ValueError, match="border_mask shape"):
        seam_score(mosaic, truth, border[:-1])


@pytest.mark.parametrize("amplitude", [0.05, 0.1])
def test_star_flux_scatter_measures_injected_photometric_errors(amplitude):
    sky = make_truth_sky(center=CENTER, size_deg=(0.15, 0.15), n_stars=400, n_galaxies=2,
                         flux_range=(1e3, 1e5), seed=8)
    wcs = sky.wcs_for((256, 256), rotation_deg=10.0)
    truth = sky.render(wcs, (256, 256))
    rng = np.random.default_rng(0)
    mosaic = 2.0 * truth + 7.0 + rng.normal(0, 1.0, truth.shape).astype(np.float32)
    assert star_flux_scatter(mosaic, wcs, sky, truth_image=truth) < 0.01
    errors = 1.0 + amplitude * rng.standard_normal((sky.n_stars, 1))
    perturbed = dataclasses.replace(sky, star_flux=sky.star_flux * errors).render(wcs, (256, 256))
    measured = star_flux_scatter(perturbed, wcs, sky)  # truth rendered internally
    assert measured == pytest.approx(amplitude, rel=0.35)
    with pytest.raises(ValueError, match="usable stars"):
        star_flux_scatter(mosaic, wcs, sky, truth_image=truth, min_flux=1e7)


@pytest.mark.parametrize("amplitude", [0.03, 0.08])
def test_star_color_scatter_measures_injected_colour_errors(amplitude):
    """A colour error of ``amplitude`` per star in R and B (G exact) is measured as such;
    a common error of every channel (grey: a flux error, not a colour one) and one balance
    per channel give 0."""
    sky = make_truth_sky(center=CENTER, size_deg=(0.15, 0.15), channels=3, n_stars=400,
                         n_galaxies=2, flux_range=(1e3, 1e5), seed=8)
    wcs = sky.wcs_for((256, 256), rotation_deg=10.0)
    truth = sky.render(wcs, (256, 256), channels=3)
    rng = np.random.default_rng(0)
    balance = np.array([1.3, 2.0, 0.7], np.float32)[:, None, None]
    grey = 1.0 + 0.1 * rng.standard_normal((sky.n_stars, 1))
    greyed = dataclasses.replace(sky, star_flux=sky.star_flux * grey).render(wcs, (256, 256),
                                                                              channels=3)
    mosaic = balance * greyed + 7.0 + rng.normal(0, 1.0, truth.shape).astype(np.float32)
    assert star_flux_scatter(mosaic, wcs, sky, truth_image=truth) > 0.05  # the grey errors
    assert star_color_scatter(mosaic, wcs, sky, truth_image=truth) < 0.01
    errors = 1.0 + amplitude * rng.standard_normal((sky.n_stars, 3))
    errors[:, 1] = 1.0
    perturbed = dataclasses.replace(sky, star_flux=sky.star_flux * errors).render(wcs, (256, 256),
                                                                                  channels=3)
    measured = star_color_scatter(perturbed, wcs, sky)  # truth rendered internally
    assert measured == pytest.approx(amplitude, rel=0.35)
    with pytest.raises(ValueError, match=">= 2 channels"):
        star_color_scatter(mosaic[:1], wcs, sky, truth_image=truth[:1])
    with pytest.raises(ValueError, match="reference must be"):
        star_color_scatter(mosaic, wcs, sky, truth_image=truth, reference=3)
    with pytest.raises(ValueError, match="usable stars"):
        star_color_scatter(mosaic, wcs, sky, truth_image=truth, min_flux=1e7)
