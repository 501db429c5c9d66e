"""Tests of sizes with units, the pre-flight check and the full-disk path (issue 16).

A synthetic folder of three overlapping frames plus a copy of one moved 60 deg away (its
CRVAL edited) makes a grid of ~8 Gpx: the run must stop with exit 2 before writing any
pixel, naming the far frame and the figures.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import skymosaic.io._stream as stream
from skymosaic._space import (
    DiskFullError,
    disk_full_guard,
    format_bytes,
    parse_count,
    parse_size,
)
from skymosaic.assemble import DiskMosaic
from skymosaic.cli import main
from skymosaic.config import ConfigError, load_config
from skymosaic.io import atomic_path, scan_frame
from skymosaic.pipeline import PreflightError, choose_grid, run_pipeline
from skymosaic.preflight import estimate_run, fits_bytes
from skymosaic.synth import make_survey, write_survey

#: what a stopped run may leave in OUT: the log, the manifest and its state, the report
ALLOWED = {"config.toml", "skymosaic.log", "manifest.json", "run.json", "state"}

_Usage = namedtuple("_Usage", "total used free")


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture
def no_quality(tmp_path) -> Path:
    """A config without quality selection (tiny frames: the statistics are noisy)."""
    path = tmp_path / "cfg.toml"
    path.write_text("[quality]\nenabled = false\n[run]\nthreads = 1\n")
    return path


@pytest.fixture
def one_mosaic(tmp_path) -> Path:
    """`no_quality` and ``targets.split = false``: every frame in one grid, the far frame
    too (by default a lone far frame is left out, tests/test_targets.py)."""
    path = tmp_path / "one.toml"
    path.write_text("[quality]\nenabled = false\n[run]\nthreads = 1\n[targets]\nsplit = false\n")
    return path


@pytest.fixture
def survey_dir(tmp_path) -> Path:
    """Three overlapping 64 x 80 px colour frames."""
    paths = write_survey(make_survey(n_x=3, n_y=1, frame_shape=(64, 80), channels=3, seed=1),
                         tmp_path / "frames")
    return paths[0].parent


@pytest.fixture
def far_dir(survey_dir) -> Path:
    """The survey plus ``far_0000.fits``: a copy of its first frame moved 60 deg away."""
    far = survey_dir / "far_0000.fits"
    shutil.copy(survey_dir / "frame_0000.fits", far)
    with fits.open(far, mode="update") as hdul:
        hdr = hdul[0].header
        hdr["CRVAL1"] = (hdr["CRVAL1"] + 60.0) % 360.0
        hdr["CRVAL2"] = 30.0
    return survey_dir


def _left_in(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


def _no_pixels_written(out: Path) -> None:
    assert _left_in(out) <= ALLOWED, _left_in(out)
    big = [p for p in out.rglob("*") if p.is_file() and p.stat().st_size > 200_000]
    assert not big, big
    assert not list(out.rglob("*.fits")) and not list(out.rglob("*.npy"))


# --- sizes with units ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("4GB", 4 * 10**9), ("4GiB", 4 * 2**30), ("800M", 800 * 10**6), ("800MiB", 800 * 2**20),
    ("300MB", 300 * 10**6), ("0.5TB", 5 * 10**11), ("1.5 GiB", int(1.5 * 2**30)),
    ("4gb", 4 * 10**9),
    ("2kB", 2000), ("3KiB", 3072), ("100B", 100), ("300", 300 * 2**20), (300, 300 * 2**20),
    (0.5, 2**19),
])
def test_parse_size_units(text, expected):
    assert parse_size(text) == expected


def test_parse_size_default_unit():
    assert parse_size("12", default_unit="B") == 12
    assert parse_size(2, default_unit="GiB") == 2 * 2**30


@pytest.mark.parametrize("bad", ["4XB", "abc", "", "GB", "-3GB", "4 G B", "1e999GB", "nan", True,
                                 None, [4]])
def test_parse_size_names_the_bad_value(bad):
    with pytest.raises(ValueError, match="bad size") as info:
        parse_size(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("2G", 2e9), ("2e9", 2e9), ("500M", 5e8), ("2Gpx", 2e9), ("10k", 1e4), (123, 123.0), ("7", 7.0),
])
def test_parse_count(text, expected):
    assert parse_count(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["2GiB", "lots", "0", "-5", "2 Gbytes"])
def test_parse_count_names_the_bad_value(bad):
    with pytest.raises(ValueError, match="bad count") as info:
        parse_count(bad)
    assert repr(bad) in str(info.value)


def test_format_bytes():
    assert format_bytes(71e9) == "71 GB"
    assert format_bytes(512) == "512 B"


def test_config_sizes_with_units_in_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nmemory_budget_mb = "4GiB"\n[cluster]\nmax_group_mb = "2GB"\n'
                    '[output]\nmax_output_pixels = "500M"\n')
    config = load_config(path)
    assert config.run.memory_budget_mb == 4096
    assert config.memory_budget_bytes == 4 * 2**30
    assert config.cluster.max_group_mb == pytest.approx(2e9 / 2**20)
    assert config.output.max_output_pixels == 5e8
    # bare numbers stay MiB, and the effective config reads back
    assert load_config(None, {"run.memory_budget_mb": 300}).run.memory_budget_mb == 300
    assert load_config(None, {"run.memory_budget_mb": "800M"}).memory_budget_bytes == 800 * 10**6
    assert load_config(None).output.max_output_pixels == 2e9


@pytest.mark.parametrize(("key", "value", "match"), [
    ("run.memory_budget_mb", "4XB", r"'run.memory_budget_mb' = '4XB'.*bad size '4XB'"),
    ("run.memory_budget_mb", "10MB", r"'10MB' is 9.537 MiB, below the minimum of 64 MiB"),
    ("cluster.max_group_mb", "lots", r"'cluster.max_group_mb' = 'lots'"),
    ("output.max_output_pixels", "2GiB", r"'output.max_output_pixels' = '2GiB'.*bad count"),
    ("output.max_output_pixels", -1, r"greater than 0"),
])
def test_config_bad_sizes_named(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, {key: value})


# --- the estimate ------------------------------------------------------------------------


def test_estimate_matches_what_the_run_writes(survey_dir, no_quality, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(survey_dir), "-o", str(out), "-c", str(no_quality),
                 "--no-preview"]) == 0
    report = json.loads((out / "run.json").read_text())
    pre = report["preflight"]
    assert pre["ok"] and pre["problems"] == [] and pre["culprits"] == []
    h, w = report["output"]["shape"]
    assert pre["grid_shape"] == [h, w] and pre["channels"] == 3 and pre["pixels"] == h * w
    written = (out / "mosaic.fits").stat().st_size
    assert written <= pre["output_bytes"] <= written + 3 * 2880 * 20
    assert pre["store_bytes"] == DiskMosaic.nbytes(3, (h, w)) == h * w * (3 * 4 + 4 + 2)
    assert pre["disk_needed_bytes"] >= pre["output_bytes"] + pre["store_bytes"]
    assert pre["disks"] and pre["disks"][0]["free"] > 0
    assert "pre-flight: output grid" in (out / "skymosaic.log").read_text()


def test_fits_bytes_padding():
    assert fits_bytes(1, (1, 1)) == 3 * 2880 + 3 * 2880 * 20
    assert fits_bytes(3, (100, 100)) % 2880 == 0


def test_estimate_names_the_far_frame(far_dir):
    config = load_config(None, {"output.max_output_pixels": "1M"})
    frames = [scan_frame(p) for p in sorted(far_dir.glob("*.fits"))]
    grid = choose_grid(frames, config)
    estimate = estimate_run(frames, grid, config)
    assert estimate.pixels > 1e9  # ~8 Gpx: 60 deg at 2"/px
    assert not estimate.ok
    assert [c.name for c in estimate.culprits] == ["far_0000.fits"]
    assert estimate.culprits[0].distance_deg > 50
    h, w = estimate.shape_without_culprits
    assert h * w < 1e5
    text = estimate.message()
    assert "far_0000.fits" in text and f"{grid.shape[1]} x {grid.shape[0]} px" in text
    assert "1 Mpx" in text and f"{estimate.pixels:,}" in text


def test_estimate_memory_floor(far_dir):
    """A 115 000 px wide grid needs more than a 64 MiB budget for 32-row blocks."""
    config = load_config(None, {"run.memory_budget_mb": 64, "output.max_output_pixels": 1e12})
    frames = [scan_frame(p) for p in sorted(far_dir.glob("*.fits"))]
    estimate = estimate_run(frames, choose_grid(frames, config), config)
    assert estimate.memory_needed_bytes > 64 * 2**20
    assert any("memory budget" in p for p in estimate.problems)
    assert [c.name for c in estimate.culprits] == ["far_0000.fits"]


def test_estimate_small_survey_has_no_culprit_when_disk_is_tiny(survey_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(10**6, 0, 10**4))
    config = load_config(None)
    frames = [scan_frame(p) for p in sorted(survey_dir.glob("*.fits"))]
    estimate = estimate_run(frames, choose_grid(frames, config), config, out=tmp_path)
    assert not estimate.ok and estimate.culprits == []
    assert "10 kB is free" in estimate.message()
    assert "No single frame" in estimate.message()


# --- the run stops before writing ---------------------------------------------------------


def test_run_far_frame_exit_2_nothing_written(far_dir, one_mosaic, tmp_path, capsys):
    """Default limit (2 Gpx): the ~8 Gpx grid stops the run, naming the far frame."""
    out = tmp_path / "out"
    assert main(["run", str(far_dir), "-o", str(out), "-c", str(one_mosaic)]) == 2
    err = capsys.readouterr().err
    assert "pre-flight check failed" in err and "far_0000.fits" in err
    assert "over the limit of 2 Gpx" in err
    _no_pixels_written(out)
    report = json.loads((out / "run.json").read_text())
    assert report["status"] == "failed: pre-flight check"
    pre = report["preflight"]
    assert not pre["ok"] and pre["culprits"][0]["name"] == "far_0000.fits"
    assert pre["max_output_pixels"] == 2e9
    assert "far_0000.fits" in (out / "skymosaic.log").read_text()


def test_run_small_limit_exit_2(survey_dir, no_quality, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(survey_dir), "-o", str(out), "-c", str(no_quality),
                 "--max-output-pixels", "1k"]) == 2
    err = capsys.readouterr().err
    assert "over the limit of 1 kpx" in err and "No single frame" in err
    _no_pixels_written(out)


def test_run_tiny_disk_exit_2_names_far_frame(far_dir, one_mosaic, tmp_path, monkeypatch, capsys):
    """A fake free disk of 50 MB: the ~300 GB run stops; the far frame is to blame."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(10**9, 0, 50 * 10**6))
    out = tmp_path / "out"
    assert main(["run", str(far_dir), "-o", str(out), "-c", str(one_mosaic),
                 "--max-output-pixels", "1e12"]) == 2
    err = capsys.readouterr().err
    assert "of disk at" in err and "50 MB is free" in err and "far_0000.fits" in err
    _no_pixels_written(out)


