"""Tests of skymosaic.io writers: science FITS round trip, atomic writes, JSON, preview PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits

from skymosaic.io import (
    atomic_path,
    read_mosaic,
    stretch_preview,
    write_json,
    write_mosaic,
    write_preview,
)
from skymosaic.synth import celestial_wcs

H, W = 40, 56


def _wcs():
    return celestial_wcs((H, W), center=(83.8, -5.4), pixel_scale_arcsec=1.7, rotation_deg=12.0)


def _mosaic(channels, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 10.0, (channels, H, W)).astype(np.float32)
    data[:, :3, :] = np.nan  # no data along the bottom
    data[:, 20, 30] = np.nan
    return data


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- science FITS -----------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_mosaic_round_trip(tmp_path, channels):
    data, wcs = _mosaic(channels), _wcs()
    rng = np.random.default_rng(1)
    weight = rng.uniform(0.0, 5.0, (H, W)).astype(np.float32)
    coverage = rng.integers(0, 4, (H, W)).astype(np.float32)
    path = write_mosaic(tmp_path / "mosaic.fits", data, wcs, weight=weight, coverage=coverage,
                        history=["first line", "second line"], cards={"NINPUTS": (7, "frames")})
    assert path == tmp_path / "mosaic.fits"
    back, wcs_back, weight_back = read_mosaic(path)
    assert back.shape == (channels, H, W) and back.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(back), np.isnan(data))
    np.testing.assert_array_equal(back[np.isfinite(back)], data[np.isfinite(data)])
    np.testing.assert_array_equal(weight_back, weight)
    yy, xx = np.mgrid[0:H:9, 0:W:11].astype(float)
    np.testing.assert_allclose(wcs_back.pixel_to_world_values(xx, yy),
                               wcs.pixel_to_world_values(xx, yy), rtol=0, atol=1e-10)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "WEIGHT", "COVERAGE"]
        primary = hdul[0]
        assert primary.data.ndim == (2 if channels == 1 else 3)
        assert primary.header["BITPIX"] == -32
        assert primary.header["NINPUTS"] == 7
        assert primary.header["CREATOR"].startswith("skymosaic")
        assert list(primary.header["HISTORY"]) == ["first line", "second line"]
        np.testing.assert_array_equal(hdul["COVERAGE"].data, coverage)
        assert hdul["WEIGHT"].header["CTYPE1"] == "RA---TAN"


def test_mosaic_without_extensions(tmp_path):
    path = write_mosaic(tmp_path / "m.fits", _mosaic(1), _wcs())
    _, _, weight = read_mosaic(path)
    assert weight is None
    with fits.open(path) as hdul:
        assert len(hdul) == 1


def test_mosaic_rejects_2d_data(tmp_path):
    with pytest.raises(ValueError, match=r"must be \(C, H, W\), got shape \(40, 56\)"):
        write_mosaic(tmp_path / "m.fits", _mosaic(1)[0], _wcs())
    assert not (tmp_path / "m.fits").exists()


def test_mosaic_overwrites_existing(tmp_path):
    path = tmp_path / "m.fits"
    write_mosaic(path, _mosaic(1, seed=1), _wcs())
    write_mosaic(path, _mosaic(3, seed=2), _wcs())
    data, _, _ = read_mosaic(path)
    np.testing.assert_array_equal(np.nan_to_num(data), np.nan_to_num(_mosaic(3, seed=2)))
    assert _leftovers(tmp_path) == []


# -- atomicity --------------------------------------------------------------------------------


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "mosaic.fits"
    write_mosaic(path, _mosaic(1), _wcs())
    before = path.read_bytes()
    seen = []
    real_writeto = fits.HDUList.writeto

    def broken(self, name, *args, **kwargs):
        real_writeto(self, name, *args, **kwargs)  # the temp file is really written ...
        seen.append(str(name))
        raise OSError("disk full")  # ... then the "disk" fails

    monkeypatch.setattr(fits.HDUList, "writeto", broken)
    with pytest.raises(OSError, match="disk full"):
        write_mosaic(path, _mosaic(3, seed=9), _wcs())
    (tmp_name,) = seen
    assert Path(tmp_name).parent == tmp_path and Path(tmp_name) != path
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosaic.fits"]


def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target, suffix=".txt") as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


# -- JSON ---------------------------------------------------------------------------------------


def test_write_json_nan_and_numpy(tmp_path):
    payload = {
        "nan": float("nan"), "inf": float("inf"), "x": 1.5,
        "np_nan": np.float32("nan"), "np_int": np.int64(3), "arr": np.array([1.0, np.nan]),
        "nested": {"t": (np.float64(2.5), float("-inf"))}, 7: tmp_path / "a",
    }
    path = write_json(tmp_path / "r.json", payload)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "nan": None, "inf": None, "x": 1.5, "np_nan": None, "np_int": 3, "arr": [1.0, None],
        "nested": {"t": [2.5, None]}, "7": str(tmp_path / "a"),
    }
    assert _leftovers(tmp_path) == []


# -- preview -----------------------------------------------------------------------------------


def _read_png(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize(("shape", "max_size"), [((3, 50, 300), 64), ((1, 300, 50), 100),
                                                   ((3, 40, 56), 4096)])
def test_preview_size(tmp_path, shape, max_size):
    data = np.random.default_rng(2).normal(100.0, 10.0, shape).astype(np.float32)
    img = _read_png(write_preview(tmp_path / "p.png", data, max_size=max_size))
    h, w = shape[1:]
    scale = min(1.0, max_size / max(h, w))
    assert max(img.shape[:2]) <= max_size
    assert img.shape[:2] == (round(h * scale), round(w * scale))
    assert img.ndim == (3 if shape[0] == 3 else 2)


def test_preview_grey_input_is_grey_and_linked(tmp_path):
    rng = np.random.default_rng(3)
    grey = rng.gamma(2.0, 50.0, (H, W)).astype(np.float32)
    img = _read_png(write_preview(tmp_path / "p.png", np.stack([grey, grey, grey])))
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert img.max() > 200 and img.min() < 20  # really stretched, not flat


def test_preview_stretch_is_linked_not_per_channel():
    rng = np.random.default_rng(4)
    base = rng.gamma(2.0, 50.0, (H, W)).astype(np.float32)
    img = stretch_preview(np.stack([base, 0.5 * base, 0.25 * base]))
    # one curve for every channel: a fainter channel stays fainter everywhere
    assert np.all(img[..., 0] >= img[..., 1]) and np.all(img[..., 1] >= img[..., 2])
    assert img[..., 0].mean() > img[..., 2].mean() + 20


def test_preview_nan_is_black_and_orientation(tmp_path):
    data = np.full((3, H, W), 100.0, np.float32)
    data[:, :, W // 2:] += np.linspace(0, 500, W - W // 2, dtype=np.float32)
    data[:, :5, :] = np.nan  # FITS bottom rows: no data
    data[1, 30, 10] = np.nan  # one channel missing: still drawn
    img = _read_png(write_preview(tmp_path / "p.png", data))
    # PNG row 0 is the top, so FITS rows 0..4 are the last 5 PNG rows
    assert np.all(img[-5:] == 0)
    assert img[: H - 5, W - 1].min() > 0


def test_preview_all_nan_rows_emit_no_warning(tmp_path, recwarn):
    data = np.random.default_rng(5).normal(100.0, 5.0, (3, 120, 90)).astype(np.float32)
    data[:, 10:30, :] = np.nan
    data[:, :, :7] = np.nan
    write_preview(tmp_path / "a.png", data)
    write_preview(tmp_path / "b.png", data, max_size=64)  # resampled path too
    img = _read_png(write_preview(tmp_path / "c.png", np.full((1, 20, 30), np.nan, np.float32)))
    assert img.shape == (20, 30) and not img.any()
    assert len(recwarn) == 0, [str(w.message) for w in recwarn]


def test_preview_downsampling_keeps_mean_level():
    data = np.full((1, 400, 400), 7.0, np.float32)
    data[0, ::2, ::2] = 9.0
    data[0, :100] = np.nan
    img = stretch_preview(data, max_size=100)
    assert img.shape == (100, 100)
    assert not img[:25].any()  # NaN region stays black after downsampling
    assert math.isclose(float(np.std(img[30:])), 0.0, abs_tol=1.0)  # 7/9 mix averages out
