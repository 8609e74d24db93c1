"""Training flow: pinned data, one Prefect task per pipeline stage, MLflow registration and promotion.

Run it in Prefect's ephemeral mode (no server needed) with ``python -m flows.training``. A validation failure
fails the flow before anything trains; a rejected gate completes it with ``status: rejected`` and the champion
untouched. Inside the train task, the candidate sources and then the rankers are fitted as parallel child tasks.
The stage logic lives in ``pipelines``; this module only orders, retries and reports.

Stage tasks are not cached by Prefect on purpose: they write their outputs to disk, where DVC is the cache
(``dvc repro`` skips unchanged stages); a Prefect cache hit would skip the write and leave stale files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from flows.cli import report
from flows.runner import task_runner
from pipelines.core.config import load_params
from pipelines.core.errors import ShoprecError
from pipelines.core.paths import Paths
from pipelines.run import run_lock, stages

IO_RETRIES = 2
IO_RETRY_DELAY_S = 5


def _transient(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry I/O failures, not bad input (``ShoprecError``): that fails the same way every time."""
    return not isinstance(state.data, ShoprecError)


def stage_task(name: str, thunk: Callable[[], Any]) -> Task[[], Any]:
    """A Prefect task for one stage; only ingest (I/O) is retried."""
    retries = IO_RETRIES if name == "ingest" else 0
    return task(thunk, name=name, retries=retries, retry_delay_seconds=IO_RETRY_DELAY_S if retries else 0,
                retry_condition_fn=_transient if retries else None, cache_policy=NO_CACHE)


def publish(result: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    """A short Markdown report and the gate checks as Prefect artifacts of this flow run."""
    metrics = " | ".join(f"{k} {result['metrics'][k]:.4f}" for k in ("ndcg_at_10", "hr_at_10", "coverage"))
    create_markdown_artifact(
        key="training-report",
        markdown=f"# Training: {result['status']}\n\n- model `shoprec` version **{result['version']}** "
                 f"(MLflow run `{result['run_id']}`)\n- test: {metrics}\n"
                 f"- data: `{result['data_version']['source']}`, validated md5 "
                 f"`{result['data_version']['validated_md5']}`\n",
        description="shoprec training run",
    )
    create_table_artifact(key="gate-checks", table=checks, description="gate checks of the candidate")


def parallel_tasks(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run independent model fits as Prefect tasks on the flow's task runner, all at once; wait for all.

    Called from inside the train task, so the fits show up as its child task runs (source-sasrec, ...).
    """
    futures = {name: task(job, name=name, cache_policy=NO_CACHE).submit() for name, job in jobs.items()}
    return {name: future.result() for name, future in futures.items()}


@task(name="pull-pinned-data", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S,
      retry_condition_fn=_transient, cache_policy=NO_CACHE)
def pull_data(root: Path, path: str, rev: str) -> dict[str, Any]:
    """Check out ``path`` as of git ``rev`` through DVC (fetching from the remote is what may need a retry)."""
    from pipelines.data.pin import pull_pinned

    return pull_pinned(root, path, rev)


@flow(name="training", task_runner=task_runner())
def training(
    params_path: str = "params.yaml", root: str = ".", source: str | None = None,
    data_rev: str | None = None, data_path: str | None = None, overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Pull the pinned data, then ingest, validate, split, features, train, champion, evaluate, gate and register.

    ``params_path`` is relative to ``root`` (or absolute); ``source`` overrides ``data.source``; ``data_rev`` (a
    git tag or commit) with ``data_path`` (the DVC-tracked path the source reads) pins the data version;
    ``overrides`` are ``section.key=value`` strings, as ``shoprec pipeline --set``.
    """
    paths, params_file = Paths(Path(root)), Path(root) / params_path
    if not params_file.is_file():
        raise ShoprecError(f"{params_file}: no such parameters file")
    if (data_rev is None) != (data_path is None):
        raise ShoprecError("data_rev and data_path go together: the git revision and the DVC-tracked path it pins")
    params = load_params(params_file, overrides)
    with run_lock(paths):
        pinned = pull_data(paths.root, data_path, data_rev) if data_rev else None
        outputs = {name: stage_task(name, thunk)() for name, thunk in stages(params, paths, source, parallel_tasks)}
    result = outputs["register"]
    if pinned:
        from pipelines.registry.versions import tag_version

        tag_version(result["version"], {f"data.dvc_{k}": str(v) for k, v in pinned.items()}, paths.root)
        result["data_version"] |= {f"dvc_{k}": str(v) for k, v in pinned.items()}
    publish(result, outputs["gate"].to_dict()["checks"])
    return result


def main() -> int:
    """``python -m flows.training``: run once with ./params.yaml; exit codes as the ``shoprec`` CLI's."""
    return report(training(return_state=True), "training")


if __name__ == "__main__":
    sys.exit(main())
