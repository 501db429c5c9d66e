"""Read and write ``stack_plan.csv``: the editable list of frames for grid/survey mode.

Format (one header row, then one row per frame)::

    file_path,exposure,mount,filter,batch_id,order,tile_id
    lights/f001.fits,10.0,EQ,L,2024-03-01,1,T01

Reading is lenient about the form and strict about the content:

* the delimiter is sniffed among ``,`` ``;`` tab and ``|`` (`csv.Sniffer`, then counting);
* header names are case-insensitive, stripped (BOM too), and accept common aliases
  (``path``/``file``/``filename``, ``exptime``, ``band``, ``session``/``night``,
  ``group``...); unknown columns are kept in ``PlanRow.extra`` and listed once in a
  warning;
* blank lines and lines starting with ``#`` are skipped;
* a bad row (missing file, bad number, bad mount, empty path, duplicate file, wrong field
  count) is skipped with a warning naming its data row number, file line number and
  column, and recorded in ``StackPlan.rejected``;
* a file without a path column, empty or unreadable raises `StackPlanError`.

Paths: relative ones are resolved against the CSV's folder; backslashes are read as path
separators (``sub\\x.fits``), so a plan written on Windows works elsewhere; a Windows
drive path (``C:\\data\\x.fits``) that does not exist here is reported as a missing file.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CANONICAL_COLUMNS",
    "PlanRow",
    "RejectedRow",
    "StackPlan",
    "StackPlanError",
    "read_stack_plan",
    "write_stack_plan",
]

logger = logging.getLogger(__name__)

#: Header written by `write_stack_plan`, in this order.
CANONICAL_COLUMNS = ("file_path", "exposure", "mount", "filter", "batch_id", "order", "tile_id")

_ALIASES: dict[str, tuple[str, ...]] = {
    "file_path": ("file_path", "filepath", "path", "file", "filename", "file_name"),
    "exposure": ("exposure", "exptime", "exp_time", "exposure_time"),
    "mount": ("mount", "mount_type"),
    "filter": ("filter", "band"),
    "batch_id": ("batch_id", "batch", "session", "night"),
    "order": ("order",),
    "tile_id": ("tile_id", "tile", "group"),
}
_CANONICAL_OF = {alias: canon for canon, names in _ALIASES.items() for alias in names}
_MOUNTS = {
    "eq": "EQ",
    "equatorial": "EQ",
    "altz": "ALTZ",
    "alt-az": "ALTZ",
    "altaz": "ALTZ",
    "alt_az": "ALTZ",
    "alt/az": "ALTZ",
}
_DELIMITERS = ",;\t|"
_SNIFF_CHARS = 65536
_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


class StackPlanError(ValueError):
    """A stack plan file that cannot be used at all (unreadable, empty, no path column)."""


class RejectedRow(NamedTuple):
    """A data row that was skipped: its 1-based data row number, path text and reason."""

    row_number: int
    path_text: str
    reason: str


@dataclass
class PlanRow:
    """One frame of the plan.

    Attributes
    ----------
    path : Path
        Absolute, normalised path of the frame.
    exposure : float or None
        Exposure time in seconds (> 0).
    mount : {"EQ", "ALTZ"} or None
        Mount type.
    filter, batch_id, tile_id : str or None
        Filter/band name, acquisition batch (session, night) and tile/group name.
    order : int or None
        Ordering key within the plan.
    extra : dict
        Unknown columns, header name (as written) -> cell text.
    row_number : int
        1-based data row number in the source file (0 for rows built in code).
    """

    path: Path
    exposure: float | None = None
    mount: str | None = None
    filter: str | None = None
    batch_id: str | None = None
    order: int | None = None
    tile_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    row_number: int = 0


@dataclass
class StackPlan:
    """The accepted rows of a plan, the rejected ones and where it came from."""

    rows: list[PlanRow]
    rejected: list[RejectedRow] = field(default_factory=list)
    source: Path | None = None

    def _group(self, attr: str) -> dict[str | None, list[PlanRow]]:
        groups: dict[str | None, list[PlanRow]] = {}
        for row in self.rows:
            groups.setdefault(getattr(row, attr), []).append(row)
        return groups

    def by_filter(self) -> dict[str | None, list[PlanRow]]:
        """Rows grouped by filter, in file order (key None: no filter given)."""
        return self._group("filter")

    def by_tile(self) -> dict[str | None, list[PlanRow]]:
        """Rows grouped by tile id (key None: no tile given)."""
        return self._group("tile_id")

    def by_mount(self) -> dict[str | None, list[PlanRow]]:
        """Rows grouped by mount, ``"EQ"`` / ``"ALTZ"`` (key None: not given)."""
        return self._group("mount")


class _RowError(Exception):
    """A bad cell: the canonical column it belongs to and why (internal)."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


