"""The MLflow registry: every training is a version; only a passing gate moves ``champion``; rollback restores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.core.config import Params
from pipelines.core.errors import ShoprecError
from pipelines.core.paths import Paths
from pipelines.registry import versions as registry
from tests.conftest import REPO

OVERALL = {f"{m}@{k}": 0.1 * k / 20 for m in ("hr", "ndcg", "recall", "mrr") for k in (5, 10, 20)}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    return tmp_path / "store"


def fake_training(root: Path, passed: bool, model: str = "covisit") -> Paths:
    """The outputs the pipeline's stages leave behind, just enough for the registry (``model`` makes the files)."""
    paths = Paths(root)
    for path, obj in {
        paths.ingested / "manifest.json": {"source": "synthetic", "extra": {"users": 300, "inputs_md5": {".": "x"}}},
        paths.validated / "manifest.json": {"rows": 10},
        paths.metrics / "metrics.json": {"models": {"candidate": {"overall": OVERALL, "coverage": 0.5,
                                                                  "novelty": 7.0}}},
        paths.gate: {"passed": passed, "checks": []},
        paths.validation_summary: {"success": True},
        paths.candidate / "meta.json": {"model": model},
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))
    return paths


def train_and_promote(root: Path, passed: bool, model: str = "covisit") -> str:
    record = registry.log_training_run(fake_training(root, passed, model), Params())
    registry.promote(record.version, record.gate_passed, root)
    return record.version


def recorded(root: Path) -> str | None:
    """The version ``models/champion.json`` names: what the candidate in ``root`` is measured against."""
    return json.loads(registry.champion_record_path(root).read_text())["version"]


def test_defaults_to_sqlite_under_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_run_logs_params_metrics_data_version_and_model(tmp_path: Path, store: Path):
    record = registry.log_training_run(fake_training(tmp_path, True), Params())
    run = registry.client().get_run(record.run_id)
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(OVERALL["ndcg@10"])
    assert run.data.metrics["novelty"] == 7.0
    assert run.data.params["train.model"] == "two_stage"
    assert run.data.params["train.ranker_params.lightgbm.num_leaves"] == "63"  # beyond MLflow's 100 per batch
    assert len(run.data.params) == len(registry.flatten(Params().model_dump(by_alias=True)))
    assert run.data.tags["data.source"] == "synthetic"
    assert len(run.data.tags["data.validated_md5"]) == 32
    assert run.data.tags["training.time_cap_hit"] == "none"
    artifacts = (store / "mlartifacts").rglob("*")
    assert {p.relative_to(p.parents[1]).as_posix() for p in artifacts if p.is_file()} >= {
        "model/meta.json", "gate/gate.json", "validation/summary.json", "data/data_version.json"}


def test_fits_cut_by_the_time_cap_are_tagged_on_the_run(tmp_path: Path, store: Path):
    paths = fake_training(tmp_path, True)
    metrics = json.loads((paths.metrics / "metrics.json").read_text())
    capped = {"time_cap_hit": ["source:sasrec", "ranker:deep"]}
    (paths.metrics / "metrics.json").write_text(json.dumps(metrics | capped))
    run = registry.client().get_run(registry.log_training_run(paths, Params()).run_id)
    assert run.data.tags["training.time_cap_hit"] == "source:sasrec,ranker:deep"


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

    assert registry.rollback(tmp_path / "c") == first
    assert registry.show("champion")["version"] == first
    assert registry.show(second)["tags"]["rolled_back"] == "true"
    with pytest.raises(ShoprecError, match="no previous_champion"):
        registry.rollback(tmp_path / "c")


def test_promoting_the_champion_again_keeps_the_previous_one(tmp_path: Path, store: Path):
    first = train_and_promote(tmp_path / "a", passed=True)
    second = train_and_promote(tmp_path / "b", passed=True)
    assert registry.promote(second, gate_passed=True, root=tmp_path / "b")
    assert registry.show("previous_champion")["version"] == first


