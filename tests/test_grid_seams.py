"""Grid mode is as seamless as classic mode (issue 15 item 4): known gains, offsets and
per-frame gradients, both modes against the truth."""

from __future__ import annotations

import pytest

from skymosaic.config import load_config
from skymosaic.io import read_mosaic
from skymosaic.io.stack_plan import PlanRow, write_stack_plan
from skymosaic.pipeline import run_pipeline
from skymosaic.synth import border_step_ratio, make_survey, residual_rms, write_survey


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid_seams")
    survey = make_survey(n_x=3, n_y=2, frame_shape=(160, 224), channels=3, overlap=0.25,
                         gain_range=(0.8, 1.25), offset_range=(100.0, 300.0), sky_level=100.0,
                         sky_gradient=0.3, sky_curvature=0.1, noise_sigma=2.0, seed=3)
    paths = write_survey(survey, root / "frames")
    plan = write_stack_plan([PlanRow(path=p.resolve()) for p in paths], root / "stack_plan.csv")
    base = {"run.threads": 2, "quality.enabled": False, "output.preview": False,
            "photometry.diagnostics": False}
    out = {}
    for mode, extra in (("classic", {"stack.enabled": False}), ("grid", {"grid.plan": str(plan)}),
                        ("grid_tiles", {"grid.plan": str(plan), "grid.frame_photometry": False})):
        res = run_pipeline([root / "frames"], root / mode, load_config(None, {**base, **extra}))
        data, wcs, _ = read_mosaic(res.mosaic_path)
        truth = survey.truth.render(wcs, data.shape[1:], channels=3)
        out[mode] = (res.report, border_step_ratio(data, truth, survey.frames, wcs).ratio,
                     residual_rms(data, truth, relative=True))
    return out


def test_grid_mode_is_as_seamless_as_classic(runs):
    rep, ratio, rms = runs["grid"]
    _, ratio_c, rms_c = runs["classic"]
    assert rep["grid"][""]["photometry_mode"] == "frames"
    assert rep["grid"][""]["frame_photometry"]["status"] == "ok"
    assert ratio <= 1.1 * ratio_c and rms <= 1.2 * rms_c


def test_frame_photometry_beats_the_tiles_own_normalisation(runs):
    _, ratio, rms = runs["grid"]
    rep_t, ratio_t, rms_t = runs["grid_tiles"]
    assert rep_t["grid"][""]["photometry_mode"] != "frames"
    assert rms < rms_t, (ratio, rms, ratio_t, rms_t)
