"""Where data-parallel work runs: in this process with pandas, or on the Dask cluster ``SHOPREC_DASK_ADDRESS`` names.

One machine is the default and needs nothing. Setting ``SHOPREC_DASK_ADDRESS=tcp://scheduler:8786`` moves the
aggregations of the features stage onto Dask DataFrames over the partitioned Parquet and the GBDT rankers onto
``lightgbm.dask`` / ``xgboost.dask``. Aggregations are written once against the API pandas and Dask DataFrames
share (column selection, ``assign``, ``groupby().sum()`` / ``nunique()``, ``merge``), so the same function runs on
both; ``collect`` turns either result into a pandas frame. Dask is imported only when a cluster is configured.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

ADDRESS_ENV = "SHOPREC_DASK_ADDRESS"

# Either a pandas frame or a dask.dataframe collection; both answer the calls the aggregations use.
Frame = Any

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


def backend() -> Literal["pandas", "dask"]:
    """Which frame backend the stages use now."""
    return "pandas" if dask_address() is None or _inside_dask_worker() else "dask"


def read_parquet(path: str | Path, columns: list[str], filters: list[tuple[str, str, Any]] | None = None) -> Frame:
    """``path`` (a Parquet file or a directory of parts) as a pandas frame, or lazily as a Dask frame on a cluster.

    On a cluster the workers read the files themselves, so ``path`` must be visible to them (shared volume or
    object store URL).
    """
    if backend() == "pandas":
        return pd.read_parquet(path, columns=columns, filters=filters)
    import dask.dataframe as dd

    # one partition per row group (pyarrow writes up to 1Mi rows per group): a single split file still spreads out
    return dd.read_parquet(str(path), columns=columns, filters=filters, split_row_groups=True)


def collect(frame: Frame) -> pd.DataFrame:
    """The pandas result of an aggregation: computed on the cluster for a Dask frame, as is for pandas."""
    if isinstance(frame, pd.DataFrame | pd.Series):
        return frame
    client = dask_client()
    if client is None:
        raise RuntimeError(f"a Dask frame needs a cluster, but {ADDRESS_ENV} is not set")
    return client.compute(frame).result()
