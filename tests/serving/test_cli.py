"""``shoprec batch-recommend`` and ``shoprec serve`` as a real uvicorn process; the benchmark's report writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from benchmarks.api_load import END, START, free_port, update_doc
from pipelines.cli import app
from tests.serving.conftest import Project


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_batch_recommend_then_serve_answers_from_the_store(project: Project, tmp_path: Path):
    out = tmp_path / "serving"
    result = CliRunner().invoke(app, ["batch-recommend", "--model-dir", str(project.model_dir), "--out", str(out),
                                      "--k", "30"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["k"] == 30
    port = free_port()
    env = os.environ | {"SHOPREC_MODEL_DIR": str(project.model_dir), "SHOPREC_STORE_DIR": str(out),
                        "SHOPREC_RELOAD_POLL_S": "0"}
    shoprec = Path(sys.executable).with_name("shoprec")
    proc = subprocess.Popen([str(shoprec), "serve", "--port", str(port), "--root", str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if get(f"{base}/readyz")["ready"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not ready in 60 s"
            time.sleep(0.2)
        assert get(f"{base}/v1/model")["precomputed"] is True
        body = get(f"{base}/v1/users/u1/recommendations?k=3")
        assert body["known_user"] and [i["rank"] for i in body["items"]] == [1, 2, 3]
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal so that the exit status reports it
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)


def test_batch_recommend_without_a_model_is_a_one_line_error(tmp_path: Path):
    result = subprocess.run([str(Path(sys.executable).with_name("shoprec")), "batch-recommend", "--root",
                             str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: nothing to serve")
    assert "Traceback" not in result.stderr


def test_benchmark_results_replace_only_their_section(tmp_path: Path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkeep me\n")
    update_doc(doc, "first run")
    assert doc.read_text() == f"# Benchmarks\n\n## Other\n\nkeep me\n\n## API latency\n\n{START}\nfirst run\n{END}\n"
    doc.write_text(doc.read_text() + "\n## Later section\n\nkeep me too\n")
    update_doc(doc, "second run")
    text = doc.read_text()
    assert "second run" in text and "first run" not in text and text.count(START) == 1
    assert "keep me\n" in text and text.endswith("## Later section\n\nkeep me too\n")
