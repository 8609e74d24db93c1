"""MLflow tracking and model registry: one run and one registered version of ``shoprec`` per training.

The embedded default store is SQLite under the project (``<root>/mlflow.db``, artifacts in ``<root>/mlartifacts``);
``MLFLOW_TRACKING_URI`` overrides it (a SQLite URI keeps its artifacts in ``mlartifacts`` beside the database file).

Aliases: ``champion`` is the version to serve (``models:/shoprec@champion``), ``previous_champion`` the one it
replaced, which ``rollback`` restores. Every alias move is one ``set_registered_model_alias`` call, which the
store applies atomically, so a reader of ``champion`` sees either the old or the new version, never a gap.
Concurrent promotions are last-writer-wins on ``champion``.

``models/champion.json`` makes the champion an input DVC can see: the registered champion that the candidate in
``models/candidate`` is measured against (see ``champion_to_beat``). The ``champion`` stage writes it before
evaluate, which reads the champion through it, and every ``promote`` and ``rollback`` rewrites it, so a
rollback or a manual promotion shows up in ``dvc status`` as a changed input of evaluate.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from pipelines.core.atomic import read_json, write_json
from pipelines.core.config import Params
from pipelines.core.errors import ShoprecError
from pipelines.core.paths import Paths

MODEL_NAME = "shoprec"
EXPERIMENT = "shoprec"
CHAMPION = "champion"
PREVIOUS = "previous_champion"
CHALLENGER = "challenger"
GATE_TAG = "gate"
TIME_CAP_TAG = "training.time_cap_hit"  # fits cut short by the wall-clock safety cap, "none" when none
METRIC_KS = (5, 10, 20)
_ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch request (every hyper-parameter is a param: ~120)
LOCK_TIMEOUT_S = 600  # a registration takes seconds; this only bounds a wait on a crashed holder's stale lock


@dataclass(frozen=True)
class RunRecord:
    """What one training run left in MLflow."""

    run_id: str
    version: str
    gate_passed: bool
    metrics: dict[str, float]
    data_version: dict[str, str]


def tracking_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``sqlite:///<root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


@cache
def _file_lock(path: str) -> FileLock:
    """One lock object per store and process, so nested use by the same thread is re-entrant."""
    return FileLock(path, timeout=LOCK_TIMEOUT_S)


@contextmanager
def registry_lock(root: str | Path = ".") -> Iterator[None]:
    """Serialise writers of a local SQLite store across processes (a tracking server serialises on its own).

    Without it, concurrent runs race in MLflow's schema set-up and in SQLite writes: four registrations started
    together on a fresh store all failed in alembic migrations, leaving it unusable.
    """
    uri = tracking_uri(root)
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(f"{db.resolve()}.lock"):
        yield


def client(root: str | Path = ".") -> MlflowClient:
    uri = tracking_uri(root)
    with registry_lock(root):  # the first client of a store creates and migrates its schema
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """Local stores keep artifacts beside the database; a tracking server chooses its own location."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def _experiment_id(reg: MlflowClient) -> str:
    found = reg.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    try:
        return reg.create_experiment(EXPERIMENT, artifact_location=_artifact_location(reg.tracking_uri))
    except MlflowException as exc:  # another process created it first
        if exc.error_code not in _ALREADY_EXISTS:
            raise
        return reg.get_experiment_by_name(EXPERIMENT).experiment_id


def _ensure_registered_model(reg: MlflowClient) -> None:
    try:
        reg.create_registered_model(MODEL_NAME, description="shoprec recommender (models/candidate directory)")
    except MlflowException as exc:
        if exc.error_code not in _ALREADY_EXISTS:
            raise


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists and scalars become strings."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return flat


def candidate_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The candidate's overall test metrics (``ndcg@10`` -> ``ndcg_at_10``), coverage and novelty."""
    entry = metrics["models"]["candidate"]
    overall = {
        f"{m}_at_{k}": float(entry["overall"][f"{m}@{k}"])
        for m in ("hr", "ndcg", "recall", "mrr") for k in METRIC_KS if f"{m}@{k}" in entry["overall"]
    }
    return overall | {"coverage": float(entry["coverage"]), "novelty": float(entry["novelty"])}


