"""The training flow in Prefect's ephemeral mode, on a tiny synthetic data set (covisit model, fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.core.errors import DataError
from tests.conftest import REPO

TINY = {"users": 300, "items": 300, "categories": 8, "events_per_user": 30}


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """The flow function, with Prefect's home (its ephemeral database) and MLflow's store in temporary dirs.

    Prefect reads its settings once, when imported, so the environment is set before the import.
    """
    if "prefect" in sys.modules:
        pytest.skip("prefect was imported before its settings could point at a temporary PREFECT_HOME")
    base = tmp_path_factory.mktemp("flow-env")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREFECT_HOME", str(base / "prefect"))
        env.delenv("PREFECT_API_URL", raising=False)  # ephemeral mode even where a server is configured
        env.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
        # a fresh database on a loaded 2-core machine can take longer than the 20 s default to come up
        env.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
        env.setenv("TQDM_DISABLE", "1")
        from flows.training import training as flow

        yield flow


def project(root: Path, **overrides: dict[str, Any]) -> Path:
    """``root`` with the repo's params.yaml shrunk to a data set and model that train in seconds."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"].update(TINY)
    params["train"]["model"] = "covisit"
    params["evaluate"]["bootstrap_samples"] = 100
    for section, values in overrides.items():
        params[section].update(values)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_flow_trains_registers_and_promotes(training: Callable[..., Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch):
    from pipelines.registry import versions as registry

    root = project(tmp_path / "project")
    monkeypatch.chdir(root)  # a synthetic ingest hashes the working directory (see pipelines.data.ingest.sink)
    result = training(root=str(root))
    assert result["status"] == "promoted", result
    assert registry.show("champion")["version"] == result["version"]
    assert (root / "models" / "champion" / "serving.joblib").exists()


def test_a_challenger_run_then_the_online_evaluation_flow(training: Callable[..., Any], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """gate.promote_to=challenger leaves the champion serving; the online-evaluation flow reads the experiment
    (no traffic yet: continue) and publishes it; with no challenger it fails with the reason."""
    from flows.online_evaluation import online_evaluation
    from pipelines.core.errors import ShoprecError
    from pipelines.registry import versions as registry

    root = project(tmp_path / "project", gate={"promote_to": "challenger"})
    monkeypatch.chdir(root)
    champion = registry.show("champion")["version"]
    result = training(root=str(root))
    assert result["status"] == "promoted" and result["alias"] == "challenger", result
    assert registry.show("champion")["version"] == champion
    assert registry.challenger_version() == result["version"]
    record = online_evaluation(root=str(root))
    assert record["decision"] == "continue" and not record["applied"]
    assert (record["champion_version"], record["challenger_version"]) == (champion, result["version"])
    assert (root / "reports" / "experiments.jsonl").read_text().count("\n") == 1
    registry.conclude_experiment(result["version"], "rollback")
    state = online_evaluation(root=str(root), return_state=True)
    assert state.is_failed() and isinstance(state.result(raise_on_failure=False), ShoprecError)


def test_validation_failure_fails_the_flow_before_training(training: Callable[..., Any], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    from pipelines.core.errors import ValidationFailed

    root = project(tmp_path / "project", validate={"window_start": "2030-01-01T00:00:00+00:00"})
    monkeypatch.chdir(root)
    state = training(root=str(root), return_state=True)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), ValidationFailed)
    assert not (root / "models" / "candidate").exists()
    assert not (root / "data" / "split").exists()


def test_rejected_gate_completes_without_touching_the_champion(training: Callable[..., Any], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    from pipelines.registry import versions as registry

    root = project(tmp_path / "project", gate={"min_ndcg_at_10": 2.0})
    monkeypatch.chdir(root)
    champion = registry.show("champion")["version"]  # from the first test: the flow store is shared
    result = training(root=str(root))
    assert result["status"] == "rejected"
    assert registry.show("champion")["version"] == champion
    assert registry.show(result["version"])["gate"] == "failed"
    assert not (root / "models" / "champion").exists()


@pytest.mark.parametrize(("error", "calls"), [(OSError("disk hiccup"), 3), (DataError("x.csv", "bad row"), 1)])
def test_ingest_retries_io_errors_only(training: Callable[..., Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, error: Exception, calls: int):
    import flows.training
    import pipelines.data.ingest

    attempts = []

    def failing_ingest(*args: Any, **kwargs: Any) -> None:
        attempts.append(1)
        raise error

    monkeypatch.setattr(pipelines.data.ingest, "ingest", failing_ingest)
    monkeypatch.setattr(flows.training, "IO_RETRY_DELAY_S", 0)
    state = training(root=str(project(tmp_path / "project")), return_state=True)
    assert state.is_failed()
    assert type(state.result(raise_on_failure=False)) is type(error)
    assert len(attempts) == calls


def test_degraded_model_is_rejected_and_the_champion_stays(training: Callable[..., Any], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """A random model, set through the flow's ``overrides`` parameter, fails the gate against the champion."""
    from pipelines.registry import versions as registry

    root = project(tmp_path / "project")
    monkeypatch.chdir(root)
    good = training(root=str(root))
    assert good["status"] == "promoted"
    result = training(root=str(root), overrides=["train.model=random"])
    assert result["status"] == "rejected"
    assert registry.show("champion")["version"] == good["version"]
    checks = {c["name"]: c for c in json.loads((root / "metrics" / "gate.json").read_text())["checks"]}
    vs_champion = checks[f"ndcg@10_vs_champion_v{good['version']}_ci_high"]
    assert not vs_champion["passed"] and vs_champion["value"] < 0
    assert not checks["lift_ndcg@10_ci_low_above_zero"]["passed"]
    assert (root / "models" / "champion" / "serving.joblib").exists()  # the earlier champion's files stay


def _git(args: list[str], cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_pinned_data_version_is_pulled_and_a_bad_one_stops_before_training(
        training: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_dir: Path):
    """Two DVC versions of the real Taobao sample under git tags: the bad one (4 rows outside the window) fails
    validation; the good one trains, and the registered version carries the pinned revision and hash."""
    from pipelines.registry import versions as registry

    root = project(tmp_path / "repo")
    monkeypatch.chdir(root)
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    _git(["init", "-q"], root)
    subprocess.run([*dvc, "init", "-q"], cwd=root, check=True)
    data = root / "data" / "raw" / "taobao"
    data.mkdir(parents=True)
    lines = (shared_dir / "datasets" / "taobao-sample" / "UserBehavior_sample.csv").read_text().splitlines()
    window = (1511539200, 1512316800)  # 2017-11-25 .. 2017-12-04 UTC, as the adapter documents the data set
    good = [line for line in lines if window[0] <= int(line.rsplit(",", 1)[1]) < window[1]]
    for tag, rows in (("data-good", good), ("data-bad", lines)):
        (data / "UserBehavior.csv").write_text("\n".join(rows) + "\n")
        subprocess.run([*dvc, "add", "-q", "data/raw/taobao"], cwd=root, check=True)
        _git(["add", "-A"], root)
        _git(["commit", "-qm", tag], root)
        _git(["tag", tag], root)
    source = "taobao:data/raw/taobao/UserBehavior.csv"

    state = training(root=str(root), source=source, data_rev="data-bad", data_path="data/raw/taobao",
                     return_state=True)
    assert state.is_failed()
    assert "4 rows outside" in str(state.result(raise_on_failure=False))
    assert not (root / "models" / "candidate").exists()

    result = training(root=str(root), source=source, data_rev="data-good", data_path="data/raw/taobao")
    assert (data / "UserBehavior.csv").read_text().count("\n") == len(good)
    tags = registry.show(result["version"])["tags"]
    assert tags["data.dvc_rev"] == "data-good"
    assert tags["data.dvc_md5"].endswith(".dir") and len(tags["data.dvc_commit"]) == 40


def test_data_quality_flow_publishes_the_report_and_fails_a_bad_drop(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      shared_dir: Path, training: Any):
    from flows.data_quality import data_quality

    root = project(tmp_path / "project")
    monkeypatch.chdir(root)
    ok = data_quality(source="synthetic", name="today", root=str(root))
    assert ok["success"] and ok["rows"] > 0
    assert (root / "data" / "quality" / "today" / "validated" / "manifest.json").exists()
    sample = shared_dir / "datasets" / "taobao-sample" / "UserBehavior_sample.csv"
    state = data_quality(source=f"taobao:{sample}", name="bad", root=str(root), return_state=True)
    assert state.is_failed()
    summary = json.loads((root / "reports" / "quality" / "bad" / "validation" / "summary.json").read_text())
    assert not summary["success"] and any("outside" in p for p in summary["problems"])
    assert not (root / "data" / "validated").exists()  # the training's data is never touched


def test_sources_and_rankers_are_fitted_as_parallel_child_tasks(training: Callable[..., Any], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    root = project(tmp_path / "project")
    monkeypatch.chdir(root)
    two_stage = ["train.model=two_stage", "train.sources=[covisit,transitions,popularity]",
                 "train.rankers=[lightgbm,xgboost]"]
    state = training(root=str(root), overrides=two_stage, return_state=True)
    assert state.is_completed(), state
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    names = {run.name.rsplit("-", 1)[0] for run in runs if run.state and run.state.is_completed()}
    assert {"source-covisit", "source-transitions", "source-popularity", "ranker-lightgbm",
            "ranker-xgboost", "train", "register"} <= names, names
    meta = json.loads((root / "models" / "candidate" / "meta.json").read_text())
    assert meta["two_stage"]["selection"]["chosen"] in ("lightgbm", "xgboost")


def test_batch_recommendations_flow_fills_the_serving_store_from_the_champion(
        training: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pandas as pd

    from flows.batch_recommendations import batch_recommendations
    from pipelines.registry import versions as registry

    root = project(tmp_path / "project")
    monkeypatch.chdir(root)
    training(root=str(root))  # promoted, or rejected against a better champion of an earlier test: either way
    summary = batch_recommendations(root=str(root), k=15)
    assert summary["champion_version"] == registry.show("champion")["version"]
    lists = pd.read_parquet(root / "serving" / "recommendations.parquet")
    users = pd.read_parquet(root / "data" / "features" / "users.parquet")["user_id"]
    assert summary["users"] == len(users) and set(lists["user_id"]) <= set(users.astype(str))
    assert lists.groupby("user_id")["rank"].max().max() == 15 and (lists["rank"] >= 1).all()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty' / 'mlflow.db'}")
    state = batch_recommendations(root=str(tmp_path / "empty"), return_state=True)
    assert state.is_failed() and "no champion" in str(state.result(raise_on_failure=False))


def test_a_second_run_in_the_same_project_waits_for_the_first(training: Callable[..., Any], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """While another run holds the project's run lock, a run does not touch data/ or models/; it fails clearly
    once its wait is over (the default wait is hours, so an overlapping nightly run queues behind a manual one)."""
    from filelock import FileLock

    import pipelines.run

    root = project(tmp_path / "project")
    monkeypatch.chdir(root)
    monkeypatch.setattr(pipelines.run, "RUN_LOCK_TIMEOUT_S", 0.5)
    with FileLock(root / ".shoprec-run.lock"):
        state = training(root=str(root), return_state=True)
    assert state.is_failed()
    assert "another pipeline run" in str(state.result(raise_on_failure=False))
    assert not (root / "data").exists()
    assert training(root=str(root))["status"] in ("promoted", "rejected")  # free again
