"""Known answers for `border_step_ratio` and `large_scale_residual`.

A 2 x 2 survey footprint (no gradients) of a truth with strong nebulosity; the "mosaics"
are built directly from the truth rendered on the survey's mosaic grid, NaN outside the
union of the frames' valid footprints, plus Gaussian noise of 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from skymosaic.synth import (
    BorderSteps,
    border_step_ratio,
    large_scale_residual,
    make_survey,
    make_truth_sky,
)

NOISE = 0.5


@pytest.fixture(scope="module")
def scene():
    truth_sky = make_truth_sky(center=(150.0, 2.0), size_deg=(0.35, 0.3), nebula_amplitude=40.0,
                               nebula_scale_arcsec=300.0, seed=5)
    survey = make_survey(n_x=2, n_y=2, frame_shape=(192, 256), sky_gradient=0.0, seed=2,
                         truth=truth_sky)
    wcs, shape = survey.mosaic_grid()
    truth = survey.truth.render(wcs, shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    footprints = []
    for f in survey.frames:
        x, y = f.wcs.world_to_pixel_values(ra, dec)
        ok = (x > -0.5) & (x < f.shape[1] - 0.5) & (y > -0.5) & (y < f.shape[0] - 0.5)
        valid = np.all(np.isfinite(f.data), axis=0)
        fp = np.zeros(shape, dtype=bool)
        fp[ok] = valid[np.rint(y[ok]).astype(int), np.rint(x[ok]).astype(int)]
        footprints.append(fp)
    union = np.any(footprints, axis=0)
    rng = np.random.default_rng(0)
    mosaic = (1.7 * truth + 12.0 + rng.normal(0.0, NOISE, truth.shape)).astype(np.float32)
    mosaic[:, ~union] = np.nan
    return survey, wcs, truth, mosaic, footprints


def test_affine_copy_is_seamless(scene):
    survey, wcs, truth, mosaic, _ = scene
    res = border_step_ratio(mosaic, truth, survey.frames, wcs)
    assert isinstance(res, BorderSteps)
    assert res.n_border >= 8 and res.n_control >= 8
    assert 0.6 < res.ratio < 1.5
    assert res.border < 0.1  # noise of two 8 x 64 px medians: ~0.04
    assert large_scale_residual(mosaic, truth) < 0.01
    assert large_scale_residual(mosaic, truth, remove_quadratic=True) < 0.01
    assert large_scale_residual(1.7 * truth + 12.0, truth) < 1e-5


def test_step_in_one_footprint(scene):
    survey, wcs, truth, mosaic, footprints = scene
    s = 3.0
    stepped = mosaic.copy()
    stepped[:, footprints[0]] += s
    res = border_step_ratio(stepped, truth, survey.frames, wcs)
    assert res.frame_steps[0] == pytest.approx(s, rel=0.05)
    assert res.ratio > 5
    # edges of the other frames that cross frame 0's footprint see no step
    assert all(v < s for v in res.frame_steps[1:])
    d = res.as_dict()
    assert d["frame_steps"][0] == pytest.approx(res.frame_steps[0])


def test_global_quadratic_is_large_scale(scene):
    _, _, truth, mosaic, _ = scene
    h, w = mosaic.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = xx / w - 0.5, yy / h - 0.5
    sigma = 1.4826 * float(np.median(np.abs(truth - np.median(truth))))
    bowl = (4.0 * sigma * (u * u - 0.5 * u * v + v * v)).astype(np.float32)
    raw = large_scale_residual(mosaic + bowl, truth)
    flat = large_scale_residual(mosaic + bowl, truth, remove_quadratic=True)
    assert raw > 0.05
    assert flat < 0.2 * raw
    assert flat < 0.02


def test_mask_and_source_options(scene):
    survey, wcs, truth, mosaic, _ = scene
    plain = border_step_ratio(mosaic, truth, survey.frames, wcs, source_sigma=None)
    given = border_step_ratio(mosaic, truth, survey.frames, wcs, noise_sigma=NOISE)
    assert math.isfinite(plain.ratio) and math.isfinite(given.ratio)
    rect = [(f.wcs, f.shape) for f in survey.frames]
    assert border_step_ratio(mosaic, truth, rect, wcs).n_border > 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"band": 0}, "band must be an integer >= 1"),
    ({"segment": 1}, "segment must be"),
    ({"control_inset": 8}, "must exceed band"),
    ({"source_sigma": 0.0}, "source_sigma must be > 0"),
    ({"noise_sigma": -1.0}, "noise_sigma must be > 0"),
])
def test_border_step_ratio_rejects_bad_arguments(scene, kwargs, match):
    survey, wcs, truth, mosaic, _ = scene
    with pytest.raises(ValueError, match=match):
        border_step_ratio(mosaic, truth, survey.frames, wcs, **kwargs)


def test_large_scale_residual_rejects_bad_arguments():
    t = np.random.default_rng(1).normal(size=(64, 64))
    with pytest.raises(ValueError, match="block must be"):
        large_scale_residual(t, t, block=1)
    with pytest.raises(ValueError, match="min_valid"):
        large_scale_residual(t, t, min_valid=0.0)
    with pytest.raises(ValueError, match="smaller than one block"):
        large_scale_residual(t[:10, :10], t[:10, :10], block=32)
    with pytest.raises(ValueError, match="valid block"):
        large_scale_residual(t, t, block=32, remove_quadratic=True)
