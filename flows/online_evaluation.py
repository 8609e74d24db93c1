"""Online-evaluation flow: read the running champion-vs-challenger experiment, act on its decision, publish it.

Scheduled often (hourly in prefect.yaml): the test is always valid, so reading it at every run does not inflate
its false alarms. A run with no experiment fails with the one-line reason; a reading publishes each arm's metrics
and the decision as artifacts, and the decision (promote / rollback) is applied in the registry and recorded in
``reports/experiments.jsonl`` by ``pipelines.experiments.online``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.cli import report
from pipelines.core.config import load_params
from pipelines.core.errors import ShoprecError


@task(name="read-experiment", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def read_experiment(root: Path, params_file: Path, apply: bool) -> dict[str, Any]:
    from pipelines.experiments.online import run_online_evaluation

    return run_online_evaluation(root, load_params(params_file).experiment, apply=apply)


def publish(record: dict[str, Any]) -> None:
    """The decision and each arm's metrics as artifacts of the flow run."""
    primary = record["tests"][record["primary"]]

    def bound(value: float | None) -> str:
        return "unbounded" if value is None else f"{value:+.4f}"

    create_markdown_artifact(
        key="online-evaluation",
        markdown=f"# Experiment `{record['experiment']}`: **{record['decision']}**"
                 f"{' (applied)' if record['applied'] else ''}\n\nChampion v{record['champion_version']} vs "
                 f"challenger v{record['challenger_version']} ({record['share']:.0%} of shoppers). "
                 f"{record['primary']} per list, challenger minus champion: {primary['difference']:+.4f}, "
                 f"always-valid {1 - record['alpha']:.0%} interval [{bound(primary['ci_low'])}, "
                 f"{bound(primary['ci_high'])}], p = {primary['p_value']:.3g}.\n",
        description=f"online evaluation of {record['experiment']}",
    )
    rows = [{"arm": arm} | stats for arm, stats in record["arms"].items()]
    create_table_artifact(key="online-evaluation-arms", table=rows, description="each arm's metrics")


@flow(name="online-evaluation")
def online_evaluation(root: str = ".", params_path: str = "params.yaml", apply: bool = True) -> dict[str, Any]:
    """Read the experiment between the registry's champion and challenger; promote or roll back when decided."""
    base, params_file = Path(root), Path(root) / params_path
    if not params_file.is_file():
        raise ShoprecError(f"{params_file}: no such parameters file")
    record = read_experiment(base, params_file, apply)
    publish(record)
    return record


def main() -> int:
    """``python -m flows.online_evaluation [ROOT]``: one reading of the running experiment."""
    return report(online_evaluation(*sys.argv[1:2], return_state=True), "online evaluation")


if __name__ == "__main__":
    sys.exit(main())
