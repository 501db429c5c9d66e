"""Tests of skymosaic.io frame reading: discovery, classification, pixels, WCS, debayering."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest
from astropy.io import fits

from skymosaic.io import (
    BAYER_PATTERNS,
    FrameError,
    bayer_masks,
    debayer,
    discover_inputs,
    find_wcs_sidecar,
    load_frame,
    scan_frame,
    validate_wcs,
)
from skymosaic.synth import celestial_wcs, make_survey, write_survey

H, W = 64, 80
CENTER = (150.0, 2.0)


def _wcs(shape=(H, W), center=CENTER, scale=2.0):
    return celestial_wcs(shape, center=center, pixel_scale_arcsec=scale)


def _write(path, data, header=None, *, wcs=True):
    """Write ``data`` as the primary HDU of ``path`` (a TAN WCS for the last two axes)."""
    hdr = fits.Header() if header is None else header.copy()
    if wcs:
        hdr.update(_wcs(data.shape[-2:]).to_header())
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    return path


def _ramp(shape=(H, W), seed=0):
    rng = np.random.default_rng(seed)
    return (1000.0 + rng.uniform(0.0, 100.0, shape)).astype(np.float32)


# -- discover_inputs ----------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """a.fits, b.fit.gz, c.fz, notes.txt, .hidden.fits, sub/d.fits, sub/deep/e.fts."""
    data = np.zeros((4, 4), np.float32)
    for rel in ("a.fits", "b.fit.gz", "sub/d.fits", "sub/deep/e.fts", ".hidden.fits"):
        _write(tmp_path / rel, data, wcs=False)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(tmp_path / "c.fz")
    (tmp_path / "notes.txt").write_text("not a frame")
    return tmp_path


def _names(paths):
    return [p.name for p in paths]


def test_discover_folder_recursive(tree):
    found = discover_inputs([tree])
    assert sorted(_names(found)) == ["a.fits", "b.fit.gz", "c.fz", "d.fits", "e.fts"]
    assert all(p.is_absolute() for p in found)


def test_discover_folder_not_recursive(tree):
    found = discover_inputs([tree], recursive=False)
    assert sorted(_names(found)) == ["a.fits", "b.fit.gz", "c.fz"]


def test_discover_glob_patterns(tree):
    assert _names(discover_inputs([str(tree / "sub" / "*.fits")])) == ["d.fits"]
    assert sorted(_names(discover_inputs([str(tree / "**" / "*.fits")]))) == ["a.fits", "d.fits"]


def test_discover_glob_without_match_warns(tree, caplog):
    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        assert discover_inputs([str(tree / "*.xyz")]) == []
    assert "*.xyz" in caplog.text and "matched no file" in caplog.text


def test_discover_explicit_file_any_suffix(tree):
    odd = tree / "frame.dat"
    odd.write_bytes((tree / "a.fits").read_bytes())
    assert discover_inputs([odd]) == [odd.resolve()]


def test_discover_missing_input_names_it(tree):
    with pytest.raises(FileNotFoundError, match=r"nope_42\.fits"):
        discover_inputs([tree / "a.fits", tree / "nope_42.fits"])


def test_discover_sorted_whatever_the_input_order(tree):
    a, b, d = tree / "a.fits", tree / "b.fit.gz", tree / "sub" / "d.fits"
    assert discover_inputs([d, b, a]) == discover_inputs([a, d, b]) == [a, b, d]


def test_discover_deduplicates(tree, monkeypatch):
    monkeypatch.chdir(tree)
    found = discover_inputs([tree, "a.fits", tree / "sub" / ".." / "a.fits", str(tree / "*.fits"),
                             tree / "sub"])
    assert sorted(_names(found)) == ["a.fits", "b.fit.gz", "c.fz", "d.fits", "e.fts"]
    assert len(set(found)) == len(found)


# -- scan_frame: classification and keywords ---------------------------------------------


def test_scan_mono(tmp_path):
    hdr = fits.Header({"EXPTIME": 30.0, "FILTER": "Ha  ", "DATE-OBS": "2024-01-02T03:04:05",
                       "OBJECT": "M 42"})
    info = scan_frame(_write(tmp_path / "m.fits", _ramp(), hdr))
    assert (info.layout, info.kind, info.shape) == ("2D", "mono", (1, H, W))
    assert info.bayer_pattern is None
    assert info.exposure == 30.0
    assert info.filter == "Ha"
    assert info.date_obs == "2024-01-02T03:04:05"
    assert info.object == "M 42"
    assert info.wcs_source == "header"
    assert info.pixel_scale_arcsec == pytest.approx(2.0, rel=1e-9)


def test_scan_alternative_keywords(tmp_path):
    hdr = fits.Header({"EXPOSURE": 12.5, "FILTNAM": "V", "DATE_OBS": "2020-05-06"})
    info = scan_frame(_write(tmp_path / "m.fits", _ramp(), hdr))
    assert (info.exposure, info.filter, info.date_obs) == (12.5, "V", "2020-05-06")


def test_scan_missing_keywords_are_none(tmp_path):
    info = scan_frame(_write(tmp_path / "m.fits", _ramp()))
    assert (info.exposure, info.filter, info.date_obs) == (None, None, None)


def test_scan_colour_cube_chw(tmp_path):
    data = np.stack([_ramp(seed=k) for k in range(3)])
    hdr = _wcs().to_header()
    hdr["WCSAXES"] = 2  # celestial on axes 1-2; axis 3 is the channel
    info = scan_frame(_write(tmp_path / "c.fits", data, hdr, wcs=False))
    assert (info.layout, info.kind, info.shape) == ("CHW", "rgb", (3, H, W))
    np.testing.assert_array_equal(load_frame(info), data)


def test_scan_colour_cube_hwc(tmp_path):
    survey = make_survey(n_x=1, n_y=1, frame_shape=(H, W), channels=3, seed=2, nan_corners=False)
    (path,) = write_survey(survey, tmp_path, layout="HWC")
    assert fits.getdata(path).shape == (H, W, 3)
    info = scan_frame(path)
    assert (info.layout, info.kind, info.shape) == ("HWC", "rgb", (3, H, W))
    np.testing.assert_array_equal(load_frame(info, valid_min=None), survey.frames[0].data)
    truth = survey.frames[0].wcs
    x, y = np.array([0.0, W - 1.0, 17.3]), np.array([0.0, H - 1.0, 40.1])
    np.testing.assert_allclose(info.wcs.pixel_to_world_values(x, y),
                               truth.pixel_to_world_values(x, y), atol=1e-10)


@pytest.mark.parametrize("shape", [(1, H, W), (1, 1, H, W)])
def test_scan_degenerate_axis_is_mono(tmp_path, shape):
    plane = _ramp()
    info = scan_frame(_write(tmp_path / "d.fits", plane.reshape(shape)))
    assert (info.layout, info.shape) == ("2D", (1, H, W))
    np.testing.assert_array_equal(load_frame(info)[0], plane)
    np.testing.assert_array_equal(load_frame(info, rows=slice(5, 9))[0], plane[5:9])


def test_scan_unsupported_shape(tmp_path):
    path = _write(tmp_path / "five.fits", np.ones((5, H, W), np.float32), wcs=False)
    with pytest.raises(FrameError, match=r"unsupported image shape \(5, 64, 80\)"):
        scan_frame(path)


def test_scan_without_image(tmp_path):
    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="x", format="E", array=np.arange(3.0))])]).writeto(path)
    with pytest.raises(FrameError, match="no image HDU"):
        scan_frame(path)


def test_scan_frame_without_wcs_is_not_an_error(tmp_path):
    info = scan_frame(_write(tmp_path / "nowcs.fits", _ramp(), wcs=False))
    assert info.wcs is None and info.wcs_source is None and info.footprint is None


def test_scan_footprint_and_to_dict(tmp_path):
    info = scan_frame(_write(tmp_path / "m.fits", _ramp()))
    corners = info.wcs.pixel_to_world_values([-0.5, W - 0.5, W - 0.5, -0.5],
                                             [-0.5, -0.5, H - 0.5, H - 0.5])
    np.testing.assert_allclose(info.footprint, np.stack(corners, 1), atol=1e-10)
    d = info.to_dict()
    assert d["kind"] == "mono" and d["shape"] == [1, H, W]
    assert d["center_deg"] == pytest.approx(CENTER, abs=1e-6)


# -- Bayer classification ----------------------------------------------------------------


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_scan_bayer_patterns(tmp_path, pattern):
    raw = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    hdr = fits.Header({"BAYERPAT": pattern.lower() + " "})  # case and padding do not matter
    info = scan_frame(_write(tmp_path / "b.fits", raw, hdr))
    assert (info.layout, info.kind, info.shape) == ("BAYER", "bayer", (3, H, W))
    assert info.bayer_pattern == pattern


@pytest.mark.parametrize(
    ("xoff", "yoff", "expected"),
    [(0, 0, "RGGB"), (1, 0, "GRBG"), (0, 1, "GBRG"), (1, 1, "BGGR"), (2, 3, "GBRG")],
)
def test_scan_bayer_offsets_shift_pattern(tmp_path, xoff, yoff, expected):
    hdr = fits.Header({"BAYERPAT": "RGGB", "XBAYROFF": xoff, "YBAYROFF": yoff})
    info = scan_frame(_write(tmp_path / "b.fits", np.ones((H, W), np.uint16), hdr))
    assert info.bayer_pattern == expected


@pytest.mark.parametrize("value", ["NONE", "mono", ""])
def test_scan_bayerpat_none_is_mono(tmp_path, value):
    info = scan_frame(_write(tmp_path / "b.fits", _ramp(), fits.Header({"BAYERPAT": value})))
    assert info.layout == "2D"


def test_scan_bayer_override(tmp_path):
    info = scan_frame(_write(tmp_path / "b.fits", _ramp()), bayer_pattern="BGGR")
    assert (info.layout, info.bayer_pattern) == ("BAYER", "BGGR")


def test_scan_bad_bayer_pattern(tmp_path):
    path = _write(tmp_path / "b.fits", _ramp(), fits.Header({"BAYERPAT": "RGBG"}))
    with pytest.raises(ValueError, match="unsupported Bayer pattern 'RGBG'"):
        scan_frame(path)


# -- pixel values: dtypes, scaling, byte order, compression -------------------------------


def test_load_uint16_bzero(tmp_path):
    raw = np.array([[0, 1, 32767], [32768, 40000, 65535]], np.uint16)
    path = tmp_path / "u16.fits"
    fits.PrimaryHDU(raw).writeto(path)
    with fits.open(path, do_not_scale_image_data=True) as hdul:  # really stored as int16+BZERO
        assert hdul[0].header["BITPIX"] == 16 and hdul[0].header["BZERO"] == 32768
    out = load_frame(scan_frame(path))
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out[0], raw.astype(np.float32))


def test_load_int16_bscale_bzero(tmp_path):
    stored = np.array([[-32768, -5, 0], [1, 77, 32767]], np.int16)
    hdu = fits.PrimaryHDU(stored)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.5, 100.0
    path = tmp_path / "scaled.fits"
    hdu.writeto(path)
    out = load_frame(scan_frame(path), valid_min=None)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], 0.5 * stored.astype(np.float32) + 100.0)


@pytest.mark.parametrize("dtype", [">f4", ">f8", "<f8", ">i4", "u1"])
def test_load_dtypes_native_float32(tmp_path, dtype):
    values = np.arange(H * W).reshape(H, W) % 251 + 0.0
    if dtype[-2] == "f":
        values = values + 0.25
    path = tmp_path / "d.fits"
    fits.PrimaryHDU(values.astype(dtype)).writeto(path)
    out = load_frame(scan_frame(path), valid_min=None)
    assert out.dtype == np.dtype(np.float32) and out.dtype.isnative and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0], values.astype(np.float32))


def test_load_gzip(tmp_path):
    data = _ramp()
    info = scan_frame(_write(tmp_path / "g.fits.gz", data))
    assert info.wcs is not None
    np.testing.assert_array_equal(load_frame(info)[0], data)
    np.testing.assert_array_equal(load_frame(info, rows=slice(3, 7), cols=slice(10, 30))[0],
                                  data[3:7, 10:30])


@pytest.mark.parametrize("name", ["t.fits.fz", "t.fz"])
def test_load_tile_compressed(tmp_path, name):
    data = (np.arange(H * W).reshape(H, W) * 7 % 5003).astype(np.int32)
    hdr = _wcs().to_header()
    hdr["EXPTIME"] = 4.0
    path = tmp_path / name
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=hdr)]).writeto(path)
    info = scan_frame(path)
    assert (info.hdu, info.shape, info.exposure, info.wcs_source) == (1, (1, H, W), 4.0, "header")
    full = load_frame(info, valid_min=None)
    np.testing.assert_array_equal(full[0], data.astype(np.float32))
    np.testing.assert_array_equal(load_frame(info, rows=slice(9, 21), cols=slice(3, 50),
                                             valid_min=None), full[:, 9:21, 3:50])


def test_load_tile_compressed_float_is_close(tmp_path):
    data = _ramp()
    path = tmp_path / "f.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=_wcs().to_header(),
                                                       quantize_level=64.0)]).writeto(path)
    out = load_frame(scan_frame(path))
    np.testing.assert_allclose(out[0], data, atol=0.5)


# -- partial reads --------------------------------------------------------------------------

_CUTS = [
    (slice(0, H), slice(0, W)),
    (slice(5, 17), slice(3, 40)),
    (slice(1, 2), slice(W - 3, W)),
    (slice(H - 7, H), slice(0, 9)),
    (slice(0, 3), slice(77, 80)),
    (slice(-10, None), slice(None, 11)),
]


def _layout_file(tmp_path, layout):
    rng = np.random.default_rng(4)
    planes = rng.uniform(10.0, 500.0, (3, H, W)).astype(np.float32)
    hdr = _wcs().to_header()
    if layout == "2D":
        data = planes[0]
    elif layout == "CHW":
        data, hdr["WCSAXES"] = planes, 2
    elif layout == "HWC":
        survey = make_survey(n_x=1, n_y=1, frame_shape=(H, W), channels=3, seed=5,
                             nan_corners=False)
        return write_survey(survey, tmp_path, layout="HWC")[0]
    else:
        data, hdr["BAYERPAT"] = planes[0], layout
    return _write(tmp_path / f"{layout}.fits", data, hdr, wcs=False)


@pytest.mark.parametrize("layout", ["2D", "CHW", "HWC", "RGGB", "GRBG", "GBRG", "BGGR"])
@pytest.mark.parametrize(("rows", "cols"), _CUTS)
def test_partial_read_equals_slice_of_full(tmp_path, layout, rows, cols):
    info = scan_frame(_layout_file(tmp_path, layout))
    full = load_frame(info)
    part = load_frame(info, rows=rows, cols=cols)
    np.testing.assert_array_equal(part, full[:, rows, cols])


def test_partial_read_bayer_matches_debayer_of_full_raw(tmp_path):
    info = scan_frame(_layout_file(tmp_path, "GRBG"))
    raw = fits.getdata(info.path).astype(np.float32)
    np.testing.assert_array_equal(load_frame(info, rows=slice(7, 31), cols=slice(13, 14)),
                                  debayer(raw, "GRBG")[:, 7:31, 13:14])


# -- valid_min and NaN ------------------------------------------------------------------------


def test_valid_min_turns_zero_borders_into_nan_in_every_channel(tmp_path):
    planes = np.stack([_ramp(seed=k) for k in range(3)])
    planes[:, :, :5] = 0.0  # zero-filled left border in all channels
    planes[1, 10:12, 40:42] = 0.0  # zero in one channel only
    planes[2, 30, 60] = np.nan  # NaN in one channel only
    hdr = _wcs().to_header()
    hdr["WCSAXES"] = 2
    info = scan_frame(_write(tmp_path / "z.fits", planes, hdr, wcs=False))
    out = load_frame(info, valid_min=1e-6)
    bad = np.zeros((H, W), bool)
    bad[:, :5] = True
    bad[10:12, 40:42] = True
    bad[30, 60] = True
    assert np.array_equal(np.isnan(out).any(axis=0), bad)
    assert np.array_equal(np.isnan(out).all(axis=0), bad)  # every channel, not just one
    np.testing.assert_array_equal(out[:, ~bad], planes[:, ~bad])
    kept = load_frame(info, valid_min=None)  # zeros are data; only the NaN pixel goes
    assert np.count_nonzero(np.isnan(kept).any(axis=0)) == 1
    assert np.isnan(kept[:, 30, 60]).all()


def test_valid_min_threshold_is_strict(tmp_path):
    data = np.array([[5.0, 5.0001, 4.0], [6.0, -1.0, 100.0]], np.float32)
    info = scan_frame(_write(tmp_path / "v.fits", data, wcs=False))
    out = load_frame(info, valid_min=5.0)[0]
    np.testing.assert_array_equal(np.isnan(out), [[True, False, True], [False, True, False]])


# -- WCS sidecars and validation ---------------------------------------------------------------


def _sidecar(path, center=CENTER, scale=2.0):
    fits.PrimaryHDU(header=_wcs(center=center, scale=scale).to_header()).writeto(path)
    return path


@pytest.mark.parametrize("name", ["f.fits", "f.fit", "f.fits.gz", "f.fit.gz"])
def test_sidecar_next_to_frame(tmp_path, name):
    frame = _write(tmp_path / name, _ramp(), wcs=False)
    side = _sidecar(tmp_path / "f.wcs", center=(10.0, 20.0), scale=3.0)
    assert find_wcs_sidecar(frame) == side
    info = scan_frame(frame)
    assert info.wcs_source == f"sidecar:{side}"
    assert info.pixel_scale_arcsec == pytest.approx(3.0)
    assert info.to_dict()["center_deg"] == pytest.approx([10.0, 20.0], abs=1e-6)


def test_sidecar_in_wcs_dirs(tmp_path):
    frame = _write(tmp_path / "frames" / "f.fits", _ramp(), wcs=False)
    (tmp_path / "solved").mkdir()
    side = _sidecar(tmp_path / "solved" / "f.wcs", scale=1.5)
    assert find_wcs_sidecar(frame) is None
    assert scan_frame(frame).wcs is None
    assert find_wcs_sidecar(frame, search_dirs=[tmp_path / "solved"]) == side
    info = scan_frame(frame, wcs_dirs=[tmp_path / "solved"])
    assert info.wcs_source == f"sidecar:{side}"
    assert info.pixel_scale_arcsec == pytest.approx(1.5)


def test_sidecar_next_to_frame_wins_over_wcs_dirs(tmp_path):
    frame = _write(tmp_path / "f.fits", _ramp(), wcs=False)
    near = _sidecar(tmp_path / "f.wcs", scale=1.0)
    (tmp_path / "other").mkdir()
    _sidecar(tmp_path / "other" / "f.wcs", scale=4.0)
    assert find_wcs_sidecar(frame, search_dirs=[tmp_path / "other"]) == near


def test_header_wcs_preferred_over_sidecar(tmp_path):
    frame = _write(tmp_path / "f.fits", _ramp())
    _sidecar(tmp_path / "f.wcs", center=(10.0, 20.0), scale=3.0)
    info = scan_frame(frame)
    assert info.wcs_source == "header"
    assert info.pixel_scale_arcsec == pytest.approx(2.0)
    assert info.to_dict()["center_deg"] == pytest.approx(list(CENTER), abs=1e-6)


def test_unreadable_sidecar(tmp_path):
    frame = _write(tmp_path / "f.fits", _ramp(), wcs=False)
    (tmp_path / "f.wcs").write_bytes(b"garbage" * 100)
    with pytest.raises(FrameError, match=r"unreadable WCS sidecar f\.wcs"):
        scan_frame(frame)


def test_sip_wcs_in_colour_cube(tmp_path):
    survey = make_survey(n_x=1, n_y=1, frame_shape=(H, W), channels=3, sip=True, seed=6)
    (path,) = write_survey(survey, tmp_path)
    info = scan_frame(path)
    truth = survey.frames[0].wcs
    assert truth.sip is not None and info.wcs.sip is not None
    assert info.layout == "CHW" and info.pixel_scale_arcsec == pytest.approx(2.0, rel=1e-3)
    yy, xx = np.mgrid[0:H:7, 0:W:9]
    np.testing.assert_allclose(info.wcs.pixel_to_world_values(xx, yy),
                               truth.pixel_to_world_values(xx, yy), atol=1e-10)


def test_validate_wcs_rejects_degenerate_matrix():
    wcs = _wcs()
    wcs.wcs.pc = [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(FrameError, match=r"degenerate WCS|not invertible"):
        validate_wcs(wcs, (H, W))


def test_validate_wcs_returns_scale():
    assert validate_wcs(_wcs(scale=0.75), (H, W)) == pytest.approx(0.75)


def test_corrupt_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.fits"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(FrameError, match="not a readable FITS file"):
        scan_frame(junk)
    good = _write(tmp_path / "t.fits", _ramp())
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good.read_bytes()[: 2880 * 2 + 1000])
    with pytest.raises(FrameError, match="truncated"):
        scan_frame(cut)


def test_load_frame_on_file_truncated_after_scan(tmp_path):
    path = _write(tmp_path / "t.fits", _ramp())
    info = scan_frame(path)
    path.write_bytes(path.read_bytes()[: 2880 * 2 + 1000])
    with pytest.raises(FrameError, match="truncated"):
        load_frame(info)


# -- debayer ------------------------------------------------------------------------------------


def _cfa(planes, pattern):
    """Sample (3, H, W) R, G, B planes through a Bayer pattern into a raw (H, W) frame."""
    masks = bayer_masks(planes.shape[1:], pattern)
    raw = np.empty(planes.shape[1:], np.float32)
    for k, colour in enumerate("RGB"):
        raw[masks[colour]] = planes[k][masks[colour]]
    return raw


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_bayer_masks_partition(pattern):
    masks = bayer_masks((6, 8), pattern)
    total = masks["R"].astype(int) + masks["G"] + masks["B"]
    assert np.all(total == 1)
    assert (masks["R"].sum(), masks["G"].sum(), masks["B"].sum()) == (12, 24, 12)
    colour_at_origin = {"R": masks["R"][0, 0], "G": masks["G"][0, 0], "B": masks["B"][0, 0]}
    assert colour_at_origin[pattern[0]]
    assert masks[pattern[1]][0, 1] and masks[pattern[2]][1, 0] and masks[pattern[3]][1, 1]


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("shape", [(8, 10), (7, 9)])
def test_debayer_constant(pattern, shape):
    rgb = debayer(np.full(shape, 1234.5, np.float32), pattern)
    assert rgb.shape == (3, *shape) and rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb, 1234.5)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_debayer_recovers_linear_ramps(pattern):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    planes = np.stack([
        100.0 + 0.37 * xx + 1.13 * yy,
        250.0 - 0.61 * xx + 0.29 * yy,
        80.0 + 0.05 * xx - 0.83 * yy + 60.0,
    ]).astype(np.float32)
    raw = _cfa(planes, pattern)
    rgb = debayer(raw, pattern)
    assert rgb.dtype == np.float32
    masks = bayer_masks((H, W), pattern)
    for k, colour in enumerate("RGB"):
        # exact at the sites of the colour (every site, borders included)
        np.testing.assert_array_equal(rgb[k][masks[colour]], planes[k][masks[colour]])
        # bilinear demosaicing reproduces a linear function exactly in the interior
        np.testing.assert_allclose(rgb[k, 1:-1, 1:-1], planes[k, 1:-1, 1:-1], rtol=0, atol=2e-4)
    # no quantisation: interpolated values keep their fractions
    frac = np.abs(rgb[0, 1:-1, 1:-1] - np.round(rgb[0, 1:-1, 1:-1]))
    assert frac.max() > 0.1


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_debayer_recovers_smooth_planes(pattern):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    smooth = 500.0 + 40.0 * np.sin(xx / 13.0) * np.cos(yy / 17.0)
    planes = np.stack([smooth, 1.3 * smooth + 20.0, 0.7 * smooth - 5.0]).astype(np.float32)
    rgb = debayer(_cfa(planes, pattern), pattern)
    masks = bayer_masks((H, W), pattern)
    for k, colour in enumerate("RGB"):
        np.testing.assert_array_equal(rgb[k][masks[colour]], planes[k][masks[colour]])
    # interior: the error of bilinear interpolation is the curvature term |f''| h^2 / 2 with
    # h = 1 px and |f''| <= 40 / 13**2 + 40 / 17**2 < 0.4
    np.testing.assert_allclose(rgb[:, 1:-1, 1:-1], planes[:, 1:-1, 1:-1], atol=0.2)
    # the outer rows/columns copy the one real neighbour (edge reflection): first-order error
    np.testing.assert_allclose(rgb, planes, atol=1.01 * 40.0 / 13.0)


def test_debayer_integer_input_and_half_values():
    raw = np.zeros((6, 6), np.uint16)
    raw[0::2, 0::2] = 3  # RGGB: R samples 3 ...
    raw[1::2, 1::2] = 4  # ... B samples 4, G samples 0
    raw[0, 2] = 4  # one R sample is 4: its neighbours average to x.5
    rgb = debayer(raw, "RGGB")
    assert rgb.dtype == np.float32
    assert rgb[0, 0, 1] == 3.5 and rgb[0, 0, 3] == 3.5  # G sites between R=3 and R=4
    assert rgb[0, 1, 1] == 3.25  # B site: mean of the 4 diagonal R samples (3, 4, 3, 3)


def test_debayer_nan_sample_is_missing():
    raw = np.full((8, 8), 10.0, np.float32)
    raw[2, 2] = np.nan  # an R site of RGGB
    rgb = debayer(raw, "RGGB")
    assert np.isnan(rgb[0, 2, 2])
    assert np.count_nonzero(np.isnan(rgb)) == 1
    np.testing.assert_array_equal(rgb[np.isfinite(rgb)], 10.0)


def test_debayer_of_a_complete_frame_equals_the_masked_path():
    # A frame without missing samples takes the cached-mask path; one NaN sends the same
    # frame through the general normalised convolution. Away from the NaN (beyond the 3x3
    # kernel) both must agree bit for bit, for every pattern.
    rng = np.random.default_rng(3)
    raw = rng.uniform(0, 60000, (24, 30)).astype(np.float32)
    holed = raw.copy()
    holed[20, 25] = np.nan
    for pattern in ("RGGB", "GRBG", "GBRG", "BGGR"):
        full, masked = debayer(raw, pattern), debayer(holed, pattern)
        np.testing.assert_array_equal(full[:, :18, :], masked[:, :18, :])
        np.testing.assert_array_equal(full[:, :, :23], masked[:, :, :23])
        assert np.isfinite(full).all()


def test_debayer_rejects_bad_input():
    with pytest.raises(ValueError, match=r"must be 2-D, got shape \(3, 4, 4\)"):
        debayer(np.zeros((3, 4, 4)), "RGGB")
    with pytest.raises(ValueError, match="unsupported Bayer pattern 'XYZW'"):
        debayer(np.zeros((4, 4)), "XYZW")


# -- real data ----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_seestar_frame(testdata):
    raw_dir = testdata / "seestar_s50_osc" / "raw"
    wcs_dir = testdata / "seestar_s50_osc" / "wcs"
    if not raw_dir.is_dir():
        pytest.skip(f"no Seestar data in {raw_dir}")
    path = sorted(raw_dir.glob("*.fit.gz"))[0]
    before = (path.stat().st_mtime_ns, path.stat().st_size)
    assert find_wcs_sidecar(path) is None
    info = scan_frame(path, wcs_dirs=[wcs_dir])
    assert (info.layout, info.bayer_pattern) == ("BAYER", "GRBG")
    assert (info.width, info.height) == (1080, 1920)
    assert info.wcs_source == f"sidecar:{wcs_dir / (path.name[:-len('.fit.gz')] + '.wcs')}"
    assert info.wcs.sip is not None
    assert info.pixel_scale_arcsec == pytest.approx(2.37, abs=0.02)
    assert info.exposure == 10.0 and info.filter == "IRCUT"

    raw = fits.getdata(path).astype(np.float32)
    masks = bayer_masks(raw.shape, "GRBG")
    site_means = {c: float(raw[masks[c]].mean()) for c in "RGB"}
    assert site_means["G"] > max(site_means["R"], site_means["B"])

    rgb = load_frame(info)
    assert rgb.shape == (3, 1920, 1080) and rgb.dtype == np.float32
    plane_means = np.nanmean(rgb, axis=(1, 2))
    assert plane_means[1] > max(plane_means[0], plane_means[2])
    # the sites of each colour hold the raw values unchanged
    np.testing.assert_array_equal(rgb[0][masks["R"]], raw[masks["R"]])
    np.testing.assert_array_equal(rgb[1][masks["G"]], raw[masks["G"]])
    part = load_frame(info, rows=slice(901, 960), cols=slice(333, 401))
    np.testing.assert_array_equal(part, rgb[:, 901:960, 333:401])
    assert (path.stat().st_mtime_ns, path.stat().st_size) == before


# -- reading rows straight from the file (RawLayout) -----------------------------------------


@pytest.mark.parametrize(("data", "header"), [
    (np.random.default_rng(0).normal(100, 5, (40, 30)).astype(">f4"), {}),
    (np.random.default_rng(1).normal(100, 5, (40, 30)).astype(">f8"), {}),
    (np.random.default_rng(2).integers(0, 65535, (40, 30)).astype(np.uint16), {}),  # BZERO 32768
    (np.random.default_rng(3).integers(-300, 300, (1, 40, 30)).astype(">i2"), {}),  # NAXIS3 = 1
    (np.random.default_rng(4).integers(0, 255, (40, 30)).astype(np.uint8), {}),
])
def test_raw_reads_equal_astropy_sections(tmp_path, data, header):
    from skymosaic.io._frames import _read_section  # noqa: PLC0415

    path = tmp_path / "f.fits"
    fits.PrimaryHDU(data, fits.Header(header)).writeto(path)
    info = scan_frame(path)
    assert info.raw is not None
    for rows, cols in [(slice(0, 40), slice(0, 30)), (slice(7, 19), slice(3, 25)),
                       (slice(39, 40), slice(0, 1))]:
        fast = _read_section(info, (rows, cols))
        slow = _read_section(dataclasses.replace(info, raw=None), (rows, cols))
        assert fast.dtype == np.float32
        np.testing.assert_array_equal(fast, slow)


def test_raw_reads_fall_back_when_the_file_changed_or_needs_scaling(tmp_path):
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(np.zeros((20, 10), np.float32)).writeto(path)
    info = scan_frame(path)
    assert info.raw is not None
    fits.PrimaryHDU(np.ones((20, 10), np.float32)).writeto(path, overwrite=True)
    os.utime(path, ns=(info.raw.mtime_ns + 10**9, info.raw.mtime_ns + 10**9))
    assert info.raw.read_rows(path, (slice(0, 20), slice(0, 10))) is None
    np.testing.assert_array_equal(load_frame(info), 1.0)  # astropy's read of the new file
    scaled = tmp_path / "s.fits"
    hdu = fits.PrimaryHDU(np.arange(200, dtype=np.int16).reshape(20, 10))
    hdu.header["BSCALE"] = 2.0
    hdu.writeto(scaled)
    assert scan_frame(scaled).raw is None
