"""Plate solving of frames without a usable WCS (skymosaic.astrometry, issue 8).

Unit tests run everywhere in a few seconds: header hints, solver command lines (always
``--no-remove-lines --uniformize 0``), the content-hash cache, WCS validation, the
solver-missing reason, the pipeline with a fake solver, ``skymosaic doctor``.

Real-data tests (marker ``realdata``) solve the raw ZWO Seestar S50 frames of
``../shared/testdata/seestar_s50_osc/raw`` with astrometry.net's ``solve-field`` (skipped
when it or its index files are not installed: ``make solver``) and compare each solution
with the astrometry.net sidecar shipped in ``seestar_s50_osc/wcs`` over the whole frame.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skymosaic.astrometry import (
    AstapSolver,
    AstrometryNetSolver,
    SolveAttempt,
    SolveHints,
    SolveOptions,
    check_wcs,
    content_hash,
    describe_non_celestial,
    find_index_files,
    find_solver,
    index_search_dirs,
    parse_dec,
    parse_ra,
    read_solution,
    solution_path,
    solve_frames,
    solve_hints,
    solver_env,
    solver_missing_reason,
)
from skymosaic.astrometry import _solve as solve_module
from skymosaic.astrometry import _solvers as solvers_module
from skymosaic.cli import main
from skymosaic.config import Config, ConfigError, load_config
from skymosaic.io import FrameError, read_mosaic, scan_frame
from skymosaic.pipeline import build_catalog, run_pipeline

SEESTAR_SCALE = 206.264806 * 2.9 / 250.0  # 2.3927"/px


def _seestar_header(**extra) -> fits.Header:
    header = fits.Header({"FOCALLEN": 250, "XPIXSZ": 2.90000009536743, "XBINNING": 1,
                          "RA": 193.070835, "DEC": 40.979722, "BAYERPAT": "GRBG"})
    header.update(extra)
    return header


# -- hints -----------------------------------------------------------------------------------


def test_scale_from_focal_length_and_pixel_size():
    hints = solve_hints(_seestar_header())
    assert hints.scale_arcsec == pytest.approx(SEESTAR_SCALE, rel=1e-6)
    assert hints.scale_arcsec == pytest.approx(2.393, abs=0.001)
    assert "FOCALLEN 250 mm" in hints.scale_source and "XPIXSZ 2.9 um" in hints.scale_source


@pytest.mark.parametrize(("cards", "scale"), [
    # XPIXSZ is the binned pixel (MaxIm DL convention): binning is not applied again
    ({"FOCALLEN": 250.0, "XPIXSZ": 5.8, "XBINNING": 2}, 2 * SEESTAR_SCALE),
    # PIXSIZE is the physical pixel: multiplied by the binning
    ({"FOCALLEN": 250.0, "PIXSIZE": 2.9, "XBINNING": 2}, 2 * SEESTAR_SCALE),
    ({"FOCALLEN": 250.0, "PIXSIZE1": 2.9, "CCDXBIN": 3}, 3 * SEESTAR_SCALE),
    ({"PIXSCALE": 1.25, "FOCALLEN": 250.0, "XPIXSZ": 2.9}, 1.25),  # explicit scale wins
    ({"FOCALLEN": 250.0}, None),  # no pixel size
    ({"XPIXSZ": 2.9}, None),  # no focal length
    ({"FOCALLEN": 0, "XPIXSZ": 2.9}, None),
    ({"FOCALLEN": "n/a", "XPIXSZ": 2.9}, None),
])
def test_scale_keys(cards, scale):
    got = solve_hints(fits.Header(cards)).scale_arcsec
    assert got == (None if scale is None else pytest.approx(scale, rel=1e-6))


@pytest.mark.parametrize(("cards", "ra", "dec", "source"), [
    ({"RA": 193.070835, "DEC": 40.979722}, 193.070835, 40.979722, "RA/DEC"),  # Seestar: degrees
    ({"OBJCTRA": "12 52 17.000", "OBJCTDEC": "+40 58 47.00"}, 193.070833, 40.979722,
     "OBJCTRA/OBJCTDEC"),  # MaxIm/NINA: sexagesimal, RA in hours
    ({"OBJCTRA": "12:52:17", "OBJCTDEC": "-00:30:00"}, 193.070833, -0.5, "OBJCTRA/OBJCTDEC"),
    ({"OBJCTRA": "12h52m17s", "OBJCTDEC": "-12d30m00s"}, 193.070833, -12.5, "OBJCTRA/OBJCTDEC"),
    ({"RA": "12 52 17", "DEC": "40 58 47"}, 193.070833, 40.979722, "RA/DEC"),  # strings: hours
    ({"RA": "193.07", "DEC": "40.98"}, 193.07, 40.98, "RA/DEC"),  # plain number strings: degrees
    ({"RA_OBJ": 10.5, "DEC_OBJ": -70.25}, 10.5, -70.25, "RA_OBJ/DEC_OBJ"),
    # RA/DEC first; an unparseable pair falls through to the next one
    ({"RA": 1.0, "DEC": 2.0, "OBJCTRA": "12 00 00", "OBJCTDEC": "+10 00 00"}, 1.0, 2.0, "RA/DEC"),
    ({"RA": "garbage", "DEC": 2.0, "OBJCTRA": "12 00 00", "OBJCTDEC": "+10 00 00"}, 180.0, 10.0,
     "OBJCTRA/OBJCTDEC"),
    ({"RA": 400.0, "DEC": 2.0}, None, None, None),  # out of range
    ({"RA": 10.0, "DEC": 95.0}, None, None, None),
    ({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 30.0, "CRVAL2": -5.0}, 30.0, -5.0,
     "CRVAL1/CRVAL2"),  # the centre of a WCS that failed validation
    ({"CTYPE1": "GLON-TAN", "CRVAL1": 30.0, "CRVAL2": -5.0}, None, None, None),
    ({}, None, None, None),
])
def test_position_keys(cards, ra, dec, source):
    hints = solve_hints(fits.Header(cards))
    if ra is None:
        assert not hints.has_position and hints.ra_deg is None and hints.position_source is None
    else:
        assert hints.ra_deg == pytest.approx(ra, abs=1e-5)
        assert hints.dec_deg == pytest.approx(dec, abs=1e-5)
        assert hints.position_source == source


@pytest.mark.parametrize(("text", "deg"), [("0 0 0", 0.0), ("23:59:59.9", 359.99958), ("6h", 90.0),
                                            ("12.5", 12.5), ("", None), ("12 xx", None)])
def test_parse_ra(text, deg):
    assert parse_ra(text) == (None if deg is None else pytest.approx(deg, abs=1e-5))


def test_parse_dec_keeps_the_sign_of_minus_zero_degrees():
    assert parse_dec("-00 30 00") == pytest.approx(-0.5)
    assert parse_dec("+00 30 00") == pytest.approx(0.5)
    assert parse_dec(True) is None and parse_dec(None) is None


# -- command lines ---------------------------------------------------------------------------


def _seestar_hints() -> SolveHints:
    return solve_hints(_seestar_header())


def test_solve_field_command_line(tmp_path):
    opts = SolveOptions(timeout_s=30, downsample=2, radius_deg=3.0, scale_tolerance=0.15)
    cmd = AstrometryNetSolver("solve-field").command(tmp_path / "frame.fits", tmp_path,
                                                     _seestar_hints(), (1920, 1080), opts)
    assert cmd[0] == "solve-field" and cmd[-1] == str(tmp_path / "frame.fits")
    # the NumPy 2 pitfall: both Python helpers off, always
    assert "--no-remove-lines" in cmd
    assert cmd[cmd.index("--uniformize") + 1] == "0"

    def value(flag):
        return cmd[cmd.index(flag) + 1]

    assert value("--downsample") == "2" and value("--cpulimit") == "30"
    assert value("--objs") == "100"
    assert value("--scale-units") == "arcsecperpix"
    assert float(value("--scale-low")) == pytest.approx(0.85 * SEESTAR_SCALE, rel=1e-3)
    assert float(value("--scale-high")) == pytest.approx(1.15 * SEESTAR_SCALE, rel=1e-3)
    assert float(value("--ra")) == pytest.approx(193.070835)
    assert float(value("--dec")) == pytest.approx(40.979722)
    assert value("--radius") == "3"
    for flag in ("--no-plots", "--overwrite", "--no-verify"):
        assert flag in cmd
    assert value("--dir") == str(tmp_path) and value("--temp-dir") == str(tmp_path)
    assert value("--new-fits") == "none" and "--config" not in cmd


def test_solve_field_command_without_hints_and_with_extra_index_dirs(tmp_path):
    index_dir = tmp_path / "indexes"
    cmd = AstrometryNetSolver("solve-field", index_dirs=[index_dir]).command(
        tmp_path / "f.fits", tmp_path, SolveHints(), (100, 100), SolveOptions())
    for flag in ("--scale-low", "--scale-high", "--ra", "--dec", "--radius"):
        assert flag not in cmd
    assert "--no-remove-lines" in cmd and cmd[cmd.index("--uniformize") + 1] == "0"
    cfg = Path(cmd[cmd.index("--config") + 1])
    lines = cfg.read_text().splitlines()
    assert lines[0] == f"add_path {index_dir}" and lines[-1] == "autoindex"


def test_astap_command_line(tmp_path):
    opts = SolveOptions(solver="astap", downsample=2, radius_deg=5)
    cmd = AstapSolver("astap", database=Path("/opt/astap")).command(
        tmp_path / "frame.fits", tmp_path, _seestar_hints(), (1920, 1080), opts)

    def value(flag):
        return cmd[cmd.index(flag) + 1]

    assert value("-f") == str(tmp_path / "frame.fits")
    assert float(value("-ra")) == pytest.approx(193.070835 / 15.0)  # hours
    assert float(value("-spd")) == pytest.approx(40.979722 + 90.0)  # south pole distance
    assert float(value("-fov")) == pytest.approx(SEESTAR_SCALE * 1920 / 3600, rel=1e-3)  # height
    assert value("-r") == "5" and value("-z") == "2" and value("-d") == "/opt/astap"
    assert value("-s") == "100"
    assert "-wcs" in cmd


def test_solver_env_gives_python3_with_numpy(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    python3 = fake / "python3"
    python3.write_text("#!/bin/sh\nexit 1\n")  # a python3 that cannot import numpy
    python3.chmod(0o755)
    env = solver_env({"PATH": str(fake)})
    first = env["PATH"].split(":")[0]
    assert first == str(Path(sys.executable).parent)
    assert shutil.which("python3", path=env["PATH"]) is not None


def test_options_are_validated():
    with pytest.raises(ValueError, match="solver must be"):
        SolveOptions(solver="pixinsight")
    with pytest.raises(ValueError, match="scale_tolerance"):
        SolveOptions(scale_tolerance=1.5)
    with pytest.raises(ValueError, match="timeout_s"):
        SolveOptions(timeout_s=0)


# -- solver outcomes without a real solver ---------------------------------------------------


def _script(folder: Path, body: str) -> str:
    path = folder / "fake-solve-field"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_missing_binary_is_a_reason(tmp_path):
    attempt = AstrometryNetSolver(str(tmp_path / "nope" / "solve-field")).solve(
        tmp_path / "f.fits", tmp_path, _seestar_hints(), (10, 10), SolveOptions())
    assert not attempt.ok and "not found" in attempt.reason and "make solver" in attempt.reason


def test_unrunnable_binary_is_a_reason(tmp_path):
    exe = Path(_script(tmp_path, "exit 0"))
    exe.chmod(0o644)
    attempt = AstrometryNetSolver(str(exe)).solve(tmp_path / "f.fits", tmp_path, _seestar_hints(),
                                                  (10, 10), SolveOptions())
    assert not attempt.ok and attempt.reason.startswith(f"cannot start {exe}")


def test_did_not_solve_is_a_reason(tmp_path):
    exe = _script(tmp_path, 'echo "simplexy: found 74 sources."\n'
                            'echo "Field 1 did not solve (index index-tycho2-08.le.fits)."')
    attempt = AstrometryNetSolver(exe).solve(tmp_path / "f.fits", tmp_path, _seestar_hints(),
                                             (1920, 1080), SolveOptions(timeout_s=5))
    assert not attempt.ok
    assert attempt.reason.startswith("solve-field did not solve the field")
    assert "74 sources detected" in attempt.reason and "CPU limit 5 s" in attempt.reason


def test_solver_error_line_is_the_reason(tmp_path):
    exe = _script(tmp_path, 'echo "Solving..."\n'
                            'echo "You must list at least one index in the config file"\nexit 255')
    attempt = AstrometryNetSolver(exe).solve(tmp_path / "f.fits", tmp_path, _seestar_hints(),
                                             (10, 10), SolveOptions())
    assert "exit 255" in attempt.reason and "at least one index" in attempt.reason


def test_timeout_kills_the_solver(tmp_path, monkeypatch):
    monkeypatch.setattr(SolveOptions, "wall_limit_s", property(lambda self: 0.5))
    exe = _script(tmp_path, "sleep 30")
    attempt = AstrometryNetSolver(exe).solve(tmp_path / "f.fits", tmp_path, _seestar_hints(),
                                             (10, 10), SolveOptions())
    assert "timed out" in attempt.reason and attempt.seconds < 10


def test_no_solver_found_says_how_to_install(monkeypatch):
    monkeypatch.setattr(solvers_module.shutil, "which", lambda name, **kw: None)
    assert find_solver(SolveOptions()) is None
    reason = solver_missing_reason(SolveOptions())
    assert "no plate solver found" in reason and "make solver" in reason


def test_astap_preferred_only_with_a_database(tmp_path, monkeypatch):
    binaries = {"astap": str(tmp_path / "astap"), "solve-field": "/usr/bin/solve-field"}
    monkeypatch.setattr(solvers_module.shutil, "which", lambda name, **kw: binaries.get(name))
    monkeypatch.setattr(solvers_module, "ASTAP_DATABASE_DIRS", ())
    assert find_solver(SolveOptions()).name == "astrometry.net"  # no star database
    assert find_solver(SolveOptions(solver="astap")).name == "astap"  # asked for explicitly
    db = tmp_path / "db"
    db.mkdir()
    (db / "d50_0101.1476").write_bytes(b"\0")
    solver = find_solver(SolveOptions(astap_database=db))
    assert solver.name == "astap" and solver.database == db
    explicit = find_solver(SolveOptions(solver="astrometry.net", astap_database=db))
    assert explicit.name == "astrometry.net"


# -- WCS validation --------------------------------------------------------------------------


def _tan(scale_arcsec=SEESTAR_SCALE, *, cd=None) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [193.0, 41.0]
    w.wcs.crpix = [540.5, 960.5]
    s = scale_arcsec / 3600
    w.wcs.cd = np.array(cd if cd is not None else [[-s, 0.0], [0.0, s]])
    return w


def test_check_wcs_accepts_a_consistent_wcs():
    assert check_wcs(_tan(), (1920, 1080), hints=_seestar_hints()) is None
    assert check_wcs(_tan(1.4 * SEESTAR_SCALE), (1920, 1080), hints=_seestar_hints()) is None
    assert check_wcs(_tan(3 * SEESTAR_SCALE), (1920, 1080)) is None  # no optics to compare with


@pytest.mark.parametrize("factor", [2.0, 0.5, 1.6])
def test_check_wcs_reports_a_scale_off_from_the_optics(factor):
    reason = check_wcs(_tan(factor * SEESTAR_SCALE), (1920, 1080), hints=_seestar_hints())
    assert reason is not None
    assert f"{factor * SEESTAR_SCALE:.3f}\"/px is {factor:.2f}x the optics' 2.393\"/px" in reason
    assert "FOCALLEN 250 mm" in reason and "allowed factor 1.5" in reason


def test_check_wcs_reports_a_singular_matrix():
    s = SEESTAR_SCALE / 3600
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(_cd_header([[s, s], [s, s]]))
    reason = check_wcs(wcs, (1920, 1080), hints=_seestar_hints())
    assert reason is not None and ("singular" in reason or "not invertible" in reason)


def test_non_celestial_header_is_described():
    assert "not celestial (CTYPE1='LINEAR'" in describe_non_celestial(
        fits.Header({"CTYPE1": "LINEAR", "CTYPE2": "LINEAR"}))
    assert describe_non_celestial(fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"})) is None
    assert describe_non_celestial(fits.Header({"CTYPE1": "GLON-CAR", "CTYPE2": "GLAT-CAR"})) is None
    assert describe_non_celestial(fits.Header({"NAXIS": 2})) is None


def _cd_header(cd) -> fits.Header:
    return fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 193.0,
                        "CRVAL2": 41.0, "CRPIX1": 25.5, "CRPIX2": 20.5, "CD1_1": cd[0][0],
                        "CD1_2": cd[0][1], "CD2_1": cd[1][0], "CD2_2": cd[1][1]})


@pytest.mark.parametrize("kind", ["zero", "rank1"])
def test_scan_frame_drops_a_singular_wcs_on_request(tmp_path, kind):
    s = SEESTAR_SCALE / 3600
    cd = [[0.0, 0.0], [0.0, 0.0]] if kind == "zero" else [[s, s], [s, s]]
    path = tmp_path / "singular.fits"
    fits.PrimaryHDU(np.ones((40, 50), np.float32), header=_cd_header(cd)).writeto(path)
    with pytest.raises(FrameError, match="WCS"):
        scan_frame(path)
    info = scan_frame(path, on_bad_wcs="drop")
    assert info.wcs is None and info.pixel_scale_arcsec is None
    assert info.extra["bad_wcs"].startswith("header WCS unusable: ")
    with pytest.raises(ValueError, match="on_bad_wcs"):
        scan_frame(path, on_bad_wcs="ignore")


# -- cache and the solve loop with a fake solver ---------------------------------------------

_WCS_KEYS = ("WCSAXES", "CRPIX", "CRVAL", "CDELT", "CUNIT", "CTYPE", "PC1_", "PC2_", "CD1_", "CD2_",
             "LONPOLE", "LATPOLE", "MJDREF", "RADESYS", "EQUINOX")


def _strip_wcs(path: Path, *, scale_arcsec: float = 2.0) -> fits.Header:
    """Turn a synthetic frame into a smart-telescope frame: RA/DEC + optics, no WCS.

    Returns the removed WCS header (the 'true' solution of the frame).
    """
    with fits.open(path) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        truth = WCS(header, naxis=2).celestial.to_header()
    for key in list(header.keys()):
        if key.startswith(_WCS_KEYS):
            del header[key]
    header["RA"], header["DEC"] = truth["CRVAL1"], truth["CRVAL2"]
    header["FOCALLEN"] = 250.0
    header["XPIXSZ"] = scale_arcsec * 250.0 / 206.264806
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
    return truth


class FakeSolver:
    """Returns the true WCS of the synthetic frame whose centre is nearest to the hint."""

    name = "fake"
    executable = "fake-solve"

    def __init__(self, truths: dict[str, fits.Header], fail: set[str] = frozenset()) -> None:
        self.truths, self.fail, self.calls = truths, fail, []

    def command(self, image, workdir, hints, shape, options):
        return [self.executable, str(image)]

    def solve(self, image, workdir, hints, shape, options):
        name = min(self.truths, key=lambda n: abs(self.truths[n]["CRVAL1"] - hints.ra_deg)
                   + abs(self.truths[n]["CRVAL2"] - hints.dec_deg))
        self.calls.append(name)
        assert fits.getdata(image).shape == shape  # the full-resolution luminance
        if name in self.fail:
            return SolveAttempt(None, "fake did not solve the field", 0.01, self.name)
        header = self.truths[name].copy()
        header["COMMENT"] = "solver chatter that the sidecar does not keep"
        return SolveAttempt(header, None, 0.01, self.name)


@pytest.fixture
def nowcs_frames(tmp_frames):
    """Two synthetic frames without WCS (RA/DEC/FOCALLEN/XPIXSZ only) and their true WCS."""
    paths = tmp_frames("nowcs")
    truths = {p.name: _strip_wcs(p) for p in paths}
    return paths, truths


def test_solutions_cached_by_content_hash(nowcs_frames, tmp_path):
    paths, truths = nowcs_frames
    infos = [scan_frame(p) for p in paths]
    assert all(i.wcs is None for i in infos)
    before = {p: p.read_bytes() for p in paths}
    run_dir = tmp_path / "run"
    fake = FakeSolver(truths)
    results = solve_frames(infos, run_dir, solver=fake, options=SolveOptions(workers=2))
    assert sorted(fake.calls) == sorted(truths)
    for info in infos:
        r = results[str(info.path)]
        assert r.status == "solved" and r.reason is None
        digest = content_hash(info.path)
        assert r.sidecar == run_dir / "wcs" / f"{digest[:16]}.wcs" == solution_path(run_dir, digest)
        side = fits.getheader(r.sidecar)
        assert (side["IMAGEW"], side["IMAGEH"]) == (info.width, info.height)
        assert side["SMSHA256"] == digest and side["SMSOLVER"] == "fake"
        assert "COMMENT" not in side  # only the WCS cards are kept
        truth = WCS(truths[info.name])
        assert np.allclose(r.wcs.wcs.crval, truth.wcs.crval)
    assert {p: p.read_bytes() for p in paths} == before  # inputs untouched
    assert not list(paths[0].parent.glob("*.wcs"))  # nothing written next to them
    # second pass: from the cache, the solver is not called
    fake.calls.clear()
    again = solve_frames(infos, run_dir, solver=fake)
    assert fake.calls == [] and {r.status for r in again.values()} == {"cached"}
    # the same content under another name reuses it; changed content is solved again
    copy = paths[0].parent / "renamed.fits"
    shutil.copyfile(paths[0], copy)
    changed = paths[1]
    with fits.open(changed, mode="update") as hdul:
        hdul[0].header["EXPTIME"] = 61.0
    results = solve_frames([scan_frame(copy), scan_frame(changed)], run_dir, solver=fake)
    assert results[str(copy)].status == "cached"
    assert results[str(changed)].status == "solved" and fake.calls == [changed.name]


def test_cached_solution_for_another_frame_size_is_ignored(nowcs_frames, tmp_path, caplog):
    paths, truths = nowcs_frames
    info = scan_frame(paths[0])
    digest = content_hash(paths[0])
    fake = FakeSolver(truths)
    solve_frames([info], tmp_path, solver=fake)
    sidecar = solution_path(tmp_path, digest)
    assert read_solution(sidecar, width=info.width, height=info.height, digest=digest) is not None
    assert read_solution(sidecar, width=info.width, height=info.height, digest="0" * 64) is None
    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        assert read_solution(sidecar, width=info.width + 2, height=info.height) is None
    assert "solving again" in caplog.text


def test_frames_without_position_are_not_solved_blind_by_default(nowcs_frames, tmp_path):
    paths, truths = nowcs_frames
    for p in paths:
        with fits.open(p, mode="update") as hdul:
            del hdul[0].header["RA"], hdul[0].header["DEC"]
    fake = FakeSolver(truths)
    infos = [scan_frame(p) for p in paths]
    results = solve_frames(infos, tmp_path, solver=fake)
    assert fake.calls == []
    assert all("no RA/DEC" in r.reason and "solve.blind" in r.reason for r in results.values())


def test_a_solution_with_a_wrong_scale_is_refused(nowcs_frames, tmp_path):
    paths, truths = nowcs_frames
    wrong = {n: h.copy() for n, h in truths.items()}
    for h in wrong.values():
        h["CDELT1"], h["CDELT2"] = 2.0 * h["CDELT1"], 2.0 * h["CDELT2"]
    results = solve_frames([scan_frame(paths[0])], tmp_path, solver=FakeSolver(wrong))
    (r,) = results.values()
    assert r.status == "failed" and "solution rejected" in r.reason and "2.00x" in r.reason
    assert not (tmp_path / "wcs").exists() or not list((tmp_path / "wcs").iterdir())


# -- the pipeline with a fake solver ---------------------------------------------------------


def _config(**solve):
    return Config.model_validate({"run": {"threads": 1, "memory_budget_mb": 256},
                                  "solve": solve, "output": {"preview": False}})


@pytest.fixture
def fake_solver(monkeypatch):
    """Install a `FakeSolver` as the solver the pipeline finds: ``fake_solver(truths)``."""

    def install(truths, **kw):
        fake = FakeSolver(truths, **kw)
        monkeypatch.setattr(solve_module, "find_solver", lambda options: fake)
        return fake

    return install


def test_pipeline_solves_frames_without_wcs_and_reuses_the_cache(nowcs_frames, tmp_path,
                                                                 fake_solver):
    paths, truths = nowcs_frames
    fake = fake_solver(truths)
    out = tmp_path / "out"
    result = run_pipeline([paths[0].parent], out, _config())
    report = json.loads((out / "run.json").read_text())
    assert report["status"] == "ok" and report["frames"]["rejected"] == {}
    assert report["frames"]["used"] == 2 and sorted(fake.calls) == sorted(truths)
    assert report["solve"]["solved"] == 2 and report["solve"]["failed"] == 0
    frame = report["solve"]["frames"][paths[0].name]
    assert frame["status"] == "solved" and frame["hints"]["scale_arcsec"] == pytest.approx(2.0)
    assert all(f["wcs"].startswith(f"solved:{out / 'wcs'}") for f in report["frames"]["list"])
    assert [Path(f["path"]).name for f in report["frames"]["list"]] == [p.name for p in paths]
    data, _, _ = read_mosaic(result.mosaic_path)
    assert np.isfinite(data).any()
    fake.calls.clear()
    report2 = run_pipeline([paths[0].parent], out, _config()).report
    assert fake.calls == [] and report2["solve"]["cached"] == 2


def test_pipeline_rejects_unsolved_frames_with_the_reason(nowcs_frames, tmp_path, fake_solver,
                                                          caplog):
    paths, truths = nowcs_frames
    fake_solver(truths, fail={paths[1].name})
    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        result = run_pipeline([paths[0].parent], tmp_path / "out", _config())
    rejected = {Path(k).name: v for k, v in result.report["frames"]["rejected"].items()}
    assert list(rejected) == [paths[1].name]
    assert rejected[paths[1].name] == ("no celestial WCS in the header and no .wcs sidecar; "
                                       "plate solving failed: fake did not solve the field")
    hits = [r.getMessage() for r in caplog.records if paths[1].name in r.getMessage()]
    assert len(hits) == 1 and "fake did not solve" in hits[0]
    assert result.report["frames"]["used"] == 1


def test_pipeline_without_a_solver_says_make_solver(nowcs_frames, tmp_path, monkeypatch):
    paths, _ = nowcs_frames
    monkeypatch.setattr(solvers_module.shutil, "which", lambda name, **kw: None)
    catalog = build_catalog(paths, _config(), run_dir=tmp_path)
    assert catalog.frames == []
    for reason in catalog.rejected.values():
        assert reason.startswith("no celestial WCS in the header and no .wcs sidecar; plate "
                                 "solving failed: no plate solver found")
        assert "make solver" in reason


def test_solving_disabled_or_without_run_dir(nowcs_frames, fake_solver):
    paths, truths = nowcs_frames
    fake = fake_solver(truths)
    off = build_catalog(paths, _config(enabled=False), run_dir=Path("/nonexistent"))
    assert all("solve.enabled = false" in r for r in off.rejected.values())
    no_dir = build_catalog(paths, _config())  # e.g. `skymosaic plan`: headers only
    assert len(no_dir.rejected) == 2 and fake.calls == []


def test_wrong_header_wcs_is_reported_and_resolved(tmp_frames, tmp_path, fake_solver, caplog):
    paths = tmp_frames("badwcs")
    truths = {}
    for k, p in enumerate(paths):
        with fits.open(p, mode="update") as hdul:
            h = hdul[0].header
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                truths[p.name] = WCS(h, naxis=2).celestial.to_header()
            h["RA"], h["DEC"] = h["CRVAL1"], h["CRVAL2"]
            h["FOCALLEN"], h["XPIXSZ"] = 250.0, 2.0 * 250.0 / 206.264806  # 2.0"/px optics
            if k == 0:
                h["CDELT1"] = h["CDELT2"] = 2.0  # the header WCS says 4"/px
            else:
                h["CTYPE1"], h["CTYPE2"] = "LINEAR", "LINEAR"
    fake = fake_solver(truths)
    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        catalog = build_catalog(paths, _config(), run_dir=tmp_path)
    assert catalog.rejected == {} and sorted(fake.calls) == sorted(truths)
    warned = [r.getMessage() for r in caplog.records]
    scale = [m for m in warned if paths[0].name in m]
    assert len(scale) == 1 and "4.000\"/px is 2.00x the optics' 2.000\"/px" in scale[0]
    assert "plate-solving it instead" in scale[0]
    linear = [m for m in warned if paths[1].name in m]
    assert len(linear) == 1 and "not celestial (CTYPE1='LINEAR'" in linear[0]
    for info in catalog.frames:
        assert info.wcs_source.startswith("solved:")
        assert info.pixel_scale_arcsec == pytest.approx(2.0, rel=1e-3)
    # without validation the 4"/px header WCS is trusted
    fake.calls.clear()
    kept = build_catalog(paths[:1], _config(validate_existing=False), run_dir=tmp_path)
    assert kept.frames[0].wcs_source == "header" and fake.calls == []


# -- configuration and doctor ----------------------------------------------------------------


def test_solve_config_section():
    cfg = Config().solve
    assert cfg.enabled and cfg.solver == "auto" and cfg.downsample == 2 and cfg.validate_existing
    assert load_config(None, {"solve.solver": "astap", "solve.timeout_s": 5}).solve.timeout_s == 5
    with pytest.raises(ConfigError, match=r"solve\.solver"):
        load_config(None, {"solve.solver": "pixinsight"})
    with pytest.raises(ConfigError, match=r"unknown key 'solve\.timeout'"):
        load_config(None, {"solve.timeout": 5})


def _fake_index(folder: Path, name: str, lo_arcmin: float, hi_arcmin: float, index_id: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    h = fits.Header({"AN_FILE": "QUAD", "SCALE_L": np.radians(lo_arcmin / 60),
                     "SCALE_U": np.radians(hi_arcmin / 60), "INDEXID": index_id, "HEALPIX": -1})
    path = folder / name
    fits.PrimaryHDU(header=h).writeto(path)
    return path


def test_index_files_found_with_their_scales(tmp_path):
    _fake_index(tmp_path / "a", "index-4108.fits", 30, 42, 4108)
    (tmp_path / "a" / "not-an-index.fits").write_bytes(b"garbage")
    fits.PrimaryHDU(np.zeros((2, 2))).writeto(tmp_path / "a" / "image.fits")
    cfg = tmp_path / "astrometry.cfg"
    cfg.write_text(f"cpulimit 300\n# add_path /commented\nadd_path {tmp_path / 'b'}\nautoindex\n")
    _fake_index(tmp_path / "b", "index-4109.fits", 42, 60, 4109)
    dirs = index_search_dirs([tmp_path / "a"], cfg_files=[cfg], defaults=[])
    assert dirs == [tmp_path / "a", tmp_path / "b"]
    found = find_index_files(dirs)
    assert [i.index_id for i in found] == [4108, 4109]
    assert found[0].scale_low_arcmin == pytest.approx(30)
    assert found[1].scale_high_arcmin == pytest.approx(60)


def test_doctor_reports_solvers_and_indexes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    _fake_index(tmp_path / "idx", "index-4108.fits", 30, 42, 4108)
    assert main(["doctor", "--index-dir", str(tmp_path / "idx")]) == 0
    out = capsys.readouterr().out
    assert "solve-field" in out and "astap" in out
    assert "index-4108.fits" in out and "30 - 42" in out


def test_doctor_without_any_solver_still_exits_0(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "not found" in out and "make solver" in out


# -- real Seestar S50 frames with astrometry.net ---------------------------------------------


@pytest.fixture(scope="module")
def solve_field():
    """solve-field and at least one index file, or skip."""
    exe = shutil.which("solve-field")
    if exe is None:
        pytest.skip("astrometry.net's solve-field is not installed (run `make solver`)")
    if not find_index_files(index_search_dirs()):
        pytest.skip("no astrometry.net index file installed (run `make solver`)")
    return exe


def _seestar_raw(testdata: Path) -> list[Path]:
    paths = sorted((testdata / "seestar_s50_osc" / "raw").glob("*.fit.gz"))
    if len(paths) < 3:
        pytest.skip(f"expected the Seestar S50 frames in {testdata / 'seestar_s50_osc' / 'raw'}")
    return paths


def _copy(paths, folder: Path) -> list[Path]:
    """Copies of the frames (never their sidecars) that the test may own."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        shutil.copyfile(p, folder / p.name)
        out.append(folder / p.name)
    return out


