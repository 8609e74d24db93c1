"""``training/nightly`` end to end: a real Prefect server, ``python -m flows.deploy`` serving it, one CLI-triggered run.

Everything runs in subprocesses (this process never imports Prefect, so its settings stay untouched) against a
loopback server with its home, the project and the MLflow store in a temporary directory.
"""

from __future__ import annotations

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


def test_served_nightly_deployment_trains_and_promotes(spawn: Callable[..., subprocess.Popen[bytes]],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from pipelines import registry

    root = project(tmp_path / "project")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # pick the run up in ~2 s instead of ~10 s
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "TQDM_DISABLE": "1",
    }
    server = spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
    wait_for(f"{api}/health", server, STARTUP_TIMEOUT_S)
    serve = spawn("serve", [sys.executable, "-m", "flows.deploy"], env, root)
    wait_for(f"{api}/deployments/name/training/nightly", serve, STARTUP_TIMEOUT_S)

    run = subprocess.run([PREFECT, "deployment", "run", "training/nightly", "--watch",
                          "--watch-timeout", str(RUN_TIMEOUT_S)],
                         env=env, cwd=root, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60)
    assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()
    assert "Completed" in run.stdout

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    versions = registry.list_versions()
    assert len(versions) == 1, versions
    assert registry.show("champion")["version"] == str(versions[0]["version"])
    assert (root / "models" / "champion" / "serving.joblib").exists()
