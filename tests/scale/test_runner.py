"""``flows.runner.task_runner``: threads by default, Prefect tasks on the Dask cluster when one is configured."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

from pipelines.core import engine


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """``flows.runner``, with Prefect imported here (never at collection) against a temporary PREFECT_HOME.

    Prefect reads its settings once, at import, and tests/code/test_flow_training.py needs to be the first
    to import it in a session; if something imported it earlier, its settings stay as they are.
    """
    with pytest.MonkeyPatch.context() as env:
        if "prefect" not in sys.modules:
            env.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
            env.delenv("PREFECT_API_URL", raising=False)
            env.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            env.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
            # a fresh database on a loaded 2-core machine can take longer than the 20 s default to come up
            env.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        import flows.runner

        yield flows.runner


def test_local_thread_pool_without_a_cluster(runner: ModuleType, on_one_machine: None) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    assert isinstance(runner.task_runner(), ThreadPoolTaskRunner)


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_address_is_local(runner: ModuleType, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    monkeypatch.setenv(engine.ADDRESS_ENV, value)
    assert isinstance(runner.task_runner(), ThreadPoolTaskRunner)


def test_dask_task_runner_for_a_configured_cluster(runner: ModuleType, on_dask: str) -> None:
    from prefect_dask import DaskTaskRunner

    task_runner = runner.task_runner()
    assert isinstance(task_runner, DaskTaskRunner)
    assert task_runner.address == on_dask


def where_am_i(n: int) -> tuple[int, str]:
    """n squared and the address of the Dask worker that ran it ("" outside a worker)."""
    from distributed import get_worker

    try:
        address = get_worker().address
    except ValueError:
        address = ""
    return n * n, address


def test_flow_tasks_run_on_the_cluster_workers(runner: ModuleType, on_dask: str, dask_cluster) -> None:
    from prefect import flow, task

    remote = task(where_am_i, name="where_am_i")

    @flow(task_runner=runner.task_runner())
    def squares(n: int) -> list[tuple[int, str]]:
        return [f.result() for f in remote.map(range(n))]

    results = squares(6)
    assert [value for value, _ in results] == [n * n for n in range(6)]
    addresses = {address for _, address in results}
    assert "" not in addresses and addresses <= set(dask_cluster.scheduler_info["workers"])
