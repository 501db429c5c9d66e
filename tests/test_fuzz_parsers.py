"""Hypothesis fuzzing of every input parser (issue 16): FITS headers and WCS keywords
(`scan_frame`), ``.wcs`` sidecars, ``stack_plan.csv`` (`read_stack_plan`) and the TOML
configuration (`load_config`).

Malformed, truncated, huge and contradictory inputs must give the package's own error
(`FrameError`, `StackPlanError`, `ConfigError`) with a message naming the file (or, for
`FrameError`, ``err.path``) and, where there is one, the field; never another exception
type or a hang. Each test tries a fixed number of cases (its docstring says how many)
under a deadline, so the file runs in well under a minute on one core.
"""

from __future__ import annotations

import string
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skymosaic.config import ConfigError, load_config
from skymosaic.io import FrameError, scan_frame
from skymosaic.io.stack_plan import StackPlanError, read_stack_plan

FUZZ = settings(max_examples=60, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- FITS headers

_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12))
_TEXT = st.text(alphabet=string.printable.strip() + " ", max_size=20)
_VALUE = st.one_of(_NUMBER, _TEXT, st.booleans())
#: keywords the scanner reads, with values of every type
_KEYS = ["NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BAYERPAT", "XBAYROFF", "YBAYROFF", "EXPTIME",
         "EXPOSURE", "FILTER", "DATE-OBS", "OBJECT", "INSTRUME", "MOUNT", "SITELONG", "OBSGEO-X",
         "OBSGEO-Y", "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1",
         "CDELT2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "CUNIT1", "CUNIT2", "PC1_1", "PC2_2",
         "WCSAXES", "A_ORDER", "B_ORDER", "A_2_0", "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX"]
_GOOD_WCS = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0,
             "CRPIX1": 16.0, "CRPIX2": 12.0, "CDELT1": -5e-4, "CDELT2": 5e-4}


def _card_bytes(key: str, value) -> bytes:
    """One 80-byte card written by hand (any value, even one astropy would refuse)."""
    if isinstance(value, bool):
        text = "T" if value else "F"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "''")[:60] + "'"
    else:
        text = repr(value).upper()[:70]
    return f"{key:<8}= {text:>20}".ljust(80)[:80].encode("ascii", "replace")


def _write_fits(path: Path, cards: dict, data_bytes: int) -> None:
    head = b"".join([_card_bytes("SIMPLE", True), _card_bytes("BITPIX", -32),
                     *(_card_bytes(k, v) for k, v in cards.items()), b"END".ljust(80)])
    head += b" " * (-len(head) % 2880)
    path.write_bytes(head + b"\0" * data_bytes)


def _check_frame_error(err: FrameError, path: Path) -> None:
    assert err.path == path, (err, err.path)
    assert str(err).strip()


@FUZZ
@given(cards=st.dictionaries(st.sampled_from(_KEYS), _VALUE, max_size=12),
       base=st.booleans(), data_bytes=st.sampled_from([0, 100, 2880 * 2]))
def test_fuzz_fits_headers(cards, base, data_bytes):
    """60 cases: random values (numbers, NaN, inf, huge, text, booleans) of the keywords
    the scanner reads, over a valid 32 x 24 image with a valid TAN WCS or over nothing;
    data missing, short or present."""
    header = ({"NAXIS": 2, "NAXIS1": 32, "NAXIS2": 24, **_GOOD_WCS} if base else {}) | cards
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.fits"
        _write_fits(path, header, data_bytes)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = scan_frame(path)
        except FrameError as err:
            _check_frame_error(err, path)
        else:
            assert info.width > 0 and info.height > 0 and info.channels in (1, 3)
            if info.wcs is not None:
                assert np.isfinite(info.pixel_scale_arcsec) and info.pixel_scale_arcsec > 0
                assert np.all(np.isfinite(info.footprint))


