"""Colour calibration (background neutralisation + white balance) as an inverse problem.

Synthetic one-shot-colour mosaics with a known colour cast (a Seestar-like channel response,
green strongest, and a different sky pedestal per channel) and known star colours: the
calibration must neutralise the sky, make the mean star white and keep the star colours'
spread (one scale per channel, never per star).
"""

from __future__ import annotations

import numpy as np
import pytest

from skymosaic.config import ConfigError, load_config
from skymosaic.photometry import ColorCalibration, ColorOptions, measure_color
from skymosaic.synth import SEESTAR_RESPONSE, make_truth_sky

sep = pytest.importorskip("sep")

SHAPE = (500, 500)
NOISE = 5.0
SKY = np.array([300.0, 420.0, 260.0])  # per-channel sky after the response (ADU)
RESPONSE = np.asarray(SEESTAR_RESPONSE)


@pytest.fixture(scope="module")
def osc():
    """(data, truth image, truth sky) of a cast OSC mosaic; no nebula (so "sky" is defined)."""
    size = SHAPE[0] * 2.0 / 3600.0
    truth = make_truth_sky(
        center=(150.0, 2.0),
        size_deg=(size, size),
        pixel_scale_arcsec=2.0,
        channels=3,
        n_stars=1200,
        nebula_amplitude=0.0,
        flux_slope=0.6,
        seed=11,
    )
    image = truth.render(truth.wcs_for(SHAPE), SHAPE)
    rng = np.random.default_rng(11)
    data = (
        RESPONSE[:, None, None] * image + SKY[:, None, None] + rng.normal(0.0, NOISE, (3, *SHAPE))
    ).astype(np.float32)
    data[:, :40, :60] = np.nan  # a no-data corner
    return data, image, truth


@pytest.fixture(scope="module")
def calibration(osc):
    cal = measure_color(osc[0])
    assert cal is not None and cal.status == "ok"
    return cal


def _star_photometry(data, image, truth, *, radius=6.0):
    """Independent aperture fluxes (sky known: median of truth-empty pixels) of the bright,
    isolated truth stars, and their true colours."""
    wcs = truth.wcs_for(SHAPE)
    x, y = wcs.world_to_pixel_values(truth.star_ra, truth.star_dec)
    flux = truth.star_flux
    total = flux.mean(axis=1)
    inside = (x > 20) & (x < SHAPE[1] - 21) & (y > 60) & (y < SHAPE[0] - 21)
    d2 = (x[:, None] - x[None]) ** 2 + (y[:, None] - y[None]) ** 2
    np.fill_diagonal(d2, np.inf)
    # no neighbour within 12 px brighter than 10 % of the star
    d2[total[None, :] < 0.1 * total[:, None]] = np.inf
    isolated = np.sqrt(d2.min(axis=1)) > 12
    pick = inside & isolated & (total > 800)
    empty = image.mean(axis=0) < 0.05 * NOISE
    out = []
    for c in range(3):
        plane = np.ascontiguousarray(data[c] - np.nanmedian(data[c][empty]), dtype=np.float64)
        out.append(sep.sum_circle(plane, x[pick], y[pick], radius)[0])
    measured = np.stack(out, axis=1)
    return measured, flux[pick]


def test_sky_medians_agree_within_one_percent_of_noise(osc, calibration):
    data, image, _ = osc
    calibrated = calibration.apply(data)
    empty = (image.mean(axis=0) < 0.05 * NOISE) & np.isfinite(calibrated).all(axis=0)
    assert empty.sum() > 100_000
    medians = np.array([np.median(calibrated[c][empty]) for c in range(3)])
    noise = np.array([np.std(calibrated[c][empty]) for c in range(3)])
    assert np.ptp(medians) < 0.01 * noise.min()
    # against the truth too: the known sky pedestals land on one level (2 %: the measured
    # sky also holds the unresolved starlight, which is not exactly white)
    true_sky = np.asarray(calibration.scale) * SKY + np.asarray(calibration.offset)
    assert np.ptp(true_sky) < 0.02 * noise.min()
    # and the mean sky level is kept (offsets only redistribute it)
    assert np.mean(true_sky) == pytest.approx(
        np.mean(np.asarray(calibration.scale) * SKY), abs=1e-6
    )


def test_mean_star_colour_is_white_within_two_percent(osc, calibration):
    data, image, truth = osc
    measured, true_flux = _star_photometry(calibration.apply(data), image, truth)
    assert len(measured) >= 40
    q = measured / measured.mean(axis=1, keepdims=True)
    q_true = true_flux / true_flux.mean(axis=1, keepdims=True)
    # white is the true white: a star comes out with its true colour, so the mean of these
    # stars is the mean of their true colours (which is white up to their sampling, ~2 %)
    assert np.all(np.abs(q.mean(axis=0) - q_true.mean(axis=0)) < 0.02), (
        q.mean(axis=0),
        q_true.mean(axis=0),
    )
    # before the calibration the mean star is far from white (green cast)
    raw, _ = _star_photometry(data, image, truth)
    q_raw = raw / raw.mean(axis=1, keepdims=True)
    assert q_raw.mean(axis=0)[1] > 1.2


