"""The display stretch (`skymosaic.io._stretch`): sky at the target level, linked, highlights
kept, per-pixel (block-independent) and the same as the preview."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from skymosaic.io import stretch_preview
from skymosaic.io._stretch import StretchOptions, StretchParams, apply_stretch, fit_stretch, to_uint
from skymosaic.photometry import measure_color
from skymosaic.synth import SEESTAR_RESPONSE, make_truth_sky

SHAPE = (400, 400)
NOISE = 5.0


@pytest.fixture(scope="module")
def sky_image():
    """A cast OSC image with stars and one bright galaxy (core 3000 sigma above the sky)."""
    size = SHAPE[0] * 2.0 / 3600.0
    truth = make_truth_sky(
        center=(150.0, 2.0),
        size_deg=(size, size),
        pixel_scale_arcsec=2.0,
        channels=3,
        n_stars=800,
        n_galaxies=0,
        nebula_amplitude=0.0,
        flux_slope=0.6,
        seed=5,
    )
    image = truth.render(truth.wcs_for(SHAPE), SHAPE)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r = np.hypot(yy - 250.0, xx - 150.0)
    galaxy = 15000.0 * np.exp(-r / 6.0)
    rng = np.random.default_rng(5)
    response = np.asarray(SEESTAR_RESPONSE)[:, None, None]
    sky = np.array([300.0, 420.0, 260.0])[:, None, None]
    data = (response * (image + galaxy) + sky + rng.normal(0, NOISE, (3, *SHAPE))).astype(
        np.float32
    )
    data[:, :30] = np.nan
    return data, r


@pytest.mark.parametrize("curve", ["asinh", "mtf"])
@pytest.mark.parametrize("target", [0.1, 0.15, 0.25])
def test_sky_lands_on_the_target_level(sky_image, curve, target):
    data, _ = sky_image
    color = measure_color(data)
    params = fit_stretch(
        data, options=StretchOptions(target_background=target, curve=curve), color=color
    )
    y = apply_stretch(data, params)
    valid = np.isfinite(data).all(axis=0)
    medians = [float(np.median(y[c][valid])) for c in range(3)]
    assert medians == pytest.approx([target] * 3, abs=0.01)


def test_preview_statistics_neutral_unclipped(sky_image):
    data, r = sky_image
    img = stretch_preview(data, color=measure_color(data))
    valid = np.isfinite(data).all(axis=0)
    medians = [float(np.median(img[..., c][valid])) for c in range(3)]
    assert np.ptp(medians) <= 2  # 8-bit levels
    assert 0.1 * 255 <= np.mean(medians) <= 0.25 * 255
    clipped = (img == 255).any(axis=-1)[valid].mean()
    assert clipped < 0.0005
    # the galaxy core keeps structure: levels fall steadily outwards, none clipped
    core = img[..., 1][r < 12]
    assert core.max() < 255 and len(np.unique(core)) > 30
    ring = [float(np.median(img[..., 1][(r >= a) & (r < a + 2)])) for a in (0, 4, 8, 12, 16)]
    assert all(b < a for a, b in itertools.pairwise(ring))


def test_raw_cast_is_green_without_calibration(sky_image):
    data, _ = sky_image
    img = stretch_preview(data)  # linked, no calibration: the cast shows
    valid = np.isfinite(data).all(axis=0)
    medians = [float(np.median(img[..., c][valid])) for c in range(3)]
    assert medians[1] > medians[0] + 20 and medians[1] > medians[2] + 20


def test_apply_is_block_independent_and_deterministic(sky_image):
    data, _ = sky_image
    params = fit_stretch(data, color=measure_color(data))
    assert fit_stretch(data, color=measure_color(data)) == params
    whole = apply_stretch(data, params)
    rng = np.random.default_rng(0)
    ys = np.sort(rng.choice(np.arange(1, SHAPE[0]), 5, replace=False))
    xs = np.sort(rng.choice(np.arange(1, SHAPE[1]), 3, replace=False))
    rows = []
    for y0, y1 in zip([0, *ys], [*ys, SHAPE[0]], strict=True):
        rows.append(
            np.concatenate(
                [
                    apply_stretch(data[:, y0:y1, x0:x1], params)
                    for x0, x1 in zip([0, *xs], [*xs, SHAPE[1]], strict=True)
                ],
                axis=2,
            )
        )
    assert np.array_equal(np.concatenate(rows, axis=1), whole)
    assert whole.dtype == np.float32 and whole.min() >= 0 and whole.max() <= 1
    assert np.all(whole[:, :30] == 0)  # NaN = no data gives 0


def test_preview_equals_apply_stretch_of_the_plane(sky_image):
    data, _ = sky_image
    color = measure_color(data)
    params = fit_stretch(data, color=color)
    img = stretch_preview(data, color=color)
    assert np.array_equal(img, np.moveaxis(to_uint(apply_stretch(data, params), 8), 0, -1))
    again = StretchParams.from_dict(params.to_dict())
    assert again == params


def test_full_resolution_peaks_above_the_sample_are_clipped_not_wrapped():
    data = np.full((1, 10, 10), 100.0, np.float32)
    data[0, 5, 5] = 1000.0
    params = fit_stretch(data)
    block = np.array([[[99.0, 100.0, 1000.0, 5000.0, np.inf, -np.inf]]], np.float32)
    y = apply_stretch(block, params)[0, 0]
    assert list(y[2:4]) == [1.0, 1.0] and y[0] <= y[1] < 1.0
    assert y[4] == 1.0 and y[5] == 0.0


def test_low_contrast_sample_still_hits_the_target():
    data = np.random.default_rng(1).normal(100, 5, (3, 64, 64)).astype(np.float32)
    y = apply_stretch(data, fit_stretch(data))
    assert float(np.median(y)) == pytest.approx(0.15, abs=0.01)


def test_all_nan_sample():
    data = np.full((3, 8, 8), np.nan, np.float32)
    assert not apply_stretch(data, fit_stretch(data)).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_background": 0.0}, "target_background"),
        ({"target_background": 0.6}, "target_background"),
        ({"shadow_clip": -1.0}, "shadow_clip"),
        ({"curve": "log"}, "curve must be one of"),
        ({"highlight_percentile": 40.0}, "highlight_percentile"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StretchOptions(**kwargs)


def test_bad_shapes():
    params = fit_stretch(np.ones((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"block must be \(3, h, w\)"):
        apply_stretch(np.ones((1, 4, 4), np.float32), params)
    with pytest.raises(ValueError, match=r"sample must be \(C, H, W\)"):
        fit_stretch(np.ones((4, 4), np.float32))
