"""``shoprec models list|show|promote|rollback``: the MLflow registry of ``shoprec`` (``pipelines.registry.versions``).

Mount with ``app.add_typer(models_app, name="models")``; errors are ``ShoprecError`` like every other command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.core.errors import ShoprecError

models_app = typer.Typer(add_completion=False, no_args_is_help=True, help="MLflow model registry of shoprec")
RootOpt = Annotated[Path, typer.Option("--root", help="project root holding mlflow.db (or set MLFLOW_TRACKING_URI)")]


@models_app.command("list")
def list_(root: RootOpt = Path(".")) -> None:
    """Every version with its aliases and gate result."""
    from pipelines.registry.versions import list_versions

    for v in list_versions(root):
        typer.echo(f"{v['version']:>4}  gate={v['gate'] or '-':<6}  {','.join(v['aliases']) or '-'}  run={v['run_id']}")


@models_app.command()
def show(ref: Annotated[str, typer.Argument(help="version number or alias (champion)")] = "champion",
         root: RootOpt = Path(".")) -> None:
    """One version as JSON, with its run's test metrics."""
    from pipelines.registry.versions import show as show_version

    typer.echo(json.dumps(show_version(ref, root), indent=2, default=str))


@models_app.command()
def promote(version: Annotated[str, typer.Argument(help="version number")], root: RootOpt = Path(".")) -> None:
    """Make VERSION the champion; refused unless its gate passed."""
    from pipelines.registry.versions import promote as promote_version
    from pipelines.registry.versions import show as show_version

    if not promote_version(version, show_version(version, root)["gate"] == "passed", root):
        raise ShoprecError(f"version {version} failed its gate; champion unchanged")
    typer.echo(f"champion -> version {version}")


@models_app.command()
def rollback(root: RootOpt = Path(".")) -> None:
    """Move champion back to the previous champion."""
    from pipelines.registry.versions import rollback as rollback_champion

    typer.echo(f"champion -> version {rollback_champion(root)}")
