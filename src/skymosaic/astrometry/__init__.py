"""WCS validation and plate solving with external solvers (astrometry.net, ASTAP).

See ``docs/astrometry.md``. The entry point is `solve_frames` (used by the pipeline's
discover phase); `solve_hints` reads the search hints of a header, `check_wcs` says why a
WCS should not be trusted, and the ``find_*`` helpers back ``skymosaic doctor``.
"""

from skymosaic.astrometry._cache import content_hash, read_solution, solution_path, write_solution
from skymosaic.astrometry._doctor import SolverBinary, doctor_report, find_solver_binaries
from skymosaic.astrometry._hints import SolveHints, parse_dec, parse_ra, read_hints, solve_hints
from skymosaic.astrometry._indexes import (
    IndexFile,
    astrometry_cfg_paths,
    find_index_files,
    index_search_dirs,
)
from skymosaic.astrometry._solve import (
    FrameSolution,
    apply_solution,
    solve_frames,
    solve_missing_wcs,
    write_solver_image,
)
from skymosaic.astrometry._solvers import (
    SOLVER_CHOICES,
    AstapSolver,
    AstrometryNetSolver,
    SolveAttempt,
    SolveOptions,
    Solver,
    find_solver,
    solver_env,
    solver_missing_reason,
)
from skymosaic.astrometry._validate import check_wcs, describe_non_celestial, review_wcs

__all__ = [
    "SOLVER_CHOICES",
    "AstapSolver",
    "AstrometryNetSolver",
    "FrameSolution",
    "IndexFile",
    "SolveAttempt",
    "SolveHints",
    "SolveOptions",
    "Solver",
    "SolverBinary",
    "apply_solution",
    "astrometry_cfg_paths",
    "check_wcs",
    "content_hash",
    "describe_non_celestial",
    "doctor_report",
    "find_index_files",
    "find_solver",
    "find_solver_binaries",
    "index_search_dirs",
    "parse_dec",
    "parse_ra",
    "read_hints",
    "read_solution",
    "review_wcs",
    "solution_path",
    "solve_frames",
    "solve_hints",
    "solve_missing_wcs",
    "solver_env",
    "solver_missing_reason",
    "write_solution",
    "write_solver_image",
]