def _tree_md5(directory: Path) -> str:
    """md5 over the relative paths and contents of every file under ``directory``."""
    digest = hashlib.md5()
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f.relative_to(directory).as_posix().encode())
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dvc_tracked(files: list[str]) -> dict[str, str]:
    """DVC-tracked path -> its DVC hash, for the inputs that lie in a file or directory a ``.dvc`` file tracks."""
    found: dict[str, str] = {}
    for name in files:
        path = Path(name).resolve()
        for tracked in (p for p in (path, *path.parents) if p.name):
            dvc_file = tracked.with_name(f"{tracked.name}.dvc")
            if dvc_file.is_file():
                outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
                if "md5" in outs[0]:
                    found[str(tracked)] = str(outs[0]["md5"])
                break
    return found


def data_version(paths: Paths) -> tuple[dict[str, str], dict[str, Any]]:
    """Short digests of the data read (tags), and the full inputs behind them (artifact).

    A synthetic source is versioned by its generator parameters, any other by the md5 of its input files and,
    where DVC tracks them, by the DVC hash of the tracked file or directory (``dvc_md5``).
    """
    manifest = read_json(paths.ingested / "manifest.json")
    extra = manifest.get("extra", {})
    if manifest["source"].startswith("synthetic"):
        inputs = {k: v for k, v in extra.items() if k not in ("inputs_md5", "quarantined")}
    else:
        inputs = extra.get("inputs_md5", {})
    digests = {
        "source": manifest["source"],
        "inputs_md5": hashlib.md5(json.dumps(inputs, sort_keys=True).encode()).hexdigest(),
        "validated_md5": _tree_md5(paths.validated),
    }
    tracked = dvc_tracked(list(extra.get("inputs_md5", {})))
    if tracked:
        digests["dvc_md5"] = ",".join(tracked[k] for k in sorted(tracked))
    return digests, {**digests, "inputs": inputs, "dvc": tracked}


def log_training_run(paths: Paths, params: Params) -> RunRecord:
    """Log one finished training (params, test metrics, data version, gate, model) and register its model."""
    with registry_lock(paths.root):
        reg = client(paths.root)
        gate = read_json(paths.gate)
        evaluation = read_json(paths.metrics / "metrics.json")
        metrics = candidate_metrics(evaluation)
        versions, inputs = data_version(paths)
        status = "passed" if gate["passed"] else "failed"
        capped = ",".join(evaluation.get("time_cap_hit", [])) or "none"  # fits the wall-clock safety cap cut short
        run = reg.create_run(_experiment_id(reg), run_name=f"training-{time.strftime('%Y%m%dT%H%M%S')}",
                                tags={GATE_TAG: status, TIME_CAP_TAG: capped,
                                      **{f"data.{k}": v for k, v in versions.items()}})
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            logged = [Param(k, v) for k, v in flatten(params.model_dump(by_alias=True, mode="json")).items()]
            reg.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
            for start in range(0, len(logged), PARAMS_PER_BATCH):
                reg.log_batch(run_id, params=logged[start: start + PARAMS_PER_BATCH])
            with tempfile.TemporaryDirectory() as tmp:
                write_json(Path(tmp) / "data_version.json", inputs)
                reg.log_artifact(run_id, str(Path(tmp) / "data_version.json"), "data")
            reg.log_artifact(run_id, str(paths.gate), "gate")
            reg.log_artifact(run_id, str(paths.validation_summary), "validation")
            reg.log_artifact(run_id, str(paths.metrics / "metrics.json"), "metrics")
            reg.log_artifacts(run_id, str(paths.candidate), "model")
        except BaseException:
            reg.set_terminated(run_id, "FAILED")
            raise
        reg.set_terminated(run_id, "FINISHED")
        _ensure_registered_model(reg)
        version = reg.create_model_version(MODEL_NAME, f"{run.info.artifact_uri}/model", run_id=run_id,
                                              tags={GATE_TAG: status, **{f"data.{k}": v for k, v in versions.items()}})
        return RunRecord(run_id, str(version.version), bool(gate["passed"]), metrics, versions)


def _alias_version(reg: MlflowClient, alias: str) -> str | None:
    try:
        return str(reg.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def local_dir(source: str, root: str | Path = ".") -> Path:
    """A registered version's artifact URI as a local directory (downloaded when the store is remote)."""
    if source.startswith("file://"):
        return Path(url2pathname(urlparse(source).path))
    if "://" not in source and ":" not in source.split("/")[0]:
        return Path(source)
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(artifact_uri=source, tracking_uri=tracking_uri(root)))


