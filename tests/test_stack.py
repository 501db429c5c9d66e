"""Tests of skymosaic.stack: normalisation, weights, rejection and the chunked combine.

Every test builds small seeded synthetic frames whose right answer is known.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from astropy.stats import sigma_clip
from hypothesis import given, settings
from hypothesis import strategies as st

from skymosaic.photometry import Relation
from skymosaic.stack import (
    REJECTION_METHODS,
    StackSettings,
    chunk_rows_for,
    count_rejected,
    estimate_normalization,
    frame_weights,
    nanmedian_frames,
    reject,
    reject_kappa_sigma,
    reject_minmax,
    select_reference,
    stack_cube,
)

H, W = 64, 96
SKY = 100.0


def star_field(h: int = H, w: int = W, *, n_stars: int = 40, seed: int = 0) -> np.ndarray:
    """Flat sky plus Gaussian stars (FWHM ~2.8 px), float64 (h, w)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), SKY)
    sig = 1.2
    for y0, x0, flux in zip(
        rng.uniform(2, h - 2, n_stars),
        rng.uniform(2, w - 2, n_stars),
        rng.pareto(1.5, n_stars) * 300 + 100,
        strict=True,
    ):
        r2 = (yy - y0) ** 2 + (xx - x0) ** 2
        img += flux / (2 * np.pi * sig**2) * np.exp(-r2 / (2 * sig**2))
    return img


def noisy_cube(n: int, *, c: int = 1, sigma: float = 1.0, seed: int = 1, truth=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = star_field() if truth is None else truth
    cube = truth[None, None] + rng.normal(0.0, sigma, (n, c, *truth.shape))
    return cube.astype(np.float32)


def plain(**kw) -> StackSettings:
    base = {"normalization": "none", "rejection": "none", "combine": "mean"}
    base.update(kw)
    return StackSettings(**base)


# ----------------------------------------------------------------------- noise / combine
@pytest.mark.parametrize(
    ("combine", "rejection", "factor"),
    [("mean", "none", 1.0), ("median", "none", 1.2533), ("mean", "winsorized", 1.0)],
)
def test_noise_drops_as_sqrt_n(combine, rejection, factor):
    n = 25
    truth = np.full((H, W), SKY)
    cube = noisy_cube(n, truth=truth, seed=3)
    res = stack_cube(cube, settings=plain(combine=combine, rejection=rejection))
    measured = float(np.std(res.data - truth))
    assert measured == pytest.approx(factor / np.sqrt(n), rel=0.10)
    assert res.data.dtype == np.float32 and res.data.shape == (1, H, W)
    assert np.all(res.n_frames_map <= n)


def test_median_matches_numpy_nanmedian():
    cube = noisy_cube(8, c=3, seed=5)
    cube[2, :, :10] = np.nan
    cube[:, 1, 5, 5] = np.nan
    res = stack_cube(cube, settings=plain(combine="median"))
    with pytest.warns(RuntimeWarning):  # numpy warns on the all-NaN pixel
        expected = np.nanmedian(cube, axis=0)
    np.testing.assert_allclose(res.data, expected, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(nanmedian_frames(cube), res.data)


# ----------------------------------------------------------------------- outliers
def _cube_with_artifacts(n: int = 15):
    truth = star_field(seed=2)
    cube = noisy_cube(n, truth=truth, seed=7)
    k = 4
    trail = np.zeros((H, W), dtype=bool)
    cols = np.arange(W)
    rows = np.round(10 + 0.4 * cols).astype(int)
    ok = rows < H
    trail[rows[ok], cols[ok]] = True
    trail[np.clip(rows[ok] + 1, 0, H - 1), cols[ok]] = True
    rng = np.random.default_rng(11)
    hot = np.zeros((H, W), dtype=bool)
    hot[rng.integers(0, H, 25), rng.integers(0, W, 25)] = True
    cube[k, 0][trail] += 500.0
    cube[k, 0][hot] += 5000.0
    return cube, truth, k, trail | hot


@pytest.mark.parametrize(
    ("rejection", "extra"),
    [
        ("kappa_sigma", {}),
        ("winsorized", {}),
        ("linear_fit", {"kappa_low": 5.0, "kappa_high": 5.0}),
        ("minmax", {"n_low": 0, "n_high": 1}),
    ],
)
def test_trail_and_hot_pixels_rejected(rejection, extra):
    cube, truth, k, bad = _cube_with_artifacts()
    res = stack_cube(cube, settings=plain(rejection=rejection, **extra))
    resid = res.data[0] - truth
    assert np.max(np.abs(resid[bad])) < 1.5  # noise/sqrt(N) ~ 0.26, artefacts 33..330
    assert res.rejected_per_frame[k] >= np.count_nonzero(bad)
    # the artefact frame is the one that lost the most samples
    assert int(np.argmax(res.rejected_per_frame)) == k

    kept = stack_cube(cube, settings=plain(rejection="none"))
    assert np.min(kept.data[0][bad] - truth[bad]) > 20.0  # present without rejection
    assert kept.rejected_per_frame.sum() == 0


def test_rejected_per_frame_exact():
    n, h, w = 10, 4, 5
    cube = np.full((n, 1, h, w), 100.0, dtype=np.float32)
    flat = cube[3, 0].reshape(-1)
    flat[[0, 2, 5, 7, 11, 13, 19]] = 1100.0  # 7 outliers in frame 3
    cube[6, 0, 1, 1] = np.nan  # a gap is never "rejected"
    for method in ("kappa_sigma", "winsorized", "linear_fit"):
        res = stack_cube(cube, settings=plain(rejection=method))
        expected = np.zeros(n, dtype=np.int64)
        expected[3] = 7
        np.testing.assert_array_equal(res.rejected_per_frame, expected, err_msg=method)
        np.testing.assert_array_equal(res.data, 100.0)
        assert res.n_frames_map[1, 1] == n - 1 - (flat[6] == 1100.0)

    # min/max on strictly ordered frames: frame 0 is always lowest, frame 9 highest
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, h, w))
    mm_settings = plain(rejection="minmax", n_low=1, n_high=2)
    res = stack_cube(np.ascontiguousarray(ramp), settings=mm_settings)
    expected = np.zeros(n, dtype=np.int64)
    expected[[0, 8, 9]] = 2 * h * w  # two channels
    np.testing.assert_array_equal(res.rejected_per_frame, expected)
    np.testing.assert_array_equal(res.data, np.mean(np.arange(1, 8)))


