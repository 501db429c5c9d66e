"""Outlier rejection across overlapping inputs in the coadd (``coadd.reject``).

Known answers, on inputs that share the output grid's pixels (no resampling blur):

* a satellite trail in one of two overlapping inputs is gone: the overlap equals the other
  input there, and the trail's pixels are counted against the input that had it;
* a hot pixel in one of three inputs is clipped; the mean of the other two stays;
* stars whose cores differ by the seeing (a 20 % lower peak in one input) are not taken
  for outliers, and their flux in the mosaic is the mean of the inputs';
* the result does not depend on how the output is cut into blocks.
"""

from __future__ import annotations

import numpy as np
import pytest

from skymosaic.assemble import ArraySource, CoaddOptions, coadd
from skymosaic.reproject import OutputGrid
from skymosaic.synth import celestial_wcs

SHAPE = (120, 200)


def _grid() -> OutputGrid:
    return OutputGrid(wcs=celestial_wcs(SHAPE, center=(150.0, 2.0), pixel_scale_arcsec=2.0),
                      shape=SHAPE)


def _source(grid: OutputGrid, name: str, data: np.ndarray, x0: int) -> ArraySource:
    wcs = grid.wcs.deepcopy()
    wcs.wcs.crpix = [wcs.wcs.crpix[0] - x0, wcs.wcs.crpix[1]]
    wcs.wcs.set()
    return ArraySource.from_arrays(name, data.astype(np.float32), wcs)


def _opts(**kw) -> CoaddOptions:
    return CoaddOptions(**{"threads": 1, "kernel": "nearest", "reject": "auto", **kw})


def _sky(rng, h, w):
    return 300.0 + rng.normal(0, 5, (h, w))


def _trail(h, w, *, peak=400.0, slope=0.35, y0=20.0):
    yy, xx = np.indices((h, w), dtype=np.float64)
    d = (yy - (y0 + slope * xx)) / np.hypot(1, slope)
    return peak * np.exp(-0.5 * d**2)  # sigma 1 px


def test_a_trail_in_one_of_two_inputs_is_gone():
    rng = np.random.default_rng(0)
    grid = _grid()
    a_img, b_img = _sky(rng, 120, 140), _sky(rng, 120, 140)
    # crosses a's whole width, the overlap (columns 60..139 of a) included
    a_img += _trail(120, 140)
    a, b = _source(grid, "a", a_img, 0), _source(grid, "b", b_img, 60)
    res = coadd([a, b], grid, options=_opts())
    plain = coadd([a, b], grid, options=_opts(reject="off"))
    over = np.s_[:, 60:140]
    profile = _trail(120, 140)[:, 60:140]
    left = res.data[0][over] - b_img[:, :80]
    # with rejection the overlap is b where the trail was (its core exactly, its faint wings
    # within the noise); without, half the trail is left
    assert np.max(np.abs(left[profile > 50])) < 1e-3
    assert abs(np.mean(left[profile > 5])) < 1.0  # trail mean there ~100 ADU
    trail = profile > 50
    assert np.median((plain.data[0][over] - b_img[:, :80])[_trail(120, 140)[:, 60:140] > 300]) > 150
    # outside the trail the usual mean of both
    mean = 0.5 * (a_img[:, 60:140] + b_img[:, :80])
    far = _trail(120, 140)[:, 60:140] < 1e-3
    np.testing.assert_allclose(res.data[0][over][far], mean[far], atol=1e-3)
    assert res.outliers.get("a", 0) >= trail.sum() and res.outliers.get("b", 0) == 0
    # outside the overlap the trail stays: no other input there
    np.testing.assert_allclose(res.data[0][:, :60], a_img[:, :60], atol=1e-3)


