"""Tests of the command line (`skymosaic.cli.main`): products, exit codes, inspect, demo."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from astropy.io import fits

import skymosaic.demo
from skymosaic import __version__
from skymosaic.cli import main
from skymosaic.config import load_config
from skymosaic.io import read_mosaic

PHASES = {"discover", "verify", "grid", "coadd", "write"}


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Rich tables are as wide as COLUMNS (80 when captured): keep long paths whole."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture
def frames_dir(tmp_frames):
    return tmp_frames()[0].parent


def test_run_writes_all_products(frames_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(frames_dir), "-o", str(out), "--threads", "1"]) == 0
    names = {p.name for p in out.iterdir()}
    products = {"mosaic.fits", "mosaic_preview.png", "run.json", "config.toml", "skymosaic.log"}
    assert products <= names
    assert not any(n.startswith(".") for n in names)  # no temp or scratch left behind

    report = json.loads((out / "run.json").read_text())
    assert report["status"] == "ok"
    assert set(report["timings_s"]) >= PHASES
    assert all(v >= 0 for v in report["timings_s"].values())
    assert report["frames"]["found"] == 2 and report["frames"]["used"] == 2
    assert report["frames"]["rejected"] == {}
    assert {f["kind"] for f in report["frames"]["list"]} == {"rgb"}
    data, _, weight = read_mosaic(out / "mosaic.fits")
    assert report["output"]["shape"] == list(data.shape[1:])
    assert report["output"]["channels"] == data.shape[0] == 3
    assert report["output"]["pixel_scale_arcsec"] == pytest.approx(2.0, rel=1e-6)
    assert 0.5 < np.isfinite(data).all(axis=0).mean() <= 1.0
    assert weight.shape == data.shape[1:]
    assert report["products"]["mosaic"] == "mosaic.fits"
    with fits.open(out / "mosaic.fits") as hdul:
        assert hdul[0].header["CFGHASH"] == report["config_digest"]
        assert any("skymosaic" in line for line in hdul[0].header["HISTORY"])

    assert load_config(out / "config.toml").run.threads == 1
    log = (out / "skymosaic.log").read_text()
    assert "found 2 candidate files" in log and "mosaic written" in log
    printed = capsys.readouterr().out
    assert "frames used" in printed and "mosaic.fits" in printed


def test_run_no_preview(frames_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(frames_dir), "-o", str(out), "--no-preview", "--threads", "1"]) == 0
    assert (out / "mosaic.fits").is_file()
    assert not (out / "mosaic_preview.png").exists()
    report = json.loads((out / "run.json").read_text())
    assert report["products"]["preview"] is None


def test_run_accepts_files_and_globs(frames_dir, tmp_path):
    out = tmp_path / "out"
    paths = sorted(frames_dir.glob("*.fits"))
    assert main(["run", str(paths[0]), str(frames_dir / "*_0001.fits"), "-o", str(out),
                 "--threads", "1", "--no-preview", "--weighting", "uniform"]) == 0
    report = json.loads((out / "run.json").read_text())
    assert report["frames"]["used"] == 2
    assert load_config(out / "config.toml").coadd.weighting == "uniform"


def test_run_missing_input_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "does-not-exist"), "-o", str(out)]) == 2
    assert "does-not-exist" in capsys.readouterr().err
    assert not (out / "mosaic.fits").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2  # -o missing
    assert "--out" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["run", str(tmp_path), "-o", str(tmp_path / "o"), "--threads", "two"]) == 2


def test_memory_budget_with_units(frames_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(frames_dir), "-o", str(out), "--threads", "1", "--no-preview",
                 "--memory-budget", "1GiB", "--max-output-pixels", "2G"]) == 0
    config = load_config(out / "config.toml")
    assert config.run.memory_budget_mb == 1024 and config.output.max_output_pixels == 2e9
    report = json.loads((out / "run.json").read_text())
    assert report["preflight"]["memory_budget_bytes"] == 2**30 and report["preflight"]["ok"]
    assert main(["run", str(frames_dir), "-o", str(tmp_path / "o2"), "--memory-budget", "4GB",
                 "--threads", "1", "--no-preview"]) == 0
    assert load_config(tmp_path / "o2" / "config.toml").memory_budget_bytes == 4 * 10**9


def test_bad_memory_budget_exit_2(frames_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(frames_dir), "-o", str(out), "--memory-budget", "4XB"]) == 2
    err = capsys.readouterr().err
    assert "'run.memory_budget_mb' = '4XB'" in err and "GiB" in err
    assert not out.exists()
    assert main(["run", str(frames_dir), "-o", str(out), "--max-output-pixels", "many"]) == 2
    assert "'many'" in capsys.readouterr().err


def test_inspect_and_plan_print_the_estimate(frames_dir, tmp_path, capsys):
    assert main(["inspect", str(frames_dir)]) == 0
    out = capsys.readouterr().out
    assert "estimate of a run" in out and "output grid" in out and "disk needed" in out
    assert main(["plan", str(frames_dir), "-o", str(tmp_path / "plan.csv")]) == 0
    out = capsys.readouterr().out
    assert "estimate of a run" in out and "memory: budget" in out


def test_internal_error_exit_1(frames_dir, tmp_path, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr("skymosaic.cli.run_pipeline", boom)
    assert main(["run", str(frames_dir), "-o", str(tmp_path / "out")]) == 1
    assert "something broke" in capsys.readouterr().err


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_inspect_lists_frames(frames_dir, tmp_path, capsys):
    (frames_dir / "junk.fits").write_bytes(b"\0" * 100)
    assert main(["inspect", str(frames_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 file(s)" in out
    for name in ("frame_0000.fits", "frame_0001.fits", "junk.fits"):
        assert name in out
    assert len(re.findall(r"\brgb\b", out)) == 2
    assert "80x64" in out and "header" in out
    assert "not a readable" in out


def test_inspect_exit_codes(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "bad.fits").write_bytes(b"\0" * 100)
    assert main(["inspect", str(tmp_path / "bad.fits")]) == 2  # nothing readable


def test_demo_small_survey(tmp_path, monkeypatch, capsys):
    # the real "small" demo takes a minute on 2 cores: run the same command on a tiny survey
    tiny = dict(n_x=2, n_y=1, frame_shape=(64, 80), overlap=0.3, channels=3, sip=True)
    monkeypatch.setitem(skymosaic.demo.DEMO_SURVEYS, "small", tiny)
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    for metric in ("residual_rms_rel", "seam_score", "coverage"):
        assert metric in printed
    assert len(list((out / "frames").glob("demo_*.fits"))) == 2
    assert (out / "mosaic.fits").is_file() and (out / "run.json").is_file()


def test_demo_bad_size_exit_2(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "d"), "--size", "huge"]) == 2
    assert "huge" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