def test_kappa_sigma_matches_astropy_sigma_clip():
    rng = np.random.default_rng(21)
    x = rng.normal(50, 3, (17, 2, 20, 30)).astype(np.float32)
    x[rng.random(x.shape) < 0.03] += 60
    x[0, 0, :5] = np.nan
    ours = reject_kappa_sigma(x, kappa_low=2.5, kappa_high=3.0, max_iter=5)
    ref = sigma_clip(
        np.ma.masked_invalid(x),
        sigma_lower=2.5,
        sigma_upper=3.0,
        maxiters=5,
        axis=0,
        cenfunc="median",
        stdfunc="std",
    )
    np.testing.assert_array_equal(ours, ref.mask & np.isfinite(x))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 12),
    n_low=st.integers(0, 3),
    n_high=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_minmax_rejects_exactly_n_low_plus_n_high(n, n_low, n_high, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (n, 3, 4)).astype(np.float32)  # many ties
    x[rng.random(x.shape) < 0.2] = np.nan
    mask = reject_minmax(x, n_low=n_low, n_high=n_high)
    n_valid = np.isfinite(x).sum(axis=0)
    expect = np.where(n_valid > n_low + n_high, n_low + n_high, 0)
    np.testing.assert_array_equal(mask.sum(axis=0), expect)
    assert not mask[np.isnan(x)].any()
    kept = np.where(mask | np.isnan(x), np.nan, x)
    lowest = np.where(np.isfinite(x), x, np.inf).min(axis=0)
    if n_low:  # nothing kept below a rejected low sample
        rej_low = np.where(mask & (x == lowest), x, -np.inf).max(axis=0)
        assert np.all(~(kept < rej_low[None]))


