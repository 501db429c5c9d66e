"""Bad inputs are rejected one by one with a reason; good frames still make a mosaic."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skymosaic.cli import main
from skymosaic.config import Config
from skymosaic.io import read_mosaic
from skymosaic.pipeline import NoUsableFramesError, run_pipeline

#: bad file name -> a phrase its rejection reason must contain
BAD = {
    "corrupt.fits": "not a readable FITS file",
    "truncated.fits": "truncated file",
    "nowcs.fits": "no celestial WCS",
    "allnan.fits": "no valid pixel",
    "fivechan.fits": "unsupported image shape (5, 64, 80)",
    "mono.fits": "1-channel frame among 3 3-channel frames",
}


def _config():
    return Config.model_validate({"run": {"threads": 1, "memory_budget_mb": 256}})


def _write_bad(folder: Path, good: Path, names=tuple(BAD)) -> None:
    """Write the bad frames into ``folder``, with the WCS of the good frame ``good``."""
    with fits.open(good) as hdul:
        hdr, data = hdul[0].header.copy(), hdul[0].data.copy()
    wcs_hdr = fits.Header([c for c in hdr.cards if c.keyword not in ("SIMPLE", "BITPIX", "EXTEND")
                           and not c.keyword.startswith("NAXIS")])
    makers = {
        "corrupt.fits": lambda p: p.write_bytes(np.random.default_rng(7).bytes(6000)),
        "truncated.fits": lambda p: p.write_bytes(good.read_bytes()[: 2880 * 3 + 123]),
        "nowcs.fits": lambda p: fits.PrimaryHDU(data).writeto(p),
        "allnan.fits": lambda p: fits.PrimaryHDU(np.full_like(data, np.nan), wcs_hdr).writeto(p),
        "fivechan.fits": lambda p: fits.PrimaryHDU(np.ones((5, *data.shape[1:]), np.float32)
                                                   ).writeto(p),
        "mono.fits": lambda p: fits.PrimaryHDU(data[1], _mono_header(wcs_hdr)).writeto(p),
    }
    for name in names:
        makers[name](folder / name)


def _mono_header(hdr: fits.Header) -> fits.Header:
    out = hdr.copy()
    out["WCSAXES"] = 2
    return out


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _rejected_by_name(report: dict) -> dict[str, str]:
    return {Path(k).name: v for k, v in report["frames"]["rejected"].items()}


@pytest.fixture
def mixed(tmp_frames):
    good = tmp_frames("mixed")
    folder = good[0].parent
    _write_bad(folder, good[0])
    return folder, [p.name for p in good]


def test_bad_frames_rejected_and_good_ones_mosaicked(mixed, tmp_path, caplog):
    folder, good = mixed
    before = _snapshot(folder)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        result = run_pipeline([folder], out, _config())
    # one warning per bad frame, naming the file and the reason
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for name, reason in BAD.items():
        hits = [m for m in messages if name in m]
        assert len(hits) == 1, (name, messages)
        assert reason in hits[0]
    assert not any(g in m for g in good for m in messages)
    # the report lists each with its reason
    report = json.loads((out / "run.json").read_text())
    rejected = _rejected_by_name(report)
    assert set(rejected) == set(BAD)
    for name, reason in BAD.items():
        assert reason in rejected[name], (name, rejected[name])
    assert report["status"] == "ok"
    assert report["frames"]["found"] == len(BAD) + len(good)
    assert report["frames"]["used"] == len(good)
    assert sorted(Path(f["path"]).name for f in report["frames"]["list"]) == good
    # the mosaic is made of the good frames only
    data, _, weight = read_mosaic(out / "mosaic.fits")
    assert data.shape[0] == 3 and result.data_shape == data.shape
    assert np.isfinite(data).any() and np.nanmax(weight) > 0
    assert np.nanmax(data) < 1e4  # the all-ones 5-channel and NaN frames did not leak in
    # inputs untouched, nothing written next to them
    assert _snapshot(folder) == before
    assert not (out / ".scratch").exists()


@pytest.mark.parametrize("name", list(BAD))
def test_each_bad_frame_alone_among_good_ones(tmp_frames, tmp_path, name, caplog):
    good = tmp_frames(name.replace(".", "_"))
    folder = good[0].parent
    _write_bad(folder, good[0], names=[name])
    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        run_pipeline([folder], tmp_path / "out", _config())
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    reason = BAD[name].replace("among 3 3-channel", "among 2 3-channel")
    assert list(_rejected_by_name(report)) == [name]
    assert reason in _rejected_by_name(report)[name]
    assert any(name in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert (tmp_path / "out" / "mosaic.fits").is_file()


def test_cli_with_bad_frames_succeeds(mixed, tmp_path, capsys):
    folder, good = mixed
    before = _snapshot(folder)
    out = tmp_path / "cli_out"
    assert main(["run", str(folder), "-o", str(out), "--threads", "1", "--no-preview"]) == 0
    report = json.loads((out / "run.json").read_text())
    assert set(_rejected_by_name(report)) == set(BAD)
    assert report["frames"]["used"] == len(good)
    assert (out / "mosaic.fits").is_file()
    log = (out / "skymosaic.log").read_text()
    for name in BAD:
        assert f"{name}: " in log and "frame rejected" in log
    assert "frames rejected" in capsys.readouterr().out
    assert _snapshot(folder) == before


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    with pytest.raises(NoUsableFramesError, match=r"no usable frame among 0 file\(s\)"):
        run_pipeline([tmp_path / "empty"], out, _config())
    report = json.loads((out / "run.json").read_text())
    assert report["status"].startswith("failed")
    assert report["frames"] == {"found": 0, "rejected": {}}
    assert not (out / "mosaic.fits").exists()


def test_only_bad_frames(tmp_frames, tmp_path, caplog):
    good = tmp_frames("seed")
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    _write_bad(bad_dir, good[0], names=[n for n in BAD if n != "mono.fits"])
    before = _snapshot(bad_dir)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="skymosaic"), pytest.raises(
            NoUsableFramesError, match=r"no usable frame among 5 file\(s\).*run\.json"):
        run_pipeline([bad_dir], out, _config())
    report = json.loads((out / "run.json").read_text())
    assert report["status"] == "failed: no usable frame"
    assert report["frames"]["found"] == 5
    rejected = _rejected_by_name(report)
    assert set(rejected) == set(BAD) - {"mono.fits"}
    for name, reason in rejected.items():
        assert BAD[name] in reason
    assert "discover" in report["timings_s"]
    assert not (out / "mosaic.fits").exists()
    assert _snapshot(bad_dir) == before


@pytest.mark.parametrize("kind", ["empty", "bad"])
def test_cli_no_usable_frames_exit_2(tmp_frames, tmp_path, capsys, kind):
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "bad":
        _write_bad(folder, tmp_frames("seed")[0], names=["corrupt.fits", "nowcs.fits"])
    out = tmp_path / "out"
    assert main(["run", str(folder), "-o", str(out), "--threads", "1"]) == 2
    assert "no usable frame" in capsys.readouterr().err
    report = json.loads((out / "run.json").read_text())
    assert report["status"] == "failed: no usable frame"
    assert len(report["frames"]["rejected"]) == (2 if kind == "bad" else 0)
    assert not (out / "mosaic.fits").exists()
