"""Batch-recommendations flow: score every known user with the current champion into the serving store.

The API answers known users from this store (``<root>/serving/``), so a nightly run after training keeps
request latency to a lookup. The champion is whatever the registry's ``champion`` alias names when the run
starts; the store records that version, and the API recomputes on the fly if it is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.cli import report
from pipelines.core.errors import ShoprecError


@task(name="resolve-champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def resolve_champion(root: Path) -> tuple[str, Path]:
    """The champion's version and local model directory (a registry read: retried, it may be a server)."""
    from pipelines.registry.versions import champion_dir

    found = champion_dir(root)
    if found is None:
        raise ShoprecError(f"{root}: no champion in the model registry yet; run the training flow first")
    return found


@task(name="write-recommendations", cache_policy=NO_CACHE)
def write(model_dir: Path, out_dir: Path, k: int) -> dict[str, Any]:
    from pipelines.serving.store import write_recommendations

    return write_recommendations(model_dir, out_dir, k)


@flow(name="batch-recommendations")
def batch_recommendations(root: str = ".", k: int = 100) -> dict[str, Any]:
    """Top-``k`` per known user from the champion, written atomically to ``<root>/serving/``."""
    if not 1 <= k <= 1000:
        raise ShoprecError(f"k={k}: must be between 1 and 1000")
    version, model_dir = resolve_champion(Path(root))
    summary = write(model_dir, Path(root) / "serving", k) | {"champion_version": version}
    create_markdown_artifact(
        key="batch-recommendations",
        markdown=f"# Batch recommendations\n\nchampion version **{version}**, top-{k} for every known user\n\n"
                 f"```json\n{json.dumps(summary, indent=2, default=str)}\n```\n",
        description="serving store refresh",
    )
    return summary


def main() -> int:
    """``python -m flows.batch_recommendations``: refresh the store of the project in the working directory."""
    return report(batch_recommendations(return_state=True), "batch recommendations")


if __name__ == "__main__":
    sys.exit(main())
