"""End to end: the CLI, `dvc repro` in a temporary copy of the repo, and `dvc push` / `dvc pull`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
SMALL = {"users": 300, "items": 300, "categories": 8, "events_per_user": 30}
# every source and ranker still runs, for a few epochs: these tests check the plumbing, BENCHMARKS.md the quality
FAST_TRAIN = {"sasrec": {"max_epochs": 6}, "lightgcn": {"max_epochs": 10}, "ranker_params": {"deep": {"max_epochs": 8}}}


def small_params(**train: object) -> str:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"].update(SMALL)
    params["train"].update(FAST_TRAIN | train)
    params["evaluate"]["bootstrap_samples"] = 200
    return yaml.safe_dump(params)


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def repo_copy(base: Path, **train: object) -> Path:
    """The tracked files of this repo in a fresh git + DVC work tree, with a small synthetic data set.

    ``base/shared`` links to the shared data sets so that the DVC imports' relative paths resolve as in a clone.
    """
    dest = base / "repo"
    dest.mkdir()
    shared = Path(os.environ.get("SHOPREC_SHARED_DIR", REPO.parent / "shared"))
    if shared.is_dir():
        (base / "shared").symlink_to(shared.resolve())
    files = run(["git", "ls-files"], REPO).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    (dest / "params.yaml").write_text(small_params(**train))
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dest)
    return dest


@pytest.fixture(scope="module")
def repro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = repo_copy(tmp_path_factory.mktemp("repo"))
    run(["dvc", "repro"], work)
    return work


def test_dvc_repro_runs_every_stage(repro: Path):
    metrics = json.loads((repro / "metrics" / "metrics.json").read_text())
    cand, base = metrics["models"]["candidate"]["overall"], metrics["models"]["baseline"]["overall"]
    assert cand["ndcg@10"] > base["ndcg@10"]
    gate = json.loads((repro / "metrics" / "gate.json").read_text())
    assert gate["passed"], gate
    assert (repro / "models" / "champion" / "serving.joblib").exists()
    assert (repro / "reports" / "validation" / "data_docs").is_dir()
    shown = run(["dvc", "metrics", "show"], repro).stdout
    assert "ndcg@10" in shown
    status = run(["dvc", "status", "dvc.yaml"], repro).stdout
    assert "changed" not in status


def test_dvc_push_and_pull_restore_outputs(repro: Path):
    run(["dvc", "push"], repro)
    features = repro / "data" / "features" / "events" / "part-00000.parquet"
    before = features.read_bytes()
    shutil.rmtree(repro / "data" / "features")
    shutil.rmtree(repro / ".dvc" / "cache")
    run(["dvc", "pull", "dvc.yaml"], repro)
    assert features.read_bytes() == before


def test_dvc_update_fetches_the_pinned_real_data(repro: Path, shared_dir: Path):
    pinned = (repro / "data/raw/amazon-beauty.dvc").read_text()
    run(["dvc", "update", "data/raw/amazon-beauty.dvc"], repro)
    assert (repro / "data/raw/amazon-beauty.dvc").read_text() == pinned  # same data version
    assert (repro / "data/raw/amazon-beauty/Beauty.txt").read_bytes() == (
        shared_dir / "datasets/amazon-beauty/Beauty.txt").read_bytes()


def comparable(metrics: dict) -> dict:
    """Everything of metrics.json that depends on data and model only (not on timing or the registry's state)."""
    models = {name: {k: v for k, v in entry.items() if k != "ms_per_user"}
              for name, entry in metrics["models"].items() if name != "champion"}
    return {"models": models, "lift": metrics["lift_vs_baseline"]["candidate"], "users": metrics["users"]}


def test_dvc_repro_and_the_training_flow_give_the_same_metrics(tmp_path: Path):
    """One set of stage functions: ``dvc repro`` and the Prefect flow on the same data and params agree."""
    work = repo_copy(tmp_path, model="covisit")  # deterministic (no time budgets), so equality is exact
    run(["dvc", "repro"], work)
    by_dvc = json.loads((work / "metrics" / "metrics.json").read_text())
    assert json.loads((work / "metrics" / "registration.json").read_text())["status"] == "promoted"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_LOGGING_LEVEL": "WARNING", "TQDM_DISABLE": "1"}
    env.pop("PREFECT_API_URL", None)
    flow = subprocess.run([sys.executable, "-m", "flows.training"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert flow.returncode == 0, flow.stdout + flow.stderr
    by_flow = json.loads((work / "metrics" / "metrics.json").read_text())
    assert comparable(by_flow) == comparable(by_dvc)
    assert by_flow["vs_champion"]["version"] == "1"  # the flow saw the champion dvc repro registered
    assert by_flow["vs_champion"]["ndcg@10"]["mean"] == 0.0
    assert json.loads(flow.stdout)["version"] == "2"


def test_pipeline_command_prints_summary(tmp_path: Path):
    (tmp_path / "params.yaml").write_text(small_params())
    out = run(["shoprec", "pipeline"], tmp_path).stdout
    for fragment in ("data", "validation", "test candidate", "gate", "outputs"):
        assert fragment in out


@pytest.mark.parametrize(
    "source, fragment",
    [("taobao:missing.csv", "missing.csv"), ("nosuchkind:x", "nosuchkind")],
)
def test_bad_source_is_one_line_exit_2(tmp_path: Path, source: str, fragment: str):
    proc = run(["shoprec", "ingest", source], tmp_path, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and fragment in proc.stderr
    assert not (tmp_path / "data" / "ingested").exists()


def test_taobao_sample_reports_out_of_window_rows(tmp_path: Path, shared_dir: Path):
    sample = shared_dir / "datasets" / "taobao-sample" / "UserBehavior_sample.csv"
    run(["shoprec", "ingest", f"taobao:{sample}"], tmp_path)
    proc = run(["shoprec", "validate"], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "expect_column_values_to_be_between(ts): 4 rows outside 2017-11-24T16:00:00+00:00" in proc.stderr
    assert not (tmp_path / "data" / "validated").exists()
    proc = run(["shoprec", "validate", "--policy", "quarantine"], tmp_path)
    summary = json.loads((tmp_path / "reports" / "validation" / "summary.json").read_text())
    assert summary["bad_rows"] == 4 and summary["success"]


def test_killed_training_leaves_the_previous_model_and_champion(tmp_path: Path):
    """SIGKILL while the train stage writes its model: models/candidate is one complete model, never a mix."""
    import signal
    import time

    (tmp_path / "params.yaml").write_text(small_params(model="covisit"))
    run(["shoprec", "pipeline"], tmp_path)
    candidate = tmp_path / "models" / "candidate"
    before = {f.name: f.read_bytes() for f in candidate.iterdir()}
    slow = yaml.safe_load(small_params(model="two_stage", sources=["covisit", "sasrec"], rankers=["lightgbm"],
                                       sasrec={"time_budget_s": 15}))
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(slow))
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["shoprec", "train", "--params", "slow.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("models/.candidate.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.01)  # kill as soon as the stage starts writing its files
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after = {f.name: f.read_bytes() for f in candidate.iterdir()}
    if after != before:  # the rename won the race: then the new model must be whole
        assert json.loads(after["meta.json"])["model"] == "two_stage"
        assert set(after) == set(before)
    listed = run(["shoprec", "models", "list"], tmp_path).stdout
    assert "champion" in listed.splitlines()[0] and len(listed.splitlines()) == 1
