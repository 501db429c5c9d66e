"""One BLAS thread per worker thread: our thread pools are the parallelism of a run.

NumPy's BLAS (OpenBLAS here) starts its own threads for every matrix product large enough,
one per core. Inside skymosaic's worker threads (`run.threads`, all cores by default) that
oversubscribes the machine: each of two workers' products then wants both cores, and the
threads wait on each other. Measured on the 30-frame colour ``bench_seams`` survey (2
cores): the photometry's overlap measurements took 19.7 s with BLAS free and 14.3 s with
one BLAS thread (the detrending's moment products are its only large ones); single-thread
CPU time is the same. `threadpoolctl` (the library scikit-learn uses for the same purpose)
sets the limit for the run and restores it after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits

__all__ = ["one_blas_thread"]


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limit BLAS libraries to one thread inside the block (restored on exit).

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> with one_blas_thread():
    ...     all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    True
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield
