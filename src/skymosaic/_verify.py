"""The verify phase's per-frame work, on every core: read, check, measure.

Each frame is read once (`load_frame`), checked (`frame_stats`: no valid pixel rejects it)
and, when quality selection or FWHM weighting needs it, measured (`measure_quality`). The
star measurement runs in sep, which holds the GIL: threads take turns, so the frames go to
a pool of worker *processes* (``spawn``: safe with the threads and the Dask client of the
parent, and the same on every platform). A pool costs its start-up (each worker imports
numpy, astropy and sep, about a second), so one worker or a small input stays in this
process, in a thread pool (the FITS read and the statistics still overlap there), and so
does a main script without an ``if __name__ == "__main__":`` guard (`_main_is_spawn_safe`).

The figures do not depend on where they were computed: the same function runs on the same
pixels (``tests/test_verify_pool.py``).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from skymosaic._stats import FrameStats, frame_stats
from skymosaic.io import FrameError, FrameInfo, load_frame
from skymosaic.stack.quality import FrameQuality, measure_quality

__all__ = ["FrameCheck", "check_frame", "check_frames", "use_processes"]

logger = logging.getLogger(__name__)

#: below this many frame pixels (H x W) per worker the pool's start-up (about 2.5 s on the
#: 2-core reference machine) outweighs what it saves: about 60 Seestar frames for two workers
MIN_POOL_PIXELS_PER_WORKER = 64_000_000


@dataclass(frozen=True)
class FrameCheck:
    """What the verify phase learned about one frame: ``error`` set means rejected."""

    info: FrameInfo
    stats: FrameStats | None
    quality: FrameQuality | None
    error: str | None


def check_frame(info: FrameInfo, valid_min: float | None, detect_sigma: float,
                measure: bool) -> FrameCheck:
    """Read one frame, check it and (with ``measure``) measure its stars."""
    try:
        data = load_frame(info, valid_min=valid_min)
    except FrameError as err:
        return FrameCheck(info, None, None, str(err))
    stats = frame_stats(data)
    if stats.valid_fraction == 0.0:
        return FrameCheck(info, stats, None, "no valid pixel (all NaN or below input.valid_min)")
    quality = measure_quality(data, detect_sigma=detect_sigma) if measure else None
    return FrameCheck(info, stats, quality, None)


def _main_is_spawn_safe() -> bool:
    """Whether a spawned worker can import ``__main__`` without rerunning the caller's work.

    ``spawn`` imports the parent's main script in every worker: a script that calls the
    pipeline at top level, without an ``if __name__ == "__main__":`` guard, would run again
    there. Safe: no script (interactive, ``-c``), a module run with ``-m`` (its ``__spec__``),
    or a script whose source has the guard (console entry points such as ``skymosaic``).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        return True
    try:
        source = Path(path).read_text(errors="replace")
    except OSError:
        return False
    return any(f"__name__ == {q}__main__{q}" in source for q in ("'", '"'))


def use_processes(frames: Sequence[FrameInfo], workers: int, measure: bool) -> bool:
    """Whether `check_frames` should use worker processes (see the module docstring)."""
    if workers < 2 or len(frames) < 2 or not measure:
        return False  # without sep the work is I/O and numpy: threads overlap it already
    if not _main_is_spawn_safe():
        logger.debug("verify: the main script has no __main__ guard; threads, not processes")
        return False
    pixels = sum(math.prod(f.shape[-2:]) for f in frames)
    return pixels >= MIN_POOL_PIXELS_PER_WORKER * min(workers, len(frames))


def check_frames(frames: Sequence[FrameInfo], *, valid_min: float | None, detect_sigma: float,
                 measure: bool, workers: int,
                 processes: bool | None = None) -> Iterator[FrameCheck]:
    """`check_frame` on every frame, in their order, on ``workers`` threads or processes.

    ``processes`` None decides by `use_processes`; True or False forces the choice (tests).
    """
    if processes is None:
        processes = use_processes(frames, workers, measure)
    args = ([f for f in frames], [valid_min] * len(frames), [detect_sigma] * len(frames),
            [measure] * len(frames))
    if not processes:
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            yield from pool.map(check_frame, *args)
        return
    n = max(1, min(workers, len(frames)))
    logger.debug("verify: %d frames on %d worker processes", len(frames), n)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=context) as pool:
        yield from pool.map(check_frame, *args, chunksize=1)