@pytest.mark.parametrize("method", REJECTION_METHODS)
def test_reject_never_flags_nan_and_counts(method):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (12, 1, 6, 7)).astype(np.float32)
    x[:, :, 0, 0] = np.nan
    x[5, 0, 3, 3] = 40.0
    mask = reject(x, method=method)
    assert mask.shape == x.shape and mask.dtype == bool
    assert not mask[:, :, 0, 0].any()
    np.testing.assert_array_equal(count_rejected(mask)[:, 0], mask.reshape(12, -1).sum(axis=1))
    if method != "none":
        assert mask[5, 0, 3, 3]


def _hard_samples(seed: int, dtype) -> np.ndarray:
    """Samples that exercise every edge rule: ties, NaN, pixels with 0-5 valid samples,
    outliers on both sides, a constant pixel."""
    rng = np.random.default_rng(seed)
    v = rng.normal(100, 5, (15, 2, 9, 11))
    ties = rng.random(v.shape) < 0.3
    v[ties] = np.round(v[ties])
    v[rng.random(v.shape) < 0.08] = np.nan
    v[rng.random(v.shape) < 0.05] += 80.0
    v[rng.random(v.shape) < 0.03] -= 60.0
    for k in range(8):  # k valid samples, the last one an outlier
        v[k:, 0, 0, k] = np.nan
        v[:k, 1, 0, k] = 100.0 + np.arange(k)
        v[k - 1, 1, 0, k] = 130.0
        v[k:, 1, 0, k] = np.nan
    v[:, 1, 1, 1] = 42.0  # constant: sigma 0
    return v.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", REJECTION_METHODS)
def test_fast_path_equals_the_array_api_definition(method, dtype):
    """The NumPy fast path and the array-API definition (run here on NumPy, the code a
    device runs) give identical masks, for default and tight thresholds."""
    for seed, kw in ((0, {}), (1, {"kappa_low": 1.5, "kappa_high": 2.0, "max_iter": 10}),
                     (2, {"kappa_low": 1.0, "kappa_high": 1.0}), (3, {"n_low": 2, "n_high": 3})):
        v = _hard_samples(seed, dtype)
        fast = reject(v, method=method, **kw)
        ref = reject(v, method=method, fast_path=False, **kw)
        assert fast.dtype == ref.dtype == bool
        np.testing.assert_array_equal(fast, ref, err_msg=f"{method} {kw}")
        if method != "none":
            assert fast.sum() > 0  # the comparison is not vacuous
    v = _hard_samples(3, dtype)
    np.testing.assert_array_equal(
        nanmedian_frames(v), nanmedian_frames(v, fast_path=False), strict=True
    )


# ----------------------------------------------------------------------- normalisation
GAINS = np.array([1.0, 0.8, 1.25, 0.9, 1.1, 0.7])
OFFSETS = np.array([0.0, 50.0, -30.0, 20.0, 10.0, -40.0])


def _scaled_cube(gains, offsets, *, c: int = 1, sigma: float = 1.0, seed: int = 8):
    truth = star_field(seed=4, n_stars=60)
    rng = np.random.default_rng(seed)
    frames = [
        g * truth[None] + b + rng.normal(0.0, sigma, (c, H, W))
        for g, b in zip(gains, offsets, strict=True)
    ]
    return np.stack(frames).astype(np.float32), truth


@pytest.mark.parametrize("ref", [0, 2])
def test_linear_normalization_recovers_gain_and_offset(ref):
    cube, _ = _scaled_cube(GAINS, OFFSETS, c=3)
    gains, offsets = estimate_normalization(cube, reference=ref, method="linear")
    true_gain = GAINS[ref] / GAINS
    true_offset = OFFSETS[ref] - true_gain * OFFSETS
    assert gains.shape == offsets.shape == (len(GAINS), 3)
    np.testing.assert_allclose(gains, true_gain[:, None] * np.ones(3), rtol=0.005)
    # offsets within 0.5 % of the sky level they shift (some true offsets are ~0)
    assert np.max(np.abs(offsets - true_offset[:, None])) < 0.005 * GAINS[ref] * SKY
    assert gains[ref].tolist() == [1.0] * 3 and offsets[ref].tolist() == [0.0] * 3


