"""A tiny project with three registered versions, built once per session, and an empty project.

v1 and v2 pass the gate (v2 is the champion, v1 the previous champion); v3 is trained after a quarantine
validation that set rows aside (a failed expectation) and is rejected by an impossible NDCG threshold. A third
root holds a validation that failed under ``policy: fail`` (nothing trained).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

TINY = {"users": 300, "items": 300, "categories": 8, "events_per_user": 30}
FAST_TWO_STAGE = {"model": "two_stage", "sources": ["covisit", "transitions", "popularity", "category_popularity"],
                  "rankers": ["lightgbm"]}
# the third run: rows before 03:00 on the first day fall outside the window and are quarantined; the gate rejects
REJECTED = ["validate.policy=quarantine", "validate.window_start='2017-11-25T03:00:00+00:00'",
            "validate.max_bad_fraction=0.05", "gate.min_ndcg_at_10=2.0"]
FAILED_EXPECTATION = "expect_column_values_to_be_between"


def reading(at: str, decision: str, shoppers: int, champion_clicks: float, challenger_clicks: float,
            ci: tuple[float | None, float | None], experiment: str = "v2-vs-v3") -> dict[str, Any]:
    """One experiment reading in the shape ``pipelines.experiments.online.look`` records it."""
    arms = {arm: {"shoppers": shoppers, "lists": 3 * shoppers, "clicks": int(rate * 3 * shoppers), "carts": 0,
                  "purchases": 0, "revenue": 0.0, "clicks_per_list": rate, "carts_per_list": 0.0,
                  "purchases_per_list": 0.01, "revenue_per_list": 0.0}
            for arm, rate in (("champion", champion_clicks), ("challenger", challenger_clicks))}
    test = {"difference": challenger_clicks - champion_clicks, "ci_low": ci[0], "ci_high": ci[1], "p_value": 0.5,
            "likelihood_ratio": 1.0}
    return {"experiment": experiment, "at": at, "champion_version": "2", "challenger_version": "3", "share": 0.5,
            "window_s": 1800, "alpha": 0.05, "primary": "clicks", "guardrail": "purchases", "decision": decision,
            "applied": decision != "continue", "arms": arms,
            "tests": {"clicks": test, "purchases": test | {"difference": 0.0, "ci_low": None, "ci_high": None}}}


# three readings of one experiment: unbounded at first, then narrowing until the challenger is promoted
READINGS = [reading("2026-12-01T10:00:00Z", "continue", 40, 0.20, 0.22, (None, None)),
            reading("2026-12-01T11:00:00Z", "continue", 120, 0.20, 0.24, (-0.01, 0.09)),
            reading("2026-12-01T12:00:00Z", "promote", 300, 0.20, 0.25, (0.01, 0.09))]


def _pipeline(root: Path, overrides: list[str]) -> None:
    from pipelines.core.config import load_params
    from pipelines.core.paths import Paths
    from pipelines.run import stages

    for _, stage in stages(load_params(root / "params.yaml", overrides), Paths(root)):
        stage()


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project's root (its own MLflow store ``mlflow.db`` and ``mlartifacts/``)."""
    root = tmp_path_factory.mktemp("dashboard") / "project"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"].update(TINY)
    params["train"].update(FAST_TWO_STAGE)
    params["evaluate"]["bootstrap_samples"] = 100
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)  # a synthetic ingest hashes the working directory (see pipelines.data.ingest.sink)
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.setenv("TQDM_DISABLE", "1")
        _pipeline(root, [])
        _pipeline(root, [])
        _pipeline(root, REJECTED)
    from pipelines.experiments.online import append_history

    for record in READINGS:
        append_history(root / "reports", record)
    return root


@pytest.fixture(scope="session")
def failed_project(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project's ingested data validated under ``policy: fail`` with a window that rejects rows."""
    from pipelines.core.config import load_params
    from pipelines.core.errors import ValidationFailed
    from pipelines.core.paths import Paths
    from pipelines.data.validate import validate

    root = tmp_path_factory.mktemp("dashboard-failed")
    shutil.copytree(project / "data" / "ingested", root / "data" / "ingested")
    paths = Paths(root)
    params = load_params(project / "params.yaml", [REJECTED[1]]).validate_
    with pytest.raises(ValidationFailed):
        validate(paths.ingested, paths.validated, paths.reports, params)
    return root


@pytest.fixture(scope="session")
def empty_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root where nothing has run yet."""
    return tmp_path_factory.mktemp("dashboard-empty")


@pytest.fixture(autouse=True)
def _no_outside_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard must read the test project's own store, whatever the developer's environment says."""
    if "MLFLOW_TRACKING_URI" in os.environ:
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
