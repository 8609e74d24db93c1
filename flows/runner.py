"""The Prefect task runner: a Dask cluster when ``SHOPREC_DASK_ADDRESS`` names one, threads in this process otherwise.

Flows take ``task_runner=task_runner()`` so the same flow runs on a laptop and on the compose / Kubernetes stack
without code changes; only the environment differs. ``prefect_dask`` is imported only when a cluster is used.
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pipelines.core.engine import dask_address

LOCAL_THREADS = 2  # the development machines have 2 cores; stages are CPU-bound


def task_runner() -> TaskRunner:
    """``DaskTaskRunner(address=...)`` for a configured cluster (tasks run on its workers), else a thread pool."""
    address = dask_address()
    if address is None:
        return ThreadPoolTaskRunner(max_workers=LOCAL_THREADS)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)