def test_linear_normalization_end_to_end_puts_frames_on_reference_scale():
    cube, truth = _scaled_cube(GAINS, OFFSETS, sigma=0.5)
    res = stack_cube(cube, settings=StackSettings(normalization="linear", reference=0))
    assert res.reference == 0
    target = GAINS[0] * truth + OFFSETS[0]
    assert np.median(np.abs(res.data[0] - target)) < 0.5
    raw = stack_cube(cube, settings=plain())
    assert np.median(np.abs(raw.data[0] - target)) > 2.0  # mean sky of frames is 97.4


def test_additive_and_multiplicative_normalization():
    ones = np.ones_like(GAINS)
    cube, _ = _scaled_cube(ones, OFFSETS)
    _, offsets = estimate_normalization(cube, reference=0, method="additive")
    np.testing.assert_allclose(offsets[:, 0], -OFFSETS, atol=0.005 * SKY)
    cube, _ = _scaled_cube(GAINS, np.zeros_like(GAINS))
    gains, offsets = estimate_normalization(cube, reference=0, method="multiplicative")
    np.testing.assert_allclose(gains[:, 0], 1.0 / GAINS, rtol=0.005)
    assert not offsets.any()


def test_normalization_binned_sample_and_reference_auto():
    cube, _ = _scaled_cube(GAINS, OFFSETS)
    cube[0, :, :, :40] = np.nan  # frame 0 covers less
    noise = np.array([1.0, 3.0, 1.0, 0.5, 1.0, 1.0])
    assert select_reference(cube, noise=noise) == 3  # full coverage, lowest noise
    assert select_reference(cube) == 1  # full coverage, first index
    # a sample of at most 500 bins: the frames are averaged in 3x3 blocks, the gains hold
    g_few, _ = estimate_normalization(cube, reference=3, method="linear", sample_pixels=500)
    np.testing.assert_allclose(g_few[:, 0], GAINS[3] / GAINS, rtol=0.01)


def test_binned_sample_recovers_gains_of_a_star_poor_field():
    # 60 faint stars (peaks ~20 sigma) on a flat sky: at full resolution the clipped
    # sample has too little signal range for a gain (offset only, gain 1, and an offset
    # that absorbs the missed gain); averaged in 5x5 blocks, the noise drops 5x while
    # every star keeps its flux, and the gains come back to 0.5 %
    rng = np.random.default_rng(5)
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    truth = np.zeros((h, w))
    for _ in range(60):
        x0, y0, flux = rng.uniform(5, w - 5), rng.uniform(5, h - 5), rng.uniform(300, 3000)
        truth += flux / (2 * np.pi * 1.5**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.5)
    gains, offsets = np.array([1.0, 0.92, 1.07, 0.97]), np.array([0.0, 30.0, -20.0, 12.0])
    cube = np.stack([g * (truth + 400) + o + rng.normal(0, 10, (h, w))
                     for g, o in zip(gains, offsets, strict=True)])[:, None].astype(np.float32)
    full, _ = estimate_normalization(cube, reference=0, method="linear", sample_pixels=h * w)
    assert full[:, 0].tolist() == [1.0] * 4
    binned, shift = estimate_normalization(cube, reference=0, method="linear", sample_pixels=4096)
    np.testing.assert_allclose(binned[:, 0], 1.0 / gains, rtol=0.005)
    np.testing.assert_allclose(shift[:, 0], -offsets / gains, atol=3.0)  # 0.3 sigma