def test_run_pipeline_raises_preflight_error(far_dir, one_mosaic, tmp_path):
    config = load_config(one_mosaic)
    with pytest.raises(PreflightError, match=r"far_0000\.fits") as info:
        run_pipeline([far_dir], tmp_path / "out", config)
    assert info.value.estimate.culprits[0].name == "far_0000.fits"


def test_plan_and_inspect_print_the_estimate(far_dir, one_mosaic, tmp_path, capsys):
    # by default the far frame is a lone frame a run leaves out, as inspect says
    assert main(["inspect", str(far_dir)]) == 0
    printed = capsys.readouterr().out
    assert "lone frame left out: far_0000.fits" in printed and "would stop" not in printed
    # every frame in one grid (targets.split = false): the run would stop, naming it
    assert main(["inspect", str(far_dir), "-c", str(one_mosaic)]) == 0
    printed = capsys.readouterr().out
    assert "estimate of a run" in printed and "output grid" in printed
    assert "a run would stop before writing" in printed and "far_0000.fits" in printed
    assert main(["plan", str(far_dir), "-o", str(tmp_path / "plan.csv"), "-c",
                 str(one_mosaic)]) == 0
    printed = capsys.readouterr().out
    assert "estimate of a run" in printed and "far_0000.fits" in printed
    # without the far frame: the estimate fits
    (far_dir / "far_0000.fits").unlink()
    assert main(["inspect", str(far_dir), "--pixel-scale", "4"]) == 0
    printed = capsys.readouterr().out
    assert "output grid" in printed and "4.000\"/px" in printed and "would stop" not in printed


