"""``shoprec`` command line: one sub-command per stage, plus ``pipeline`` and ``summary``.

Expected failures (bad input, failed validation) print one line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.core.config import load_params
from pipelines.core.errors import ShoprecError
from pipelines.core.paths import Paths
from pipelines.experiments.cli import experiment_app
from pipelines.registry.cli import models_app

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="shoprec: e-commerce recommendations from behaviour logs.")
console = Console(stderr=True)
app.add_typer(models_app, name="models", help="the MLflow model registry: list, show, promote, rollback")
app.add_typer(experiment_app, name="experiment", help="online experiments: champion vs challenger, decided on "
                                                      "shoppers' feedback")

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
SOURCE_HELP = ("taobao:PATH | retailrocket:PATH | seqfile:PATH[,attributes=PATH] | csv:PATH,... | parquet:PATH,..."
               " | synthetic; default: params data.source")
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a parameter, e.g. train.n_per_source=30")]
RootOpt = Annotated[Path, typer.Option("--root", help="project root that holds data/, models/, reports/")]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log INFO as well")] = False) -> None:
    """Quiet, structured logs by default; the noisy libraries only speak on warnings."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")


def _run_stage(params_path: Path, root: Path, name: str, source: str | None = None) -> object:
    from pipelines.run import stages

    thunk = dict(stages(load_params(params_path), Paths(root), source))[name]
    return thunk()


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="data set directory to write")] = Path("data/ingested"),
    users: Annotated[int | None, typer.Option(help="override synthetic.users")] = None,
    events_per_user: Annotated[float | None, typer.Option(help="override synthetic.events_per_user")] = None,
    seed: Annotated[int | None, typer.Option(help="override synthetic.seed")] = None,
    items: Annotated[int | None, typer.Option(help="override synthetic.items")] = None,
    sequences: Annotated[Path | None, typer.Option(
        help="also write it as a sequence file (Amazon Beauty format, for `benchmark --dataset seqfile:...`)")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Write the embedded synthetic Taobao-like data set."""
    from pipelines.data.generate import generate as run

    overrides = {k: v for k, v in {"users": users, "events_per_user": events_per_user, "seed": seed,
                                   "items": items}.items() if v is not None}
    syn = load_params(params).synthetic.model_copy(update=overrides)
    manifest = run(out, syn, progress=True)
    console.print(f"wrote {manifest.rows:,} events of {manifest.users:,} users to {out}")
    if sequences is not None:
        from pipelines.data.sequences import write_sequences

        counts = write_sequences(out, sequences)
        console.print(f"wrote {counts['interactions']:,} interactions of {counts['users']:,} users on "
                      f"{counts['items']:,} items to {sequences} (attributes: {counts['attributes']})")


@app.command()
def ingest(
    source: Annotated[str | None, typer.Argument(help=SOURCE_HELP)] = None,
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Convert a source to the canonical data set under data/ingested."""
    manifest = _run_stage(params, root, "ingest", source)
    console.print(f"ingested {manifest.rows:,} events, {manifest.users:,} users, {manifest.items:,} items "
                  f"into {Paths(root).ingested}")


@app.command()
def validate(
    data: Annotated[Path | None, typer.Option(help="data set to validate (default: the one just ingested)")] = None,
    policy: Annotated[str | None, typer.Option(help="fail | quarantine (default: params validate.policy)")] = None,
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Validate with Great Expectations; writes reports/validation/ and, on success, data/validated."""
    from pipelines.data.validate import validate as run

    paths = Paths(root)
    vparams = load_params(params).validate_
    if policy:
        vparams = vparams.model_copy(update={"policy": policy})
    report = run(data or paths.ingested, paths.validated, paths.reports, vparams)
    console.print(f"validation passed: {report.rows:,} rows, {report.bad_rows:,} quarantined; "
                  f"report {report.summary_path}")


def _stage_command(name: str, doc: str) -> None:
    def command(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml")) -> None:
        _run_stage(params, root, name)

    command.__doc__ = doc
    app.command(name=name)(command)


_stage_command("split", "Split the validated data into train / valid / test folds and targets.")
_stage_command("features", "Encode the split for the models.")
_stage_command("train", "Fit the configured model and the popularity baseline.")
_stage_command("champion", "Record the registered champion the candidate is measured against (models/champion.json).")
_stage_command("evaluate", "Full-ranking metrics on the test targets.")


@app.command()
def gate(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml")) -> None:
    """Check the candidate against the thresholds; promote it to models/champion on a pass."""
    decision = _run_stage(params, root, "gate")
    console.print(f"gate: {'PASSED, promoted' if decision.passed else 'REJECTED, champion unchanged'}")


@app.command()
def register(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml")) -> None:
    """Log the run to MLflow, register the candidate and move ``champion`` to it if the gate passed."""
    result = _run_stage(params, root, "register")
    console.print(f"registered shoprec version {result['version']}: {result['status']}")


@app.command()
def pipeline(
    source: Annotated[str | None, typer.Option(help="ingest SOURCE (default: params data.source)")] = None,
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run every stage in this process, then print the summary."""
    from pipelines.run import run_lock, stages

    with run_lock(Paths(root)):
        for name, thunk in stages(load_params(params, set_), Paths(root), source):
            start = time.perf_counter()
            with console.status(f"{name} ..."):
                thunk()
            console.print(f"[green]ok[/] {name:<9} {time.perf_counter() - start:6.1f} s")
    summary(root)


@app.command()
def benchmark(
    dataset: Annotated[str, typer.Option(help="ingest SOURCE, e.g. seqfile:Beauty.txt,attributes=attrs.json")],
    out: Annotated[Path, typer.Option(help="directory for metrics.json, test_recommendations.csv, timings")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run the whole two-stage pipeline under leave-one-out on one data set and report every component."""
    from benchmarks.quality import run_benchmark

    command = "shoprec " + " ".join(sys.argv[1:])
    run_benchmark(dataset, out, load_params(params, set_), command, echo=Console().print)


@app.command()
def summary(root: RootOpt = Path(".")) -> None:
    """Print data rows, validation result, metrics and the gate decision of the last run."""
    from pipelines.evaluation.report import summary_table

    table: Table = summary_table(Paths(root))
    Console().print(table)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    root: Annotated[Path | None, typer.Option("--root", help="project root (default: SHOPREC_ROOT or .)")] = None,
) -> None:
    """Serve the recommendation API (champion of the registry; settings from SHOPREC_*, see docs/serving.md)."""
    from pipelines.serving.app import run, settings_for

    run(host, port, settings_for(root))


@app.command(name="batch-recommend")
def batch_recommend(
    root: RootOpt = Path("."),
    model_dir: Annotated[Path | None, typer.Option(help="model directory (default: the registry's champion)")] = None,
    out: Annotated[Path | None, typer.Option(help="store directory (default: ROOT/serving)")] = None,
    k: Annotated[int, typer.Option(help="list length per user")] = 100,
    features: Annotated[Path | None, typer.Option(
        help="features the model was trained from, ranked part by part when the model holds no user state "
             "(default: ROOT/data/features)")] = None,
) -> None:
    """Precompute every known user's top-k for the API (written atomically; the API picks it up)."""
    from pipelines.core.paths import Paths
    from pipelines.serving.model import resolve_model_dir
    from pipelines.serving.store import default_store_dir, write_recommendations

    summary = write_recommendations(model_dir or resolve_model_dir(root), out or default_store_dir(root), k,
                                    features or Paths(root).features)
    console.print(f"wrote top-{k} of {summary['users']:,} users ({summary['rows']:,} rows) to {summary['out_dir']} "
                  f"in {summary['seconds']:.1f} s")


@app.command()
def dashboard(
    root: RootOpt = Path("."),
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1")] = 8501,
) -> None:
    """Start the business dashboard (Streamlit) on 127.0.0.1 for the project at --root; Ctrl-C stops it.

    The process becomes ``streamlit run`` (exec), so signals reach the server directly.
    """
    # dashboard/ sits beside pipelines/ both in the source tree and in an installed wheel
    app_path = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
    if not app_path.exists():
        raise ShoprecError(f"dashboard app not found at {app_path}")
    console.print(f"dashboard of {root.resolve()} on http://127.0.0.1:{port}")
    command = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", "127.0.0.1",
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "viewer"]
    os.execve(sys.executable, command, os.environ | {"SHOPREC_ROOT": str(root.resolve())})


def main() -> None:
    try:
        app()
    except ShoprecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