def test_precomputed_block_means_replace_reading_the_cube():
    # build_master_tile hands stack_cube the frames' block means computed while it
    # resampled them: same reference, same gains, same stack, bit for bit; and a sample of
    # the wrong binning is refused, not silently used.
    from skymosaic.stack._normalize import bin_factor, block_mean  # noqa: PLC0415

    cube, _ = _scaled_cube(GAINS, OFFSETS)
    cube[2, :, :10, :] = np.nan
    n, _, h, w = cube.shape
    settings = StackSettings(sample_pixels=500)
    factor = bin_factor(h, w, settings.sample_pixels)
    assert factor > 1
    binned = np.stack([block_mean(cube[k], factor) for k in range(n)])
    assert select_reference(cube, sample_pixels=500, binned=binned) == select_reference(
        cube, sample_pixels=500
    )
    read = stack_cube(cube, settings=settings)
    given = stack_cube(cube, settings=settings, binned=binned)
    np.testing.assert_array_equal(given.gains, read.gains)
    np.testing.assert_array_equal(given.offsets, read.offsets)
    np.testing.assert_array_equal(given.data, read.data)
    doubled = binned.copy()
    doubled[1] *= 2.0  # the gains really come from the given sample
    gains, _ = estimate_normalization(cube, reference=0, sample_pixels=500, binned=doubled)
    assert gains[1, 0] == pytest.approx(read.gains[1, 0] / 2.0, rel=1e-6)
    with pytest.raises(ValueError, match=rf"binned must have shape \({n}, 1, {h // factor}, "):
        estimate_normalization(cube, sample_pixels=500, binned=binned[:, :, 1:])


def test_loose_linear_gain_is_not_inverted(monkeypatch, caplog):
    # A frame of the pinned classic survey once got a Deming slope of 0.0004 +- 0.0005
    # marked "ok": inverted, it scaled the frame by 2538 and put a stripe of 5000-ADU
    # pixels along the master tile's edge. A gain looser than 10 % keeps the sky offset.
    import skymosaic.stack._normalize as norm  # noqa: PLC0415

    cube, _ = _scaled_cube(np.ones_like(GAINS), OFFSETS)
    loose = Relation(gain=0.000394, offset=117.0, gain_err=0.0005, offset_err=1.0, n_used=500,
                     residual_rms=4.0, status="ok")
    monkeypatch.setattr(norm, "fit_linear_relation", lambda *a, **k: loose)
    with caplog.at_level(logging.INFO, logger="skymosaic.stack._normalize"):
        gains, offsets = estimate_normalization(cube, reference=0, method="linear")
    assert gains[:, 0].tolist() == [1.0] * len(GAINS)
    np.testing.assert_allclose(offsets[:, 0], -OFFSETS, atol=0.005 * SKY)  # sky matched
    assert "looser than 10%" in caplog.text


def test_normalization_failure_falls_back_to_identity(caplog):
    cube = noisy_cube(3, truth=np.full((H, W), SKY))
    cube[2, :, :, :] = np.nan
    cube[2, 0, 0, 0] = 1.0
    gains, offsets = estimate_normalization(cube, reference=0, method="linear")
    assert gains[2, 0] == 1.0 and offsets[2, 0] == 0.0
    assert "common valid pixels" in caplog.text


# ----------------------------------------------------------------------- weights
def test_noise_weight_is_inverse_variance():
    w = frame_weights(4, 1, noise=[1.0, 2.0, 1.0, 1.0], methods="noise")
    assert w[1, 0] / w[0, 0] == pytest.approx(0.25, rel=1e-12)
    assert w.mean() == pytest.approx(1.0)
    # noise is judged after normalisation: a frame scaled by 0.5 with twice the noise ties
    w = frame_weights(
        2, 3, noise=[[1.0] * 3, [2.0] * 3], gains=[[1.0] * 3, [0.5] * 3], methods=["noise"]
    )
    np.testing.assert_allclose(w, 1.0)


def test_exposure_and_fwhm_weights():
    w = frame_weights(
        3, 1, exposure=[10, 20, 30], fwhm=[2.0, 2.0, 4.0], methods=("fwhm", "exposure")
    )
    raw = np.array([10 * 1.0, 20 * 1.0, 30 * 0.25])
    np.testing.assert_allclose(w[:, 0], raw / raw.mean())


