"""Phase 5 (photometric matching before the coadd) on a synthetic survey with known gains.

3 x 2 pointings of 96 x 128 px, one frame each, mono, gains U(0.85, 1.15), offsets
U(0, 60), noise 5, direct mode (``stack.enabled = false``). Known answers:

* the frame model ``data = g * (truth + sky) + o`` (see `skymosaic.synth`) with the
  correction ``gain * data + offset`` makes every corrected sky level equal, and makes
  ``gain_k * g_k`` the same for every frame (the gauge fixes only the common factor);
* without correction the per-frame levels differ by tens of ADU, so the seam score is
  several times 1; corrected, it is ~1.

``quality.enabled`` is off: at 96 x 128 px one of these frames holds no star and the
session-relative star count would reject it.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage

from skymosaic import pipeline
from skymosaic.config import load_config
from skymosaic.io import read_mosaic
from skymosaic.photometry._regression import fit_linear_relation
from skymosaic.pipeline import run_pipeline
from skymosaic.synth import frame_border_mask, make_survey, seam_score, write_survey

SKY = 100.0


def _config(**overrides):
    base = {"run.threads": 2, "quality.enabled": False, "stack.enabled": False,
            "output.preview": False}
    base.update(overrides)
    return load_config(None, base)


@pytest.fixture(scope="module")
def survey_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase5")
    survey = make_survey(n_x=3, n_y=2, frame_shape=(96, 128), channels=1, frames_per_pointing=1,
                         gain_range=(0.85, 1.15), offset_range=(0.0, 60.0), noise_sigma=5.0,
                         sky_level=SKY, seed=1)
    paths = write_survey(survey, root / "frames")
    return survey, paths, root


def _run(survey_dir, name, **overrides):
    _, paths, root = survey_dir
    result = run_pipeline([paths[0].parent], root / name, _config(**overrides))
    data, wcs, _ = read_mosaic(result.mosaic_path)
    return result, data, wcs


def _seam(survey, data, wcs):
    truth = survey.truth_image(wcs, data.shape[1:])
    borders = frame_border_mask(survey.frames, wcs, data.shape[1:], width=2)
    return seam_score(data, truth, borders)


@pytest.fixture(scope="module")
def matched(survey_dir):
    return _run(survey_dir, "matched")


@pytest.fixture(scope="module")
def plain(survey_dir):
    return _run(survey_dir, "plain", **{"photometry.enabled": False})


def test_photometry_removes_seams(survey_dir, matched, plain):
    survey = survey_dir[0]
    with_ph = _seam(survey, matched[1], matched[2])
    without = _seam(survey, plain[1], plain[2])
    # measured 0.91 with photometry, 3.0 without
    assert with_ph < 1.25
    assert with_ph < 0.6 * without
    assert matched[0].report["mode"] == "direct"


def test_photometry_report_and_matched_sky_levels(survey_dir, matched):
    survey, paths, _ = survey_dir
    ph = matched[0].report["photometry"]
    assert ph["status"] == "ok" and ph["n_inputs"] == len(paths)
    assert ph["relations_ok"] > 0
    assert set(ph["inputs"]) == {p.name for p in paths}
    gains = np.array([ph["inputs"][p.name]["gain"] for p in paths])
    offsets = np.array([ph["inputs"][p.name]["offset"] for p in paths])
    assert gains.shape == offsets.shape == (len(paths), 1)  # one value per channel
    assert np.all(np.isfinite(gains)) and np.all(gains > 0)
    # corrected sky level of each frame: gain * (g * sky + o) + offset -> all equal
    g_true = np.array([f.gain[0] for f in survey.frames])
    o_true = np.array([f.offset[0] for f in survey.frames])
    level = gains[:, 0] * (g_true * SKY + o_true) + offsets[:, 0]
    assert np.ptp(level) < 2.0  # measured 0.9 ADU; uncorrected spread ~60 ADU
    assert np.ptp(g_true * SKY + o_true) > 20.0


@pytest.mark.xfail(strict=True, reason=(
    "every pair regression that phase 5 accepts ('ok') underestimates the gain ratio "
    "g_j/g_i of the two frames by 2.4-4.3 % (fits 0.739, 0.792, 0.902, 1.032, 1.195, 1.133 "
    "for true 0.759, 0.812, 0.943, 1.070, 1.242, 1.161; 1.3-3.9 x their gain_err), a "
    "one-sided attenuation bias; cause: see test_pure_correlated_noise_has_no_gain"))
def test_pair_gains_match_true_ratios(survey_dir, matched):
    survey, paths, _ = survey_dir
    ph = matched[0].report["photometry"]
    order = list(ph["inputs"])  # pair indices i, j refer to the inputs in this order
    true_gain = {p.name: f.gain[0] for p, f in zip(paths, survey.frames, strict=True)}
    ok = [q for q in ph["pairs"] if q["status"] == "ok"]
    assert len(ok) >= 3
    for q in ok:
        ratio = true_gain[order[q["j"]]] / true_gain[order[q["i"]]]
        assert q["gain"] == pytest.approx(ratio, rel=0.02), (q["i"], q["j"], q["gain"], ratio)


def test_pure_correlated_noise_has_no_gain():
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = SKY + ndimage.gaussian_filter(rng.normal(0, 5, (100, 60)), 0.7)
        y = SKY + ndimage.gaussian_filter(rng.normal(0, 5, (100, 60)), 0.7)
        rel = fit_linear_relation(x, y)
        assert rel.status == "offset_only", (rel.status, rel.gain)


def test_diagnostics_png_written_only_when_asked(survey_dir, matched):
    out = matched[0].out_dir
    png = out / "photometry_diagnostics.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result, _, _ = _run(survey_dir, "nodiag", **{"photometry.diagnostics": False})
    assert result.report["photometry"]["status"] == "ok"
    assert not (result.out_dir / "photometry_diagnostics.png").exists()


def test_fallback_when_matching_fails(survey_dir, plain, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise ValueError("synthetic failure")

    monkeypatch.setattr(pipeline, "match_sources", boom)
    caplog.set_level(logging.WARNING, logger="skymosaic")
    result, data, _ = _run(survey_dir, "fallback")
    assert result.report["status"] == "ok"
    assert result.report["photometry"]["status"].startswith("fallback")
    mentions = [r for r in caplog.records
                if r.levelno == logging.WARNING and "photometric matching failed" in r.getMessage()]
    assert len(mentions) == 1 and "synthetic failure" in mentions[0].getMessage()
    assert not (result.out_dir / "photometry_diagnostics.png").exists()
    # the fallback is the plain coadd: identical to a run with photometry disabled
    np.testing.assert_array_equal(data, plain[1])


def test_coverage_renorm_records_clipped_factor_per_input(survey_dir):
    survey, paths, _ = survey_dir
    result, data, wcs = _run(survey_dir, "renorm", **{"photometry.coverage_renorm": True})
    factors = result.report["coverage_renorm"]
    assert set(factors) == {p.name for p in paths}
    lo, hi = _config().photometry.coverage_clip  # (0.8, 1.25) by default
    assert all(lo <= v <= hi for v in factors.values())
    assert _seam(survey, data, wcs) < 1.25