# ------------------------------------------------------------------------ reading
def _read_text(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise StackPlanError(f"cannot read stack plan {str(path)!r}: {err}") from err
    if not text.strip():
        raise StackPlanError(f"stack plan {str(path)!r} is empty")
    return text


def _sniff_delimiter(text: str) -> str:
    """Delimiter among ``, ; TAB |``: csv.Sniffer, else the most frequent in the header."""
    sample = text[:_SNIFF_CHARS]
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        pass
    header = next((ln for ln in sample.splitlines() if ln.strip()), "")
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.replace("\ufeff", "").strip().lower())


def _map_header(header: list[str], source: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(canonical column -> index, unknown header name -> index)."""
    known: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for idx, raw in enumerate(header):
        name = _normalise_name(raw)
        canon = _CANONICAL_OF.get(name)
        if canon is None:
            if name:
                unknown[raw.replace("\ufeff", "").strip()] = idx
            continue
        if canon in known:
            first = header[known[canon]].strip()
            raise StackPlanError(
                f"stack plan {source.name!r}: columns {first!r} and {raw.strip()!r} both "
                f"name the {canon!r} column"
            )
        known[canon] = idx
    if "file_path" not in known:
        raise StackPlanError(
            f"stack plan {source.name!r} has no file path column (header: {header!r}; "
            f"expected one of {', '.join(_ALIASES['file_path'])})"
        )
    return known, unknown


def _resolve_path(text: str, folder: Path, *, check_files: bool) -> Path:
    if not text:
        raise _RowError("file_path", "empty path")
    if _WINDOWS_ABS.match(text) and os.name != "nt":
        if check_files:
            raise _RowError("file_path", f"file not found: {text!r} (a Windows path)")
        return Path(text)
    native = text.replace("\\", os.sep) if os.sep != "\\" else text
    path = Path(native).expanduser()
    if not path.is_absolute():
        path = folder / path
    path = Path(os.path.normpath(os.path.abspath(path)))
    if check_files and not path.is_file():
        raise _RowError("file_path", f"file not found: {str(path)!r}")
    return path


def _parse_exposure(text: str, delimiter: str) -> float | None:
    if not text:
        return None
    candidate = text
    if delimiter != "," and text.count(",") == 1 and "." not in text:
        candidate = text.replace(",", ".")  # decimal comma in ';'-separated files
    try:
        value = float(candidate)
    except ValueError as err:
        raise _RowError("exposure", f"exposure {text!r} is not a number") from err
    if not math.isfinite(value) or value <= 0:
        raise _RowError("exposure", f"exposure {text!r} must be a finite number > 0")
    return value


def _parse_mount(text: str) -> str | None:
    if not text:
        return None
    mount = _MOUNTS.get(re.sub(r"\s+", "", text.lower()))
    if mount is None:
        raise _RowError("mount", f"mount {text!r} is not EQ or ALTZ")
    return mount


def _parse_order(text: str) -> int | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as err:
        raise _RowError("order", f"order {text!r} is not an integer") from err
    if not value.is_integer():
        raise _RowError("order", f"order {text!r} is not an integer")
    return int(value)


def _parse_row(
    cells: list[str],
    columns: dict[str, int],
    unknown: dict[str, int],
    folder: Path,
    *,
    delimiter: str,
    check_files: bool,
    row_number: int,
) -> PlanRow:
    def cell(canon: str) -> str:
        idx = columns.get(canon)
        return cells[idx].strip() if idx is not None and idx < len(cells) else ""

    def text_or_none(canon: str) -> str | None:
        return cell(canon) or None

    return PlanRow(
        path=_resolve_path(cell("file_path"), folder, check_files=check_files),
        exposure=_parse_exposure(cell("exposure"), delimiter),
        mount=_parse_mount(cell("mount")),
        filter=text_or_none("filter"),
        batch_id=text_or_none("batch_id"),
        order=_parse_order(cell("order")),
        tile_id=text_or_none("tile_id"),
        extra={k: (cells[i].strip() if i < len(cells) else "") for k, i in unknown.items()},
        row_number=row_number,
    )


def read_stack_plan(path: str | os.PathLike[str], *, check_files: bool = True) -> StackPlan:
    """Read a ``stack_plan.csv``.

    Parameters
    ----------
    path : str or PathLike
        The CSV file. Relative frame paths are resolved against its folder.
    check_files : bool, optional
        Reject rows whose file does not exist (default True).

    Returns
    -------
    StackPlan
        Accepted rows in file order, rejected rows ``(row number, path text, reason)``
        and the source path.

    Raises
    ------
    StackPlanError
        If the file cannot be read, is empty, has no header/path column, or names a
        column twice (through aliases).

    Examples
    --------
    >>> plan = read_stack_plan("stack_plan.csv")  # doctest: +SKIP
    >>> {band: len(rows) for band, rows in plan.by_filter().items()}  # doctest: +SKIP
    {'Ha': 120, 'OIII': 118}
    """
    source = Path(path)
    text = _read_text(source)
    delimiter = _sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    for cells in reader:
        if any(c.strip() for c in cells) and not cells[0].lstrip().startswith("#"):
            header = cells
            break
    if header is None:
        raise StackPlanError(f"stack plan {str(source)!r} has no header row")
    columns, unknown = _map_header(header, source)
    names = {canon: header[idx].replace("\ufeff", "").strip() for canon, idx in columns.items()}
    if unknown:
        logger.warning(
            "stack plan %s: unknown column(s) kept as extra: %s", source.name, ", ".join(unknown)
        )
    folder = source.parent.absolute()
    plan = StackPlan(rows=[], rejected=[], source=source.absolute())
    seen: dict[str, int] = {}
    row_number = 0
    for cells in reader:
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        row_number += 1
        path_text = cells[columns["file_path"]].strip() if columns["file_path"] < len(cells) else ""
        try:
            if len(cells) > len(header):
                raise _RowError(
                    "file_path", f"{len(cells)} fields but the header has {len(header)}"
                )
            row = _parse_row(
                cells,
                columns,
                unknown,
                folder,
                delimiter=delimiter,
                check_files=check_files,
                row_number=row_number,
            )
            key = os.path.normcase(str(row.path))
            if key in seen:
                raise _RowError("file_path", f"duplicate of row {seen[key]} ({str(row.path)!r})")
        except _RowError as err:
            column = names.get(err.column, err.column)
            reason = f"column {column!r}: {err.reason}"
            logger.warning(
                "stack plan %s: row %d (line %d), %s; row skipped",
                source.name,
                row_number,
                reader.line_num,
                reason,
            )
            plan.rejected.append(RejectedRow(row_number, path_text, reason))
            continue
        seen[key] = row_number
        plan.rows.append(row)
    logger.info(
        "stack plan %s: %d row(s) read, %d rejected",
        source.name,
        len(plan.rows),
        len(plan.rejected),
    )
    return plan


# ------------------------------------------------------------------------ writing
def _path_text(path: Path, folder: Path) -> str:
    """Path relative to ``folder`` (POSIX separators) when inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(folder).as_posix()
    except ValueError:
        return str(absolute)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_stack_plan(
    plan_or_rows: StackPlan | Iterable[PlanRow], path: str | os.PathLike[str]
) -> Path:
    """Write a plan atomically (temporary file in the same folder, then `os.replace`).

    The header is `CANONICAL_COLUMNS` followed by the union of the rows' ``extra`` keys;
    paths inside the CSV's folder are written relative to it (with ``/``), others absolute.
    Reading the file back gives the same rows.

    Parameters
    ----------
    plan_or_rows : StackPlan or iterable of PlanRow
        What to write.
    path : str or PathLike
        Destination CSV; its folder must exist.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    TypeError
        If an item is not a `PlanRow`.
    FileNotFoundError
        If the destination folder does not exist.
    """
    rows = list(plan_or_rows.rows if isinstance(plan_or_rows, StackPlan) else plan_or_rows)
    for i, row in enumerate(rows):
        if not isinstance(row, PlanRow):
            raise TypeError(f"rows[{i}] must be a PlanRow, got {type(row).__name__}")
    dest = Path(path)
    folder = dest.parent.absolute()
    if not folder.is_dir():
        raise FileNotFoundError(f"folder of stack plan {str(dest)!r} does not exist")
    extra_keys: list[str] = []
    for row in rows:
        extra_keys.extend(k for k in row.extra if k not in extra_keys)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow([*CANONICAL_COLUMNS, *extra_keys])
            for row in rows:
                writer.writerow(
                    [
                        _path_text(row.path, folder),
                        _cell(row.exposure),
                        _cell(row.mount),
                        _cell(row.filter),
                        _cell(row.batch_id),
                        _cell(row.order),
                        _cell(row.tile_id),
                        *(row.extra.get(k, "") for k in extra_keys),
                    ]
                )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote stack plan %s (%d rows)", dest, len(rows))
    return dest