def _max_disagreement_px(solved: WCS, reference: WCS, shape: tuple[int, int], n: int = 33) -> float:
    """Largest |pixel -> sky (solved) -> pixel (reference) - pixel| over an n x n grid
    spanning the whole frame, outer pixel edges and corners included."""
    h, w = shape
    x, y = np.meshgrid(np.linspace(-0.5, w - 0.5, n), np.linspace(-0.5, h - 0.5, n))
    ra, dec = solved.pixel_to_world_values(x.ravel(), y.ravel())
    bx, by = reference.all_world2pix(ra, dec, 0, tolerance=1e-8, maxiter=50)
    return float(np.hypot(bx - x.ravel(), by - y.ravel()).max())


@pytest.mark.realdata
def test_seestar_frames_solve_and_match_the_shipped_sidecars(testdata, solve_field, tmp_path):
    raw = _seestar_raw(testdata)
    frames = _copy(raw, tmp_path / "frames")
    infos = [scan_frame(p) for p in frames]
    assert all(i.wcs is None and i.kind == "bayer" for i in infos)
    options = SolveOptions(solver="astrometry.net", timeout_s=30, downsample=2, workers=2)
    results = solve_frames(infos, tmp_path / "run", options=options)
    for info in infos:
        r = results[str(info.path)]
        assert r.status == "solved", (info.name, r.reason)
        side = testdata / "seestar_s50_osc" / "wcs" / (info.name[: -len(".fit.gz")] + ".wcs")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            reference = WCS(fits.getheader(side))
        err = _max_disagreement_px(r.wcs, reference, (info.height, info.width))
        assert err < 1.0, (info.name, err)  # measured 0.01-0.14 px
        assert r.wcs.sip is not None
    assert {p.name for p in raw} == {p.name for p in frames}
    assert not list((tmp_path / "frames").glob("*.wcs"))