def test_a_hot_pixel_in_one_of_three_inputs_is_clipped():
    rng = np.random.default_rng(1)
    grid = _grid()
    imgs = [_sky(rng, 120, 200) for _ in range(3)]
    imgs[1][50, 70] += 5000.0
    imgs[2][80, 30] -= 300.0  # a dead pixel
    res = coadd([_source(grid, f"s{k}", im, 0) for k, im in enumerate(imgs)], grid, options=_opts())
    assert res.data[0][50, 70] == pytest.approx(0.5 * (imgs[0][50, 70] + imgs[2][50, 70]), abs=1e-3)
    assert res.data[0][80, 30] == pytest.approx(0.5 * (imgs[0][80, 30] + imgs[1][80, 30]), abs=1e-3)
    assert 1 <= res.outliers["s1"] <= 3 and 1 <= res.outliers["s2"] <= 3  # + noisy neighbours
    assert set(res.outliers) == {"s1", "s2"}
    assert res.coverage[50, 70] == 2


def test_star_cores_of_different_seeing_are_kept():
    rng = np.random.default_rng(2)
    grid = _grid()
    yy, xx = np.indices((120, 200), dtype=np.float64)
    stars = [(30.0, 40.0), (60.0, 100.0), (90.0, 160.0)]

    def field(fwhm, flux=20000.0):
        s = fwhm / 2.3548
        img = np.zeros((120, 200))
        for y, x in stars:
            img += (flux / (2 * np.pi * s * s)
                    * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / s**2))
        return img

    sharp, soft = field(3.0), field(3.0 * np.sqrt(1.25))  # peak 20 % lower in the softer one
    a = _sky(rng, 120, 200) + sharp
    b = _sky(rng, 120, 200) + soft
    res = coadd([_source(grid, "a", a, 0), _source(grid, "b", b, 0)], grid, options=_opts())
    assert res.outliers == {}
    np.testing.assert_allclose(res.data[0], 0.5 * (a + b), atol=1e-3)


def test_rejection_does_not_depend_on_the_blocks():
    rng = np.random.default_rng(3)
    grid = _grid()
    a_img, b_img = _sky(rng, 120, 140), _sky(rng, 120, 140)
    a_img += _trail(120, 140, slope=0.05, y0=40.0)  # nearly along the rows: crosses block ends
    sources = [_source(grid, "a", a_img, 0), _source(grid, "b", b_img, 60)]
    one = coadd(sources, grid, options=_opts())
    for rows in (7, 16, 41):
        cut = coadd(sources, grid, options=_opts(block_rows=rows))
        assert cut.n_blocks > 1
        np.testing.assert_array_equal(cut.data, one.data)
        assert cut.outliers == one.outliers


def test_bad_reject_options_raise():
    with pytest.raises(ValueError, match="reject"):
        CoaddOptions(reject="sometimes")
    with pytest.raises(ValueError, match="reject_kappa"):
        CoaddOptions(reject_kappa=0.0)


def test_rejection_in_row_bands_on_threads_flags_the_same_pixels():
    # reject_outliers(threads=N) cuts the band into N bands of rows with the growth's halo:
    # every flag is the one-band flag, trails across the cuts included.
    from skymosaic.assemble._coadd import reject_outliers  # noqa: PLC0415

    rng = np.random.default_rng(1)
    flagged = 0
    for _ in range(12):
        contributions = []
        for _ in range(rng.integers(2, 6)):
            y0, x0 = int(rng.integers(0, 40)), int(rng.integers(0, 50))
            h, w = int(rng.integers(10, 81 - y0)), int(rng.integers(10, 91 - x0))
            img = rng.normal(100, 5, (2, h, w)).astype(np.float32)
            img[:, int(rng.integers(0, h)), :] += 300  # a trail along the rows
            img[:, :, int(rng.integers(0, w))] += 200  # one across the cuts
            wt = np.where(rng.uniform(size=(h, w)) < 0.05, 0, 1).astype(np.float32)
            contributions.append(((y0 + 7, y0 + 7 + h, x0, x0 + w), img, wt,
                                  np.array([[5.0, 5.0], [100.0, 100.0]])))
        one = reject_outliers(contributions, 7, (80, 90))
        flagged += sum(int(f.sum()) for f in one)
        for threads in (2, 3):
            split = reject_outliers(contributions, 7, (80, 90), threads=threads)
            assert all(np.array_equal(a, b) for a, b in zip(one, split, strict=True))
    assert flagged > 500  # the trails were found