def test_weighted_mean_and_weight_map():
    cube = np.zeros((2, 1, 3, 4), dtype=np.float32)
    cube[1] = 10.0
    res = stack_cube(cube, settings=plain(weighting="noise"), noise=[1.0, 2.0])
    np.testing.assert_allclose(res.data, 2.0, rtol=1e-6)  # (1.6*0 + 0.4*10) / 2
    np.testing.assert_allclose(res.frame_weights[:, 0], [1.6, 0.4])
    np.testing.assert_allclose(res.weight, 2.0)
    pw = np.ones((2, 3, 4), dtype=np.float32)
    pw[1, 0, 0] = 0.0
    pw[0, 2, 3] = np.nan
    res = stack_cube(cube, settings=plain(weighting="noise"), noise=[1.0, 2.0], pixel_weights=pw)
    assert res.data[0, 0, 0] == 0.0 and res.weight[0, 0] == pytest.approx(1.6)
    assert res.data[0, 2, 3] == 10.0 and res.n_frames_map[2, 3] == 1


# ----------------------------------------------------------------------- coverage / NaN
def test_partial_coverage_counts_are_exact():
    n = 10
    cube = np.full((n, 3, H, W), np.nan, dtype=np.float32)
    expected = np.zeros((H, W), dtype=np.int32)
    for k in range(n):
        y0, x0 = 3 * k, 6 * k
        cube[k, :, y0 : y0 + 30, x0 : x0 + 40] = 7.0
        expected[y0 : y0 + 30, x0 : x0 + 40] += 1
    cube[:, :, 60:, 90:] = np.nan  # a corner nobody covers
    expected[60:, 90:] = 0
    res = stack_cube(cube, settings=plain(rejection="kappa_sigma"))
    np.testing.assert_array_equal(res.n_frames_map, expected)
    covered = expected > 0
    np.testing.assert_array_equal(res.data[:, covered], 7.0)
    assert np.isnan(res.data[:, ~covered]).all()
    np.testing.assert_array_equal(res.weight, expected.astype(np.float32))
    assert res.weight[~covered].sum() == 0


def test_all_nan_pixel_gives_nan_and_zero_weight():
    cube = noisy_cube(5, c=3)
    cube[:, :, 10, 20] = np.nan
    for combine in ("mean", "median"):
        res = stack_cube(cube, settings=plain(combine=combine, rejection="winsorized"))
        assert np.isnan(res.data[:, 10, 20]).all()
        assert res.weight[10, 20] == 0.0 and res.n_frames_map[10, 20] == 0
        assert np.isfinite(res.data[:, 11, 20]).all()


# ----------------------------------------------------------------------- chunking / memmap
def _messy_cube(n: int = 12, c: int = 3, h: int = 37, w: int = 53, seed: int = 9):
    rng = np.random.default_rng(seed)
    truth = star_field(h, w, n_stars=12, seed=seed)
    cube = (
        truth[None, None] * rng.uniform(0.9, 1.1, (n, c, 1, 1)) + rng.normal(0, 2, (n, c, h, w))
    ).astype(np.float32)
    cube[rng.random(cube.shape) < 0.01] += 800.0
    cube[2, :, :, :20] = np.nan
    cube[5, :, 30:, :] = np.nan
    pw = rng.uniform(0.2, 1.0, (n, h, w)).astype(np.float32)
    pw[7, :5] = 0.0
    pw[8, :, -3:] = np.nan
    return cube, pw, rng.uniform(1, 3, (n, c)), rng.uniform(2, 4, n)


def _assert_same(a, b):
    for name in ("data", "weight", "n_frames_map", "rejected_per_frame", "gains", "offsets"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


@pytest.mark.parametrize(
    ("rejection", "combine"),
    [("winsorized", "mean"), ("kappa_sigma", "median"), ("linear_fit", "mean"), ("minmax", "mean")],
)
def test_chunked_equals_unchunked(rejection, combine):
    cube, pw, noise, fwhm = _messy_cube()
    base = {
        "normalization": "linear",
        "rejection": rejection,
        "combine": combine,
        "weighting": ("noise", "fwhm"),
    }
    kw = {"noise": noise, "fwhm": fwhm, "pixel_weights": pw}
    whole = stack_cube(cube, settings=StackSettings(chunk_rows=37, **base), **kw)
    assert whole.chunk_rows == 37
    for rows in (1, 5, 36):  # 1 row, a non-divisor, all but one
        part = stack_cube(cube, settings=StackSettings(chunk_rows=rows, **base), **kw)
        _assert_same(whole, part)
    tiny = StackSettings(memory_budget_bytes=600_000, **base)
    assert 1 < chunk_rows_for(*cube.shape, tiny) < 37
    _assert_same(whole, stack_cube(cube, settings=tiny, **kw))


def test_memmap_cube_matches_in_memory(tmp_path):
    cube, pw, noise, _ = _messy_cube()
    path = tmp_path / "cube.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=cube.shape)
    mm[:] = cube
    mm.flush()
    del mm
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=cube.shape)
    st_ = StackSettings(chunk_rows=8, weighting="noise")
    from_disk = stack_cube(ro, settings=st_, noise=noise, pixel_weights=pw)
    in_mem = stack_cube(cube.copy(), settings=st_, noise=noise, pixel_weights=pw)
    _assert_same(from_disk, in_mem)
    assert np.array_equal(np.asarray(ro), cube, equal_nan=True)  # input untouched


