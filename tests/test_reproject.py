"""Tests of skymosaic.reproject: pixel mapping, resampling kernels and output grids.

Every test has a known answer: the exact WCS transform, an identity or integer shift, a
constant or linear image, a single NaN pixel whose kernel support can be counted, or
astropy's ``reproject_interp`` as an independent reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from reproject import reproject_interp
from scipy.interpolate import RectBivariateSpline

from skymosaic.io import frame_footprint
from skymosaic.reproject import (
    EDGES,
    KERNEL_RADIUS,
    KERNELS,
    OutputGrid,
    exact_pixel_map,
    grid_from_header,
    optimal_grid,
    pixel_map,
    resample,
)
from skymosaic.reproject._mapping import _aligned, _densify, _nodes
from skymosaic.synth import celestial_wcs, make_truth_sky

#: The resample docstring allows OpenCV's 1/32-px position quantisation (INTER_TAB_SIZE,
#: rounded to the nearest step: off by at most half a step). OpenCV 4.x does quantise;
#: the 5.0 installed here was measured to interpolate at exact positions. The tests hold
#: for both.
QUANT = 1.0 / 64.0

CENTER = (150.0, 2.0)


# -- helpers ---------------------------------------------------------------------------


def sip_wcs(shape=(300, 400), *, scale_arcsec=1.5, rotation_deg=5.0, corner_px=1.5) -> WCS:
    """A TAN-SIP WCS whose distortion is about ``corner_px`` px at the frame corners."""
    h, w = shape
    base = celestial_wcs(shape, center=CENTER, pixel_scale_arcsec=scale_arcsec,
                         rotation_deg=rotation_deg)
    hdr = base.to_header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    u, v = w / 2.0, h / 2.0  # corner, relative to CRPIX
    # Second and third order terms each contributing a fraction of corner_px at (u, v).
    a = {(2, 0): 0.5, (1, 1): -0.3, (0, 2): 0.2, (3, 0): 0.4, (1, 2): -0.2}
    b = {(2, 0): -0.2, (1, 1): 0.4, (0, 2): 0.5, (2, 1): 0.3, (0, 3): -0.3}
    hdr["A_ORDER"] = hdr["B_ORDER"] = 3
    for name, terms in (("A", a), ("B", b)):
        for (p, q), frac in terms.items():
            hdr[f"{name}_{p}_{q}"] = frac * corner_px / (u**p * v**q)
    return WCS(hdr)


def rotated_output(shape=(380, 420), *, scale_arcsec=2.0, rotation_deg=33.0) -> WCS:
    return celestial_wcs(shape, center=(CENTER[0] + 0.002, CENTER[1] - 0.003),
                         pixel_scale_arcsec=scale_arcsec, rotation_deg=rotation_deg)


def identity_maps(h: int, w: int, dx: float = 0.0, dy: float = 0.0):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx + np.float32(dx), yy + np.float32(dy)


def lanczos_atol(data: np.ndarray) -> float:
    """Float precision of Lanczos-3 at integer positions: the off-centre weights are
    float32 ``sinc(n)`` ~ 3e-8 rather than 0; 35 of them on values up to max|data|."""
    return 35 * 3e-8 * float(np.nanmax(np.abs(data)))


# -- pixel_map ---------------------------------------------------------------------------


def test_sip_wcs_helper_has_pixel_scale_distortion():
    """The fixture WCS really is distorted by 1-2 px at the corners (else the test is moot)."""
    wcs = sip_wcs()
    h, w = 300, 400
    corners = np.array([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]])
    linear = np.stack(wcs.wcs_pix2world(corners, 0), 0)
    full = wcs.all_pix2world(corners, 0)
    back = wcs.wcs_world2pix(full, 0)  # where the undistorted WCS puts the distorted sky
    shift = np.hypot(*(back - corners).T)
    assert linear.shape == full.shape
    assert np.all(shift > 0.5) and shift.max() > 1.0 and shift.max() < 2.5


@pytest.mark.parametrize("tolerance", [0.01, 0.001])
def test_pixel_map_matches_exact_transform(tolerance):
    wcs_in, wcs_out = sip_wcs(), rotated_output()
    cutout = (0, 380, 0, 420)
    pm = pixel_map(wcs_out, wcs_in, cutout, tolerance=tolerance)
    ex = exact_pixel_map(wcs_out, wcs_in, cutout)
    assert pm.step >= 4, "a spline grid must have been used, not the exact fallback"
    assert pm.x.shape == pm.y.shape == (380, 420)
    assert pm.x.dtype == np.float32
    assert (pm.y0, pm.x0) == (0, 0)
    err = np.hypot(pm.x.astype(np.float64) - ex.x, pm.y.astype(np.float64) - ex.y)
    # float32 coordinates of a few hundred px carry ~3e-5 px rounding each.
    rounding = 2 * np.spacing(np.float32(1024.0))
    assert err.max() <= tolerance + rounding
    assert pm.max_error <= tolerance


def test_pixel_map_max_error_is_measured_honestly():
    """max_error equals the error at the grid's cell centres (where it is checked)."""
    wcs_in, wcs_out = sip_wcs(), rotated_output()
    y0, y1, x0, x1 = cutout = (10, 370, 5, 415)
    pm = pixel_map(wcs_out, wcs_in, cutout, tolerance=0.01)
    # the spline covers the cutout grown to multiples of DENSE_STEP (the fine nodes)
    fitted = (*_aligned(y0, y1), *_aligned(x0, x1))
    assert fitted == (8, 377, 0, 417)
    gy, gx = _nodes(*fitted[:2], pm.step), _nodes(*fitted[2:], pm.step)
    cy, cx = 0.5 * (gy[1:] + gy[:-1]), 0.5 * (gx[1:] + gx[:-1])
    # Re-fit the same spline from the exact nodes and compare at the cell centres.
    nodes_world = wcs_out.pixel_to_world_values(*np.meshgrid(gx, gy))
    node_x, node_y = wcs_in.world_to_pixel_values(*nodes_world)
    sx = RectBivariateSpline(gy, gx, node_x, kx=3, ky=3)
    sy = RectBivariateSpline(gy, gx, node_y, kx=3, ky=3)
    ex, ey = wcs_in.world_to_pixel_values(*wcs_out.pixel_to_world_values(*np.meshgrid(cx, cy)))
    measured = np.hypot(sx(cy, cx) - ex, sy(cy, cx) - ey).max()
    # plus the error of interpolating the spline linearly between its samples
    _, _, dense = _densify(sx, sy, cutout, fitted, 0.01 - measured)
    assert pm.max_error == pytest.approx(measured + dense, rel=1e-6, abs=1e-9)
    assert 0 < pm.max_error <= 0.01
    # and it is representative of the whole cutout: the error anywhere is within the
    # tolerance, and the largest error over all pixels is not hidden far above max_error.
    exact = exact_pixel_map(wcs_out, wcs_in, cutout)
    full = np.hypot(pm.x.astype(np.float64) - exact.x, pm.y.astype(np.float64) - exact.y).max()
    assert full <= 0.01 + 1e-4
    assert full <= 2.0 * pm.max_error + 1e-4


