"""Fixtures for the serving tests: tiny trained models, an MLflow registry, and real redis-server processes."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.config import SplitParams, SyntheticParams, TrainParams
from pipelines.data.generate import generate
from pipelines.data.split import run_split
from pipelines.features.encode import run_features
from pipelines.models.train import run_train

TINY = SyntheticParams(users=300, items=300, categories=8, events_per_user=30, seed=5)
FAST = TrainParams(sources=["covisit", "transitions", "popularity", "category_popularity"], rankers=["lightgbm"],
                   n_per_source=30)
# the session path through the sequential model: SASRec kept tiny and short
WITH_SASREC = TrainParams(sources=["transitions", "popularity", "category_popularity", "sasrec"],
                          rankers=["lightgbm"], n_per_source=30,
                          sasrec={"dim": 16, "max_len": 20, "blocks": 1, "time_budget_s": 3, "max_epochs": 5})


@dataclass(frozen=True)
class Project:
    root: Path
    model_dir: Path  # two-stage without SASRec (fast to load)
    sasrec_dir: Path  # two-stage with a SASRec source


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A synthetic data set of 300 users and 300 items with two trained model directories."""
    root = tmp_path_factory.mktemp("serving-project")
    generate(root / "data" / "validated", TINY)
    run_split(root / "data" / "validated", root / "data" / "split", SplitParams())
    run_features(root / "data" / "split", root / "data" / "features")
    run_train(root / "data" / "features", root / "models" / "champion", FAST)
    run_train(root / "data" / "features", root / "models" / "sasrec", WITH_SASREC)
    return Project(root, root / "models" / "champion", root / "models" / "sasrec")


def register(root: Path, model_dir: Path, metrics: dict[str, float] | None = None, alias: str = "champion") -> str:
    """Log ``model_dir`` as a new registered version of ``shoprec`` in ``root``'s store and promote it to
    ``alias`` (champion, or an online experiment's challenger)."""
    from mlflow.exceptions import MlflowException

    from pipelines.registry import versions as registry

    reg = registry.client(root)
    found = reg.get_experiment_by_name(registry.EXPERIMENT)
    experiment = found.experiment_id if found else reg.create_experiment(
        registry.EXPERIMENT, artifact_location=(root / "mlartifacts").resolve().as_uri())
    run = reg.create_run(experiment)
    for name, value in (metrics or {"ndcg_at_10": 0.5}).items():
        reg.log_metric(run.info.run_id, name, value)
    reg.log_artifacts(run.info.run_id, str(model_dir), "model")
    reg.set_terminated(run.info.run_id, "FINISHED")
    with contextlib.suppress(MlflowException):  # registered by an earlier call
        reg.create_registered_model(registry.MODEL_NAME)
    version = reg.create_model_version(registry.MODEL_NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                       tags={"gate": "passed", "data.source": "synthetic"})
    assert registry.promote(version.version, True, root, alias)
    return str(version.version)


@pytest.fixture
def registry_root(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root with its own MLflow store whose champion is version 1 (the fast model)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "project"
    root.mkdir()
    register(root, project.model_dir)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Start a real redis-server on a free loopback port; yields a function returning (url, process)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make sysdeps` (infra/system-deps.sh)")
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return f"redis://127.0.0.1:{port}/0", proc
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def listed(response: Any) -> dict[str, Any]:
    """A list response's JSON without its request id (each response has a new one), which must be there."""
    body = response.json()
    assert len(body.pop("request_id")) == 32
    return body


def unstamped(content: bytes) -> bytes:
    """A list response's bytes without the leading request id field."""
    prefix = b'{"request_id":"'
    assert content.startswith(prefix)
    return b"{" + content[len(prefix) + 34:]