def _noise_frame(path: Path, like: Path) -> Path:
    """Pure Bayer noise with the real frame's header (RA/DEC/FOCALLEN/XPIXSZ/BAYERPAT)."""
    header = fits.getheader(like)
    rng = np.random.default_rng(8)
    data = rng.normal(2000.0, 40.0, (header["NAXIS2"], header["NAXIS1"])).clip(0, 65535)
    hdu = fits.PrimaryHDU(data.astype(np.uint16), header=header)
    hdu.writeto(path)
    return path


@pytest.mark.realdata
def test_unsolvable_frame_is_reported_and_the_run_continues(testdata, solve_field, tmp_path):
    raw = [p for p in _seestar_raw(testdata) if "NGC_7023" in p.name]
    frames = _copy(raw, tmp_path / "frames")
    noise = _noise_frame(tmp_path / "frames" / "noise_Light_20.0s.fits", raw[0])
    # few sources and a short CPU limit: a failure costs seconds (solve-field checks its CPU
    # limit only between source batches)
    config = load_config(None, {"run.threads": 2, "solve.timeout_s": 5, "solve.workers": 2,
                                "solve.max_sources": 40, "output.preview": False,
                                "output.pixel_scale_arcsec": 4.8})
    result = run_pipeline([tmp_path / "frames"], tmp_path / "out", config)
    report = result.report
    assert report["status"] == "ok"
    rejected = {Path(k).name: v for k, v in report["frames"]["rejected"].items()}
    assert list(rejected) == [noise.name]
    assert "plate solving failed: solve-field did not solve the field" in rejected[noise.name]
    assert "CPU limit 5 s" in rejected[noise.name]
    assert report["solve"]["solved"] == len(frames) and report["solve"]["failed"] == 1
    data, wcs, _ = read_mosaic(result.mosaic_path)
    assert np.isfinite(data).mean() > 0.5
    # NGC 7023 (RA 315.40, Dec +68.17) is in the mosaic
    x, y = wcs.world_to_pixel_values(315.40, 68.17)
    assert 0 <= x < data.shape[2] and 0 <= y < data.shape[1]


