"""Tests for skymosaic.io.stack_plan: aliases, delimiters, paths, bad rows, round trip."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from skymosaic.io.stack_plan import (
    CANONICAL_COLUMNS,
    PlanRow,
    RejectedRow,
    StackPlan,
    StackPlanError,
    read_stack_plan,
    write_stack_plan,
)

LOGGER = "skymosaic.io.stack_plan"


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """A plan folder with frames a.fits, b.fits and sub/c.fits."""
    (tmp_path / "sub").mkdir()
    for name in ("a.fits", "b.fits", "sub/c.fits"):
        (tmp_path / name).write_bytes(b"SIMPLE")
    return tmp_path


def _write(folder: Path, text: str, name: str = "stack_plan.csv", encoding="utf-8") -> Path:
    path = folder / name
    path.write_text(text, encoding=encoding, newline="")
    return path


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


# ------------------------------------------------------------------------- forms
@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_every_delimiter(frames, delimiter):
    lines = [
        ["file_path", "exposure", "mount", "filter", "batch_id", "order", "tile_id"],
        ["a.fits", "10.5", "EQ", "Ha", "n1", "1", "T1"],
        ["sub/c.fits", "30", "ALTZ", "OIII", "n2", "2", "T2"],
    ]
    plan = read_stack_plan(_write(frames, "\n".join(delimiter.join(r) for r in lines) + "\n"))
    assert [r.path for r in plan.rows] == [frames / "a.fits", frames / "sub" / "c.fits"]
    first = plan.rows[0]
    assert (
        first.exposure,
        first.mount,
        first.filter,
        first.batch_id,
        first.order,
        first.tile_id,
    ) == (10.5, "EQ", "Ha", "n1", 1, "T1")
    assert plan.rows[1].row_number == 2 and plan.rejected == []


@pytest.mark.parametrize(
    ("header", "attr", "cell", "expected"),
    [
        ("path", "path", "a.fits", None),
        ("file", "path", "a.fits", None),
        ("filename", "path", "a.fits", None),
        ("file_path", "path", "a.fits", None),
        ("exposure", "exposure", "5", 5.0),
        ("exptime", "exposure", "5", 5.0),
        ("filter", "filter", "R", "R"),
        ("band", "filter", "R", "R"),
        ("batch_id", "batch_id", "s1", "s1"),
        ("session", "batch_id", "s1", "s1"),
        ("night", "batch_id", "s1", "s1"),
        ("order", "order", "7", 7),
        ("tile_id", "tile_id", "g", "g"),
        ("group", "tile_id", "g", "g"),
        ("mount", "mount", "eq", "EQ"),
    ],
)
def test_every_alias(frames, header, attr, cell, expected):
    if attr == "path":
        text = f"{header}\n{cell}\n"
        expected = frames / "a.fits"
    else:
        text = f"file,{header}\na.fits,{cell}\n"
    plan = read_stack_plan(_write(frames, text))
    assert getattr(plan.rows[0], attr) == expected


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("EQ", "EQ"),
        ("eq", "EQ"),
        ("Equatorial", "EQ"),
        ("altz", "ALTZ"),
        ("Alt-Az", "ALTZ"),
        ("ALTAZ", "ALTZ"),
        ("alt az", "ALTZ"),
        ("", None),
    ],
)
def test_mount_values(frames, cell, expected):
    plan = read_stack_plan(_write(frames, f"path,mount\na.fits,{cell}\n"))
    assert plan.rows[0].mount == expected


def test_bom_mixed_case_and_spaced_headers(frames, caplog):
    text = " File Path ;EXPTIME ; Band;Night;Exposure Note\nb.fits;60;L;2024-01-02;cloudy\n"
    plan = read_stack_plan(_write(frames, text, encoding="utf-8-sig"))
    row = plan.rows[0]
    assert (row.path, row.exposure, row.filter, row.batch_id) == (
        frames / "b.fits",
        60.0,
        "L",
        "2024-01-02",
    )
    assert row.extra == {"Exposure Note": "cloudy"}
    assert _warnings(caplog) == [
        "stack plan stack_plan.csv: unknown column(s) kept as extra: Exposure Note"
    ]


def test_unknown_columns_listed_once(frames, caplog):
    text = "path,seeing,airmass\na.fits,2.1,1.3\nb.fits,2.5,1.1\n"
    plan = read_stack_plan(_write(frames, text))
    assert [r.extra for r in plan.rows] == [
        {"seeing": "2.1", "airmass": "1.3"},
        {"seeing": "2.5", "airmass": "1.1"},
    ]
    assert len(_warnings(caplog)) == 1 and "seeing, airmass" in _warnings(caplog)[0]


def test_blank_and_comment_lines_skipped(frames):
    text = "# plan for M31\n\npath,exposure\n\na.fits,1\n# b.fits,2\nb.fits,3\n"
    plan = read_stack_plan(_write(frames, text))
    assert [(r.path.name, r.exposure, r.row_number) for r in plan.rows] == [
        ("a.fits", 1.0, 1),
        ("b.fits", 3.0, 2),
    ]


def test_decimal_comma_with_semicolons(frames):
    plan = read_stack_plan(_write(frames, "path;exposure\na.fits;2,5\n"))
    assert plan.rows[0].exposure == 2.5


def test_quoted_path_with_delimiter(frames):
    (frames / "x,y.fits").write_bytes(b"")
    plan = read_stack_plan(_write(frames, 'path,exposure\n"x,y.fits",4\n'))
    assert plan.rows[0].path == frames / "x,y.fits"


# ------------------------------------------------------------------------- paths
def test_relative_absolute_and_backslash_paths(frames, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere") / "d.fits"
    other.write_bytes(b"")
    text = f"path\nsub\\c.fits\n{other}\n./a.fits\nsub/../b.fits\n"
    plan = read_stack_plan(_write(frames, text))
    assert [r.path for r in plan.rows] == [
        frames / "sub" / "c.fits",
        other,
        frames / "a.fits",
        frames / "b.fits",
    ]
    assert all(r.path.is_absolute() for r in plan.rows)


def test_plan_in_other_folder_resolves_against_csv_folder(frames, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    plan = read_stack_plan(_write(frames, "path\na.fits\n"))
    assert plan.rows[0].path == frames / "a.fits"
    assert plan.source == frames / "stack_plan.csv"


@pytest.mark.skipif(os.name == "nt", reason="a drive path exists on Windows")
def test_windows_drive_path_reported_missing(frames, caplog):
    text = "path,exposure\nC:\\data\\x.fits,10\na.fits,10\n"
    plan = read_stack_plan(_write(frames, text))
    assert [r.path.name for r in plan.rows] == ["a.fits"]
    assert plan.rejected == [
        RejectedRow(
            1,
            "C:\\data\\x.fits",
            "column 'path': file not found: 'C:\\\\data\\\\x.fits' (a Windows path)",
        )
    ]
    assert _warnings(caplog)[0].startswith(
        "stack plan stack_plan.csv: row 1 (line 2), column 'path': file not found"
    )
    unchecked = read_stack_plan(frames / "stack_plan.csv", check_files=False)
    assert str(unchecked.rows[0].path) == "C:\\data\\x.fits"


# ---------------------------------------------------------------------- bad rows
@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        ("missing.fits,10,EQ", "file_path", "file not found"),
        (",10,EQ", "file_path", "empty path"),
        ("b.fits,abc,EQ", "exptime", "exposure 'abc' is not a number"),
        ("b.fits,-5,EQ", "exptime", "exposure '-5' must be a finite number > 0"),
        ("b.fits,nan,EQ", "exptime", "exposure 'nan' must be a finite number > 0"),
        ("b.fits,10,dobson", "Mount", "mount 'dobson' is not EQ or ALTZ"),
        ("a.fits,10,EQ", "file_path", "duplicate of row 1"),
        ("b.fits,10,EQ,extra", "file_path", "4 fields but the header has 3"),
    ],
)
def test_bad_rows_warn_and_are_rejected(frames, caplog, row, column, reason):
    text = f"file_path,exptime,Mount\na.fits,10,EQ\n\n{row}\nsub/c.fits,20,altz\n"
    plan = read_stack_plan(_write(frames, text))
    assert [r.path.name for r in plan.rows] == ["a.fits", "c.fits"]
    assert plan.rows[1].row_number == 3
    assert len(plan.rejected) == 1
    rej = plan.rejected[0]
    assert (rej.row_number, rej.path_text) == (2, row.split(",")[0])
    assert rej.reason.startswith(f"column {column!r}: {reason}")
    (message,) = _warnings(caplog)
    assert message.startswith(
        f"stack plan stack_plan.csv: row 2 (line 4), column {column!r}: {reason}"
    )
    assert message.endswith("; row skipped")


def test_bad_order_rejected(frames, caplog):
    plan = read_stack_plan(_write(frames, "path,order\na.fits,1.5\nb.fits,2.0\n"))
    assert [r.order for r in plan.rows] == [2]
    assert "row 1 (line 2), column 'order': order '1.5' is not an integer" in _warnings(caplog)[0]


def test_duplicate_through_different_spelling(frames, caplog):
    plan = read_stack_plan(_write(frames, "path\nsub/c.fits\nsub\\c.fits\n./sub/../sub/c.fits\n"))
    assert len(plan.rows) == 1
    assert [r.row_number for r in plan.rejected] == [2, 3]
    assert all("duplicate of row 1" in r.reason for r in plan.rejected)


def test_check_files_false_keeps_missing(frames):
    plan = read_stack_plan(_write(frames, "path\nnot_here.fits\n"), check_files=False)
    assert plan.rows[0].path == frames / "not_here.fits"


# ----------------------------------------------------------------- fatal errors
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"stack plan '.*bad_plan\.csv' is empty"),
        ("  \n\n", r"stack plan '.*bad_plan\.csv' is empty"),
        ("# only a comment\n", r"stack plan '.*bad_plan\.csv' has no header row"),
        ("exposure,filter\n10,R\n", r"stack plan 'bad_plan\.csv' has no file path column"),
        (
            "path,file\na.fits,b.fits\n",
            r"bad_plan\.csv'.*'path' and 'file' both name the 'file_path'",
        ),
    ],
)
def test_stack_plan_errors_name_the_file(frames, text, match):
    path = _write(frames, text, name="bad_plan.csv")
    with pytest.raises(StackPlanError, match=match):
        read_stack_plan(path)


def test_unreadable_and_missing_file(frames):
    with pytest.raises(StackPlanError, match=r"cannot read stack plan '.*nope\.csv'"):
        read_stack_plan(frames / "nope.csv")
    bad = frames / "binary.csv"
    bad.write_bytes(b"path\n\xff\xfe\xfa.fits\n")
    with pytest.raises(StackPlanError, match=r"binary\.csv") as info:
        read_stack_plan(bad)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------- writing
def test_round_trip(frames, tmp_path_factory):
    outside = tmp_path_factory.mktemp("abs") / "e.fits"
    outside.write_bytes(b"")
    rows = [
        PlanRow(frames / "a.fits", 10.25, "EQ", "Ha", "n1", 1, "T1", {"seeing": "2.0"}),
        PlanRow(frames / "sub" / "c.fits", None, "ALTZ", None, "n2", None, None, {"seeing": ""}),
        PlanRow(outside, 1e-3, None, "O III", None, -4, "T,2", {"seeing": ""}),
    ]
    dest = frames / "plan_out.csv"
    assert write_stack_plan(StackPlan(rows), dest) == dest
    lines = dest.read_text().splitlines()
    assert lines[0] == ",".join(CANONICAL_COLUMNS) + ",seeing"
    assert lines[1].startswith("a.fits,10.25,EQ,Ha,n1,1,T1") and lines[2].startswith("sub/c.fits,")
    assert lines[3].startswith(str(outside))
    back = read_stack_plan(dest)
    for before, after in zip(rows, back.rows, strict=True):
        assert (
            after.path,
            after.exposure,
            after.mount,
            after.filter,
            after.batch_id,
            after.order,
            after.tile_id,
            after.extra,
        ) == (
            before.path,
            before.exposure,
            before.mount,
            before.filter,
            before.batch_id,
            before.order,
            before.tile_id,
            before.extra,
        )
    assert back.rejected == []
    # rewrite of what was read is byte-identical, and no temporary file is left behind
    write_stack_plan(back, frames / "plan_again.csv")
    assert (frames / "plan_again.csv").read_text() == dest.read_text()
    assert not [p for p in frames.iterdir() if p.suffix == ".tmp"]


def test_write_replaces_existing_and_validates(frames):
    dest = _write(frames, "old content\n", name="plan.csv")
    write_stack_plan([PlanRow(frames / "b.fits")], dest)
    assert dest.read_text() == ",".join(CANONICAL_COLUMNS) + "\nb.fits,,,,,,\n"
    with pytest.raises(TypeError, match=r"rows\[0\] must be a PlanRow, got dict"):
        write_stack_plan([{"path": "x"}], dest)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_stack_plan([], frames / "no_dir" / "plan.csv")


def test_groupings(frames):
    text = "path,filter,tile_id,mount\na.fits,Ha,T1,EQ\nb.fits,OIII,T1,altz\nsub/c.fits,Ha,T2,\n"
    plan = read_stack_plan(_write(frames, text))
    assert {k: [r.path.name for r in v] for k, v in plan.by_filter().items()} == {
        "Ha": ["a.fits", "c.fits"],
        "OIII": ["b.fits"],
    }
    assert {k: len(v) for k, v in plan.by_tile().items()} == {"T1": 2, "T2": 1}
    assert {k: len(v) for k, v in plan.by_mount().items()} == {"EQ": 1, "ALTZ": 1, None: 1}
