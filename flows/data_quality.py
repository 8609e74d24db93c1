"""Data-quality flow: ingest and validate an incoming data drop on its own, and publish the report.

Nothing the training reads is touched: the drop goes to ``data/quality/<name>/`` and its report to
``reports/quality/<name>/``. A failing drop publishes its report and then fails the flow run, so alerts on
failed runs fire; a passing one completes with the summary.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.cli import report
from pipelines.core.atomic import read_json
from pipelines.core.config import load_params
from pipelines.core.errors import ShoprecError


@task(name="ingest-drop", cache_policy=NO_CACHE)
def ingest_drop(source: str, out: Path, params_file: Path) -> dict[str, Any]:
    from pipelines.data.ingest import ingest

    manifest = ingest(source, out, synthetic=load_params(params_file).synthetic)
    return {"rows": manifest.rows, "users": manifest.users, "items": manifest.items}


@task(name="validate-drop", cache_policy=NO_CACHE)
def validate_drop(dataset: Path, out: Path, reports: Path, params_file: Path) -> None:
    from pipelines.data.validate import validate

    validate(dataset, out, reports, load_params(params_file).validate_)


def publish(name: str, summary: dict[str, Any]) -> None:
    """The verdict, the problems and every expectation's result as artifacts of the flow run."""
    verdict = "PASSED" if summary["success"] else "FAILED"
    problems = "".join(f"- {p}\n" for p in summary["problems"]) or "- none\n"
    create_markdown_artifact(
        key="data-quality-report",
        markdown=f"# Data drop `{name}`: {verdict}\n\n{summary['rows']:,} rows, {summary['bad_rows']:,} bad "
                 f"({summary['bad_fraction']:.2%}), policy `{summary['policy']}`\n\n## Problems\n{problems}\n"
                 f"Great Expectations Data Docs: `{summary['data_docs']}`\n",
        description=f"validation of data drop {name}",
    )
    rows = [{"expectation": e["name"], "columns": ",".join(e["columns"] or []), "success": e["success"],
             "unexpected": e["unexpected_count"], "examples": ", ".join(map(str, e["examples"][:3]))}
            for e in summary["expectations"]]
    create_table_artifact(key="data-quality-expectations", table=rows, description="expectation results")


@flow(name="data-quality")
def data_quality(source: str, name: str = "latest", root: str = ".", params_path: str = "params.yaml"
                 ) -> dict[str, Any]:
    """Validate the drop at ``source`` (any ``shoprec ingest`` SOURCE) with the project's suite and thresholds."""
    base, params_file = Path(root), Path(root) / params_path
    if not params_file.is_file():
        raise ShoprecError(f"{params_file}: no such parameters file")
    drop, reports = base / "data" / "quality" / name, base / "reports" / "quality" / name
    shape = ingest_drop(source, drop / "ingested", params_file)
    state = validate_drop(drop / "ingested", drop / "validated", reports, params_file, return_state=True)
    summary = read_json(reports / "validation" / "summary.json")
    publish(name, summary)
    if state.is_failed():
        state.result()  # re-raises the ValidationFailed with its one-line reason
    return shape | {"success": summary["success"], "problems": summary["problems"],
                    "report": str(reports / "validation" / "summary.json")}


def main() -> int:
    """``python -m flows.data_quality SOURCE [NAME]``: validate a drop into data/quality/NAME (default latest)."""
    if len(sys.argv) < 2:
        print("usage: python -m flows.data_quality SOURCE [NAME]", file=sys.stderr)
        return 2
    return report(data_quality(*sys.argv[1:3], return_state=True), "data quality")


if __name__ == "__main__":
    sys.exit(main())