def test_dense_interpolation_of_the_spline_is_measured_or_skipped():
    """Between spline samples DENSE_STEP px apart the map is bilinear; the error that adds
    is measured at the cells' centres, bounds the error on every pixel, and a map with no
    room for it gets the spline on every pixel (bit for bit)."""
    wcs_in, wcs_out = sip_wcs(), rotated_output()
    y0, y1, x0, x1 = cutout = (0, 300, 0, 400)
    fitted = (0, 305, 0, 401)  # grown to multiples of DENSE_STEP = 8
    gy, gx = _nodes(0, 305, 32), _nodes(0, 401, 32)
    node_x, node_y = wcs_in.world_to_pixel_values(
        *wcs_out.pixel_to_world_values(*np.meshgrid(gx, gy)))
    sx = RectBivariateSpline(gy, gx, node_x, kx=3, ky=3)
    sy = RectBivariateSpline(gy, gx, node_y, kx=3, ky=3)
    ry, rx = np.arange(y0, y1, dtype=float), np.arange(x0, x1, dtype=float)
    full_x, full_y = sx(ry, rx), sy(ry, rx)
    x, y, err = _densify(sx, sy, cutout, fitted, room=1.0)
    assert 1e-5 < err < 0.05  # the fixture is strongly distorted: the error is visible
    worst = np.hypot(x - full_x, y - full_y).max()
    rounding = 2 * np.spacing(np.float32(512.0))
    assert worst <= 1.25 * err + rounding
    assert worst >= 0.5 * err  # measured, not a loose bound
    x0_, y0_, err0 = _densify(sx, sy, cutout, fitted, room=0.0)
    assert err0 == 0.0
    np.testing.assert_array_equal(x0_, full_x.astype(np.float32))
    np.testing.assert_array_equal(y0_, full_y.astype(np.float32))


def test_pixel_map_of_overlapping_cutouts_agree_on_common_pixels():
    """The fine nodes are multiples of DENSE_STEP of the output grid, so two blocks of
    rows interpolate a pixel between the same nodes: TAN to TAN (a spline reproduces it far
    below float32 resolution) gives the same float32 coordinates, bit for bit."""
    wcs_in = celestial_wcs((300, 400), center=CENTER, pixel_scale_arcsec=1.5, rotation_deg=5.0)
    wcs_out = rotated_output()
    whole = pixel_map(wcs_out, wcs_in, (0, 200, 3, 389))
    part = pixel_map(wcs_out, wcs_in, (45, 131, 3, 389))
    assert whole.step and part.step and part.max_error > 0
    np.testing.assert_array_equal(part.x, whole.x[45:131])
    np.testing.assert_array_equal(part.y, whole.y[45:131])


def test_pixel_map_offset_cutout_and_small_cutout_is_exact():
    wcs_in, wcs_out = sip_wcs(), rotated_output()
    pm = pixel_map(wcs_out, wcs_in, (100, 140, 200, 260))  # 2400 px: exact path
    ex = exact_pixel_map(wcs_out, wcs_in, (100, 140, 200, 260))
    assert (pm.y0, pm.x0, pm.step, pm.max_error) == (100, 200, 0, 0.0)
    np.testing.assert_array_equal(pm.x, ex.x)
    x, y = wcs_in.world_to_pixel_values(*wcs_out.pixel_to_world_values(217.0, 123.0))
    assert pm.x[23, 17] == pytest.approx(x, abs=1e-4)
    assert pm.y[23, 17] == pytest.approx(y, abs=1e-4)


