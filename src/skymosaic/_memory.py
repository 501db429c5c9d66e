"""Process memory: give freed array memory back to the operating system.

glibc serves a large ``malloc`` with its own ``mmap`` (returned to the system on ``free``)
only above a threshold that it *raises* each time such a block is freed, up to 32 MiB.
After the first freed coadd block of, say, 15 MiB, every later block of that size comes
from the heap, where freed memory stays in the process: a blockwise loop that frees all it
allocates still grows its resident size block after block (measured: 64 MiB budget,
+78 MiB instead of +48 MiB over the import baseline). Fixing the threshold keeps every
array of 1 MiB or more in its own mapping, so the memory plan of each phase holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["limit_heap_growth"]

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
#: Allocations from this size on get their own mapping (returned to the OS when freed).
MMAP_THRESHOLD_BYTES = 1 << 20
_done = False


def limit_heap_growth() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD_BYTES` (once per process).

    Returns True when the setting was applied (Linux with glibc), False elsewhere, where
    the system allocator is left as it is.
    """
    global _done  # noqa: PLW0603 - a once-per-process switch of the C allocator
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl): nothing to tune
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not _done:
        logger.debug("mallopt(M_MMAP_THRESHOLD) refused; the heap may keep freed blocks")
    return _done
