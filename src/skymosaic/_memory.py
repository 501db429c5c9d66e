"""Process memory: how much freed array memory the C allocator may keep.

glibc serves a large ``malloc`` with its own ``mmap`` (returned to the system on ``free``)
only above a threshold that it *raises* each time such a block is freed, up to 32 MiB,
and it trims the heap's free top above twice that threshold. Two costs pull against each
other:

* **Memory.** After the first freed coadd block of, say, 15 MiB, every later block of that
  size comes from the heap, where freed memory stays in the process: under a 64 MiB budget
  a blockwise loop that frees all it allocates grew its resident size by 78 MiB instead of
  48 MiB (measured). A small threshold keeps every array of 1 MiB or more in its own
  mapping, so a small budget holds.
* **Time.** Memory that is handed back is handed out again as fresh pages: one page fault
  and one zeroed page per 4 KiB, which on a virtual machine cost as much as the work
  itself. With a 1 MiB threshold, a 111-frame Seestar master tile spent 27 s of system time
  in faults against 41 s of stacking (and 5 s with glibc's own rule).

`limit_heap_growth` therefore scales the threshold with the memory budget: 1/64 of it,
between 1 MiB and glibc's own 32 MiB ceiling, with the trim threshold at twice that (what
glibc's dynamic rule converges to). A 64 MiB budget gets the 1 MiB threshold; a budget of
2 GiB or more gets glibc's steady state without waiting for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["limit_heap_growth", "mmap_threshold_for"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers in malloc.h
#: Bounds of the mmap threshold (glibc refuses more than 32 MiB on 64-bit systems).
MIN_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD = 1 << 20, 32 << 20


def mmap_threshold_for(memory_budget_bytes: int | None) -> int:
    """The mmap threshold for a budget: 1/64 of it, within [1 MiB, 32 MiB]."""
    if memory_budget_bytes is None:
        return MIN_MMAP_THRESHOLD
    return int(min(MAX_MMAP_THRESHOLD, max(MIN_MMAP_THRESHOLD, memory_budget_bytes // 64)))


def limit_heap_growth(memory_budget_bytes: int | None = None) -> bool:
    """Set glibc's mmap threshold for ``memory_budget_bytes`` and its trim threshold to
    twice that (see the module docstring; ``None``: the 1 MiB floor).

    Returns True when the setting was applied (Linux with glibc), False elsewhere, where
    the system allocator is left as it is.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl): nothing to tune
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    threshold = mmap_threshold_for(memory_budget_bytes)
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * threshold)
    )
    if not done:
        logger.debug("mallopt refused M_MMAP_THRESHOLD/M_TRIM_THRESHOLD = %d/%d", threshold,
                     2 * threshold)
    return done