def test_input_never_modified_and_progress_reported():
    cube, _, _, _ = _messy_cube()
    before = cube.copy()
    calls = []
    stack_cube(
        cube, settings=StackSettings(chunk_rows=10), progress=lambda d, t: calls.append((d, t))
    )
    assert np.array_equal(cube, before, equal_nan=True)
    assert calls == [(10, 37), (20, 37), (30, 37), (37, 37)]


def test_integer_cube_and_summary_is_json():
    cube = np.full((4, 1, 5, 6), 12, dtype=np.uint16)
    res = stack_cube(cube, settings=StackSettings(normalization="additive", reference=1))
    assert res.data.dtype == np.float32 and np.all(res.data == 12.0)
    summary = json.loads(json.dumps(res.to_dict()))
    assert summary["n_frames"] == 4 and summary["reference"] == 1
    assert summary["coverage_fraction"] == 1.0 and summary["max_frames_per_pixel"] == 4


def test_memory_budget_sets_chunk_height():
    s = StackSettings(rejection="winsorized", memory_budget_bytes=1 << 30)
    rows = chunk_rows_for(200, 3, 1080, 1920, s)
    per_row = 200 * 3 * 1920 * 4 * 10
    assert rows == (1 << 30) // (per_row + 200 * 1920 * 8)
    assert chunk_rows_for(200, 3, 1080, 1920, StackSettings(memory_budget_bytes=1)) == 1
    assert chunk_rows_for(5, 1, 10, 10, StackSettings(chunk_rows=64)) == 10


