"""Shared fixtures: small synthetic frames on disk, the real test data, clean logging."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from skymosaic.synth import make_survey, write_survey

#: Real sky data shared by the project (see its SOURCES.md); tests skip when it is absent.
TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


@pytest.fixture
def testdata() -> Path:
    """The real-data folder; skips the test when it is not there."""
    if not TESTDATA.is_dir():
        pytest.skip(f"real test data not found at {TESTDATA}")
    return TESTDATA


@pytest.fixture
def tmp_frames(tmp_path):
    """Factory writing a tiny synthetic survey: ``tmp_frames(folder="frames", **survey_kw)``.

    Defaults: 2 x 1 pointings of 64 x 80 px, 3 channels, seed 1. Returns the sorted list of
    written FITS paths (their folder is ``paths[0].parent``).
    """

    def make(folder: str = "frames", *, layout: str = "CHW", prefix: str = "frame", **kw):
        params = dict(n_x=2, n_y=1, frame_shape=(64, 80), channels=3, seed=1)
        params.update(kw)
        return write_survey(make_survey(**params), tmp_path / folder, prefix=prefix, layout=layout)

    return make


@pytest.fixture(autouse=True)
def _restore_skymosaic_logger():
    """Undo what the CLI does to the ``skymosaic`` logger (handlers, level, propagate).

    ``cli.main`` installs a console handler and stops propagation, which would hide later
    records from ``caplog``.
    """
    log = logging.getLogger("skymosaic")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]
