"""``shoprec dashboard`` becomes ``streamlit run dashboard/app.py`` on the loopback interface for the given root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines import cli
from tests.conftest import REPO


def test_dashboard_command_runs_streamlit_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((path, list(args), dict(env))))
    result = CliRunner().invoke(cli.app, ["dashboard", "--root", str(tmp_path), "--port", "8599"])
    assert result.exit_code == 0, result.output
    (path, args, env), = calls
    assert args[1:4] == ["-m", "streamlit", "run"] and Path(args[4]) == REPO / "dashboard" / "app.py"
    options = dict(zip(args[5::2], args[6::2], strict=True))
    assert options["--server.address"] == "127.0.0.1" and options["--server.port"] == "8599"
    assert options["--server.headless"] == "true" and options["--client.toolbarMode"] == "viewer"
    assert env["SHOPREC_ROOT"] == str(tmp_path.resolve())