def test_models_cli_lists_refuses_a_failed_version_and_rolls_back(tmp_path: Path, store: Path):
    from typer.testing import CliRunner

    from pipelines.registry.cli import models_app

    first = train_and_promote(tmp_path / "a", passed=True, model="m1")
    rejected = train_and_promote(tmp_path / "b", passed=False, model="m2")
    second = train_and_promote(tmp_path / "c", passed=True, model="m3")
    cli = CliRunner()
    root = ["--root", str(tmp_path / "c")]
    listed = cli.invoke(models_app, ["list", *root])
    assert listed.exit_code == 0 and "champion" in listed.output and "gate=failed" in listed.output
    assert isinstance(cli.invoke(models_app, ["promote", rejected, *root]).exception, ShoprecError)
    assert cli.invoke(models_app, ["rollback", *root]).output.strip() == f"champion -> version {first}"
    assert recorded(tmp_path / "c") == first
    assert cli.invoke(models_app, ["promote", second, *root]).exit_code == 0
    assert json.loads(cli.invoke(models_app, ["show", *root]).output)["version"] == second
    assert recorded(tmp_path / "c") == first  # c's candidate is version `second`: it was measured against first


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


def test_champion_record_follows_the_champion_the_candidate_is_measured_against(tmp_path: Path, store: Path):
    """``models/champion.json`` changes exactly when the candidate's evaluation against the champion goes stale."""
    root = tmp_path / "project"
    assert registry.write_champion_record(root) == {"version": None}  # no registry yet: nothing to beat
    first = train_and_promote(root, passed=True, model="m1")
    assert recorded(root) is None  # the candidate is the champion now, and it was measured against nobody

    fake_training(root, True, model="m2")  # the next training's candidate, before evaluate
    assert registry.write_champion_record(root)["version"] == first
    record = registry.champion_record_path(root).read_text()
    second = registry.log_training_run(Paths(root), Params()).version
    assert registry.promote(second, True, root)
    assert registry.champion_record_path(root).read_text() == record  # promoting it keeps its evaluation valid

    fake_training(root, True, model="m3")  # a third candidate, measured against the second ...
    assert registry.write_champion_record(root)["version"] == second
    assert registry.rollback(root) == first  # ... until the second is rolled back: evaluate it again, on first
    assert recorded(root) == first
    saved = json.loads(registry.champion_record_path(root).read_text())
    assert saved["source"] and len(saved["model_md5"]) == 32
    assert registry.recorded_champion(root) == (first, registry.local_dir(saved["source"]))


def test_rolling_back_the_candidate_itself_does_not_invalidate_its_evaluation(tmp_path: Path, store: Path):
    """Re-evaluating a rolled-back candidate against the champion it beat would only promote it again."""
    root = tmp_path / "project"
    first = train_and_promote(root, passed=True, model="m1")
    second = train_and_promote(root, passed=True, model="m2")
    assert registry.show("champion")["version"] == second and recorded(root) == first
    assert registry.rollback(root) == first
    assert recorded(root) == first


def _dvc(args: list[str], cwd: Path) -> str:
    """``dvc`` from this interpreter's environment, which also holds the ``shoprec`` the stages run."""
    bin_dir = Path(sys.executable).parent
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(bin_dir / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_dvc_status_shows_evaluate_changed_after_a_rollback(tmp_path: Path, store: Path):
    """The real champion stage and evaluate's real deps (its command stubbed: it would need real features)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    evaluate = {"cmd": "true", "deps": stages["evaluate"]["deps"]}
    project = tmp_path / "project"
    shutil.copytree(REPO / "pipelines", project / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "data" / "features").mkdir(parents=True)
    (project / "data" / "features" / "events.parquet").write_text("stub")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"champion": stages["champion"],
                                                                 "evaluate": evaluate}}))
    first = train_and_promote(project, passed=True, model="m1")
    train_and_promote(project, passed=True, model="m2")
    fake_training(project, True, model="m3")  # a candidate measured against the second version
    _dvc(["init", "--no-scm", "-q"], project)
    _dvc(["repro", "-q"], project)
    assert "changed" not in _dvc(["status"], project)
    registry.rollback(project)
    status = _dvc(["status", "evaluate"], project)
    assert "evaluate:" in status and "modified:" in status and "models/champion.json" in status, status
    assert recorded(project) == first
