"""Human summaries of a run, read back from the files the stages wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from pipelines.core.atomic import read_json
from pipelines.core.paths import Paths


def _load(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


def summary_rows(paths: Paths) -> list[tuple[str, str]]:
    """(what, value) pairs: data rows, validation, metrics, gate decision and output locations."""
    rows: list[tuple[str, str]] = []
    manifest = _load(paths.ingested / "manifest.json")
    if manifest:
        rows.append(("data", f"{manifest['rows']:,} events, {manifest['users']:,} users, "
                             f"{manifest['items']:,} items ({manifest['source']})"))
    validation = _load(paths.validation_summary)
    if validation:
        failed = [e["name"] for e in validation.get("expectations", []) if not e.get("success")]
        rows.append(("validation", f"{'passed' if validation['success'] else 'FAILED'} ({validation['policy']}); "
                                   f"{validation.get('bad_rows', 0):,} bad rows"
                                   + (f"; failed: {', '.join(failed)}" if failed else "")))
    metrics = _load(paths.metrics / "metrics.json")
    if metrics:
        for name, entry in metrics["models"].items():
            o = entry["overall"]
            rows.append((f"test {name}", f"HR@10 {o['hr@10']:.4f}  NDCG@10 {o['ndcg@10']:.4f}  "
                                         f"coverage {entry['coverage']:.3f}  ({metrics['users']:,} users)"))
    gate = _load(paths.gate)
    if gate:
        failed = [c["name"] for c in gate["checks"] if not c["passed"]]
        rows.append(("gate", "PASSED, promoted to " + str(gate["promoted_to"]) if gate["passed"]
                     else "REJECTED: " + ", ".join(failed)))
    rows.append(("outputs", f"{paths.reports}/ (validation report, data docs), {paths.metrics}/, "
                            f"{paths.candidate}, {paths.champion}"))
    return rows


def summary_table(paths: Paths) -> Table:
    table = Table(title="shoprec run summary", show_header=False)
    for what, value in summary_rows(paths):
        table.add_row(what, value)
    return table
