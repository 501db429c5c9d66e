"""Regression pin of classic mode: a fixed synthetic survey must give the stored mosaic.

Grid mode (``stack_plan.csv``) shares the stacking, photometry and coadd code with classic
mode; this test proves that adding it changed nothing for runs without a plan. The
reference was produced with the classic pipeline before grid mode landed; regenerate it
only for a deliberate change of classic output (and say so in the CHANGELOG)::

    SKYMOSAIC_REGEN_PIN=1 python -m pytest tests/test_classic_pin.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skymosaic.config import load_config
from skymosaic.io import read_mosaic
from skymosaic.pipeline import run_pipeline
from skymosaic.synth import make_survey, write_survey

REFERENCE = Path(__file__).parent / "data" / "classic_reference.npz"


def _classic_mosaic(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    survey = make_survey(n_x=2, n_y=2, frame_shape=(64, 80), channels=3, frames_per_pointing=3,
                         gain_range=(0.9, 1.1), offset_range=(0.0, 30.0), noise_sigma=4.0,
                         hot_pixels=3, seed=42)
    paths = write_survey(survey, tmp_path / "frames")
    config = load_config(None,
                         {"run.threads": 2, "quality.enabled": False, "output.preview": False})
    result = run_pipeline([paths[0].parent], tmp_path / "out", config)
    assert result.report["mode"] == "classic"
    data, _, _ = read_mosaic(result.mosaic_path)
    with fits.open(result.mosaic_path) as hdul:
        coverage = np.asarray(hdul["COVERAGE"].data, dtype=np.float32)
    return data, coverage


def test_classic_output_is_pinned(tmp_path):
    data, coverage = _classic_mosaic(tmp_path)
    if os.environ.get("SKYMOSAIC_REGEN_PIN"):
        REFERENCE.parent.mkdir(exist_ok=True)
        np.savez_compressed(REFERENCE, data=data, coverage=coverage)
        pytest.skip(f"reference regenerated at {REFERENCE}")
    ref = np.load(REFERENCE)
    assert data.shape == ref["data"].shape
    np.testing.assert_array_equal(np.isnan(data), np.isnan(ref["data"]))
    # float rounding across BLAS/OpenCV builds only; any change of method is far above this
    np.testing.assert_allclose(data, ref["data"], rtol=1e-5, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(coverage, ref["coverage"], rtol=1e-5, atol=1e-5, equal_nan=True)
