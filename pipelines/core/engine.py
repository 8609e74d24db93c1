"""Where data-parallel work runs: in this process, or on the Dask cluster ``SHOPREC_DASK_ADDRESS`` names.

One machine is the default and needs nothing. The unit of work is a part of whole users (a Parquet file, see
``pipelines.data.partitions``): a stage writes its per-part work as one function and hands the parts to
``map_parts``, which runs them one after another here, or as Dask tasks on the cluster's workers (which must see
the same files: a shared volume or object store). The stage then reduces the per-part results itself, so both
ways run the same code. Setting ``SHOPREC_DASK_ADDRESS=tcp://scheduler:8786`` also moves GBDT rankers whose training
rows exceed ``rankers.distributed.MIN_DISTRIBUTED_ROWS`` onto ``lightgbm.dask`` / ``xgboost.dask``. Dask is imported
only when a cluster is configured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

ADDRESS_ENV = "SHOPREC_DASK_ADDRESS"

T = TypeVar("T")

_clients: dict[str, Client] = {}


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


def map_parts(func: Callable[..., T], jobs: list[tuple[Any, ...]]) -> list[T]:
    """``func(*job)`` for every job, results in job order: here one at a time, or as tasks on the cluster."""
    return list(imap_parts(func, jobs))


def imap_parts(func: Callable[..., T], jobs: list[tuple[Any, ...]]) -> Iterator[T]:
    """``map_parts`` yielding each result in job order as it is ready, so a caller that writes results out (e.g.
    batch lists) holds one at a time; on a cluster every job is submitted at once and runs on the workers while
    the caller consumes the earlier ones."""
    client = dask_client()
    if client is None:
        yield from (func(*job) for job in jobs)
        return
    futures = client.map(func, *_shared_once(client, jobs), pure=False) if jobs else []
    log.info("dask parts submitted func=%s parts=%d", getattr(func, "__name__", func), len(jobs))
    for future in futures:
        yield future.result()
        future.release()


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
