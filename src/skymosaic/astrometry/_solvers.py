"""External plate solvers: astrometry.net's ``solve-field`` and ASTAP, one small interface.

A solver gets a FITS image (the frame's luminance on the frame's own pixel grid), the
frame's hints and the options, runs its program in a private working folder with a CPU
limit and a wall-clock limit, and returns the solved WCS header or the reason it failed,
in words a user can act on ("did not solve", "timed out", "binary missing", the program's
own error line).

Both programs downsample internally (``--downsample`` / ``-z``) and report the WCS of the
image they were given, so the solution is on the full-resolution pixel grid without any
conversion on our side.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from astropy.io import fits

from skymosaic.astrometry._hints import SolveHints
from skymosaic.astrometry._indexes import astrometry_cfg_paths

if TYPE_CHECKING:
    from skymosaic.config import Config

__all__ = [
    "ASTAP_BINARIES",
    "SOLVER_CHOICES",
    "SOLVE_FIELD",
    "AstapSolver",
    "AstrometryNetSolver",
    "SolveAttempt",
    "SolveOptions",
    "Solver",
    "find_astap_database",
    "find_solver",
    "solver_env",
    "solver_missing_reason",
]

logger = logging.getLogger(__name__)

SOLVE_FIELD = "solve-field"
#: Which solver a run uses (``solve.solver``): auto = ASTAP if it has a star database,
#: else solve-field.
SOLVER_CHOICES = ("auto", "astrometry.net", "astap")
ASTAP_BINARIES = ("astap", "astap_cli")
#: Folders where ASTAP's installers put the program and its star databases.
ASTAP_DATABASE_DIRS = (Path("/opt/astap"), Path("/usr/share/astap"), Path("/usr/local/share/astap"))
_ASTAP_DB_SUFFIXES = (".1476", ".290", ".001")  # H18/D80/D50 tiles, W08, G05 files
INSTALL_HINT = ("install astrometry.net and its index files with `make solver` (Debian/Ubuntu), "
                "or ASTAP with a star database; `skymosaic doctor` shows what is found")


@dataclass(frozen=True)
class SolveOptions:
    """How to solve (the ``[solve]`` configuration section, as plain values).

    Attributes
    ----------
    solver : {"auto", "astrometry.net", "astap"}
        ``auto``: ASTAP when its binary and a star database are found, else ``solve-field``.
    timeout_s : float
        CPU-time limit per frame (``--cpulimit``); the process is killed after
        ``2 * timeout_s + 30`` s of wall-clock time.
    downsample : int
        Solver-side downsampling before source extraction (2 suits Bayer frames: it
        averages each 2x2 cell).
    max_sources : int
        The solver works on this many of the brightest sources (``--objs`` / ``-s``).
        solve-field checks its CPU limit only between source batches, so on a frame that
        cannot solve (noise, clouds) the time grows steeply with the number of sources.
    radius_deg : float
        Search radius around the header position.
    scale_tolerance : float
        The pixel-scale search range is ``scale * (1 - t) .. scale * (1 + t)``.
    blind : bool
        Also solve frames whose header gives no position (whole-sky search).
    workers : int
        Frames solved in parallel (>= 1).
    index_dirs : tuple of Path
        Extra astrometry.net index folders (added to those of ``astrometry.cfg``).
    astap_database : Path or None
        ASTAP star database folder (``-d``).
    """

    solver: str = "auto"
    timeout_s: float = 60.0
    downsample: int = 2
    max_sources: int = 100
    radius_deg: float = 3.0
    scale_tolerance: float = 0.15
    blind: bool = False
    workers: int = 1
    index_dirs: tuple[Path, ...] = ()
    astap_database: Path | None = None

    @classmethod
    def from_config(cls, config: Config, *, threads: int = 1) -> SolveOptions:
        """The ``[solve]`` section (`skymosaic.config.SolveConfig`); ``workers = 0`` takes
        the run's ``threads``."""
        cfg = config.solve
        return cls(solver=cfg.solver, timeout_s=cfg.timeout_s, downsample=cfg.downsample,
                   max_sources=cfg.max_sources, radius_deg=cfg.radius_deg,
                   scale_tolerance=cfg.scale_tolerance, blind=cfg.blind,
                   workers=cfg.workers or max(1, threads), index_dirs=tuple(cfg.index_dirs),
                   astap_database=cfg.astap_database)

    def __post_init__(self) -> None:
        if self.solver not in SOLVER_CHOICES:
            raise ValueError(f"solver must be one of {SOLVER_CHOICES}, got {self.solver!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if int(self.downsample) < 1:
            raise ValueError(f"downsample must be >= 1, got {self.downsample}")
        if int(self.max_sources) < 1:
            raise ValueError(f"max_sources must be >= 1, got {self.max_sources}")
        if not 0 < self.scale_tolerance < 1:
            raise ValueError(f"scale_tolerance must be in (0, 1), got {self.scale_tolerance}")
        if not self.radius_deg > 0:
            raise ValueError(f"radius_deg must be > 0, got {self.radius_deg}")

    @property
    def wall_limit_s(self) -> float:
        return 2.0 * self.timeout_s + 30.0


@dataclass
class SolveAttempt:
    """The outcome of one solver run: a WCS header, or the reason there is none."""

    header: fits.Header | None
    reason: str | None
    seconds: float
    solver: str
    command: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.header is not None


class Solver(Protocol):
    """What the frame-solving loop needs from a solver."""

    name: str
    executable: str

    def command(self, image: Path, workdir: Path, hints: SolveHints, shape: tuple[int, int],
                options: SolveOptions) -> list[str]: ...

    def solve(self, image: Path, workdir: Path, hints: SolveHints, shape: tuple[int, int],
              options: SolveOptions) -> SolveAttempt: ...


@functools.lru_cache(maxsize=8)
def _python_has_numpy(path_var: str) -> bool:
    python = shutil.which("python3", path=path_var)
    if python is None:
        return False
    try:
        done = subprocess.run([python, "-c", "import numpy"], capture_output=True, timeout=60,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def solver_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a solver subprocess.

    solve-field runs Python helpers (``image2pnm``, and ``removelines``/``uniformize``
    unless disabled) with the first ``python3`` on ``PATH`` in upstream builds (Debian's
    package calls ``/usr/bin/python3``). When that interpreter cannot import NumPy, the
    folder of the running interpreter (our virtual environment, which has NumPy) is put
    first on ``PATH``.
    """
    env = dict(os.environ if base is None else base)
    path_var = env.get("PATH", os.defpath)
    if not _python_has_numpy(path_var):
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path_var])
    env.setdefault("LC_ALL", "C")
    return env


def _run(command: Sequence[str], *, cwd: Path, timeout: float) -> tuple[int | None, str, float]:
    """Run ``command`` in its own process group; ``(returncode or None on timeout, output, s)``.

    On timeout the whole group is killed (solve-field starts ``astrometry-engine``, which
    would otherwise outlive it).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(command), cwd=cwd, env=solver_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out or "", time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        return None, out or "", time.perf_counter() - t0
    except BaseException:  # interrupted (Ctrl-C): leave no solver running behind us
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group may be gone already
        os.killpg(proc.pid, signal.SIGKILL)


def _missing(executable: str) -> str:
    return f"solver binary {executable!r} not found; {INSTALL_HINT}"


def _last_error_line(output: str) -> str:
    lines = [s for s in map(str.strip, output.splitlines()) if s and set(s) != {"-"}]
    for ln in reversed(lines):
        if re.search(r"error|must|cannot|can't|failed|not found|no such", ln, re.IGNORECASE):
            return ln
    return lines[-1] if lines else "no output"


def _read_wcs_header(path: Path) -> fits.Header | None:
    try:
        return fits.getheader(path)
    except (OSError, ValueError):
        return None


# -- astrometry.net -------------------------------------------------------------------------


class AstrometryNetSolver:
    """astrometry.net's ``solve-field`` with local index files.

    Always run with ``--no-remove-lines --uniformize 0``: those two steps are Python helpers
    that break under NumPy 2 (and are not needed for stellar fields), see
    docs/astrometry.md.
    """

    name = "astrometry.net"

    def __init__(self, executable: str, *, index_dirs: Sequence[Path] = ()) -> None:
        self.executable = executable
        self.index_dirs = tuple(Path(d) for d in index_dirs)

    def _backend_config(self, workdir: Path) -> Path | None:
        """A private ``astrometry.cfg`` adding ``index_dirs`` to the system's index paths."""
        if not self.index_dirs:
            return None
        paths = [*self.index_dirs, *astrometry_cfg_paths()]
        cfg = workdir / "astrometry.cfg"
        cfg.write_text("".join(f"add_path {p}\n" for p in dict.fromkeys(map(str, paths)))
                       + "autoindex\n")
        return cfg

    def command(self, image: Path, workdir: Path, hints: SolveHints, shape: tuple[int, int],
                options: SolveOptions) -> list[str]:
        cmd = [
            self.executable, "--no-plots", "--overwrite", "--no-verify",
            "--no-remove-lines", "--uniformize", "0",
            "--downsample", str(int(options.downsample)),
            "--cpulimit", f"{options.timeout_s:g}", "--objs", str(int(options.max_sources)),
            "--dir", str(workdir), "--temp-dir", str(workdir), "--out", "solution",
            "--new-fits", "none", "--corr", "none", "--rdls", "none", "--match", "none",
            "--index-xyls", "none",
        ]
        if hints.scale_arcsec:
            lo = hints.scale_arcsec * (1.0 - options.scale_tolerance)
            hi = hints.scale_arcsec * (1.0 + options.scale_tolerance)
            cmd += ["--scale-units", "arcsecperpix", "--scale-low", f"{lo:.4f}",
                    "--scale-high", f"{hi:.4f}"]
        if hints.has_position:
            cmd += ["--ra", f"{hints.ra_deg:.6f}", "--dec", f"{hints.dec_deg:.6f}",
                    "--radius", f"{options.radius_deg:g}"]
        cfg = self._backend_config(workdir)
        if cfg is not None:
            cmd += ["--config", str(cfg)]
        return [*cmd, str(image)]

    def solve(self, image: Path, workdir: Path, hints: SolveHints, shape: tuple[int, int],
              options: SolveOptions) -> SolveAttempt:
        cmd = self.command(image, workdir, hints, shape, options)
        try:
            code, output, seconds = _run(cmd, cwd=workdir, timeout=options.wall_limit_s)
        except FileNotFoundError:
            return SolveAttempt(None, _missing(self.executable), 0.0, self.name, cmd)
        except OSError as err:  # not executable, too many processes...
            return SolveAttempt(None, f"cannot start {self.executable}: {err}", 0.0, self.name, cmd)
        if code is None:
            return SolveAttempt(None, f"solve-field timed out after {seconds:.0f} s (wall clock)",
                                seconds, self.name, cmd)
        solved = workdir / "solution.solved"
        header = _read_wcs_header(workdir / "solution.wcs") if solved.exists() else None
        if header is not None:
            return SolveAttempt(header, None, seconds, self.name, cmd)
        if code != 0:
            reason = f"solve-field failed (exit {code}): {_last_error_line(output)}"
        else:
            reason = "solve-field did not solve the field" + _did_not_solve_details(output, hints,
                                                                                    options)
        return SolveAttempt(None, reason, seconds, self.name, cmd)


def _did_not_solve_details(output: str, hints: SolveHints, options: SolveOptions) -> str:
    found = re.findall(r"found (\d+) sources", output)
    indexes = set(re.findall(r"index ([\w.-]+\.fits)", output))
    parts = []
    if found:
        parts.append(f"{found[-1]} sources detected")
    if indexes:
        parts.append(f"{len(indexes)} index file(s) tried")
    if hints.has_position:
        parts.append(f"within {options.radius_deg:g} deg of RA {hints.ra_deg:.3f}, "
                     f"Dec {hints.dec_deg:.3f}")
    if hints.scale_arcsec:
        parts.append(f"scale {hints.scale_arcsec:.3f}\"/px +-{100 * options.scale_tolerance:g}%")
    parts.append(f"CPU limit {options.timeout_s:g} s")
    return " (" + "; ".join(parts) + ")"


# -- ASTAP ----------------------------------------------------------------------------------

#: ASTAP exit codes (its documentation, "command line").
_ASTAP_ERRORS = {
    1: "no solution",
    2: "not enough stars detected",
    16: "error reading the image file",
    32: "no star database found",
    33: "error reading the star database",
    34: "error updating the input file",
}


def find_astap_database(extra: Path | None = None, executable: str | None = None) -> Path | None:
    """The folder of an ASTAP star database (H18, H17, D50, D80, V17, W08...), or None."""
    candidates = [extra] if extra is not None else []
    if executable:
        candidates.append(Path(executable).resolve().parent)
    candidates += list(ASTAP_DATABASE_DIRS)
    for folder in candidates:
        if (folder is not None and folder.is_dir()
                and any(p.suffix in _ASTAP_DB_SUFFIXES for p in folder.iterdir() if p.is_file())):
            return folder
    return None


class AstapSolver:
    """ASTAP's command-line solver: ``astap -f FILE -ra H -spd DEG -fov DEG -r DEG -z N``.

    ``-ra`` is in hours, ``-spd`` is the south pole distance (Dec + 90), ``-fov`` the image
    height in degrees. ASTAP writes ``<-o>.wcs`` (astrometry.net format) and ``<-o>.ini``
    (``PLTSOLVD=T/F``, ``ERROR=...``).
    """

    name = "astap"

    def __init__(self, executable: str, *, database: Path | None = None) -> None:
        self.executable = executable
        self.database = database

    def command(self, image: Path, workdir: Path, hints: SolveHints, shape: tuple[int, int],
                options: SolveOptions) -> list[str]:
        height = shape[0]
        fov = hints.scale_arcsec * height / 3600.0 if hints.scale_arcsec else 0.0
        cmd = [self.executable, "-f", str(image), "-o", str(workdir / "solution"), "-wcs", "-sip",
               "-z", str(int(options.downsample)), "-s", str(int(options.max_sources)),
               "-fov", f"{fov:.4f}"]
        if hints.ra_deg is not None and hints.dec_deg is not None:
            cmd += ["-ra", f"{hints.ra_deg / 15.0:.6f}", "-spd", f"{hints.dec_deg + 90.0:.6f}",
                    "-r", f"{options.radius_deg:g}"]
        else:
            cmd += ["-r", "180"]
        if self.database is not None:
            cmd += ["-d", str(self.database)]
        return cmd

    def solve(self, image: Path, workdir: Path, hints: SolveHints, shape: tuple[int, int],
              options: SolveOptions) -> SolveAttempt:
        cmd = self.command(image, workdir, hints, shape, options)
        # ASTAP has no CPU limit of its own: the wall-clock limit is the timeout itself.
        try:
            code, output, seconds = _run(cmd, cwd=workdir, timeout=options.timeout_s + 10.0)
        except FileNotFoundError:
            return SolveAttempt(None, _missing(self.executable), 0.0, self.name, cmd)
        except OSError as err:  # not executable, too many processes...
            return SolveAttempt(None, f"cannot start {self.executable}: {err}", 0.0, self.name, cmd)
        if code is None:
            return SolveAttempt(None, f"astap timed out after {seconds:.0f} s", seconds,
                                self.name, cmd)
        ini = _read_ini(workdir / "solution.ini")
        if code == 0 and ini.get("PLTSOLVD", "T").upper().startswith("T"):
            header = _read_wcs_header(workdir / "solution.wcs")
            if header is not None:
                return SolveAttempt(header, None, seconds, self.name, cmd)
        what = _ASTAP_ERRORS.get(code or 0, f"exit {code}")
        detail = ini.get("ERROR") or ini.get("WARNING") or _last_error_line(output)
        return SolveAttempt(None, f"astap did not solve the field: {what} ({detail})", seconds,
                            self.name, cmd)


def _read_ini(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().upper()] = value.strip()
    return out


# -- choosing a solver ----------------------------------------------------------------------


def _which_astap() -> str | None:
    for name in ASTAP_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def find_solver(options: SolveOptions) -> Solver | None:
    """The solver to use, or None when none is installed (see `solver_missing_reason`).

    ``auto`` prefers ASTAP when its binary *and* a star database are found (it is faster
    on small fields), and falls back to astrometry.net's ``solve-field``.
    """
    astap = _which_astap() if options.solver in ("auto", "astap") else None
    if astap is not None:
        database = find_astap_database(options.astap_database, astap)
        if options.solver == "astap" or database is not None:
            return AstapSolver(astap, database=database or options.astap_database)
    if options.solver in ("auto", "astrometry.net"):
        solve_field = shutil.which(SOLVE_FIELD)
        if solve_field is not None:
            return AstrometryNetSolver(solve_field, index_dirs=options.index_dirs)
    return None


def solver_missing_reason(options: SolveOptions) -> str:
    """Why `find_solver` found nothing, and how to fix it."""
    wanted = {"auto": "solve-field or astap", "astrometry.net": "solve-field",
              "astap": "astap"}[options.solver]
    return f"no plate solver found ({wanted} not on PATH); {INSTALL_HINT}"