@pytest.mark.realdata
def test_skymosaic_run_on_raw_seestar_frames_end_to_end(testdata, solve_field, tmp_path,
                                                       monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")
    raw = [p for p in _seestar_raw(testdata) if "M_94" in p.name][:3]
    folder = tmp_path / "frames"
    _copy(raw, folder)
    out = tmp_path / "out"
    args = ["run", str(folder), "-o", str(out), "--threads", "2", "--no-preview",
            "--pixel-scale", "4.8"]  # a coarser output grid keeps the stacking quick
    assert main(args) == 0
    report = json.loads((out / "run.json").read_text())
    assert report["status"] == "ok" and report["frames"]["rejected"] == {}
    assert report["solve"]["solved"] == 3 and report["solve"]["solver"]["name"] == "astrometry.net"
    assert len(report["tiles"]) == 1 and report["tiles"][0]["n_frames"] == 3  # solve -> stack
    assert len(list((out / "wcs").glob("*.wcs"))) == 3
    data, wcs, _ = read_mosaic(out / "mosaic.fits")
    x, y = wcs.world_to_pixel_values(192.7213, 41.1203)  # M94's nucleus
    h, w = data.shape[1:]
    assert 0.2 * w < x < 0.8 * w and 0.2 * h < y < 0.8 * h
    first = data
    # second run: every solution comes from the cache, solve-field is never started
    calls = []
    original = AstrometryNetSolver.solve

    def spy(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AstrometryNetSolver, "solve", spy)
    capsys.readouterr()
    assert main(args) == 0
    report = json.loads((out / "run.json").read_text())
    assert calls == [] and report["solve"]["cached"] == 3 and report["solve"]["solved"] == 0
    assert "reusing the cached plate solution" in (out / "skymosaic.log").read_text()
    data, _, _ = read_mosaic(out / "mosaic.fits")
    np.testing.assert_allclose(data, first, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.realdata
def test_astap_solves_a_seestar_frame_when_installed(testdata, tmp_path):
    options = SolveOptions(solver="astap", timeout_s=60)
    solver = find_solver(options)
    if solver is None or solver.database is None:
        pytest.skip("ASTAP and a star database are not installed")
    raw = _seestar_raw(testdata)[:1]
    (frame,) = _copy(raw, tmp_path / "frames")
    info = scan_frame(frame)
    (r,) = solve_frames([info], tmp_path / "run", options=options).values()
    assert r.status == "solved", r.reason
    side = testdata / "seestar_s50_osc" / "wcs" / (info.name[: -len(".fit.gz")] + ".wcs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        reference = WCS(fits.getheader(side))
    assert _max_disagreement_px(r.wcs, reference, (info.height, info.width)) < 1.0