@pytest.mark.parametrize(
    ("cutout", "kwargs", "match"),
    [
        ((10, 10, 0, 5), {}, r"empty cutout \(10, 10, 0, 5\)"),
        ((0, 10, 0, 5), {"tolerance": 0.0}, "got 0.0, 64"),
        ((0, 10, 0, 5), {"step": 0}, "got 0.01, 0"),
    ],
)
def test_pixel_map_rejects_bad_arguments(cutout, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pixel_map(rotated_output(), sip_wcs(), cutout, **kwargs)


# -- resample: exact cases ------------------------------------------------------------


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_identity_returns_input(kernel, edge):
    rng = np.random.default_rng(1)
    data = rng.normal(100.0, 20.0, (2, 40, 50)).astype(np.float32)
    xmap, ymap = identity_maps(40, 50)
    out, fp = resample(data, xmap, ymap, kernel=kernel, edge=edge)
    assert out.dtype == np.float32 and out.shape == data.shape and fp.shape == (40, 50)
    if edge == "strict":  # the test looks inside a rim of r px (bicubic/Lanczos lose r - 1)
        r = KERNEL_RADIUS[kernel]
        inner = (slice(None), slice(r, -r), slice(r, -r))
        assert fp[r:-r, r:-r].all()
    else:  # every pixel is kept (outer taps beyond the edge have zero weight at integers)
        inner = (slice(None),) * 3
        assert fp.all()
    if kernel in ("nearest", "bilinear", "bicubic"):
        np.testing.assert_array_equal(out[inner], data[inner])
    else:
        np.testing.assert_allclose(out[inner], data[inner], rtol=0, atol=lanczos_atol(data))


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_integer_shift_is_exact_and_outside_is_nan(kernel, edge):
    rng = np.random.default_rng(2)
    h, w = 30, 40
    data = rng.uniform(0.0, 1000.0, (1, h, w)).astype(np.float32)
    dx, dy = 7, -4
    xmap, ymap = identity_maps(h, w, dx, dy)
    out, fp = resample(data, xmap, ymap, kernel=kernel, edge=edge)
    # Output (i, j) samples input (i + dy, j + dx): valid rows i >= 4, columns j < w - 7.
    expected = np.full_like(data, np.nan)
    expected[:, -dy:, : w - dx] = data[:, : h + dy, dx:]
    # At an integer position the open support |t| < r holds the r - 1 neighbours on each
    # side. strict: outputs whose source pixel is within r - 1 px of the frame edge are
    # invalid; half: those neighbours repeat the edge pixel, and every source pixel counts.
    e = KERNEL_RADIUS[kernel] - 1 if edge == "strict" else 0
    inner = np.zeros((h, w), bool)
    inner[e : h - e, e : w - e] = True
    src_inner = np.zeros((h, w), bool)
    src_inner[-dy:, : w - dx] = inner[: h + dy, dx:]
    expected[:, ~src_inner] = np.nan
    assert src_inner.sum() == (h + dy - e) * (w - dx - e)
    np.testing.assert_array_equal(fp, src_inner)
    if kernel == "lanczos3":
        np.testing.assert_allclose(out, expected, rtol=0, atol=lanczos_atol(data))
    else:
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_constant_image_stays_constant(kernel):
    rng = np.random.default_rng(3)
    h, w = 32, 32
    data = np.full((3, h, w), 123.25, np.float32)
    data[1] = -7.5
    xmap = rng.uniform(-4.0, w + 3.0, (50, 60)).astype(np.float32)
    ymap = rng.uniform(-4.0, h + 3.0, (50, 60)).astype(np.float32)
    out, fp = resample(data, xmap, ymap, kernel=kernel)
    assert fp.sum() > 1000  # most samples are inside
    np.testing.assert_allclose(out[0][fp], 123.25, rtol=1e-5)
    np.testing.assert_allclose(out[1][fp], -7.5, rtol=1e-5)
    assert np.isnan(out[:, ~fp]).all()


def test_bilinear_reproduces_linear_ramp_within_position_quantisation():
    """A plane ``a x + b y + c`` is reproduced exactly by bilinear interpolation; OpenCV
    rounds each coordinate to 1/32 px, so the error is ``a dx + b dy`` with
    ``|dx|, |dy| <= 1/64``: at most ``(|a| + |b|) / 64`` (<= sqrt(2) |grad| / 64)."""
    rng = np.random.default_rng(4)
    h, w = 64, 80
    a, b, c = 3.7, -2.2, 500.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    data = (a * xx + b * yy + c).astype(np.float32)[None]
    xs = rng.uniform(0.0, w - 1.0, (40, 50))
    ys = rng.uniform(0.0, h - 1.0, (40, 50))
    out, fp = resample(data, xs.astype(np.float32), ys.astype(np.float32), kernel="bilinear")
    assert fp.all()
    err = np.abs(out[0] - (a * xs + b * ys + c))
    float_noise = 4 * np.spacing(np.float32(800.0))
    bound = (abs(a) + abs(b)) * QUANT + float_noise
    assert err.max() <= bound
    # On the 1/32-px lattice itself the ramp is exact to float precision.
    xq = np.round(xs * 32) / 32
    yq = np.round(ys * 32) / 32
    out_q, _ = resample(data, xq.astype(np.float32), yq.astype(np.float32), kernel="bilinear")
    np.testing.assert_allclose(out_q[0], a * xq + b * yq + c, atol=float_noise)


# -- resample: NaN support ---------------------------------------------------------------


@pytest.mark.parametrize("edge_rule", EDGES)
@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "lanczos3"])
def test_single_nan_invalidates_exactly_its_kernel_support(kernel, edge_rule):
    """Shift by half a pixel: output (i, j) uses input columns j-r+1 .. j+r, so one NaN
    at (y0, x0) kills a (2r) x (2r) block: 4 px for bilinear, 16 bicubic, 36 Lanczos-3,
    with either edge rule."""
    h, w = 40, 40
    r = KERNEL_RADIUS[kernel]
    data = np.full((1, h, w), 10.0, np.float32)
    y0, x0 = 17, 21
    data[0, y0, x0] = np.nan
    xmap, ymap = identity_maps(h, w, 0.5, 0.5)
    out, fp = resample(data, xmap, ymap, kernel=kernel, edge=edge_rule)
    expected_bad = np.zeros((h, w), bool)
    expected_bad[y0 - r : y0 + r, x0 - r : x0 + r] = True
    # strict: the last r columns/rows (and the first r-1) reach outside the frame; half:
    # the last column and row sample x, y = w - 0.5, the frame's outer pixel edge: valid
    edge = np.zeros((h, w), bool)
    if edge_rule == "strict":
        edge[: r - 1, :] = edge[:, : r - 1] = True
        edge[h - r :, :] = edge[:, w - r :] = True
    np.testing.assert_array_equal(~fp & ~edge, expected_bad & ~edge)
    assert (~fp & ~edge).sum() == (2 * r) ** 2
    np.testing.assert_array_equal(~fp, edge | expected_bad)
    np.testing.assert_array_equal(np.isnan(out[0]), ~fp)
    np.testing.assert_allclose(out[0][fp], 10.0, rtol=1e-6)


