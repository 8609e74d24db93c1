"""Training flow: one Prefect task per pipeline stage, then MLflow registration and promotion.

Run it in Prefect's ephemeral mode (no server needed) with ``python -m flows.training``. A validation failure
fails the flow before anything trains; a rejected gate completes it with ``status: rejected`` and the champion
untouched. The stage logic lives in ``pipelines``; this module only orders, retries and reports.
"""

from __future__ import annotations

import json
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

from pipelines.config import load_params
from pipelines.errors import ShoprecError
from pipelines.paths import Paths
from pipelines.run import stages

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


@flow(name="training")
def training(params_path: str = "params.yaml", root: str = ".", source: str | None = None) -> dict[str, Any]:
    """Ingest, validate, split, features, train, evaluate, gate; then register and maybe promote.

    ``params_path`` is relative to ``root`` (or absolute); ``source`` overrides ``data.source``.
    """
    paths, params_file = Paths(Path(root)), Path(root) / params_path
    if not params_file.is_file():
        raise ShoprecError(f"{params_file}: no such parameters file")
    outputs = {name: stage_task(name, thunk)() for name, thunk in stages(load_params(params_file), paths, source)}
    result = outputs["register"]
    publish(result, outputs["gate"].to_dict()["checks"])
    return result


def main() -> int:
    """``python -m flows.training``: run once with ./params.yaml; exit codes as the ``shoprec`` CLI's."""
    state = training(return_state=True)
    if state.is_completed():
        print(json.dumps(state.result(), indent=2, default=str))
        return 0
    error = state.result(raise_on_failure=False)
    print(f"training failed: {error}", file=sys.stderr)
    return error.exit_code if isinstance(error, ShoprecError) else 1


if __name__ == "__main__":
    sys.exit(main())
