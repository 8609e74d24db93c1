"""One small Dask cluster for the whole scale suite: 2 worker processes, 1 thread each, modest memory.

Tests reach it the way production does, through ``SHOPREC_DASK_ADDRESS`` (the ``on_dask`` fixture), so the
engine's choice of backend is exercised, not bypassed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[object]:
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1.5GiB",
                           dashboard_address=None, silence_logs=40)
    yield cluster
    cluster.close()


@pytest.fixture
def on_dask(dask_cluster: object, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the engine at the test cluster for one test; returns the scheduler address."""
    from pipelines.core.engine import ADDRESS_ENV

    address = dask_cluster.scheduler_address  # type: ignore[attr-defined]
    monkeypatch.setenv(ADDRESS_ENV, address)
    return address


@pytest.fixture
def on_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.core.engine import ADDRESS_ENV

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
