"""Tests for skymosaic.blend: pyramids, blend weights and blend_tiles (known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from skymosaic._tiles import PlacedTile
from skymosaic.blend import (
    band_weights,
    blend_tiles,
    collapse,
    distance_ramp,
    feather_weights,
    gaussian_pyramid,
    laplacian_pyramid,
    levels_for_overlap,
    masked_gaussian_pyramid,
    masked_laplacian_pyramid,
    pyramid_shapes,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------- pyramids
@pytest.mark.parametrize("shape", [(64, 64), (63, 97), (3, 50, 41), (1, 7, 5), (1, 1)])
@pytest.mark.parametrize("levels", [1, 3, 6])
def test_collapse_inverts_laplacian(shape, levels):
    x = (_rng().normal(size=shape) * 100 + 1000).astype(np.float32)
    lap = laplacian_pyramid(x, levels)
    assert len(lap) == levels
    assert all(p.dtype == np.float32 for p in lap)
    back = collapse(lap)
    assert back.shape == x.shape
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-5 * np.abs(x).max())


def test_pyramid_shapes_keep_odd_sizes():
    assert pyramid_shapes((63, 97), 4) == [(63, 97), (32, 49), (16, 25), (8, 13)]
    pyr = gaussian_pyramid(np.zeros((3, 63, 97), np.float32), 4)
    assert [p.shape[1:] for p in pyr] == pyramid_shapes((63, 97), 4)


def test_gaussian_pyramid_of_constant_is_constant():
    for g in gaussian_pyramid(np.full((2, 33, 20), 7.5, np.float32), 5):
        np.testing.assert_allclose(g, 7.5, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_levels_rejected(bad):
    with pytest.raises(ValueError, match="levels must be an integer"):
        gaussian_pyramid(np.zeros((4, 4), np.float32), bad)


def test_masked_pyramid_ignores_values_under_mask():
    rng = _rng(1)
    img = rng.normal(size=(2, 40, 37)).astype(np.float32)
    mask = np.ones((40, 37), bool)
    mask[10:30, 5:20] = False
    mask[:, 30:] = False
    other = img.copy()
    other[:, ~mask] = rng.normal(size=(2, int((~mask).sum()))) * 1e6
    other[0, 12, 7] = np.nan
    other[1, 35, 33] = np.inf
    g1, c1 = masked_gaussian_pyramid(img, mask, 5)
    g2, c2 = masked_gaussian_pyramid(other, mask, 5)
    for a, b in zip(g1, g2, strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    for a, b in zip(c1, c2, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(g1[0][:, mask], img[:, mask])
    lap = masked_laplacian_pyramid(other, mask, 5)
    assert all(np.isfinite(p).all() for p in lap)
    np.testing.assert_allclose(collapse(lap)[:, mask], img[:, mask], atol=1e-5)


def test_masked_pyramid_nan_means_invalid_and_fill_is_mean():
    img = np.full((16, 16), 3.0, np.float32)
    img[:, 8:] = np.nan
    gauss, cert = masked_gaussian_pyramid(img, None, 4)
    for g in gauss:  # normalized convolution of a constant is that constant, fill included
        np.testing.assert_allclose(g, 3.0, rtol=1e-6)
    assert cert[0][:, 8:].max() == 0


def test_masked_pyramid_rejects_bad_mask():
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\)"):
        masked_gaussian_pyramid(np.zeros((4, 4), np.float32), np.ones((3, 3), bool), 2)


@pytest.mark.parametrize(
    ("width", "kwargs", "expected"),
    [
        (0, {}, 1),
        (3, {}, 1),
        (4, {}, 1),
        (8, {}, 2),
        (32, {}, 4),
        (1e6, {}, 8),
        (1, {"min_size": 1}, 1),
        (2, {"min_size": 1}, 2),
        (7, {"min_size": 1}, 3),
        (8, {"min_size": 1}, 4),
        (64, {"min_size": 1, "max_levels": 3}, 3),
    ],
)
def test_levels_for_overlap(width, kwargs, expected):
    assert levels_for_overlap(width, **kwargs) == expected


def test_levels_for_overlap_rejects_bad_width():
    with pytest.raises(ValueError, match="width_px must be finite and >= 0, got -1"):
        levels_for_overlap(-1)


# --------------------------------------------------------------------------- weights
def _corner_masks(shape=(60, 70)):
    """Four overlapping rectangles (2x2 layout) plus a NaN hole in one of them."""
    boxes = [(0, 40, 0, 45), (0, 40, 25, 70), (22, 60, 0, 45), (22, 60, 25, 70)]
    masks = []
    for y0, y1, x0, x1 in boxes:
        v = np.zeros(shape, bool)
        v[y0:y1, x0:x1] = True
        masks.append(v)
    masks[3][45:50, 50:55] = False
    return masks


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_band_weights_sum_to_one_where_valid(levels):
    masks = _corner_masks()
    ramps = [distance_ramp(v, ramp_px=10) for v in masks]
    weights = band_weights(ramps, levels)
    assert len(weights) == levels
    any_valid = np.any(masks, axis=0)
    for level in weights:
        total = np.sum(level, axis=0)
        np.testing.assert_allclose(total[any_valid], 1.0, rtol=1e-5)
        assert np.all(total[~any_valid] == 0)
        for w, v in zip(level, masks, strict=True):
            assert np.all(w[~v] == 0)  # a tile never weighs where it has no data
            assert np.all(w >= 0)


def test_feather_weights_sum_to_one():
    masks = _corner_masks()
    weights = feather_weights([distance_ramp(v, ramp_px=5) for v in masks], sigma=2.0)
    total = np.sum(weights, axis=0)
    any_valid = np.any(masks, axis=0)
    np.testing.assert_allclose(total[any_valid], 1.0, rtol=1e-5)
    assert np.all(total[~any_valid] == 0)


def test_distance_ramp_values():
    v = np.zeros((9, 9), bool)
    v[:, 2:] = True
    ramp = distance_ramp(v, ramp_px=4)
    np.testing.assert_allclose(ramp[4, :8], [0, 0, 0.25, 0.5, 0.75, 1, 1, 1])
    assert ramp[0, 8] == 1  # the array border is not an edge


# ----------------------------------------------------------------------- blend_tiles
def _split(img, boxes):
    return [
        PlacedTile(img[:, y0:y1, x0:x1].copy(), y0, x0, tile_id=str(i))
        for i, (y0, y1, x0, x1) in enumerate(boxes)
    ]


def test_same_image_blends_to_that_image_exactly():
    img = _rng(2).normal(size=(3, 64, 160)).astype(np.float32)
    tiles = _split(img, [(0, 64, 0, 96), (0, 64, 64, 160)])
    res = blend_tiles(tiles, (64, 160))
    assert res.n_pyramid == 1 and res.n_feather == 0 and res.levels_used >= 2
    np.testing.assert_allclose(res.data, img, atol=1e-5)
    np.testing.assert_array_equal(res.weight[:, 64:96], 2)
    np.testing.assert_array_equal(res.weight[:, :64], 1)


@pytest.mark.parametrize("method", ["pyramid", "feather"])
def test_constant_step_gives_smooth_transition(method):
    step = 10.0
    base = _rng(3).normal(scale=0.01, size=(1, 64, 160)).astype(np.float32)
    left = PlacedTile(base[:, :, :96].copy(), 0, 0)
    right = PlacedTile(base[:, :, 64:].copy() + np.float32(step), 0, 64)
    res = blend_tiles([left, right], (64, 160), method=method)
    out = res.data[0]
    # away from the overlap: each tile exactly
    np.testing.assert_array_equal(out[:, :64], base[0, :, :64])
    np.testing.assert_array_equal(out[:, 96:], base[0, :, 96:] + np.float32(step))
    grad = np.abs(np.diff(out - base[0], axis=1))
    assert grad.max() < 0.1 * step  # a 32 px overlap: ~1/32 per px ideally, never a jump
    profile = (out - base[0]).mean(axis=0)
    assert np.all(np.diff(profile[60:100]) > -1e-3)  # monotonic rise from 0 to step
    assert (res.n_pyramid, res.n_feather) == ((1, 0) if method == "pyramid" else (0, 1))


def test_two_by_two_with_four_tile_corner():
    rng = _rng(4)
    img = rng.normal(size=(1, 100, 120)).astype(np.float32)
    boxes = [(0, 60, 0, 70), (0, 60, 50, 120), (40, 100, 0, 70), (40, 100, 50, 120)]
    tiles = _split(img, boxes)
    offsets = [0.0, 5.0, -3.0, 2.0]
    for t, off in zip(tiles, offsets, strict=True):
        t.data += np.float32(off)
    res = blend_tiles(tiles, (100, 120))
    assert np.isfinite(res.data).all()
    assert res.n_pyramid == 6  # 4 edge pairs + 2 diagonal pairs through the corner
    np.testing.assert_array_equal(res.weight[40:60, 50:70], 4)
    # single-coverage corners are exact
    np.testing.assert_array_equal(res.data[0, :40, :50], img[0, :40, :50])
    np.testing.assert_array_equal(res.data[0, 60:, 70:], img[0, 60:, 70:] + np.float32(2))
    # the blend stays within the tiles' offsets and is smooth
    corr = res.data[0] - img[0]
    assert corr.min() >= -3 - 1e-3 and corr.max() <= 5 + 1e-3
    assert np.abs(np.diff(corr, axis=0)).max() < 2.0
    assert np.abs(np.diff(corr, axis=1)).max() < 2.0


def test_same_image_exact_in_two_by_two_grid():
    img = _rng(5).normal(size=(3, 100, 120)).astype(np.float32)
    boxes = [(0, 60, 0, 70), (0, 60, 50, 120), (40, 100, 0, 70), (40, 100, 50, 120)]
    res = blend_tiles(_split(img, boxes), (100, 120), levels=4)
    assert res.levels_used == 4
    np.testing.assert_allclose(res.data, img, atol=1e-5)


def test_overlap_widths_are_measured_only_for_intersecting_pairs(monkeypatch):
    # A 12 x 12 grid of tiles is one cluster: all pairs would be 144*143/2 = 10296
    # overlap measurements; only the 2*12*11 edge neighbours and 2*11*11 diagonal
    # neighbours intersect (506). The blend itself is unchanged: the image comes back.
    import skymosaic.blend._blend as blend_module  # noqa: PLC0415

    calls = []
    measure = blend_module._overlap_width
    monkeypatch.setattr(blend_module, "_overlap_width",
                        lambda a, b: calls.append((a.index, b.index)) or measure(a, b))
    n, tile, step = 12, 24, 16
    size = step * (n - 1) + tile
    img = _rng(9).normal(size=(1, size, size)).astype(np.float32)
    boxes = [(r * step, r * step + tile, c * step, c * step + tile)
             for r in range(n) for c in range(n)]
    res = blend_tiles(_split(img, boxes), (size, size), levels=2)
    assert len(calls) == len(set(calls)) == 2 * n * (n - 1) + 2 * (n - 1) ** 2
    np.testing.assert_allclose(res.data, img, atol=1e-5)


def test_tiles_clipped_at_canvas_edge_and_odd_sizes():
    # Tile values encode canvas position so placement can be checked pixel by pixel.
    canvas = (37, 53)
    yy, xx = np.mgrid[-10:50, -10:70].astype(np.float32)
    truth = (yy * 1000 + xx)[np.newaxis]

    def cut(y0, x0, h, w):
        return PlacedTile(truth[:, y0 + 10 : y0 + 10 + h, x0 + 10 : x0 + 10 + w].copy(), y0, x0)

    tiles = [cut(-7, -5, 25, 31), cut(10, 20, 31, 41), cut(-3, 40, 15, 19), cut(60, 0, 5, 5)]
    res = blend_tiles(tiles, canvas)
    assert res.data.shape == (1, *canvas)
    covered = np.zeros(canvas, bool)
    for t in tiles:
        sl = t.canvas_slices(canvas)
        if sl is not None:
            covered[sl[0]] = True
    np.testing.assert_allclose(res.data[0][covered], truth[0, 10:47, 10:63][covered], atol=1e-2)
    assert np.isnan(res.data[0][~covered]).all()
    assert res.data[0, 0, 0] == 0.0  # canvas (0, 0) comes from the first tile, clipped
    assert res.data[0, 36, 52] == 36 * 1000 + 52
    np.testing.assert_array_equal(res.weight[~covered], 0)


def test_no_nan_where_any_tile_has_data_and_holes_respected():
    rng = _rng(6)
    a = rng.normal(size=(2, 50, 60)).astype(np.float32)
    b = rng.normal(size=(2, 50, 60)).astype(np.float32)
    a[:, 20:30, 50:55] = np.nan  # a hole inside the overlap: b fills it exactly
    b[:, 0:5, 0:5] = np.nan  # a hole only b has: a fills it exactly
    b[0, 40, 10] = np.nan  # one channel NaN invalidates the pixel of b
    ta, tb = PlacedTile(a, 0, 0), PlacedTile(b, 0, 30, weight=np.full((50, 60), 2, np.float32))
    res = blend_tiles([ta, tb], (50, 90))
    assert np.isfinite(res.data).all()  # no NaN: every pixel has a valid tile
    np.testing.assert_array_equal(res.data[:, 20:30, 50:55], b[:, 20:30, 20:25])
    np.testing.assert_array_equal(res.data[:, 0:5, 30:35], a[:, 0:5, 30:35])
    np.testing.assert_array_equal(res.data[:, 40, 40], a[:, 40, 40])
    assert res.weight[0, 40] == 3 and res.weight[0, 70] == 2 and res.weight[40, 40] == 1


def test_narrow_overlap_is_feathered_and_disjoint_tiles_copied():
    t1 = PlacedTile(np.zeros((1, 10, 10), np.float32), 0, 0)
    t2 = PlacedTile(np.ones((1, 10, 10), np.float32), 0, 8)  # 2 px overlap
    t3 = PlacedTile(np.full((1, 5, 5), 4, np.float32), 20, 20)  # alone
    out = np.zeros((1, 30, 30), np.float32)
    res = blend_tiles([t1, t2, t3], (30, 30), out=out)
    assert res.data is out
    assert (res.n_pyramid, res.n_feather, res.levels_used, res.n_clusters) == (0, 1, 0, 2)
    assert np.all((out[0, :10, 8:10] > 0) & (out[0, :10, 8:10] < 1))
    np.testing.assert_array_equal(out[0, 20:25, 20:25], 4)
    assert np.isnan(out[0, 15, 15])


def test_explicit_levels_force_pyramid():
    t1 = PlacedTile(np.zeros((1, 10, 10), np.float32), 0, 0)
    t2 = PlacedTile(np.ones((1, 10, 10), np.float32), 0, 8)
    res = blend_tiles([t1, t2], (10, 18), levels=3)
    assert (res.n_pyramid, res.levels_used) == (1, 3)
    assert np.all((res.data[0, :, 8:10] > 0) & (res.data[0, :, 8:10] < 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "median"}, "method must be one of"),
        ({"levels": 0}, "levels must be None or an integer >= 1, got 0"),
        ({"feather_sigma": -1.0}, "feather_sigma must be finite and > 0, got -1.0"),
        (
            {"out": np.zeros((2, 8, 8), np.float32)},
            r"out must be a float32 array of shape \(1, 8, 8\)",
        ),
        ({"canvas_shape": (0, 8)}, r"canvas_shape must be \(H, W\) with H, W >= 1, got \(0, 8\)"),
    ],
)
def test_blend_tiles_validation(kwargs, match):
    tile = PlacedTile(np.zeros((1, 4, 4), np.float32), 0, 0)
    shape = kwargs.pop("canvas_shape", (8, 8))
    with pytest.raises(ValueError, match=match):
        blend_tiles([tile], shape, **kwargs)


def test_blend_tiles_rejects_mixed_channels_and_empty():
    t1 = PlacedTile(np.zeros((1, 4, 4), np.float32), 0, 0)
    t3 = PlacedTile(np.zeros((3, 4, 4), np.float32), 0, 0)
    with pytest.raises(ValueError, match=r"same number of channels, got \[1, 3\]"):
        blend_tiles([t1, t3], (8, 8))
    with pytest.raises(ValueError, match="non-empty list"):
        blend_tiles([], (8, 8))


@pytest.mark.parametrize("seed", range(4))
def test_random_layouts_keep_coverage_invariants(seed):
    """Random tiles (clipped, odd, holed, weighted): NaN iff uncovered, single coverage exact."""
    rng = _rng(100 + seed)
    for _ in range(15):
        canvas = (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
        n_channels = int(rng.choice([1, 3]))
        tiles = []
        for _ in range(int(rng.integers(1, 6))):
            h, w = (int(s) for s in rng.integers(1, 45, 2))
            data = rng.normal(size=(n_channels, h, w)).astype(np.float32)
            data[:, rng.random((h, w)) < 0.1] = np.nan
            weight = (rng.random((h, w)) > 0.1).astype(np.float32) if rng.random() < 0.3 else None
            y0, x0 = int(rng.integers(-25, canvas[0] + 3)), int(rng.integers(-25, canvas[1] + 3))
            tiles.append(PlacedTile(data, y0, x0, weight=weight))
        res = blend_tiles(tiles, canvas, method=str(rng.choice(["pyramid", "feather"])))
        count = np.zeros(canvas, int)
        single = np.full((n_channels, *canvas), np.nan, np.float32)
        for t in tiles:
            sl = t.canvas_slices(canvas)
            if sl is None:
                continue
            (cy, cx), (ty, tx) = sl
            part = t.data[:, ty, tx]
            valid = np.isfinite(part).all(axis=0)
            if t.weight is not None:
                valid &= t.weight[ty, tx] > 0
            count[cy, cx] += valid
            np.copyto(single[:, cy, cx], part, where=valid)
        assert np.isnan(res.data[:, count == 0]).all()
        assert np.isfinite(res.data[:, count > 0]).all()
        np.testing.assert_array_equal(res.data[:, count == 1], single[:, count == 1])
