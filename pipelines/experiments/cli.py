"""``shoprec experiment decide|history|simulate``: online experiments between the champion and the challenger.

Mount with ``app.add_typer(experiment_app, name="experiment")``; errors are ``ShoprecError`` like every other
command. Each reading is printed as one JSON line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.core.config import load_params
from pipelines.core.errors import ShoprecError

experiment_app = typer.Typer(add_completion=False, no_args_is_help=True,
                             help="online experiments: champion vs challenger on shoppers' feedback")
RootOpt = Annotated[Path, typer.Option("--root", help="project root holding mlflow.db, data/incoming, reports/")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read (its experiment section)")]


@experiment_app.command()
def decide(
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="record the reading, leave the registry alone")] = False,
    events_dir: Annotated[Path | None, typer.Option(help="the API's log directory (default <root>/data/incoming)")]
    = None,
) -> None:
    """Read the running experiment: each arm's metrics, the always-valid test, and promote / rollback / continue
    (acted on in the registry unless --dry-run); the reading is appended to reports/experiments.jsonl."""
    from pipelines.experiments.online import run_online_evaluation

    record = run_online_evaluation(root, load_params(params).experiment, apply=not dry_run, events_dir=events_dir)
    typer.echo(json.dumps(record, separators=(",", ":")))


@experiment_app.command()
def history(root: RootOpt = Path(".")) -> None:
    """Every recorded reading, oldest first, one JSON line each."""
    from pipelines.experiments.online import history as readings

    for record in readings(root / "reports"):
        typer.echo(json.dumps(record, separators=(",", ":")))


@experiment_app.command()
def simulate(
    challenger: Annotated[str, typer.Option(help="registry version (or alias) of the challenger")],
    sessions: Annotated[int, typer.Option(min=1, help="simulated shopper sessions")],
    champion: Annotated[str, typer.Option(help="registry version or alias of the champion")] = "champion",
    share: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of shoppers on the challenger")] = 0.5,
    seed: Annotated[int, typer.Option(help="seed of the shoppers' choices")] = 0,
    looks: Annotated[int, typer.Option(min=1, help="readings of the test, evenly spaced; stops at a decision")] = 1,
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Drive the API with simulated shoppers who click what the synthetic data set's hidden preferences say they
    like, then read the experiment: one JSON line with the decision and each arm's metrics. Nothing is written
    to the project's logs or registry."""
    from pipelines.experiments.simulate import simulate as run

    loaded = load_params(params)
    if loaded.data.source != "synthetic":
        raise ShoprecError(f"{params}: data.source is {loaded.data.source!r}; the simulated shoppers need the "
                           "synthetic data set's ground truth (data.source: synthetic)")
    record = run(root, loaded.synthetic, champion, challenger, sessions, seed, share, loaded.experiment, looks)
    typer.echo(json.dumps(record, separators=(",", ":")))
