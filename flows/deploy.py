"""Serve the training flow as the scheduled deployment ``training/nightly`` against ``PREFECT_API_URL``.

``python -m flows.deploy`` registers the deployment and runs its flow runs in this process's runner, so no work
pool or worker is needed. Run it from the project directory: the defaults resolve ``params.yaml`` and the outputs
against the working directory; override per run with
``prefect deployment run training/nightly --param root=/path --param source=...``.
"""

from __future__ import annotations

from typing import Any

from flows.training import training

NAME = "nightly"
CRON = "0 2 * * *"  # 02:00 UTC, after the day's events have landed
PARAMETERS: dict[str, Any] = {"params_path": "params.yaml", "root": ".", "source": None}


def main() -> None:
    """Block serving until interrupted; on shutdown Prefect pauses the schedule, so stop this before the server."""
    training.serve(name=NAME, cron=CRON, parameters=PARAMETERS,
                   description="Nightly retrain: pipeline stages, MLflow registration, champion gate.")


if __name__ == "__main__":
    main()
