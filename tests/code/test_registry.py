"""The MLflow registry: every training is a version; only a passing gate moves ``champion``; rollback restores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core.config import Params
from pipelines.core.errors import ShoprecError
from pipelines.core.paths import Paths
from pipelines.registry import versions as registry

OVERALL = {f"{m}@{k}": 0.1 * k / 20 for m in ("hr", "ndcg", "recall", "mrr") for k in (5, 10, 20)}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    return tmp_path / "store"


def fake_training(root: Path, passed: bool) -> Paths:
    """The outputs the pipeline's stages leave behind, just enough for the registry."""
    paths = Paths(root)
    for path, obj in {
        paths.ingested / "manifest.json": {"source": "synthetic", "extra": {"users": 300, "inputs_md5": {".": "x"}}},
        paths.validated / "manifest.json": {"rows": 10},
        paths.metrics / "metrics.json": {"models": {"candidate": {"overall": OVERALL, "coverage": 0.5,
                                                                  "novelty": 7.0}}},
        paths.gate: {"passed": passed, "checks": []},
        paths.validation_summary: {"success": True},
        paths.candidate / "meta.json": {"model": "covisit"},
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))
    return paths


def train_and_promote(root: Path, passed: bool) -> str:
    record = registry.log_training_run(fake_training(root, passed), Params())
    registry.promote(record.version, record.gate_passed)
    return record.version


def test_defaults_to_sqlite_under_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_run_logs_params_metrics_data_version_and_model(tmp_path: Path, store: Path):
    record = registry.log_training_run(fake_training(tmp_path, True), Params())
    run = registry.client().get_run(record.run_id)
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(OVERALL["ndcg@10"])
    assert run.data.metrics["novelty"] == 7.0
    assert run.data.params["train.model"] == "two_stage"
    assert run.data.tags["data.source"] == "synthetic"
    assert len(run.data.tags["data.validated_md5"]) == 32
    artifacts = (store / "mlartifacts").rglob("*")
    assert {p.relative_to(p.parents[1]).as_posix() for p in artifacts if p.is_file()} >= {
        "model/meta.json", "gate/gate.json", "validation/summary.json", "data/data_version.json"}


def test_only_a_passing_gate_moves_champion_and_rollback_restores(tmp_path: Path, store: Path):
    first = train_and_promote(tmp_path / "a", passed=True)
    assert registry.show("champion")["version"] == first

    rejected = train_and_promote(tmp_path / "b", passed=False)
    assert registry.show("champion")["version"] == first
    shown = registry.show(rejected)
    assert shown["aliases"] == [] and shown["gate"] == "failed"
    assert shown["metrics"]["hr_at_10"] == pytest.approx(OVERALL["hr@10"])

    second = train_and_promote(tmp_path / "c", passed=True)
    listed = {v["version"]: v for v in registry.list_versions()}
    assert list(listed) == [first, rejected, second]
    assert listed[second]["aliases"] == ["champion"]
    assert listed[first]["aliases"] == ["previous_champion"]

    assert registry.rollback() == first
    assert registry.show("champion")["version"] == first
    assert registry.show(second)["tags"]["rolled_back"] == "true"
    with pytest.raises(ShoprecError, match="no previous_champion"):
        registry.rollback()


def test_promoting_the_champion_again_keeps_the_previous_one(tmp_path: Path, store: Path):
    first = train_and_promote(tmp_path / "a", passed=True)
    second = train_and_promote(tmp_path / "b", passed=True)
    assert registry.promote(second, gate_passed=True)
    assert registry.show("previous_champion")["version"] == first


def test_models_cli_lists_refuses_a_failed_version_and_rolls_back(tmp_path: Path, store: Path):
    from typer.testing import CliRunner

    from pipelines.registry.cli import models_app

    first = train_and_promote(tmp_path / "a", passed=True)
    rejected = train_and_promote(tmp_path / "b", passed=False)
    second = train_and_promote(tmp_path / "c", passed=True)
    cli = CliRunner()
    listed = cli.invoke(models_app, ["list"])
    assert listed.exit_code == 0 and "champion" in listed.output and "gate=failed" in listed.output
    assert isinstance(cli.invoke(models_app, ["promote", rejected]).exception, ShoprecError)
    assert cli.invoke(models_app, ["rollback"]).output.strip() == f"champion -> version {first}"
    assert cli.invoke(models_app, ["promote", second]).exit_code == 0
    assert json.loads(cli.invoke(models_app, ["show"]).output)["version"] == second


def _register_in_process(root: str, uri: str, passed: bool) -> str:
    """One training's registration in a process of its own (what a second concurrent flow run does)."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    return registry.run_register(Paths(Path(root)), Params())["version"]


def test_concurrent_registrations_do_not_corrupt_the_store(tmp_path: Path):
    """Four processes register at once on a fresh SQLite store: every version lands, numbers are unique, and
    champion points at one of them (without the store lock all four failed in MLflow's schema set-up)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    roots = [fake_training(tmp_path / f"run{i}", passed=True).root for i in range(4)]
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        versions = list(pool.map(_register_in_process, map(str, roots), [uri] * 4, [True] * 4))
    assert sorted(versions, key=int) == ["1", "2", "3", "4"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        listed = registry.list_versions()
        assert [v["version"] for v in listed] == ["1", "2", "3", "4"]
        assert registry.show("champion")["version"] in versions
        assert sum("champion" in v["aliases"] for v in listed) == 1


def test_dvc_hash_of_tracked_inputs_is_part_of_the_data_version(tmp_path: Path):
    tracked = tmp_path / "data" / "raw" / "shop"
    tracked.mkdir(parents=True)
    (tracked / "events.csv").write_text("u,i\n")
    (tmp_path / "data" / "raw" / "shop.dvc").write_text("outs:\n- md5: abc123.dir\n  path: shop\n")
    untracked = tmp_path / "other.csv"
    untracked.write_text("x\n")
    found = registry.dvc_tracked([str(tracked / "events.csv"), str(untracked)])
    assert found == {str(tracked.resolve()): "abc123.dir"}
