"""`skymosaic inspect` and `plan`: the targets a run would make, their estimates (time
included), ``--format table|csv|json``, and whole values when the output is piped
(issue 16).

Known answers: a folder of two synthetic fields 50 deg apart (3 + 4 frames, OBJECT
``SYNTH``, so the targets are named after their centres) plus a copy of one frame moved
far away forms two targets and one lone frame, exactly as `run` splits it
(tests/test_targets.py); the frame names are 60 characters long and must come out whole
through a pipe 80 columns wide.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from astropy.io import fits

from skymosaic.cli import main
from skymosaic.config import load_config
from skymosaic.io import scan_frame
from skymosaic.pipeline import estimate_targets
from skymosaic.preflight import SECONDS_PER_FRAME, SECONDS_PER_MPX, estimate_time
from skymosaic.synth import make_survey, write_survey

LONG = "1_Light_M94_10.0s_IRCUT_20240315-213610_with_a_long_name"


@pytest.fixture(autouse=True)
def _narrow_pipe(monkeypatch):
    """An 80-column terminal size: piped output must not be cut to it."""
    monkeypatch.setenv("COLUMNS", "80")


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two") / "frames"
    write_survey(make_survey(n_x=3, n_y=1, frame_shape=(48, 64), channels=1, seed=1,
                             center=(150.0, 2.0)), folder, prefix=f"{LONG}_a")
    write_survey(make_survey(n_x=2, n_y=2, frame_shape=(48, 64), channels=1, seed=2,
                             center=(200.0, 40.0)), folder, prefix=f"{LONG}_b")
    far = folder / "far_0000.fits"
    shutil.copy(folder / f"{LONG}_a_0000.fits", far)
    with fits.open(far, mode="update") as hdul:
        hdul[0].header["CRVAL1"] = 300.0
        hdul[0].header["CRVAL2"] = -30.0
    return folder


def _names(folder: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{LONG}_{prefix}_*.fits"))


def test_estimate_targets_splits_as_a_run_does(two_targets):
    frames = [scan_frame(p) for p in sorted(two_targets.glob("*.fits"))]
    parts, lone = estimate_targets(frames, load_config(None))
    assert [len(p.frames) for p in parts] == [4, 3]
    assert [f.name for f in parts[0].frames] == _names(two_targets, "b")
    assert [p.name for p in parts] == ["RA200.00_DEC+40.00", "RA150.00_DEC+02.00"]
    assert list(lone) == ["far_0000.fits"] and "lone frame" in lone["far_0000.fits"]
    for p in parts:  # small grids of their own target, not one across the sky
        assert p.estimate.ok and p.estimate.pixels < 1e5 and p.estimate.time.total_s > 0
        assert p.estimate.n_frames == len(p.frames)
    # split off: one estimate of both fields, a grid across 50 deg of sky
    near = [f for f in frames if f.name != "far_0000.fits"]
    parts, lone = estimate_targets(near, load_config(None, {"targets.split": False}))
    assert len(parts) == 1 and parts[0].name is None and lone == {}
    assert parts[0].estimate.pixels > 1e9 and not parts[0].estimate.ok


def test_inspect_table_lists_targets_and_whole_names(two_targets, capsys):
    assert main(["inspect", str(two_targets)]) == 0
    out = capsys.readouterr().out
    for name in [*_names(two_targets, "a"), *_names(two_targets, "b"), "far_0000.fits"]:
        assert name in out  # whole, through an 80-column pipe
    assert "…" not in out
    assert "2 targets, one mosaic each" in out
    assert "target RA200.00_DEC+40.00: 4 frame(s)" in out
    assert "target RA150.00_DEC+02.00: 3 frame(s)" in out
    assert out.count("time: about") == 2 and "all targets: about" in out
    assert "lone frame left out: far_0000.fits" in out
    assert "would stop" not in out


def test_inspect_csv_one_row_per_file(two_targets, capsys):
    assert main(["inspect", str(two_targets), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 8
    by_file = {r["file"]: r for r in rows}
    assert {by_file[n]["target"] for n in _names(two_targets, "a")} == {"RA150.00_DEC+02.00"}
    assert {by_file[n]["target"] for n in _names(two_targets, "b")} == {"RA200.00_DEC+40.00"}
    far = by_file["far_0000.fits"]
    assert far["target"] == "" and far["problem"].startswith("lone frame")
    first = by_file[_names(two_targets, "a")[0]]
    assert first["size"] == "64x48" and first["wcs"] == "header" and first["kind"] == "mono"
    assert float(first["scale_arcsec"]) == pytest.approx(2.0, rel=1e-3)
    assert Path(first["path"]).name == first["file"]
    assert "estimate of a run" not in captured.out  # the estimate goes to stderr


def test_inspect_json_files_targets_and_estimates(two_targets, capsys):
    assert main(["inspect", str(two_targets), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["files"]) == 8 and {f["file"] for f in doc["files"]} >= set(
        _names(two_targets, "a"))
    assert [t["name"] for t in doc["targets"]] == ["RA200.00_DEC+40.00", "RA150.00_DEC+02.00"]
    assert doc["targets"][0]["frames"] == _names(two_targets, "b")
    estimate = doc["targets"][1]["estimate"]
    assert estimate["ok"] and estimate["n_frames"] == 3
    assert set(estimate["time"]["seconds"]) == set(SECONDS_PER_MPX)
    assert estimate["time"]["total_s"] == pytest.approx(sum(estimate["time"]["seconds"].values()),
                                                        abs=0.05)
    assert list(doc["lone"]) == ["far_0000.fits"]


def test_inspect_bad_format_exit_2(two_targets, capsys):
    assert main(["inspect", str(two_targets), "--format", "xml"]) == 2
    assert "--format must be table, csv or json" in capsys.readouterr().err


def test_plan_prints_each_targets_estimate(two_targets, tmp_path, capsys):
    assert main(["plan", str(two_targets), "-o", str(tmp_path / "plan.csv")]) == 0
    out = capsys.readouterr().out
    assert "target RA200.00_DEC+40.00: 4 frame(s)" in out and out.count("time: about") == 2
    assert "lone frame left out: far_0000.fits" in out


def test_run_summary_is_whole_when_piped(two_targets, tmp_path, capsys):
    """The targets table of a run through an 80-column pipe: output paths come out whole."""
    out = tmp_path / ("a_rather_long_output_folder_name_" * 3)
    config = tmp_path / "cfg.toml"
    config.write_text("[quality]\nenabled = false\n")  # tiny frames: noisy statistics
    assert main(["run", str(two_targets), "-o", str(out), "-c", str(config), "--no-preview",
                 "--no-report", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "RA150.00_DEC+02.00" / "mosaic.fits") in printed
    assert "…" not in printed


# --------------------------------------------------------------------------- time model


def test_time_scales_linearly_with_the_frame_count(tmp_path):
    """Every frame twice (a copy under another name, as a second night on the same
    pointings): verify and stack take exactly twice as long (their work and per-frame
    costs double); photometry, coadd and write are unchanged (the same master tiles)."""
    paths = write_survey(make_survey(n_x=2, n_y=2, frame_shape=(48, 64), channels=3, seed=3,
                                     frames_per_pointing=2), tmp_path / "frames")
    copies = [shutil.copy(p, p.with_name(f"copy_{p.name}")) for p in paths]
    config = load_config(None, {"run.threads": 1})
    [one] = [p.estimate for p in estimate_targets([scan_frame(p) for p in paths], config)[0]]
    [two] = [p.estimate for p in estimate_targets([scan_frame(p) for p in [*paths, *copies]],
                                                  config)[0]]
    assert two.grid_shape == one.grid_shape and two.n_frames == 2 * one.n_frames
    for phase in ("verify", "stack"):
        assert two.time.work[phase] == pytest.approx(2 * one.time.work[phase], rel=1e-9)
        assert two.time.seconds[phase] == pytest.approx(2 * one.time.seconds[phase], rel=1e-9)
    for phase in ("photometry", "coadd", "write"):
        assert two.time.seconds[phase] == pytest.approx(one.time.seconds[phase], rel=1e-9)
    assert two.time.total_s > one.time.total_s


def test_time_model_arithmetic():
    """The model by hand: 10 frames, 2 Mpx read and 1 Mpx written on 1 thread, then on 4."""
    work = {"frames": 10, "verify": 2.0, "stack": 0.0, "photometry": 0.0, "coadd": 0.0,
            "write": 1.0}
    one = estimate_time(work, threads=1)
    verify = 2.0 * SECONDS_PER_MPX["verify"] + 10 * SECONDS_PER_FRAME["verify"]
    assert one.seconds["verify"] == pytest.approx(verify)
    assert one.seconds["stack"] == 0.0  # nothing stacked: no per-frame cost either
    assert one.total_s == pytest.approx(verify + SECONDS_PER_MPX["write"])
    four = estimate_time(work, threads=4)
    assert four.seconds["verify"] < one.seconds["verify"]
    assert four.seconds["write"] == pytest.approx(one.seconds["write"])  # serial


def test_time_estimate_is_within_a_factor_3_of_the_run(tmp_path):
    """A real run (24 mono 256 x 256 frames on 6 pointings, 1 thread, ~2 s): the estimate
    recorded in run.json is within a factor 3 of the measured time of the five phases."""
    paths = write_survey(make_survey(n_x=3, n_y=2, frame_shape=(256, 256), channels=1, seed=2,
                                     frames_per_pointing=4), tmp_path / "frames")
    out = tmp_path / "out"
    assert main(["run", str(paths[0].parent), "-o", str(out), "--threads", "1", "--no-report",
                 "--no-preview"]) == 0
    report = json.loads((out / "run.json").read_text())
    time = report["preflight"]["time"]
    measured = sum(report["timings_s"].get(p, 0.0) for p in SECONDS_PER_MPX)
    assert time["threads"] == 1 and time["work"]["stack"] > 0 and time["work"]["photometry"] > 0
    assert measured / 3 <= time["total_s"] <= 3 * measured, (time, report["timings_s"])
    assert "pre-flight: time: about" in (out / "skymosaic.log").read_text()
