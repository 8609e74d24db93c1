"""``training/nightly`` end to end, as ``make prefect-server prefect-deploy prefect-worker`` set it up.

A real Prefect server on loopback, the work pool and the deployments of ``prefect.yaml`` registered with
``prefect deploy``, a process worker, and one run triggered with ``prefect deployment run``. Everything runs in
subprocesses (this process never imports Prefect, so its settings stay untouched), with the Prefect home, the
project and the MLflow store in a temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.code.test_flow_training import project
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

PREFECT = str(Path(sys.executable).with_name("prefect"))
STARTUP_TIMEOUT_S = 60
RUN_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` died (its output is in the log file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (the server's uvicorn, the runner's flow-run children), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start background processes with output to log files; stop them newest first (serve before server)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        return procs[-1]

    yield start
    for proc in reversed(procs):
        stop(proc)


def artifact_keys(api: str) -> set[str]:
    """Keys of every artifact the server holds (what the UI shows on the flow run)."""
    request = urllib.request.Request(f"{api}/artifacts/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return {a["key"] for a in json.load(response)}


def prefect(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    run = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, f"prefect {args}: {run.stdout}{run.stderr}"
    return run.stdout


def test_nightly_deployment_runs_on_a_worker_trains_and_promotes(
        spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from pipelines.registry import versions as registry

    root = project(tmp_path / "project")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api,
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick the run up in ~2 s instead of ~10 s
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "TQDM_DISABLE": "1",
    }
    server = spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
    wait_for(f"{api}/health", server, STARTUP_TIMEOUT_S)
    # the Makefile's prefect-deploy, run from the project root (which becomes the runs' working directory)
    prefect(["work-pool", "create", "shoprec", "--type", "process", "--overwrite"], env, root)
    prefect(["deploy", "--all", "--prefect-file", str(REPO / "prefect.yaml")], env, root)
    deployments = json.load(urllib.request.urlopen(urllib.request.Request(
        f"{api}/deployments/filter", data=b"{}", method="POST", headers={"Content-Type": "application/json"})))
    assert {d["name"] for d in deployments} == {"nightly", "on-drop", "hourly"}
    hourly = next(d for d in deployments if d["name"] == "hourly")
    assert hourly["entrypoint"] == "flows.online_evaluation.online_evaluation"
    nightly = next(d for d in deployments if d["name"] == "nightly" and d["entrypoint"].startswith("flows.training"))
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert nightly["work_pool_name"] == "shoprec"

    spawn("worker", [PREFECT, "worker", "start", "--pool", "shoprec", "--type", "process"], env, root)
    run = subprocess.run([PREFECT, "deployment", "run", "training/nightly", "--watch",
                          "--watch-timeout", str(RUN_TIMEOUT_S)],
                         env=env, cwd=root, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60)
    assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "worker.log").read_text()
    assert "Completed" in run.stdout
    assert {"training-report", "gate-checks"} <= artifact_keys(api)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    versions = registry.list_versions()
    assert len(versions) == 1, versions
    assert registry.show("champion")["version"] == str(versions[0]["version"])
    assert (root / "models" / "champion" / "serving.joblib").exists()
