"""``shoprec benchmark``: the whole two-stage pipeline on one data set, timed, with every component's metrics.

Writes ``metrics.json`` (every source and ranker, validation and test), ``test_recommendations.csv`` (the final
top-20 of every user, ids as in the input, history excluded), ``timings.json`` (seconds and peak memory per
stage) and ``BENCHMARK.md``; the same table is printed.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from pipelines.core.atomic import atomic_file, write_json
from pipelines.core.config import Params

README = "README.md"


def published_results(dataset: str) -> tuple[list[str], list[list[str]]]:
    """The published-results table of the data set's own README (header, rows), or nothing.

    Reference rows belong to the data set they were published for: they are read from the first markdown table
    under a heading starting with "Published" in the README beside the input file, with the source column as
    written there. A data set without such a README shows no reference rows. Nothing is tuned on them.
    """
    kind, sep, rest = dataset.partition(":")
    if not sep:
        return [], []
    readme = Path(rest.split(",")[0]).parent / README
    if not readme.is_file():
        return [], []
    header: list[str] = []
    rows: list[list[str]] = []
    in_section = False
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#"):
            if rows:
                break
            in_section = line.lstrip("#").strip().lower().startswith("published")
        elif in_section and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not header:
                header = cells
            elif not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            break
    return header, rows


class StageClock:
    """Wall time and peak resident memory of each stage (sampled every 50 ms by a background thread)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._proc = psutil.Process()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        peak = [self._proc.memory_info().rss]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], self._proc.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.records.append({"stage": name, "seconds": round(time.perf_counter() - start, 1),
                                 "peak_rss_mb": round(max(peak[0], self._proc.memory_info().rss) / 2**20)})

    @property
    def total_seconds(self) -> float:
        return round(sum(r["seconds"] for r in self.records), 1)


def _table_rows(test: dict[str, Any]) -> list[tuple[str, float, float, float, float]]:
    rows = []
    parts = {**test.get("components", {}), "baseline: popularity": test["models"]["baseline"]["overall"]}
    chosen = f"ranker:{test['validation']['selection']['chosen']}" if "validation" in test else None
    for name, m in parts.items():
        label = f"shoprec {name}" + (" (deployed)" if name == chosen else "")
        rows.append((label, m["hr@10"], m["ndcg@10"], m["hr@20"], m["ndcg@20"]))
    return rows


def markdown(command: str, test: dict[str, Any], clock: StageClock, dataset: str) -> str:
    """The benchmark section: command, machine, wall time, per-stage timings and the results table."""
    machine = f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB RAM, {platform.machine()}"
    lines = [
        f"Command: `{command}`",
        "",
        f"Data: `{dataset}`; {test['users']:,} test users, leave-one-out, full ranking, history excluded.",
        f"Machine: {machine}, no GPU. Wall time: {clock.total_seconds / 60:.1f} min.",
        "",
        "| model (test split) | HR@10 | NDCG@10 | HR@20 | NDCG@20 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, *vals in sorted(_table_rows(test), key=lambda r: -r[2]):
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    header, rows = published_results(dataset)
    if rows:
        lines += ["", f"Published results on this data set, for reference (from its {README}):", "",
                  "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| stage | seconds | peak RSS (MB) |", "| --- | --- | --- |"]
    lines += [f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mb']} |" for r in clock.records]
    return "\n".join(lines) + "\n"


def write_recommendations(path: Path, users: np.ndarray, recs: np.ndarray, vocab_users: np.ndarray,
                          vocab_items: np.ndarray) -> None:
    """``user_id,rank,item_id`` rows, ranks from 1, external ids."""
    k = recs.shape[1]
    valid = recs >= 0
    frame = pd.DataFrame({
        "user_id": np.repeat(vocab_users[users], k)[valid.ravel()],
        "rank": np.tile(np.arange(1, k + 1), len(users))[valid.ravel()],
        "item_id": vocab_items[np.maximum(recs, 0)].ravel()[valid.ravel()],
    })
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)


def run_benchmark(dataset: str, out_dir: Path, params: Params, command: str,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Ingest, validate, split (leave-one-out), train the two-stage model, evaluate; write the outputs."""
    from pipelines.data.ingest import ingest
    from pipelines.data.split import run_split
    from pipelines.data.validate import validate
    from pipelines.evaluation.evaluate import evaluate_models
    from pipelines.features.encode import load_features, run_features
    from pipelines.models.train import fit_models

    work = out_dir / "work"
    clock = StageClock()
    split_params = params.split.model_copy(update={"protocol": "leave_one_out"})
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("ingest", lambda: ingest(dataset, work / "ingested", synthetic=params.synthetic)),
        ("validate", lambda: validate(work / "ingested", work / "validated", out_dir / "reports", params.validate_)),
        ("split", lambda: run_split(work / "validated", work / "split", split_params)),
        ("features", lambda: run_features(work / "split", work / "features")),
    ]
    for name, thunk in stages:
        with clock.stage(name):
            thunk()
        echo(f"ok {name:<9} {clock.records[-1]['seconds']:7.1f} s")
    features = load_features(work / "features").all
    with clock.stage("train"):
        models = fit_models(features, params.train, split_params.exclude_seen)
    echo(f"ok train     {clock.records[-1]['seconds']:7.1f} s")
    lists: dict[str, np.ndarray] = {}
    with clock.stage("evaluate"):
        evaluated = {k: v for k, v in models.items() if k != "serving"}
        test = evaluate_models(evaluated, features, params.evaluate, split_params.exclude_seen, "test", lists)
    echo(f"ok evaluate  {clock.records[-1]['seconds']:7.1f} s")
    write_recommendations(out_dir / "test_recommendations.csv", lists["users"], lists["candidate"][:, :20],
                          features.vocab.users, features.vocab.items)
    report = {"dataset": dataset, "command": command, "test": test,
              "validation": test.get("validation"), "timings": clock.records,
              "wall_seconds": clock.total_seconds}
    write_json(out_dir / "metrics.json", report)
    write_json(out_dir / "timings.json", {"stages": clock.records, "wall_seconds": clock.total_seconds})
    text = markdown(command, test, clock, dataset)
    with atomic_file(out_dir / "BENCHMARK.md") as tmp:
        tmp.write_text(text)
    echo(text)
    return report
