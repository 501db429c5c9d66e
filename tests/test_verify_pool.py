"""The verify phase's process pool gives the same figures as the in-process path."""

from __future__ import annotations

import math

import pytest

from skymosaic._verify import check_frames, use_processes
from skymosaic.io import scan_frame
from skymosaic.synth import make_survey, write_survey


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify_pool")
    survey = make_survey(n_x=2, n_y=2, frame_shape=(192, 256), channels=3, seed=3)
    paths = write_survey(survey, folder)
    infos = [scan_frame(p) for p in paths]
    return infos


def _figures(checks):
    return [(c.info.name, c.error, c.stats, c.quality) for c in checks]


def test_pool_equals_serial(frames):
    kw = {"valid_min": None, "detect_sigma": 5.0, "measure": True, "workers": 2}
    serial = _figures(check_frames(frames, processes=False, **kw))
    pooled = _figures(check_frames(frames, processes=True, **kw))
    assert [f[0] for f in pooled] == [f.name for f in frames]  # input order kept
    assert all(q is not None and q.n_stars > 0 for *_, q in serial)  # real stars measured
    assert math.isfinite(serial[0][3].fwhm)
    assert pooled == serial  # dataclass equality: every figure bit for bit


def test_pool_only_for_large_measured_inputs(frames):
    assert not use_processes(frames, 2, True)  # 4 small frames: start-up would dominate
    assert not use_processes(frames * 3000, 1, True)  # one worker
    assert not use_processes(frames * 3000, 2, False)  # no sep: threads overlap the reads
    assert use_processes(frames * 3000, 2, True)