# ----------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"normalization": "scale"}, "normalization.*'scale'"),
        ({"rejection": "sigma"}, "rejection.*'sigma'"),
        ({"combine": "sum"}, "combine.*'sum'"),
        ({"weighting": ("noise", "snr")}, "weighting.*'snr'"),
        ({"reference": -1}, "reference.*-1"),
        ({"reference": "best"}, "reference.*'best'"),
        ({"kappa_low": 0.0}, "kappa_low.*0.0"),
        ({"kappa_high": float("nan")}, "kappa_high.*nan"),
        ({"max_iter": 0}, "max_iter.*0"),
        ({"n_high": -1}, "n_high.*-1"),
        ({"memory_budget_bytes": 0}, "memory_budget_bytes.*0"),
        ({"chunk_rows": 0}, "chunk_rows.*0"),
        ({"sample_pixels": 2.5}, "sample_pixels.*2.5"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StackSettings(**kwargs)


def test_bad_inputs_raise():
    cube = noisy_cube(3)
    with pytest.raises(ValueError, match=r"shape \(3, 1, 64\)"):
        stack_cube(cube[:, :, :, 0])
    with pytest.raises(ValueError, match="reference=5"):
        stack_cube(cube, settings=StackSettings(reference=5))
    with pytest.raises(ValueError, match="noise=None"):
        stack_cube(cube, settings=StackSettings(weighting="noise"))
    with pytest.raises(ValueError, match=r"pixel_weights.*got \(3, 64\)"):
        stack_cube(cube, pixel_weights=np.ones((3, 64)))
    with pytest.raises(ValueError, match=r"noise must be finite and > 0, got -1\.0"):
        stack_cube(cube, settings=plain(weighting="noise"), noise=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="dtype"):
        stack_cube(cube.astype(np.complex64))
    with pytest.raises(ValueError, match=r"method.*'median'"):
        estimate_normalization(cube, method="median")
    with pytest.raises(ValueError, match=r"rejection method.*'foo'"):
        reject(cube, method="foo")


def test_linear_normalization_ignores_trail_and_hot_pixels():
    cube, _, k, _ = _cube_with_artifacts()
    gains, offsets = estimate_normalization(cube, reference=0, method="linear")
    np.testing.assert_allclose(gains[:, 0], 1.0, rtol=0.005)
    assert np.max(np.abs(offsets)) < 0.005 * SKY
    res = stack_cube(cube, settings=StackSettings(normalization="linear", reference=0))
    assert res.gains[k, 0] == gains[k, 0]


def test_normalisation_warning_names_the_frame_file(caplog):
    # a frame with no pixel in common with the reference cannot be normalised: the warning
    # says which file it is (not "frame 1"), and the frame keeps (1, 0)
    rng = np.random.default_rng(2)
    cube = np.full((2, 1, 40, 50), np.nan, np.float32)
    cube[0, :, :, :25] = 100 + rng.normal(0, 1, (1, 40, 25))
    cube[1, :, :, 25:] = 100 + rng.normal(0, 1, (1, 40, 25))
    with caplog.at_level(logging.WARNING, logger="skymosaic.stack._normalize"):
        gains, offsets = estimate_normalization(cube, reference=0, method="linear",
                                                names=["night1_0001.fits", "night1_0002.fits"])
    assert gains[1, 0] == 1.0 and offsets[1, 0] == 0.0
    assert "night1_0002.fits channel 0" in caplog.text
    assert "onto night1_0001.fits" in caplog.text
    with pytest.raises(ValueError, match="names has 1 entries for 2 frames"):
        estimate_normalization(cube, reference=0, method="linear", names=["a.fits"])


def test_npy_reader_reads_bands_and_frames_like_the_array(tmp_path):
    # The stack reads its chunks as row bands with pread (no map); every other key goes
    # through a map closed at once. Both must return exactly the stored values, in arrays
    # of their own.
    from skymosaic.stack.master import NpyReader  # noqa: PLC0415

    rng = np.random.default_rng(4)
    cube = rng.normal(size=(5, 3, 17, 11)).astype(np.float32)
    reader = NpyReader.create(tmp_path / "cube.npy", cube.shape, np.float32)
    for k in range(5):
        reader.write_frame(k, cube[k])
    for key in [np.s_[:, :, 3:9, :], np.s_[:, :, 0:17], np.s_[:, :, 16:40, :], np.s_[:, :, 5:5]]:
        assert reader._row_band(key) is not None
        got = reader[key]
        np.testing.assert_array_equal(got, cube[key])
        assert got.flags.owndata and got.flags.writeable
    for key in [2, np.s_[1:3, :, 2:4, :], np.s_[:, :, 3:9, 1:4], np.s_[:, :, ::2, :]]:
        assert reader._row_band(key) is None
        np.testing.assert_array_equal(reader[key], cube[key])
    reader.write_frame(3, cube[0, 2], channel=1)  # one plane of one frame
    np.testing.assert_array_equal(reader[3][1], cube[0, 2])
    np.testing.assert_array_equal(reader[3][[0, 2]], cube[3][[0, 2]])
    with pytest.raises(ValueError, match=r"block of shape \(17, 11\) for \[3\]"):
        reader.write_frame(3, cube[0, 2])
    cube[3, 1] = cube[0, 2]
    footprint = NpyReader.create(tmp_path / "pw.npy", (5, 17, 11), np.uint8)
    footprint.write_frame(1, np.ones((17, 11), np.uint8))
    np.testing.assert_array_equal(footprint[:, 4:6, :].sum(axis=(1, 2)), [0, 22, 0, 0, 0])
    with open(reader.path, "r+b") as fh:  # a scratch file cut short is an error, not zeros
        fh.truncate(reader.offset + 100)
    with pytest.raises(OSError, match="file ends before byte"):
        reader[:, :, 3:9, :]
