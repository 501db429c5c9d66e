"""What plate-solving tools this machine has: solver binaries and index files.

Backs ``skymosaic doctor``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from skymosaic.astrometry._indexes import find_index_files, index_search_dirs
from skymosaic.astrometry._solvers import (
    ASTAP_BINARIES,
    SOLVE_FIELD,
    SolveOptions,
    find_astap_database,
    find_solver,
    solver_env,
)

__all__ = ["SolverBinary", "doctor_report", "find_solver_binaries"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolverBinary:
    """A solver program found (or not) on ``PATH``."""

    name: str
    path: str | None
    version: str | None

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "version": self.version}


def _version(command: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=30,
                              check=False, errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None
    text = (done.stdout or done.stderr or "").strip().splitlines()
    return text[0].strip() if text else None


def find_solver_binaries() -> list[SolverBinary]:
    """``solve-field`` and ASTAP (``astap`` or ``astap_cli``), with their versions."""
    out = []
    path = shutil.which(SOLVE_FIELD)
    out.append(SolverBinary(SOLVE_FIELD, path, _version([path, "--version"]) if path else None))
    astap = next((shutil.which(n) for n in ASTAP_BINARIES if shutil.which(n)), None)
    # ASTAP prints its version in the first line of its help text.
    out.append(SolverBinary("astap", astap, _version([astap, "-h"]) if astap else None))
    return out


def doctor_report(extra_dirs: Sequence[Path] = (), *, solver: str = "auto",
                  astap_database: Path | None = None) -> dict:
    """What ``skymosaic doctor`` prints: solvers, the one a run would use, index files.

    Parameters
    ----------
    extra_dirs : sequence of Path
        Index folders besides those of ``astrometry.cfg`` and the default locations
        (``[solve] index_dirs``, ``--index-dir``).
    solver, astap_database
        The ``[solve]`` settings deciding which solver a run would pick.
    """
    binaries = find_solver_binaries()
    options = SolveOptions(solver=solver, index_dirs=tuple(extra_dirs),
                           astap_database=astap_database)
    chosen = find_solver(options)
    folders = index_search_dirs(extra_dirs)
    indexes = find_index_files(folders)
    lows = [i.scale_low_arcmin for i in indexes if i.scale_low_arcmin]
    highs = [i.scale_high_arcmin for i in indexes if i.scale_high_arcmin]
    astap = next((b.path for b in binaries if b.name == "astap" and b.path), None)
    env_path = solver_env().get("PATH")
    return {
        "solvers": [b.to_dict() for b in binaries],
        "chosen": (None if chosen is None
                   else {"name": chosen.name, "executable": chosen.executable}),
        "index_dirs": [{"path": str(d), "exists": d.is_dir()} for d in folders],
        "index_files": [i.to_dict() for i in indexes],
        # astrometry.net wants quads of 10-100% of the field's size
        "quad_range_arcmin": ([round(min(lows), 2), round(max(highs), 2)]
                              if lows and highs else None),
        "field_range_arcmin": ([round(min(lows), 2), round(10.0 * max(highs), 2)]
                               if lows and highs else None),
        "astap_database": (str(db) if (db := find_astap_database(astap_database, astap)) else None),
        "python3_for_solver": shutil.which("python3", path=env_path),
    }
