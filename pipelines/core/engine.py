"""Where data-parallel work runs: in this process, or on the Dask cluster ``SHOPREC_DASK_ADDRESS`` names.

One machine is the default and needs nothing. The unit of work is a part of whole users (a Parquet file, see
``pipelines.data.partitions``): a stage writes its per-part work as one function and hands the parts to
``map_parts``, which runs them here on a few threads (``SHOPREC_THREADS``, default one per core), or as Dask
tasks on the cluster's workers (which must see the same files: a shared volume or object store). The stage then
reduces the per-part results itself, in part order, so every way gives the same outputs. Setting
``SHOPREC_DASK_ADDRESS=tcp://scheduler:8786`` also moves GBDT rankers whose training rows exceed
``rankers.distributed.MIN_DISTRIBUTED_ROWS`` onto ``lightgbm.dask`` / ``xgboost.dask``. Dask is imported only when
a cluster is configured.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from pipelines.core.errors import ShoprecError

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

ADDRESS_ENV = "SHOPREC_DASK_ADDRESS"
THREADS_ENV = "SHOPREC_THREADS"

T = TypeVar("T")

_clients: dict[str, Client] = {}
_part_thread = threading.local()


def dask_address() -> str | None:
    """The scheduler address from ``SHOPREC_DASK_ADDRESS`` (e.g. ``tcp://host:8786``), None when unset or empty."""
    value = os.environ.get(ADDRESS_ENV, "").strip()
    return value or None


def dask_client() -> Client | None:
    """A client of the configured cluster (one per address and process, reconnected if closed); None on one machine.

    Not set as the global default, so a library that finds no explicit client never runs on the cluster by accident.
    None inside a Dask worker too: a stage that already runs as a task on the cluster (Prefect's DaskTaskRunner)
    computes on its worker instead of blocking that worker's thread on a nested cluster job.
    """
    address = dask_address()
    if address is None or _inside_dask_worker():
        return None
    client = _clients.get(address)
    if client is None or client.status not in ("running", "connecting"):
        from distributed import Client

        client = _clients[address] = Client(address, set_as_default=False)
        log.info("dask client connected address=%s workers=%d", address, len(client.scheduler_info()["workers"]))
    return client


def _inside_dask_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def map_parts(func: Callable[..., T], jobs: list[tuple[Any, ...]], threads: int | None = None) -> list[T]:
    """``func(*job)`` for every job, results in job order: here on ``threads`` threads (None: ``local_threads()``),
    or as tasks on the cluster."""
    return list(imap_parts(func, jobs, threads))


def imap_parts(func: Callable[..., T], jobs: list[tuple[Any, ...]], threads: int | None = None) -> Iterator[T]:
    """``map_parts`` yielding each result in job order as it is ready, so a caller that writes results out (e.g.
    batch lists) holds a few at a time; on a cluster every job is submitted at once and runs on the workers while
    the caller consumes the earlier ones. ``threads=1`` keeps work that is not thread-safe on the calling thread."""
    client = dask_client()
    if client is None:
        yield from _threaded(func, jobs, local_threads() if threads is None else min(threads, local_threads()))
        return
    futures = client.map(func, *_shared_once(client, jobs), pure=False) if jobs else []
    log.info("dask parts submitted func=%s parts=%d", getattr(func, "__name__", func), len(jobs))
    for future in futures:
        yield future.result()
        future.release()


def local_threads() -> int:
    """How many parts run at once in this process without a cluster: ``SHOPREC_THREADS``, else every core. The
    per-part work is mostly NumPy, SciPy and GBDT calls that release the GIL, and threads share the model (at scale
    GBs of item-item rows) where worker processes would each hold a copy. 1 inside a part already running."""
    if getattr(_part_thread, "active", False):
        return 1
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ShoprecError(f"{THREADS_ENV}: expected a whole number of threads >= 1, got '{value}'")
    return int(value)


def _threaded(func: Callable[..., T], jobs: list[tuple[Any, ...]], threads: int) -> Iterator[T]:
    """``func(*job)`` of each job in job order, ``threads`` of them running at once; at most ``threads`` results are
    held ahead of the caller, so memory holds about that many parts' work."""
    if threads <= 1 or len(jobs) <= 1:
        yield from (func(*job) for job in jobs)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="shoprec-part") as pool:
        waiting = iter(jobs)
        running = deque(pool.submit(_in_part, func, job) for job in islice(waiting, threads))
        while running:
            result = running.popleft().result()
            for job in islice(waiting, 1):
                running.append(pool.submit(_in_part, func, job))
            yield result


def _in_part(func: Callable[..., T], job: tuple[Any, ...]) -> T:
    """Run one part on a pool thread, marked so that what it maps over runs in that thread (no nested pools)."""
    _part_thread.active = True
    try:
        return func(*job)
    finally:
        _part_thread.active = False


def _shared_once(client: Client, jobs: list[tuple[Any, ...]]) -> list[list[Any]]:
    """The jobs' arguments by position; an argument every job shares (the same object: a model, a history) is sent
    to the workers once and passed as its future, instead of being pickled into every task."""
    columns = []
    for column in zip(*jobs, strict=True):
        first = column[0]
        if len(column) > 1 and not isinstance(first, _SMALL) and all(arg is first for arg in column):
            shared = client.scatter([first], broadcast=True, hash=False)[0]  # a list: scatter it as one object
            columns.append([shared] * len(column))
        else:
            columns.append(list(column))
    return columns


_SMALL = (bool, int, float, str, bytes, type(None), os.PathLike)
