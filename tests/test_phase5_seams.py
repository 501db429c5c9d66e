"""Phase 5 against the issue's bar: seams as good as a correction with the true parameters.

Each case is a synthetic survey (`skymosaic.synth.make_survey`) of a star-rich sky, true
gains U(0.8, 1.25) and offsets U(0, 60) (0-12 noise sigmas) drawn independently per frame
and channel, noise 5, sky 100, default sky gradients, rotations and NaN corners. Three
direct-mode runs (``stack.enabled = false``) of the same pipeline are compared with
`seam_score` against the truth:

* **solved**: the raw frames, ``photometry.enabled = true`` (the default);
* **truth-corrected**: frames corrected by the test itself with the true parameters,
  ``(data - offset) / gain`` per channel (the inverse of the frame model of
  `skymosaic.synth._survey`, which leaves ``truth + sky + gradient + noise / gain``), run
  with ``photometry.enabled = false``; this is the best a per-frame gain and offset can do;
* **plain**: the raw frames with ``photometry.enabled = false``.

The bar is ``seam(solved) <= 1.10 * seam(truth-corrected) + 0.05``. The absolute slack:
a perfect correction scores ~0.85-1.05 and one mosaic's score moves by about +-0.05 with
small random errors that no solve avoids (3 x 3 mono, seed 0: exact 0.914; true
parameters with random gain errors of 0.5 % and 1 % per frame scored 0.961 and 0.918), so
0.05 is the score's own scatter, not room for a real error. The bar has teeth: on that
survey (bar 1.055) random per-frame gain errors of 2 % score 1.167 (5 %: 1.768) and offset
errors of 2 ADU = 0.4 sigma score 1.127 (5 ADU: 1.634). Those gain errors came with the
true offsets, so they also shifted each frame's sky level. A gain error whose sky step is
absorbed by a matched offset barely moves the score. reproject's offset-only matching
leaves 10-17 % star-flux scatter yet scores about as well as a perfect correction
(BENCHMARKS.md, "Photometry: Phase 5 vs reproject_and_coadd"). Gain accuracy itself is
tested in tests/test_phase5.py.

``quality.enabled`` is off so that the three runs use the same frames (the
session-relative rejection is not what is tested here).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from skymosaic.config import load_config
from skymosaic.io import read_mosaic
from skymosaic.pipeline import run_pipeline
from skymosaic.synth import (
    Survey,
    frame_border_mask,
    make_survey,
    make_truth_sky,
    seam_score,
    write_survey,
)

NOISE = 5.0
STAR_DENSITY_PER_DEG2 = 22_000  # ~7x make_truth_sky's default: stars in every overlap


def _config(**overrides):
    base = {"run.threads": 2, "quality.enabled": False, "stack.enabled": False,
            "output.preview": False, "photometry.diagnostics": False}
    base.update(overrides)
    return load_config(None, base)


def _survey(n: int, size: int, channels: int, seed: int) -> Survey:
    """n x n pointings of size x size px (30 % overlap, 2"/px) on a star-rich sky."""
    side = 0.35  # deg; the largest case (5 x 5 x 128 px) spans ~0.22 deg with rotations
    truth = make_truth_sky(center=(150.0, 2.0), size_deg=(side, side), channels=channels,
                           n_stars=round(STAR_DENSITY_PER_DEG2 * side * side), seed=seed + 100)
    return make_survey(n_x=n, n_y=n, frame_shape=(size, size), channels=channels,
                       gain_range=(0.8, 1.25), offset_range=(0.0, 60.0), noise_sigma=NOISE,
                       sky_level=100.0, seed=seed, truth=truth)


def _replace_data(survey: Survey, fn) -> Survey:
    """A copy of ``survey`` whose frame data are ``fn(frame)`` (headers and WCS kept)."""
    frames = [dataclasses.replace(f, data=np.asarray(fn(f), dtype=np.float32))
              for f in survey.frames]
    return dataclasses.replace(survey, frames=frames)


def _truth_corrected(frame) -> np.ndarray:
    """Invert the frame model with the true parameters: ``(data - offset) / gain``."""
    return (frame.data - frame.offset[:, None, None]) / frame.gain[:, None, None]


def _run(survey: Survey, root, name: str, **overrides):
    paths = write_survey(survey, root / f"{name}_frames")
    result = run_pipeline([paths[0].parent], root / name, _config(**overrides))
    data, wcs, _ = read_mosaic(result.mosaic_path)
    return result, paths, data, wcs


def _seam(survey: Survey, data: np.ndarray, wcs) -> float:
    truth = survey.truth_image(wcs, data.shape[1:])
    borders = frame_border_mask(survey.frames, wcs, data.shape[1:], width=2)
    return seam_score(data, truth, borders)


# Measured (seam solved / truth-corrected / plain, ratio solved / truth-corrected):
#   mono 3x3 seed 0: 0.915 / 0.914 / 3.64, 1.001
#   mono 3x3 seed 2: 1.059 / 0.948 / 3.23, 1.117 -- above 10 %, passes on the slack (bar
#       1.092): the pair fit of frames 4-7 (faint stars only, brightest 546 ADU) returns a
#       gain 11 % low at 12 times its stated error, which carries frames 6-7 ~8 % off
#   rgb  3x3 seed 0: 0.931 / 0.927 / 3.90, 1.005
#   mono 5x5 seed 3: 0.842 / 0.846 / 4.24, 0.996
#   rgb  4x4 seed 1: 0.909 / 0.911 / 4.64, 0.998
# Over 30 surveys (3x3, 4x4, 5x5; mono, RGB; seeds 0-4; 128 px) the ratio was 0.968-1.117,
# above 1.02 only for mono 3x3 seed 2, and solved / plain at most 0.33. (RGB 3x3 seed 2
# is not used: bright stars on frame borders give even the truth-corrected mosaic 1.43,
# because the bilinear-resampled star profiles of the frames differ, which makes the
# bar loose there.) 2-core shared VM: 2-7 s per case.
@pytest.mark.parametrize(
    ("n", "channels", "seed"),
    [(3, 1, 0), (3, 1, 2), (3, 3, 0), (5, 1, 3), (4, 3, 1)],
    ids=["mono-3x3", "mono-3x3-weak-pair", "rgb-3x3", "mono-5x5", "rgb-4x4"],
)
def test_seams_within_10_percent_of_truth_corrected(tmp_path, n, channels, seed):
    survey = _survey(n, 128, channels, seed)
    solved, _, data_s, wcs_s = _run(survey, tmp_path, "solved")
    _, _, data_t, wcs_t = _run(_replace_data(survey, _truth_corrected), tmp_path, "truth",
                               **{"photometry.enabled": False})
    _, _, data_p, wcs_p = _run(survey, tmp_path, "plain", **{"photometry.enabled": False})

    assert solved.report["mode"] == "direct"
    assert solved.report["photometry"]["status"] == "ok"
    assert data_s.shape == data_t.shape == data_p.shape
    assert data_s.shape[0] == channels
    seam_s = _seam(survey, data_s, wcs_s)
    seam_t = _seam(survey, data_t, wcs_t)
    seam_p = _seam(survey, data_p, wcs_p)
    figures = f"seam solved {seam_s:.4f}, truth-corrected {seam_t:.4f}, plain {seam_p:.4f}"
    assert seam_s <= 1.10 * seam_t + 0.05, figures
    assert seam_p > 2.5, figures  # the uncorrected frames do show seams (measured 3.2-5.4)
    assert seam_s < 0.4 * seam_p, figures


def _relative(gains: np.ndarray) -> np.ndarray:
    """Gains (N, C) divided by their geometric mean per channel (the gauge-free part)."""
    return gains / np.exp(np.mean(np.log(gains), axis=0))


# Measured (3x3, 128 px, seed 0): relative gains changed by at most 1.9e-5 (mono) and
# 1.5e-5 (RGB); |slope / k - 1| <= 1.3e-5; rms of the linear-fit residual 1.5e-4 to
# 1.4e-3 ADU (the bound is 0.125 and 0.025 ADU).
@pytest.mark.parametrize(("channels", "k", "c"), [(1, 2.5, 300.0), (3, 0.5, 40.0)],
                         ids=["mono", "rgb"])
def test_solve_is_invariant_to_a_global_scale_and_offset(tmp_path, channels, k, c):
    # c > 0 keeps every pixel above the valid-mask epsilon (zero = no data in raw frames).
    survey = _survey(3, 128, channels, seed=0)
    scaled = _replace_data(survey, lambda f: k * f.data.astype(np.float64) + c)
    res_a, paths_a, data_a, _ = _run(survey, tmp_path, "a")
    res_b, paths_b, data_b, _ = _run(scaled, tmp_path, "b")

    gains = []
    for res, paths in ((res_a, paths_a), (res_b, paths_b)):
        ph = res.report["photometry"]
        assert ph["status"] == "ok"
        gains.append(np.array([ph["inputs"][p.name]["gain"] for p in paths], dtype=np.float64))
    assert gains[0].shape == (len(survey.frames), channels)
    np.testing.assert_allclose(_relative(gains[1]), _relative(gains[0]), rtol=1e-3)

    valid = np.isfinite(data_a)
    np.testing.assert_array_equal(np.isfinite(data_b), valid)
    for ch in range(channels):
        x = data_a[ch][valid[ch]].astype(np.float64)
        y = data_b[ch][valid[ch]].astype(np.float64)
        slope, intercept = np.polyfit(x, y, 1)
        assert abs(slope / k - 1) < 1e-3, (ch, slope)
        resid = y - (slope * x + intercept)
        # pixel by pixel k * m + c', not only on average: far below the scaled noise
        assert np.sqrt(np.mean(resid**2)) < 0.01 * k * NOISE, (ch, resid.std())