@FUZZ
@given(cut=st.integers(0, 2880 * 3 + 32 * 24 * 4), junk=st.binary(max_size=200))
def test_fuzz_truncated_and_corrupt_fits(cut, junk):
    """60 cases: a valid frame cut at a random byte, followed by random bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "good.fits"
        hdr = fits.Header(_GOOD_WCS)
        fits.PrimaryHDU(np.ones((24, 32), np.float32), hdr).writeto(good)
        path = Path(tmp) / "cut.fits"
        path.write_bytes(good.read_bytes()[:cut] + junk)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scan_frame(path)
        except FrameError as err:
            _check_frame_error(err, path)


# --------------------------------------------------------------------------- .wcs sidecars


@FUZZ
@given(cards=st.dictionaries(st.sampled_from(_KEYS[16:]), _VALUE, max_size=10),
       base=st.booleans(), raw=st.one_of(st.none(), st.binary(max_size=3000)))
def test_fuzz_wcs_sidecar(cards, base, raw):
    """60 cases: a frame without WCS next to a ``.wcs`` sidecar holding random WCS
    keywords (over a valid WCS or none), or random bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.fits"
        fits.PrimaryHDU(np.ones((24, 32), np.float32)).writeto(path)
        sidecar = Path(tmp) / "f.wcs"
        if raw is not None:
            sidecar.write_bytes(raw)
        else:
            _write_fits(sidecar, {"NAXIS": 0, **(_GOOD_WCS if base else {}), **cards}, 0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = scan_frame(path)
        except FrameError as err:
            _check_frame_error(err, path)
            assert "f.wcs" in str(err)
        else:
            assert info.wcs is None or info.wcs_source == f"sidecar:{sidecar}"


# --------------------------------------------------------------------------- stack_plan.csv

_CSV_CELL = st.one_of(st.sampled_from(["f.fits", "missing.fits", "", "nan", "-1", "1e999", "10",
                                       "EQ", "ALTZ", "alt/az", "x" * 5000, "\x00", "1,5",
                                       '"', "#c", "C:\\x.fits"]),
                      st.text(max_size=12))
_HEADERS = st.lists(st.sampled_from(["file_path", "path", "exposure", "exptime", "mount",
                                     "filter", "batch", "order", "tile_id", "extra", "",
                                     "File Path", "\ufefffile"]), max_size=6)


@FUZZ
@given(header=_HEADERS, rows=st.lists(st.lists(_CSV_CELL, max_size=8), max_size=8),
       delimiter=st.sampled_from([",", ";", "\t", "|"]), raw=st.one_of(st.none(), st.binary()))
def test_fuzz_stack_plan(header, rows, delimiter, raw):
    """60 cases: random headers (aliases, duplicates, BOM) and rows (bad numbers, NUL,
    huge cells, quotes, Windows paths) with each delimiter, or random bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(folder / "f.fits")
        path = folder / "stack_plan.csv"
        if raw is not None:
            path.write_bytes(raw)
        else:
            lines = [delimiter.join(header), *(delimiter.join(r) for r in rows)]
            path.write_text("\n".join(lines), encoding="utf-8")
        try:
            plan = read_stack_plan(path)
        except StackPlanError as err:
            assert "stack plan" in str(err) and path.name in str(err)
        else:
            for row in plan.rows:
                assert row.path.is_file()
                assert row.exposure is None or (np.isfinite(row.exposure) and row.exposure > 0)
            for rej in plan.rejected:
                assert rej.reason.startswith("column ")


# --------------------------------------------------------------------------- TOML config

_SECTIONS = ["input", "output", "run", "stack", "quality", "targets", "photometry", "nope"]
_KEYS_TOML = ["threads", "memory_budget_mb", "max_output_pixels", "pixel_scale_arcsec",
              "enabled", "kernel", "region", "split", "weighting", "min_frames", "wcs_dirs"]
_TOML_VALUE = st.one_of(
    st.sampled_from(["1", "-1", "0", "1e999", "nan", "inf", '"4GB"', '"4XB"', '"x"', "true",
                     "[]", "[1, 2, 3]", '["a"]', "{}", "{a = 1}", "9" * 400, '"' + "x" * 5000 + '"',
                     "1979-05-27", "[[[[[[1]]]]]]"]),
    st.integers().map(str))


@FUZZ
@given(body=st.lists(st.tuples(st.sampled_from(_SECTIONS), st.sampled_from(_KEYS_TOML),
                               _TOML_VALUE), max_size=6),
       raw=st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=300)))
def test_fuzz_toml_config(body, raw):
    """60 cases: random sections, keys and values (wrong types, out of range, huge,
    NaN, sizes with bad units, nested arrays), or random bytes or text."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.toml"
        if raw is None:
            text = "".join(f"[{s}]\n{k} = {v}\n" for s, k, v in body)
            path.write_text(text)
        elif isinstance(raw, bytes):
            path.write_bytes(raw)
        else:
            path.write_text(raw, encoding="utf-8")
        try:
            load_config(path)
        except ConfigError as err:
            assert str(path) in str(err)


def test_config_that_is_a_folder_or_deeply_nested(tmp_path):
    """Two cases the fuzzing does not reach: a folder, and arrays nested 5000 deep."""
    for case in (tmp_path, tmp_path / "deep.toml"):
        if case != tmp_path:
            case.write_text("[run]\nthreads = " + "[" * 5000 + "]" * 5000 + "\n")
        try:
            load_config(case)
        except ConfigError as err:
            assert str(case) in str(err)