def test_single_nan_nearest_invalidates_one_pixel():
    h, w = 20, 20
    data = np.ones((1, h, w), np.float32)
    data[0, 8, 11] = np.nan
    xmap, ymap = identity_maps(h, w, 0.3, -0.3)  # rounds back to the identity
    out, fp = resample(data, xmap, ymap, kernel="nearest")
    assert np.flatnonzero(~fp).tolist() == [8 * w + 11]
    assert np.isnan(out[0, 8, 11])


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "lanczos3"])
def test_nan_never_spreads_beyond_support_random_positions(kernel, edge):
    """At arbitrary positions: invalid <=> a NaN input pixel lies in
    ``floor(x)-r+1 .. floor(x)+r`` (both axes) or, strict, that range leaves the frame;
    half: taps beyond the edge are the edge pixel (NaN or not), and the position must lie
    in ``[-0.5, w - 0.5] x [-0.5, h - 0.5]``. Fractions within 0.05 of an integer are
    avoided (there the outermost weights vanish and OpenCV's 1/32 rounding decides)."""
    rng = np.random.default_rng(5)
    h, w = 50, 60
    r = KERNEL_RADIUS[kernel]
    data = rng.uniform(1.0, 2.0, (1, h, w)).astype(np.float32)
    bad = rng.random((h, w)) < 0.01
    data[0, bad] = np.nan
    n = 4000
    xs = np.floor(rng.uniform(-4, w + 3, n)) + rng.uniform(0.05, 0.95, n)
    ys = np.floor(rng.uniform(-4, h + 3, n)) + rng.uniform(0.05, 0.95, n)
    xm, ym = xs.astype(np.float32)[None], ys.astype(np.float32)[None]
    out, fp = resample(data, xm, ym, kernel=kernel, edge=edge)
    if edge == "strict":
        padded = np.pad(bad, r + 5, constant_values=True)  # outside counts as invalid
    else:
        padded = np.pad(bad, r + 5, mode="edge")  # taps beyond the edge repeat it
    expected_invalid = np.empty(n, bool)
    for k in range(n):
        ix, iy = int(np.floor(xs[k])) + r + 5, int(np.floor(ys[k])) + r + 5
        expected_invalid[k] = padded[iy - r + 1 : iy + r + 1, ix - r + 1 : ix + r + 1].any()
    if edge == "half":
        x32, y32 = xm[0], ym[0]
        expected_invalid |= (x32 < -0.5) | (x32 > w - 0.5) | (y32 < -0.5) | (y32 > h - 0.5)
    np.testing.assert_array_equal(~fp[0], expected_invalid)
    assert 0.2 < expected_invalid.mean() < 0.9  # both outcomes well sampled
    assert np.isfinite(out[0, 0][fp[0]]).all()


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_outside_frame_is_nan(kernel, edge):
    h, w = 20, 30
    data = np.ones((1, h, w), np.float32)
    xs = np.array([-0.6, -3.0, w - 0.4, w + 5.0, 5.0, 5.0, 5.0, np.nan, 5.0], np.float32)
    ys = np.array([5.0, 5.0, 5.0, 5.0, -0.6, h - 0.4, h + 10.0, 5.0, np.nan], np.float32)
    out, fp = resample(data, xs[None], ys[None], kernel=kernel, edge=edge)
    assert not fp.any()
    assert np.isnan(out).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_half_edge_keeps_the_outer_half_pixel_with_edge_values(kernel):
    """Half: positions up to the frame's outer pixel edges (-0.5 and w - 0.5, inclusive)
    are valid and read the edge pixels: an image constant along x gives its row values
    exactly at x = -0.5, -0.2 and w - 0.5 (likewise along y); the corners give the corner
    pixels. Strict keeps none of them except nearest, which rounds -0.5 and -0.2 to 0."""
    rng = np.random.default_rng(8)
    h, w = 24, 30
    rows = rng.uniform(10.0, 1000.0, h).astype(np.float32)
    cols = rng.uniform(10.0, 1000.0, w).astype(np.float32)
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    along_x = np.broadcast_to(rows[:, None], (h, w))[None].copy()
    along_y = np.broadcast_to(cols[None, :], (h, w))[None].copy()
    for data, pos, at, expected in (
        (along_x, ys, (-0.5, -0.2, w - 0.5), rows),
        (along_y, xs, (-0.5, -0.2, h - 0.5), cols),
    ):
        fixed = np.stack([np.full(pos.size, v, np.float32) for v in at])
        moving = np.stack([pos] * len(at))
        xm, ym = (fixed, moving) if data is along_x else (moving, fixed)
        out, fp = resample(data, xm, ym, kernel=kernel, edge="half")
        assert fp.all()
        np.testing.assert_allclose(out[0], np.stack([expected] * len(at)), rtol=2e-6)
        _, fp_strict = resample(data, xm, ym, kernel=kernel, edge="strict")
        assert not fp_strict[[0, 2] if kernel != "nearest" else [2]].any()
    corners = rng.uniform(10.0, 1000.0, (1, h, w)).astype(np.float32)
    cx = np.array([[-0.5, w - 0.5, -0.5, w - 0.5]], np.float32)
    cy = np.array([[-0.5, -0.5, h - 0.5, h - 0.5]], np.float32)
    out, fp = resample(corners, cx, cy, kernel=kernel, edge="half")
    assert fp.all()
    if kernel in ("nearest", "bilinear"):  # only the corner pixel is under the support
        np.testing.assert_array_equal(out[0, 0], corners[0, [0, 0, -1, -1], [0, -1, 0, -1]])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shift", [(0.3, -0.2), (-0.45, 0.1), (0.25, 0.45)])