def _registered(root: str | Path) -> MlflowClient | None:
    """A client of the store if ``shoprec`` is registered there; None otherwise (and no store is created)."""
    if not Path(root, "mlflow.db").exists() and "MLFLOW_TRACKING_URI" not in os.environ:
        return None  # no store yet: do not create one just to find it empty
    reg = client(root)
    return reg if reg.search_registered_models(f"name='{MODEL_NAME}'") else None


def champion_dir(root: str | Path = ".") -> tuple[str, Path] | None:
    """The champion's version and a local directory with its model files, or None before the first promotion."""
    reg = _registered(root)
    version = _alias_version(reg, CHAMPION) if reg is not None else None
    if version is None:
        return None
    return version, local_dir(reg.get_model_version(MODEL_NAME, version).source, root)


def champion_record_path(root: str | Path = ".") -> Path:
    """``models/champion.json``: beside the candidate it describes, and a dep of evaluate in dvc.yaml."""
    return Path(root) / "models" / "champion.json"


def champion_to_beat(reg: MlflowClient, root: str | Path = ".") -> dict[str, str | None]:
    """The registered version the candidate in ``root/models/candidate`` is measured against: the champion, or,
    once the candidate is itself the champion (same model files), the champion it replaced.

    So promoting the candidate it just evaluated leaves the answer unchanged (that evaluation stays valid), while
    a rollback or a promotion of another version changes it. ``{"version": None}`` when there is none.
    """
    candidate = Paths(Path(root)).candidate
    own = _tree_md5(candidate) if candidate.is_dir() else None
    for alias in (CHAMPION, PREVIOUS):
        version = _alias_version(reg, alias)
        if version is None:
            break
        source = reg.get_model_version(MODEL_NAME, version).source
        model_md5 = _tree_md5(local_dir(source, root))
        if model_md5 != own:
            return {"version": version, "source": source, "model_md5": model_md5}
    return {"version": None}


def write_champion_record(root: str | Path = ".") -> dict[str, str | None]:
    """Write ``models/champion.json`` (``champion_to_beat``) atomically; no registry yet means no champion."""
    with registry_lock(root):
        reg = _registered(root)
        record = champion_to_beat(reg, root) if reg is not None else {"version": None}
        write_json(champion_record_path(root), record)
        return record


def recorded_champion(root: str | Path = ".") -> tuple[str, Path] | None:
    """The champion to evaluate against, read through ``models/champion.json`` (written first when missing)."""
    path = champion_record_path(root)
    record = read_json(path) if path.exists() else write_champion_record(root)
    if record["version"] is None:
        return None
    return record["version"], local_dir(record["source"], root)


def promote(version: str | int, gate_passed: bool, root: str | Path = ".", alias: str = CHAMPION) -> bool:
    """Point ``champion`` at ``version`` if the gate passed; remember the replaced champion as ``previous_champion``.

    With ``alias="challenger"`` the version becomes the challenger of an online experiment instead (the champion
    keeps serving most shoppers until ``conclude_experiment``); with no champion yet there is nothing to test
    against, so it becomes the champion. A rejected version stays registered, tagged ``gate=failed``, and the
    aliases are untouched. Returns whether ``version`` now holds the alias it was promoted to.
    """
    if alias not in (CHAMPION, CHALLENGER):
        raise ShoprecError(f"promote to '{alias}': must be '{CHAMPION}' or '{CHALLENGER}'")
    with registry_lock(root):
        reg = client(root)
        version = str(version)
        reg.get_model_version(MODEL_NAME, version)  # fails clearly on an unknown version
        if not gate_passed:
            return False
        current = _alias_version(reg, CHAMPION)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if alias == CHALLENGER and current not in (None, version):
            reg.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
            reg.set_model_version_tag(MODEL_NAME, version, "challenger_since", now)
            return True
        if current != version:
            if current is not None:
                reg.set_registered_model_alias(MODEL_NAME, PREVIOUS, current)
            reg.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
            reg.set_model_version_tag(MODEL_NAME, version, "promoted_at", now)
        write_champion_record(root)
        return True


def challenger_version(root: str | Path = ".") -> str | None:
    """The version under test against the champion, or None when no experiment runs."""
    reg = _registered(root)
    return _alias_version(reg, CHALLENGER) if reg is not None else None