def test_star_color_gives_the_mean_star_that_colour(osc, calibration):
    """A G2V-like reference: the mean star gets the configured colour, not white; the
    spread and the sky neutralisation stay as with a white reference."""
    data, image, truth = osc
    warm = (1.10, 1.0, 0.85)
    cal = measure_color(data, options=ColorOptions(star_color=warm))
    target = np.asarray(warm) / np.mean(warm)
    # against the white calibration, the scales change by the target colour exactly
    np.testing.assert_allclose(np.asarray(cal.scale) / np.asarray(calibration.scale), target,
                               rtol=1e-9)
    measured, true_flux = _star_photometry(cal.apply(data), image, truth)
    q = measured / measured.mean(axis=1, keepdims=True)
    q_true = true_flux / true_flux.mean(axis=1, keepdims=True)
    got = q.mean(axis=0) / q_true.mean(axis=0)  # the mean star over its true colour
    assert np.all(np.abs(got / got.mean() - target) < 0.02), got
    empty = (image.mean(axis=0) < 0.05 * NOISE) & np.isfinite(data).all(axis=0)
    calibrated = cal.apply(data)
    assert np.ptp([np.median(calibrated[c][empty]) for c in range(3)]) < 0.01 * NOISE


def test_scales_undo_the_channel_response(calibration):
    scale = np.asarray(calibration.scale)
    # relative to green: 1/response (the mean truth star is white within sampling, ~2 %)
    assert scale[0] / scale[1] == pytest.approx(RESPONSE[1] / RESPONSE[0], rel=0.03)
    assert scale[2] / scale[1] == pytest.approx(RESPONSE[1] / RESPONSE[2], rel=0.03)
    assert calibration.n_stars >= 50
    assert calibration.sky == pytest.approx(tuple(SKY), abs=0.2 * NOISE)


def test_star_colours_keep_their_spread(osc, calibration):
    data, image, truth = osc
    measured, true_flux = _star_photometry(calibration.apply(data), image, truth)
    q = measured / measured.mean(axis=1, keepdims=True)
    q_true = true_flux / true_flux.mean(axis=1, keepdims=True)
    # one scale per channel: the measured colours follow the true ones star by star
    red_blue, true_red_blue = np.log(q[:, 0] / q[:, 2]), np.log(q_true[:, 0] / q_true[:, 2])
    slope = np.polyfit(true_red_blue, red_blue, 1)[0]
    assert slope == pytest.approx(1.0, abs=0.08)
    assert np.std(red_blue) == pytest.approx(np.std(true_red_blue), rel=0.1)
    assert np.std(true_red_blue) > 0.2  # the stars do have colours


def test_mono_is_not_calibrated():
    data = np.random.default_rng(0).normal(100, 5, (1, 64, 64)).astype(np.float32)
    assert measure_color(data) is None


def test_no_stars_neutralises_the_background_only(caplog):
    rng = np.random.default_rng(1)
    data = (SKY[:, None, None] + rng.normal(0, NOISE, (3, 200, 200))).astype(np.float32)
    cal = measure_color(data, options=ColorOptions(min_stars=5))
    assert cal.scale == (1.0, 1.0, 1.0) and "fewer than 5" in cal.status
    calibrated = cal.apply(data)
    medians = [np.median(calibrated[c]) for c in range(3)]
    assert np.ptp(medians) < 0.05 * NOISE
    assert "no white balance" in caplog.text or "background neutralised only" in caplog.text


def test_white_none_keeps_unit_scales(osc):
    cal = measure_color(osc[0], options=ColorOptions(white="none"))
    assert cal.scale == (1.0, 1.0, 1.0) and cal.n_stars == 0
    assert np.ptp(np.asarray(cal.sky) + np.asarray(cal.offset)) < 1e-9


def test_apply_is_one_affine_map_per_channel_in_float32(calibration):
    block = np.random.default_rng(2).normal(300, 30, (3, 7, 9)).astype(np.float32)
    block[0, 0, 0] = np.nan
    out = calibration.apply(block)
    for c in range(3):
        expect = block[c] * np.float32(calibration.scale[c]) + np.float32(calibration.offset[c])
        assert np.array_equal(out[c], expect, equal_nan=True)
    assert out.dtype == np.float32


def test_round_trip_and_header_cards(calibration):
    again = ColorCalibration.from_dict(calibration.to_dict())
    assert again == calibration
    cards = calibration.header_cards("apply")
    assert cards["CLRMODE"][0] == "apply" and cards["CLRSCL2"][0] == calibration.scale[1]
    assert all(len(k) <= 8 for k in cards)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"white": "g2v"}, "white must be one of"),
        ({"detect_sigma": 0}, "detect_sigma"),
        ({"min_stars": 0}, "min_stars"),
        ({"star_color": (1.0, 0.0, 1.0)}, "star_color"),
        ({"star_color": (1.0, 1.0)}, "star_color"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ColorOptions(**kwargs)


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\(C, H, W\) with C = 1 or 3"):
        measure_color(np.zeros((2, 8, 8), np.float32))


def test_config_star_color_reaches_the_calibration():
    config = load_config(None, {"color.star_color": [1.1, 1.0, 0.85]})
    assert ColorOptions.from_config(config).star_color == (1.1, 1.0, 0.85)
    with pytest.raises(ConfigError, match="star_color"):
        load_config(None, {"color.star_color": [1.0, -1.0, 1.0]})