def test_fractional_shift_valid_area_is_the_frame_area(kernel, shift):
    """A constant frame shifted by less than half a pixel on a larger output: half keeps
    exactly w x h output pixels (one per input pixel), all equal to the constant; strict
    keeps (w - 2r + 1) x (h - 2r + 1), the positions with a full support in the frame
    (w x h for nearest, which rounds)."""
    h, w, pad = 20, 30, 4
    r = KERNEL_RADIUS[kernel]
    data = np.full((2, h, w), 321.5, np.float32)
    dx, dy = shift
    yy, xx = np.mgrid[-pad : h + pad, -pad : w + pad].astype(np.float32)
    xm, ym = xx + np.float32(dx), yy + np.float32(dy)
    out, fp = resample(data, xm, ym, kernel=kernel, edge="half")
    assert fp.sum() == w * h
    np.testing.assert_allclose(out[:, fp], 321.5, rtol=1e-6)
    _, fp_strict = resample(data, xm, ym, kernel=kernel, edge="strict")
    n = (w, h) if kernel == "nearest" else (w - 2 * r + 1, h - 2 * r + 1)
    assert fp_strict.sum() == n[0] * n[1]
    assert not (fp_strict & ~fp).any()  # strict is a subset of half


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("theta", [0.3, 1.1])
def test_rotated_valid_area_is_the_frame_area(kernel, theta):
    """A rotated and scaled map (output pixel = 0.81 input pixels): valid output pixels x
    0.81 is the frame's area, w x h for half and (w - 2r + 1)(h - 2r + 1) for strict (w x h
    for nearest), to within 2 % of the frame's perimeter (measured <= 3.3 px of 700; the
    two rules differ by ~350 px)."""
    h, w, s = 150, 200, 0.9
    oy, ox = np.mgrid[0:360, 0:380].astype(np.float64)
    c, sn = math.cos(theta), math.sin(theta)
    x = s * (c * (ox - 190) - sn * (oy - 180)) + 99.63
    y = s * (sn * (ox - 190) + c * (oy - 180)) + 74.29
    data = np.ones((1, h, w), np.float32)
    r = KERNEL_RADIUS[kernel]
    bound = 0.02 * 2 * (w + h)
    strict_area = w * h if kernel == "nearest" else (w - 2 * r + 1) * (h - 2 * r + 1)
    for edge, area in (("half", w * h), ("strict", strict_area)):
        _, fp = resample(data, x.astype(np.float32), y.astype(np.float32), kernel=kernel, edge=edge)
        assert abs(fp.sum() * s * s - area) <= bound, (edge, fp.sum() * s * s, area)


