"""Dask distributed execution: connect to (or start) a cluster and run kernels as tasks.

Only this module imports ``distributed``, and only when a run asks for a scheduler
(``run.scheduler``): ``"local"`` starts a `distributed.LocalCluster` of worker processes on
this machine; ``"tcp://host:port"`` connects to a running scheduler (see docs/scale.md).
The tasks are the very functions the threaded path calls (`skymosaic.stack.build_master_tile`,
`skymosaic.assemble.coadd_block`), so both engines give the same numbers. Workers read the
frames and write master tiles at the same paths as the client: shared storage is assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from skymosaic._memory import limit_heap_growth

__all__ = ["dask_client", "run_tasks"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@contextmanager
def dask_client(scheduler: str | None, *, workers: int = 0, memory_limit_bytes: int | None = None,
                budget_bytes: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (None yields None: the threaded engine).

    Parameters
    ----------
    scheduler : str or None
        ``"local"``: a LocalCluster of ``workers`` processes with one thread each, dashboard
        off; ``"tcp://HOST:PORT"`` (or any address Dask accepts): an existing scheduler.
    workers : int
        Worker processes of a local cluster; 0 means one per core.
    memory_limit_bytes : int, optional
        Memory limit of each local worker (Dask's nanny spills and restarts above it).
    budget_bytes : int, optional
        The run's memory budget: sets each worker's allocator thresholds
        (`skymosaic._memory.limit_heap_growth`; default ``memory_limit_bytes``).

    Raises
    ------
    ImportError
        If ``distributed`` is not installed (``pip install skymosaic[dask]``).
    OSError
        If the scheduler cannot be reached (Dask's message names the address).
    """
    if scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster  # noqa: PLC0415 - optional (skymosaic[dask])
    except ImportError as err:
        raise ImportError(f"run.scheduler = {scheduler!r} needs dask.distributed: "
                          "pip install 'skymosaic[dask]'") from err
    if scheduler == "local":
        kwargs: dict[str, Any] = {"processes": True, "threads_per_worker": 1,
                                  "dashboard_address": None}
        if workers:
            kwargs["n_workers"] = workers
        if memory_limit_bytes:
            kwargs["memory_limit"] = memory_limit_bytes
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            logger.info("Dask: local cluster of %d worker process(es)", len(cluster.workers))
            client.run(limit_heap_growth, budget_bytes or memory_limit_bytes)
            yield client
        return
    with Client(scheduler, timeout="30s") as client:
        n = len(client.scheduler_info().get("workers", {}))
        logger.info("Dask: connected to %s (%d worker(s))", scheduler, n)
        client.run(limit_heap_growth, budget_bytes or memory_limit_bytes)
        if n == 0:
            logger.warning("Dask scheduler %s has no worker yet; tasks wait until one joins "
                           "(start one with `dask worker %s`)", scheduler, scheduler)
        yield client


def run_tasks(client: Any, fn: Callable[..., T], items: Sequence[Any], *, window: int,
              args: tuple = (), pure: bool = False) -> Iterator[tuple[Any, T]]:
    """Run ``fn(item, *args)`` for every item on the cluster; yield ``(item, result)`` as each
    finishes, with at most ``window`` tasks submitted and not yet yielded.

    The bound keeps the client's memory (results waiting to be consumed) and the cluster's
    queue small. ``args`` are scattered once and shared by every task. A task's exception is
    re-raised here when its result is consumed.
    """
    from distributed import as_completed  # noqa: PLC0415 - optional (skymosaic[dask])

    if not items:
        return
    shared = [client.scatter(a, broadcast=True) for a in args] if args else []
    queue = list(items)
    owner: dict[str, Any] = {}

    def submit(item: Any):
        future = client.submit(fn, item, *shared, pure=pure)
        owner[future.key] = item
        return future

    first = [submit(queue.pop(0)) for _ in range(min(window, len(queue)))]
    pending = as_completed(first)
    for future in pending:
        item = owner.pop(future.key)
        try:
            result = future.result()
        finally:
            future.release()
        if queue:
            pending.add(submit(queue.pop(0)))
        yield item, result
