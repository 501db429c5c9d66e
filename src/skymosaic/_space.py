"""Sizes with units, and a full disk turned into one clear error.

`parse_size` reads ``"4GB"``, ``"4GiB"``, ``"800M"`` or a bare number (in a default unit,
MiB for the memory options); decimal units (``kB``, ``MB``, ``GB``, ``TB``, and the bare
letters ``k``, ``M``, ``G``, ``T``, as Dask's ``parse_bytes``) are powers of 1000, binary
units (``KiB``, ``MiB``, ``GiB``, ``TiB``) powers of 1024. `parse_count` reads pixel counts
(``2e9``, ``"2G"``, ``"500Mpx"``).

A write that fails because the disk (or the quota) is full raises `DiskFullError`, which
names the file. It is deliberately not an `OSError`: the fallbacks that catch ``OSError``
(a tile that cannot be stacked is coadded frame by frame, ...) must not swallow it, since
nothing can succeed on a full disk. Files that are written through memory maps are
preallocated (`preallocate`), so a full disk shows as this error when they are created,
never as a SIGBUS in the middle of a write.

Nothing of skymosaic is imported here.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "DiskFullError",
    "disk_full_guard",
    "format_bytes",
    "format_count",
    "is_disk_full",
    "parse_count",
    "parse_size",
    "preallocate",
]

#: bytes per unit, keys lower-case (units are read case-insensitively)
_BYTE_UNITS = {
    "b": 1, "": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
    "ti": 2**40, "tib": 2**40, "pi": 2**50, "pib": 2**50,
}
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")

_ALLOWED_SIZES = ("a number (in {default}) or a number with a unit: B, kB, MB, GB, TB (powers "
                  "of 1000; k, M, G, T alike), KiB, MiB, GiB, TiB (powers of 1024), e.g. '4GB', "
                  "'800MiB'")


def parse_size(value: str | float | int, *, default_unit: str = "MiB") -> int:
    """Bytes of a size such as ``"4GB"`` (4e9), ``"4GiB"`` (2**32), ``"800M"`` or ``300``.

    A bare number (or a string without a unit) is in ``default_unit``.

    Raises
    ------
    ValueError
        Naming the value and the accepted forms, for anything else (negative, NaN, an
        unknown unit, not a number).

    Examples
    --------
    >>> parse_size("4GB"), parse_size("1GiB"), parse_size(300)
    (4000000000, 1073741824, 314572800)
    """
    unit_bytes = _BYTE_UNITS[default_unit.lower()]
    allowed = _ALLOWED_SIZES.format(default=default_unit)
    if isinstance(value, bool):
        raise ValueError(f"bad size {value!r}: expected {allowed}")
    if isinstance(value, (int, float)):
        number, factor = float(value), unit_bytes
    elif isinstance(value, str):
        match = _NUMBER.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _BYTE_UNITS:
            raise ValueError(f"bad size {value!r}: expected {allowed}")
        number = float(match.group(1))
        factor = _BYTE_UNITS[unit] if match.group(2) else unit_bytes
    else:
        raise ValueError(f"bad size {value!r}: expected {allowed}")
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"bad size {value!r}: must be a finite number >= 0")
    return round(number * factor)


def parse_count(value: str | float | int) -> float:
    """A count such as ``2e9``, ``"2G"``, ``"500M"`` or ``"2Gpx"`` (decimal multiples).

    Raises
    ------
    ValueError
        Naming the value and the accepted forms.
    """
    allowed = "a number, optionally with k, M, G or T (powers of 1000) and 'px', e.g. '2G' or '2e9'"
    if isinstance(value, bool):
        raise ValueError(f"bad count {value!r}: expected {allowed}")
    if isinstance(value, (int, float)):
        number, factor = float(value), 1
    elif isinstance(value, str):
        match = _NUMBER.match(value)
        unit = match.group(2).lower() if match else None
        if unit is not None and unit.endswith("px"):
            unit = unit[:-2]
        if match is None or unit not in _COUNT_UNITS:
            raise ValueError(f"bad count {value!r}: expected {allowed}")
        number, factor = float(match.group(1)), _COUNT_UNITS[unit]
    else:
        raise ValueError(f"bad count {value!r}: expected {allowed}")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"bad count {value!r}: must be a finite number > 0")
    return number * factor


def format_bytes(n: float) -> str:
    """``1.23 GB``-style text (decimal units, as `shutil.disk_usage` users read them)."""
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{int(n)} B"


def format_count(n: float) -> str:
    """``7.24 G``-style text of a pixel count."""
    for unit, factor in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{int(n)}"


class DiskFullError(RuntimeError):
    """A file could not be written: no space left on its device (or the quota is full)."""

    def __init__(self, path: str | os.PathLike, cause: OSError | None = None) -> None:
        self.path = Path(path)
        detail = f" ({cause.strerror})" if cause is not None and cause.strerror else ""
        super().__init__(f"no space left to write {self.path}{detail}")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a full disk or quota (ENOSPC, EDQUOT)."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    return isinstance(err, OSError) and err.errno in codes


@contextlib.contextmanager
def disk_full_guard(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full-disk `OSError` raised inside the block into `DiskFullError` naming ``path``."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(path, err) from err
        raise


def preallocate(path: str | os.PathLike) -> None:
    """Reserve the blocks of ``path`` (a sparse file of its final size) on the disk.

    A memory-mapped write into a sparse file on a full disk kills the process with SIGBUS;
    after this, the blocks exist and the writes cannot fail for space. Filesystems that
    cannot preallocate are left alone (the writes then behave as before).

    Raises
    ------
    DiskFullError
        When the disk cannot hold the file.
    """
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - macOS, Windows
        return
    size = os.path.getsize(path)
    if size == 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(path, err) from err
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)