def test_resample_rejects_bad_arguments():
    data = np.zeros((1, 4, 4), np.float32)
    xm = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="unknown kernel 'cubic'"):
        resample(data, xm, xm, kernel="cubic")
    with pytest.raises(ValueError, match=r"got shape \(4, 4\)"):
        resample(data[0], xm, xm)
    with pytest.raises(ValueError, match=r"xmap \(2, 2\) and ymap \(2, 3\)"):
        resample(data, xm, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"edge rule 'wide'; expected one of \('half', 'strict'\)"):
        resample(data, xm, xm, edge="wide")


# -- resample: against astropy reproject, and flux -----------------------------------


def test_bilinear_agrees_with_astropy_reproject_interp():
    """Same bilinear interpolation, exact positions (reproject) vs positions rounded to
    1/32 px (OpenCV): the difference at a pixel is ``grad . d`` with ``|d| <= sqrt(2)/64``
    px. Over sky (flat) pixels that is ~0; on a star of peak P and FWHM ~2.5 px the
    gradient is below ~0.5 P/px, giving < 0.011 P. Tolerances: median |diff| < 1e-3 of the
    data range and 99.9th percentile < 1% of the peak; the mapping error (0.01 px) adds
    the same order as the quantisation."""

    sky = make_truth_sky(center=CENTER, size_deg=(0.2, 0.2), pixel_scale_arcsec=2.0,
                         n_stars=120, n_galaxies=0, fwhm_arcsec=5.0, seed=11)
    shape_in, shape_out = (200, 220), (180, 190)
    wcs_in = celestial_wcs(shape_in, center=CENTER, pixel_scale_arcsec=2.0, rotation_deg=3.0)
    wcs_out = celestial_wcs(shape_out, center=CENTER, pixel_scale_arcsec=2.0, rotation_deg=27.0)
    img = sky.render(wcs_in, shape_in)
    pm = pixel_map(wcs_out, wcs_in, (0, shape_out[0], 0, shape_out[1]))
    ours, fp = resample(img, pm.x, pm.y, kernel="bilinear")
    ref, ref_fp = reproject_interp((img[0], wcs_in), wcs_out, shape_out=shape_out, order="bilinear")
    both = fp & (ref_fp > 0) & np.isfinite(ref)
    assert both.mean() > 0.6
    diff = np.abs(ours[0][both] - ref[both])
    data_range = float(np.nanmax(img) - np.nanmin(img))
    peak = float(np.nanmax(img))
    assert peak > 20.0 * np.median(np.abs(img))  # there are real stars
    assert np.median(diff) < 1e-3 * data_range
    assert np.percentile(diff, 99.9) < 0.01 * peak
    assert diff.max() < 0.03 * peak
    # footprints agree except along the edge (reproject keeps a partial edge ring)
    assert (fp & ~(ref_fp > 0)).sum() == 0


@pytest.mark.parametrize("kernel", ["bilinear", "lanczos3"])
def test_isolated_star_flux_is_conserved(kernel):
    """Same pixel scale, rotated by 37 deg and shifted by a fraction of a pixel: the
    mapping has unit Jacobian, so the summed flux must stay within 1%."""
    h, w = 64, 64
    sigma = 1.6
    xc, yc = 31.3, 30.6
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    flux = 5.0e4
    r2 = (xx - xc) ** 2 + (yy - yc) ** 2
    star = flux / (2 * np.pi * sigma**2) * np.exp(-r2 / (2 * sigma**2))
    data = (star + 0.0).astype(np.float32)[None]
    assert data.sum() == pytest.approx(flux, rel=1e-4)
    th = math.radians(37.0)
    c, s = math.cos(th), math.sin(th)
    u, v = xx - 32.0, yy - 32.0
    xmap = (c * u - s * v + 32.0 + 0.37).astype(np.float32)
    ymap = (s * u + c * v + 32.0 - 0.21).astype(np.float32)
    out, fp = resample(data, xmap, ymap, kernel=kernel)
    assert fp[20:44, 20:44].all()
    total = float(np.nansum(out))
    assert total == pytest.approx(flux, rel=0.01)


# -- output grids ------------------------------------------------------------------------


def _frame_edges(wcs: WCS, shape, samples=9):
    return frame_footprint(wcs, shape, samples=samples)


def _pixels_of(grid: OutputGrid, pts: np.ndarray):
    x, y = grid.wcs.world_to_pixel_values(pts[:, 0], pts[:, 1])
    return np.asarray(x), np.asarray(y)