def conclude_experiment(version: str, decision: str, root: str | Path = ".") -> None:
    """Act on an online experiment's decision about challenger ``version``: ``promote`` makes it the champion
    (the old one becomes ``previous_champion``), ``rollback`` removes the challenger alias; both tag the version
    with the decision. Refused when ``version`` is no longer the challenger (the look is stale)."""
    if decision not in ("promote", "rollback"):
        raise ShoprecError(f"experiment decision '{decision}': only promote or rollback change the registry")
    with registry_lock(root):
        reg = client(root)
        if _alias_version(reg, CHALLENGER) != str(version):
            raise ShoprecError(f"version {version} is not the challenger any more; registry unchanged")
        if decision == "promote":
            promote(version, True, root)
        reg.delete_registered_model_alias(MODEL_NAME, CHALLENGER)
        reg.set_model_version_tag(MODEL_NAME, str(version), "experiment", decision)
        reg.set_model_version_tag(MODEL_NAME, str(version), "experiment_decided_at",
                                  time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def rollback(root: str | Path = ".") -> str:
    """Move ``champion`` back to ``previous_champion`` (then cleared, so a second rollback is refused)."""
    with registry_lock(root):
        reg = client(root)
        previous = _alias_version(reg, PREVIOUS)
        if previous is None:
            raise ShoprecError(f"model '{MODEL_NAME}' has no {PREVIOUS} to roll back to")
        demoted = _alias_version(reg, CHAMPION)
        reg.set_registered_model_alias(MODEL_NAME, CHAMPION, previous)
        reg.delete_registered_model_alias(MODEL_NAME, PREVIOUS)
        if demoted is not None:
            reg.set_model_version_tag(MODEL_NAME, demoted, "rolled_back", "true")
        write_champion_record(root)
        return previous


def run_register(paths: Paths, params: Params) -> dict[str, Any]:
    """Stage entry point: log and register the candidate, promote it if its gate passed, record the outcome.

    The record (``metrics/registration.json``) names the version and ``status``: ``promoted`` or ``rejected``.
    """
    with registry_lock(paths.root):
        record = log_training_run(paths, params)
        promoted = promote(record.version, record.gate_passed, paths.root, params.gate.promote_to)
        alias = CHALLENGER if promoted and challenger_version(paths.root) == record.version else CHAMPION
        result = asdict(record) | {"status": "promoted" if promoted else "rejected",
                                   "alias": alias if promoted else None}
        write_json(paths.registration, result)
        return result


def tag_version(version: str | int, tags: dict[str, str], root: str | Path = ".") -> None:
    """Add ``tags`` to a registered version and to the run that produced it (e.g. the pinned DVC revision)."""
    with registry_lock(root):
        reg = client(root)
        found = reg.get_model_version(MODEL_NAME, str(version))
        for key, value in tags.items():
            reg.set_model_version_tag(MODEL_NAME, str(version), key, value)
            if found.run_id:
                reg.set_tag(found.run_id, key, value)


def _describe(version: Any, aliases: dict[str, str]) -> dict[str, Any]:
    """``aliases`` maps alias -> version, as the registered model reports them (version searches omit them)."""
    mine = sorted(alias for alias, v in aliases.items() if str(v) == str(version.version))
    return {"version": str(version.version), "aliases": mine, "gate": version.tags.get(GATE_TAG),
            "run_id": version.run_id, "source": version.source, "created": version.creation_timestamp,
            "tags": dict(version.tags)}


def list_versions(root: str | Path = ".") -> list[dict[str, Any]]:
    """Every registered version of ``shoprec``, oldest first, with its aliases and gate result."""
    reg = client(root)
    found = reg.search_model_versions(f"name='{MODEL_NAME}'")
    aliases = reg.get_registered_model(MODEL_NAME).aliases if found else {}
    return [_describe(v, aliases) for v in sorted(found, key=lambda v: int(v.version))]


def show(version_or_alias: str | int, root: str | Path = ".") -> dict[str, Any]:
    """One version (by number or alias such as ``champion``) with its run's metrics."""
    reg = client(root)
    ref = str(version_or_alias)
    try:
        version = (reg.get_model_version(MODEL_NAME, ref) if ref.isdigit()
                   else reg.get_model_version_by_alias(MODEL_NAME, ref))
    except MlflowException as exc:
        raise ShoprecError(f"model '{MODEL_NAME}': no version or alias '{ref}'") from exc
    info = _describe(version, reg.get_registered_model(MODEL_NAME).aliases)
    info["metrics"] = reg.get_run(version.run_id).data.metrics if version.run_id else {}
    return info