# --- a disk that fills up during the run ---------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_path_disk_full_names_the_file(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(DiskFullError, match=r"no space left to write .*x\.json") as info, \
            atomic_path(target) as tmp:
        tmp.write_text("{}")
        _enospc()
    assert info.value.path == target and not isinstance(info.value, OSError)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_disk_full_guard_passes_other_errors(tmp_path):
    with pytest.raises(PermissionError), disk_full_guard(tmp_path / "y"):
        raise PermissionError(errno.EACCES, "denied")


def test_disk_mosaic_preallocates(tmp_path, monkeypatch):
    store = DiskMosaic.create(tmp_path / "store", 3, (40, 50))
    blocks = store.path("data").stat().st_blocks * 512
    assert blocks >= 3 * 40 * 50 * 4  # allocated, not sparse
    monkeypatch.setattr("os.posix_fallocate", _enospc)
    with pytest.raises(DiskFullError, match=r"data\.npy"):
        DiskMosaic.create(tmp_path / "full", 3, (40, 50))


def test_run_disk_full_while_writing_then_resume(survey_dir, no_quality, tmp_path, monkeypatch,
                                                 capsys):
    """ENOSPC while the FITS is written: exit 2 naming the file, the coadd kept; a rerun
    resumes from it."""
    out = tmp_path / "out"
    args = ["run", str(survey_dir), "-o", str(out), "-c", str(no_quality), "--no-preview"]
    monkeypatch.setattr(stream, "_stream", _enospc)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no space left to write" in err and "mosaic.fits" in err and "rerun" in err
    report = json.loads((out / "run.json").read_text())
    assert report["status"].startswith("failed: disk full") and "mosaic.fits" in report["status"]
    assert not (out / "mosaic.fits").exists()
    assert (out / "coadd" / "data.npy").is_file()
    monkeypatch.undo()
    assert main(args) == 0
    report = json.loads((out / "run.json").read_text())
    assert report["status"] == "ok" and "coadd" in report["resume"]["reused"]
    data = fits.getdata(out / "mosaic.fits")
    assert np.isfinite(data).any()