def test_optimal_grid_refuses_inputs_beyond_a_hemisphere():
    """Frames on opposite sides of the sky (targets.split = false) have no TAN grid: a
    clear error, not a NaN size."""
    shape = (100, 100)
    fps = [_frame_edges(celestial_wcs(shape, center=c, pixel_scale_arcsec=2.0), shape)
           for c in [(10.0, 5.0), (100.0, 5.0), (190.0, -5.0)]]
    with pytest.raises(ValueError, match="more than a hemisphere"):
        optimal_grid(fps, pixel_scale_arcsec=2.0)


def test_optimal_grid_covers_every_footprint_north_up():
    shapes = [(200, 300), (200, 300), (250, 150)]
    wcss = [
        celestial_wcs(shapes[0], center=(150.00, 2.00), pixel_scale_arcsec=2.0, rotation_deg=4.0),
        celestial_wcs(shapes[1], center=(150.12, 2.05), pixel_scale_arcsec=2.0, rotation_deg=-7.0),
        celestial_wcs(shapes[2], center=(150.05, 2.16), pixel_scale_arcsec=2.0, rotation_deg=12.0),
    ]
    fps = [_frame_edges(wc, sh) for wc, sh in zip(wcss, shapes, strict=True)]
    grid = optimal_grid(fps, pixel_scale_arcsec=2.0)
    hgt, wid = grid.shape
    for fp in fps:
        x, y = _pixels_of(grid, fp)
        assert x.min() >= -0.5 and x.max() <= wid - 0.5
        assert y.min() >= -0.5 and y.max() <= hgt - 0.5
    allx, ally = _pixels_of(grid, np.concatenate(fps))
    # tight: the points' bounding box leaves less than one pixel on each axis
    assert (wid - 1) - (allx.max() - allx.min()) < 1.0
    assert (hgt - 1) - (ally.max() - ally.min()) < 1.0
    assert grid.pixel_scale_arcsec == pytest.approx(2.0, rel=1e-9)
    # north up, east left at the centre
    cx, cy = (wid - 1) / 2, (hgt - 1) / 2
    ra0, dec0 = grid.wcs.pixel_to_world_values(cx, cy)
    _, dec_up = grid.wcs.pixel_to_world_values(cx, cy + 100)
    ra_right, _ = grid.wcs.pixel_to_world_values(cx + 100, cy)
    assert dec_up > dec0 and ra_right < ra0
    cd = grid.wcs.pixel_scale_matrix
    assert cd[0, 0] < 0 and cd[1, 1] > 0
    assert cd[0, 1] == pytest.approx(0.0, abs=1e-15) and cd[1, 0] == pytest.approx(0.0, abs=1e-15)
    # exactly north along +y through the tangent point
    xr, yr = grid.wcs.wcs.crpix - 1.0
    ra_t, _ = grid.wcs.pixel_to_world_values(xr, yr)
    ra_t_up, _ = grid.wcs.pixel_to_world_values(xr, yr + 100)
    assert ra_t_up == pytest.approx(ra_t, abs=1e-9)
    assert grid.to_dict()["rotation_deg"] == pytest.approx(0.0, abs=1e-9)


def test_optimal_grid_auto_rotation_is_smaller_for_rotated_field():
    shape = (200, 400)
    wcs = celestial_wcs(shape, center=(210.0, 40.0), pixel_scale_arcsec=1.0, rotation_deg=30.0)
    fp = _frame_edges(wcs, shape)
    north = optimal_grid([fp], pixel_scale_arcsec=1.0)
    auto = optimal_grid([fp], pixel_scale_arcsec=1.0, rotation="auto")
    area_n = north.shape[0] * north.shape[1]
    area_a = auto.shape[0] * auto.shape[1]
    # 400x200 rotated by 30 deg: north-up box ~446 x 373; aligned box ~400 x 200
    assert area_a < 0.55 * area_n
    assert sorted(auto.shape) == pytest.approx([201, 401], abs=2)
    frame_rot = math.degrees(math.atan2(wcs.pixel_scale_matrix[1, 0], wcs.pixel_scale_matrix[1, 1]))
    diff = (auto.to_dict()["rotation_deg"] - frame_rot + 45.0) % 90.0 - 45.0
    assert abs(diff) < 0.5
    x, y = _pixels_of(auto, fp)
    assert x.min() >= -0.5 and x.max() <= auto.shape[1] - 0.5
    assert y.min() >= -0.5 and y.max() <= auto.shape[0] - 0.5


def test_optimal_grid_projection_and_scale():
    shape = (100, 100)
    fp = _frame_edges(celestial_wcs(shape, center=(10.0, -30.0), pixel_scale_arcsec=2.0), shape)
    grid = optimal_grid([fp], pixel_scale_arcsec=4.0, projection="SIN")
    assert list(grid.wcs.wcs.ctype) == ["RA---SIN", "DEC--SIN"]
    assert grid.shape == (pytest.approx(51, abs=1), pytest.approx(51, abs=1))
    assert grid.to_dict()["center_deg"] == pytest.approx([10.0, -30.0], abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixel_scale_arcsec": 0.0}, "pixel_scale_arcsec must be a positive number, got 0.0"),
        ({"pixel_scale_arcsec": float("nan")}, "got nan"),
        ({"pixel_scale_arcsec": 1.0, "rotation": "west"}, "got 'west'"),
        ({"pixel_scale_arcsec": 1e-4, "max_pixels": 1e6}, "exceeds 1e\\+06"),
    ],
)
def test_optimal_grid_rejects_bad_arguments(kwargs, match):
    shape = (100, 100)
    fp = _frame_edges(celestial_wcs(shape, center=CENTER, pixel_scale_arcsec=2.0), shape)
    with pytest.raises(ValueError, match=match):
        optimal_grid([fp], **kwargs)


