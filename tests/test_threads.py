"""One BLAS thread per run (`skymosaic._threads`): on inside `run_pipeline`, restored after."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from skymosaic.config import load_config
from skymosaic.pipeline import _driver, run_pipeline
from skymosaic.synth import make_survey, write_survey


def _blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_a_run_limits_blas_to_one_thread_and_restores_it(tmp_path, monkeypatch):
    before = _blas_threads()
    assert before  # NumPy's BLAS is loaded
    inside = []
    phases = _driver._run_phases

    def spy(ctx, inputs):
        inside.append(_blas_threads())
        return phases(ctx, inputs)

    monkeypatch.setattr(_driver, "_run_phases", spy)
    survey = make_survey(n_x=2, n_y=1, frame_shape=(60, 80), seed=3)
    paths = write_survey(survey, tmp_path / "frames")
    config = load_config(None, {"run.threads": 2, "quality.enabled": False,
                                "output.preview": False, "output.report": False})
    result = run_pipeline([paths[0].parent], tmp_path / "out", config)
    assert np.isfinite(result.report["output"]["shape"][0])
    assert inside == [[1] * len(before)]
    assert _blas_threads() == before