# --- real data -----------------------------------------------------------------------------


def test_seestar_m94_and_a_ngc7023_frame(testdata, tmp_path, capsys):
    """Six M94 frames and one NGC 7023 frame (62.7 deg away), as in issue 16, all in one
    grid (``targets.split = false``): the run stops before writing, naming the NGC 7023
    frame (headers and pixel checks only). By default the lone frame is left out."""
    folder = testdata / "seestar_s50_osc"
    m94 = sorted((folder / "raw").glob("2_*.fit.gz"))
    ngc = sorted((folder / "raw").glob("sample_Light_NGC_7023_*.fit.gz"))[:1]
    if len(m94) != 6 or not ngc:
        pytest.skip(f"expected the 6 M94 frames and an NGC 7023 frame in {folder / 'raw'}")
    inputs = tmp_path / "mixed"
    inputs.mkdir()
    for p in [*m94, *ngc]:
        (inputs / p.name).symlink_to(p)
    out = tmp_path / "out"
    split_off = tmp_path / "one.toml"
    split_off.write_text("[targets]\nsplit = false\n")
    assert main(["run", str(inputs), "-o", str(out), "--wcs-dir", str(folder / "wcs"),
                 "--threads", "2", "-c", str(split_off)]) == 2
    err = capsys.readouterr().err
    assert ngc[0].name in err and "over the limit of 2 Gpx" in err
    _no_pixels_written(out)
    pre = json.loads((out / "run.json").read_text())["preflight"]
    assert pre["pixels"] > 5e9 and [c["name"] for c in pre["culprits"]] == [ngc[0].name]
    assert pre["culprits"][0]["distance_deg"] > 55


def test_run_disk_full_while_stacking_is_not_a_tile_fallback(tmp_path, no_quality, monkeypatch,
                                                             capsys):
    """ENOSPC in a master tile's scratch cube stops the run (it is not "coadd the tile's
    frames one by one")."""
    frames = write_survey(make_survey(n_x=1, n_y=1, frames_per_pointing=3, frame_shape=(64, 80),
                                      channels=3, seed=2), tmp_path / "stackme")
    out = tmp_path / "out"
    # a cube this small fits in memory: take the scratch-cube path that a large tile takes
    monkeypatch.setattr("skymosaic.stack.master.fits_in_memory", lambda *a, **k: False)
    monkeypatch.setattr("os.pwrite", _enospc)
    assert main(["run", str(frames[0].parent), "-o", str(out), "-c", str(no_quality)]) == 2
    err = capsys.readouterr().err
    assert "no space left to write" in err and "_cube.npy" in err
    report = json.loads((out / "run.json").read_text())
    assert report["status"].startswith("failed: disk full")
    assert not (out / "mosaic.fits").exists()


def test_grid_mode_far_frame_exit_2(far_dir, no_quality, tmp_path, capsys):
    plan = tmp_path / "stack_plan.csv"
    assert main(["plan", str(far_dir), "-o", str(plan)]) == 0
    out = tmp_path / "out"
    assert main(["run", str(far_dir), "-o", str(out), "-c", str(no_quality), "--plan",
                 str(plan)]) == 2
    err = capsys.readouterr().err
    assert "pre-flight check failed" in err and "far_0000.fits" in err
    _no_pixels_written(out)
    report = json.loads((out / "run.json").read_text())
    assert report["mode"] == "grid" and report["preflight"]["mode"] == "grid"