def test_optimal_grid_needs_footprints():
    with pytest.raises(ValueError, match="no footprints"):
        optimal_grid([], pixel_scale_arcsec=1.0)


def _grid_header(shape=(120, 160)) -> fits.Header:
    wcs = celestial_wcs(shape, center=CENTER, pixel_scale_arcsec=1.5, rotation_deg=10.0)
    hdr = fits.Header()
    hdr["NAXIS"] = 2
    hdr["NAXIS1"], hdr["NAXIS2"] = shape[1], shape[0]
    hdr.update(wcs.to_header())
    return hdr


def test_grid_from_fits_file(tmp_path):
    hdr = _grid_header()
    path = tmp_path / "grid.fits"
    fits.PrimaryHDU(data=np.zeros((120, 160), np.float32), header=hdr).writeto(path)
    grid = grid_from_header(path)
    assert grid.shape == (120, 160)
    assert grid.pixel_scale_arcsec == pytest.approx(1.5, rel=1e-9)
    ref = celestial_wcs((120, 160), center=CENTER, pixel_scale_arcsec=1.5, rotation_deg=10.0)
    np.testing.assert_allclose(grid.wcs.pixel_to_world_values(10.0, 20.0),
                               ref.pixel_to_world_values(10.0, 20.0), atol=1e-10)


def test_grid_from_text_header(tmp_path):
    path = tmp_path / "grid.hdr"
    _grid_header((90, 70)).totextfile(path)
    grid = grid_from_header(str(path))
    assert grid.shape == (90, 70)
    assert grid.to_dict()["rotation_deg"] == pytest.approx(-10.0, abs=1e-9)


def test_grid_from_header_without_naxis_names_file(tmp_path):
    hdr = _grid_header()
    del hdr["NAXIS1"]
    path = tmp_path / "no_size.hdr"
    hdr.totextfile(path)
    with pytest.raises(ValueError, match=r"no_size\.hdr lacks NAXIS1"):
        grid_from_header(path)


def test_grid_from_header_without_wcs_names_file(tmp_path):
    hdr = fits.Header()
    hdr["NAXIS1"], hdr["NAXIS2"] = 10, 10
    path = tmp_path / "plain.hdr"
    hdr.totextfile(path)
    with pytest.raises(ValueError, match=r"plain\.hdr has no celestial WCS"):
        grid_from_header(path)


# -- Lanczos-3 on the host: the weight table ----------------------------------------------


def test_host_lanczos3_weights_are_the_formula_to_float32_precision():
    from skymosaic.backend import lanczos3_weights  # noqa: PLC0415
    from skymosaic.reproject._resample import _lanczos3_weights  # noqa: PLC0415

    frac = np.random.default_rng(0).uniform(0, 1, 200_000).astype(np.float32)
    frac[:3] = [0.0, 0.5, 1.0]
    table = _lanczos3_weights(frac)
    exact = lanczos3_weights(frac.astype(np.float64))
    assert table.shape == (6, frac.size) and table.dtype == np.float32
    assert np.abs(table - exact).max() < 1.2e-5
    np.testing.assert_array_equal(table[:, 0], [0, 0, 1, 0, 0, 0])  # a pixel centre: exact
    np.testing.assert_allclose(table[:, 2], [0, 0, 0, 1, 0, 0], rtol=0, atol=1e-12)


def test_host_lanczos3_equals_the_direct_sum_of_the_formula():
    # The gathers of `_lanczos3` against a plain 6 x 6 sum of the exact weights at random
    # positions of a random image (rotated, shifted maps: every tap offset is exercised).
    from skymosaic.backend import lanczos3_weights  # noqa: PLC0415

    rng = np.random.default_rng(1)
    data = rng.normal(100.0, 20.0, (1, 40, 50)).astype(np.float32)
    yy, xx = np.mgrid[0:20, 0:30].astype(np.float64)
    a = np.deg2rad(7.0)
    xmap = (np.cos(a) * xx - np.sin(a) * yy + 12.37).astype(np.float32)
    ymap = (np.sin(a) * xx + np.cos(a) * yy + 8.81).astype(np.float32)
    out, ok = resample(data, xmap, ymap, kernel="lanczos3")
    assert ok.all()
    fx, fy = np.floor(xmap.astype(np.float64)), np.floor(ymap.astype(np.float64))
    wx, wy = lanczos3_weights(xmap - fx), lanczos3_weights(ymap - fy)
    expected = np.zeros(xmap.shape)
    for ky in range(6):
        for kx in range(6):
            expected += (wy[ky] * wx[kx]
                         * data[0][fy.astype(int) + ky - 2, fx.astype(int) + kx - 2])
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=2e-5 * np.abs(data).max())
