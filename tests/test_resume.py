"""Resume: a run killed while stacking or while coadding, rerun into the same folder, gives
the mosaic of an uninterrupted run, reusing what was finished (docs/scale.md).

The kill is deterministic: ``SKYMOSAIC_CRASH_AFTER="stack:2"`` makes the run SIGKILL itself
right after the second master tile is recorded in the manifest, ``"coadd:2"`` after the
second coadd block (`skymosaic._manifest.crash_point`). The survey is the one of
tests/test_classic_pin.py (4 master tiles); ``run.block_rows = 40`` cuts its 125-row mosaic
into 4 coadd blocks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from skymosaic.cli import main
from skymosaic.config import load_config
from skymosaic.io import read_mosaic
from skymosaic.pipeline import run_pipeline
from skymosaic.synth import make_survey, write_survey

OVERRIDES = {"run.threads": 2, "quality.enabled": False, "output.preview": False,
             "run.block_rows": 40}

#: Runs the pipeline in a child process (so that it can be killed) with OVERRIDES.
CHILD = """
import json, sys
from skymosaic.config import load_config
from skymosaic.pipeline import run_pipeline
run_pipeline([sys.argv[1]], sys.argv[2], load_config(None, json.loads(sys.argv[3])))
"""


def _config(**extra):
    return load_config(None, {**OVERRIDES, **extra})


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """The frames and an uninterrupted reference run (with its wall time)."""
    root = tmp_path_factory.mktemp("resume")
    survey = make_survey(n_x=2, n_y=2, frame_shape=(64, 80), channels=3, frames_per_pointing=3,
                         gain_range=(0.9, 1.1), offset_range=(0.0, 30.0), noise_sigma=4.0,
                         hot_pixels=3, seed=42)
    frames = write_survey(survey, root / "frames")[0].parent
    t0 = time.perf_counter()
    ref = run_pipeline([frames], root / "reference", _config())
    elapsed = time.perf_counter() - t0
    data, _, _ = read_mosaic(ref.mosaic_path)
    return {"frames": frames, "root": root, "reference": data, "result": ref, "seconds": elapsed}


def _killed_run(survey, out, crash: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SKYMOSAIC_CRASH_AFTER=crash)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(survey["frames"]), str(out),
                           json.dumps(OVERRIDES)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["artifacts"]


def test_reference_run_has_four_tiles_and_four_blocks(survey):
    report = survey["result"].report
    assert len(report["tiles"]) == 4 and report["output"]["blocks"] == 4
    assert report["resume"]["reused"] == {}
    assert not (survey["root"] / "reference" / "coadd").exists()  # stores removed after the write


def test_killed_while_stacking_resumes_with_finished_tiles(survey):
    out = survey["root"] / "killed_stack"
    _killed_run(survey, out, "stack:2")
    done = [k for k in _manifest(out) if k.startswith("tile/")]
    assert done == ["tile/tile_0000", "tile/tile_0001"]
    assert not (out / "mosaic.fits").exists()
    again = run_pipeline([survey["frames"]], out, _config())
    reused = again.report["resume"]["reused"]
    assert reused["tiles"] == ["tile_0000", "tile_0001"]
    assert reused["catalog"] is True and reused["clustering"] is True
    assert [t["reused"] for t in again.report["tiles"]] == [True, True, False, False]
    data, _, _ = read_mosaic(again.mosaic_path)
    np.testing.assert_array_equal(data, survey["reference"])


def test_killed_while_coadding_resumes_with_finished_blocks(survey):
    out = survey["root"] / "killed_coadd"
    _killed_run(survey, out, "coadd:2")
    blocks = _manifest(out)["coadd"]["meta"]["blocks"]
    assert sorted(blocks, key=int) == ["0", "40"]
    again = run_pipeline([survey["frames"]], out, _config())
    reused = again.report["resume"]["reused"]
    assert reused["coadd"] == {"blocks_reused": 2, "blocks": 4}
    assert reused["photometry"] is True and len(reused["tiles"]) == 4
    data, _, _ = read_mosaic(again.mosaic_path)
    np.testing.assert_array_equal(data, survey["reference"])
    assert "coadd" not in _manifest(out) and not (out / "coadd").exists()


def test_rerun_reuses_the_mosaic_and_fresh_recomputes_everything(survey, tmp_path):
    out = tmp_path / "run"
    run_pipeline([survey["frames"]], out, _config())
    t0 = time.perf_counter()
    again = run_pipeline([survey["frames"]], out, _config())
    rerun_seconds = time.perf_counter() - t0
    assert set(again.report["resume"]["reused"]) == {"catalog", "clustering", "tiles", "photometry",
                                                     "mosaic"}
    assert "stack" in again.report["timings_s"] and "coadd" not in again.report["timings_s"]
    assert rerun_seconds < survey["seconds"]
    fresh = run_pipeline([survey["frames"]], out, _config(**{"run.fresh": True}))
    assert fresh.report["resume"] == {"manifest": "manifest.json", "fresh": True, "reused": {}}
    assert [t["reused"] for t in fresh.report["tiles"]] == [False] * 4
    data, _, _ = read_mosaic(fresh.mosaic_path)
    np.testing.assert_array_equal(data, survey["reference"])


def test_changed_stacking_option_recomputes_tiles_but_not_the_catalog(survey, tmp_path):
    out = tmp_path / "run"
    run_pipeline([survey["frames"]], out, _config())
    again = run_pipeline([survey["frames"]], out, _config(**{"stack.kappa_high": 2.5}))
    reused = again.report["resume"]["reused"]
    assert reused == {"catalog": True, "clustering": True}
    assert [t["reused"] for t in again.report["tiles"]] == [False] * 4


def test_damaged_artifact_is_detected_and_redone(survey, tmp_path, caplog):
    out = tmp_path / "run"
    run_pipeline([survey["frames"]], out, _config())
    catalog = out / "state" / "catalog.pkl"
    catalog.write_bytes(catalog.read_bytes()[:-10])  # as if a copy had been cut short
    again = run_pipeline([survey["frames"]], out, _config())
    assert "catalog" not in again.report["resume"]["reused"]
    assert any("catalog" in r.getMessage() and "missing or damaged" in r.getMessage()
               for r in caplog.records)
    data, _, _ = read_mosaic(again.mosaic_path)
    np.testing.assert_array_equal(data, survey["reference"])


def test_touched_input_frame_invalidates_its_tile_only(survey, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted(survey["frames"].glob("*.fits")):
        (frames / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "run"
    first = run_pipeline([frames], out, _config())
    member = first.report["tiles"][0]["frames"][0]
    later = time.time() + 10
    os.utime(frames / member, (later, later))
    again = run_pipeline([frames], out, _config())
    assert "catalog" not in again.report["resume"]["reused"]  # its pixels are checked again
    assert [t["reused"] for t in again.report["tiles"]] == [False, True, True, True]


def test_cli_fresh_flag_ignores_the_manifest(survey, tmp_path):
    out = tmp_path / "cli"
    args = ["run", str(survey["frames"]), "-o", str(out), "--threads", "2", "--no-preview"]
    config = tmp_path / "c.toml"
    config.write_text("[quality]\nenabled = false\n[run]\nblock_rows = 40\n")
    assert main([*args, "-c", str(config)]) == 0
    assert main([*args, "-c", str(config)]) == 0
    assert json.loads((out / "run.json").read_text())["resume"]["reused"].get("mosaic") is True
    assert main([*args, "-c", str(config), "--fresh"]) == 0
    report = json.loads((out / "run.json").read_text())
    assert report["resume"]["fresh"] is True and report["resume"]["reused"] == {}
    data, _, _ = read_mosaic(out / "mosaic.fits")
    np.testing.assert_array_equal(data, survey["reference"])
