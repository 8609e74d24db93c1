"""Everything the dashboard shows, read from a project's files and its MLflow store.

Plain functions of the project root, with no Streamlit in them, so they can be tested on their own; the pages
call them through the cached wrappers in ``dashboard.ui``. A function whose source does not exist yet returns
None or an empty frame, and the page then says which command produces it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.core.atomic import read_json
from pipelines.core.paths import Paths
from pipelines.data.schema import EVENT_TYPES

if TYPE_CHECKING:
    from pipelines.serving.model import Recommendation

# the registry's aliases (pipelines.registry.versions, not imported here: it loads MLflow, ~2 s)
CHAMPION = "champion"
PREVIOUS = "previous_champion"
# MLflow metric keys the run tables show, in this order (the registry logs more)
RUN_METRICS = ("ndcg_at_10", "hr_at_10", "recall_at_10", "mrr_at_10", "ndcg_at_20", "hr_at_20", "coverage",
               "novelty")
SEGMENTS = {"overall": "all test users", "cold_start": "cold-start users", "purchase": "purchase-only"}
RUN_COLUMNS = ["version", "status", "aliases", "gate", "registered", "promoted_at", "model", "data_source",
               "data_md5", "run_id", "run_name", "artifact_uri", *RUN_METRICS]
CHECK_COLUMNS = ["version", "when", "decision", "check", "value", "threshold", "passed"]


def project_root() -> Path:
    """``SHOPREC_ROOT`` if set, else the working directory (``streamlit run`` from the repo root)."""
    return Path(os.environ.get("SHOPREC_ROOT") or ".").resolve()


def has_store(root: str | Path) -> bool:
    """Whether there is an MLflow store to read: opening a missing SQLite store would create an empty one."""
    return "MLFLOW_TRACKING_URI" in os.environ or (Path(root) / "mlflow.db").exists()


def _read(path: Path) -> Any | None:
    return read_json(path) if path.exists() else None


def _utc_ms(ms: int | None) -> pd.Timestamp | None:
    return None if ms is None else pd.Timestamp(int(ms), unit="ms", tz="UTC")


def _status(aliases: list[str], gate: str | None) -> str:
    if CHAMPION in aliases:
        return "champion"
    if PREVIOUS in aliases:
        return "previous champion"
    return "passed gate" if gate == "passed" else "rejected"


def model_runs(root: str | Path) -> pd.DataFrame:
    """One row per registered model version, oldest first: status, dates, model type, data version, test metrics."""
    if not has_store(root):
        return pd.DataFrame(columns=RUN_COLUMNS)
    from pipelines.registry import versions as registry

    versions = registry.list_versions(root)
    if not versions:
        return pd.DataFrame(columns=RUN_COLUMNS)
    reg = registry.client(root)
    experiment = reg.get_experiment_by_name(registry.EXPERIMENT)
    runs = {run.info.run_id: run for run in reg.search_runs([experiment.experiment_id], max_results=5000)
            } if experiment is not None else {}
    rows = []
    for v in versions:
        run = runs.get(v["run_id"])
        tags = v["tags"]
        promoted = tags.get("promoted_at")
        rows.append({
            "version": int(v["version"]),
            "status": _status(v["aliases"], v["gate"]),
            "aliases": ", ".join(v["aliases"]),
            "gate": v["gate"],
            "registered": _utc_ms(v["created"]),
            "promoted_at": pd.Timestamp(promoted) if promoted else None,
            "model": _model_name(run.data.params) if run else None,
            "data_source": tags.get("data.source"),
            "data_md5": (tags.get("data.validated_md5") or "")[:8],
            "run_id": v["run_id"],
            "run_name": run.info.run_name if run else None,
            "artifact_uri": run.info.artifact_uri if run else None,
            **{m: (run.data.metrics.get(m) if run else None) for m in RUN_METRICS},
        })
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame["registered"] = pd.to_datetime(frame["registered"], utc=True)
    frame["promoted_at"] = pd.to_datetime(frame["promoted_at"], utc=True)
    return frame


def _model_name(params: dict[str, str]) -> str:
    """``two_stage (covisit+transitions -> lightgbm/xgboost)`` (sources -> rankers tried) or the single model."""
    model = params.get("train.model", "?")
    if model != "two_stage":
        return model
    sources = "+".join(json.loads(params.get("train.sources", "[]")))
    rankers = "/".join(json.loads(params.get("train.rankers", "[]")))
    return f"two_stage ({sources} -> {rankers})"


def alias_row(runs: pd.DataFrame, alias: str) -> pd.Series | None:
    """The version carrying ``alias`` (e.g. ``champion``), or None."""
    hit = runs[runs["aliases"].str.split(", ").apply(lambda names: alias in names)] if len(runs) else runs
    return hit.iloc[0] if len(hit) else None


def run_params(root: str | Path, run_id: str) -> dict[str, str]:
    """The parameters a run was trained with (flattened ``params.yaml``, e.g. ``train.model``)."""
    from pipelines.registry import versions as registry

    return dict(registry.client(root).get_run(run_id).data.params)


def run_artifact(root: str | Path, run: pd.Series, path: str) -> Any | None:
    """A JSON artifact of a run (e.g. ``gate/gate.json``), or None if the run did not log it.

    A local store records absolute artifact paths; a project that was copied elsewhere still holds the
    artifacts under its own ``mlartifacts/<run_id>/artifacts``, which is tried when the recorded path is gone.
    """
    uri = str(run["artifact_uri"] or "")
    if uri.startswith("file:") or not uri:
        candidates = [Path(url2pathname(urlparse(uri).path)) / path] if uri else []
        candidates.append(Path(root) / "mlartifacts" / str(run["run_id"]) / "artifacts" / path)
        return next((read_json(p) for p in candidates if p.exists()), None)
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from pipelines.registry.versions import tracking_uri

    try:
        return read_json(download_artifacts(artifact_uri=f"{uri}/{path}", tracking_uri=tracking_uri(root)))
    except (MlflowException, OSError):
        return None


def _check_rows(gate: dict[str, Any], version: int | None, when: pd.Timestamp | None) -> list[dict[str, Any]]:
    decision = "promoted" if gate.get("passed") else "rejected"
    return [{"version": version, "when": when, "decision": decision, "check": c["name"],
             "value": _fmt(c["value"]), "threshold": _fmt(c["threshold"]), "passed": bool(c["passed"])}
            for c in gate.get("checks", [])]


def _fmt(value: Any) -> str:
    """Gate values are numbers or booleans; one text column keeps the table readable and Arrow-friendly."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value + 0.0:.4g}"  # + 0.0 turns -0.0 into 0
    return str(value)


def gate_history(root: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Every gate decision with each check's value, threshold and result, newest first.

    The history is the gate artifact of every registered run, plus the last decision in ``metrics/gate.json``
    (with no version) when it was not registered: before the first registration, or after a gate run without
    the register stage (``dvc repro``), i.e. when it is newer than the newest run and differs from its record.
    """
    rows: list[dict[str, Any]] = []
    newest: dict[str, Any] | None = None
    for _, run in runs.iterrows():
        gate = run_artifact(root, run, "gate/gate.json")
        if gate is not None:
            rows += _check_rows(gate, int(run["version"]), run["registered"])
            newest = gate
    path = Paths(Path(root)).gate
    last = _read(path)
    if last is not None and last != newest:
        written = pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC")
        if not len(runs) or written > runs["registered"].max():
            rows += _check_rows(last, None, written)
    frame = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    frame["when"] = pd.to_datetime(frame["when"], utc=True)
    return frame.sort_values(["when", "version"], ascending=False, kind="stable").reset_index(drop=True)


def segment_metrics(root: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """NDCG@10 and HR@10 per run, model (candidate, popularity baseline) and user segment, from each run's metrics."""
    rows = []
    for _, run in runs.iterrows():
        metrics = run_artifact(root, run, "metrics/metrics.json")
        if metrics is None:
            continue
        for model, label in (("candidate", "this model"), ("baseline", "popularity baseline")):
            entry = metrics["models"].get(model, {})
            for segment, segment_label in SEGMENTS.items():
                if segment in entry:
                    rows.append({"version": int(run["version"]), "model": label, "segment": segment_label,
                                 "users": _segment_users(metrics, segment),
                                 "ndcg@10": entry[segment].get("ndcg@10"), "hr@10": entry[segment].get("hr@10")})
    return pd.DataFrame(rows, columns=["version", "model", "segment", "users", "ndcg@10", "hr@10"])


def _segment_users(metrics: dict[str, Any], segment: str) -> int:
    key = {"overall": "users", "cold_start": "cold_start_users", "purchase": "purchase_users"}[segment]
    return int(metrics.get(key, 0))


def paired_comparison(root: str | Path, run: pd.Series) -> dict[str, Any] | None:
    """The run's evaluation against the champion of its time on the same test users (``vs_champion``), if any."""
    return (run_artifact(root, run, "metrics/metrics.json") or {}).get("vs_champion")


def component_metrics(root: str | Path, run: pd.Series) -> pd.DataFrame:
    """NDCG@10 of every candidate source and ranker of a two-stage run (empty for a single model)."""
    metrics = run_artifact(root, run, "metrics/metrics.json") or {}
    rows = [{"component": name.split(":", 1)[1], "kind": name.split(":", 1)[0], "ndcg@10": scores.get("ndcg@10"),
             "hr@10": scores.get("hr@10")} for name, scores in metrics.get("components", {}).items()]
    return pd.DataFrame(rows, columns=["component", "kind", "ndcg@10", "hr@10"])


# ---- data quality -------------------------------------------------------------------------------------------

def validation_summary(root: str | Path) -> dict[str, Any] | None:
    """``reports/validation/summary.json``: the latest validation, with every expectation's result."""
    return _read(Paths(Path(root)).validation_summary)


def validation_time(root: str | Path) -> pd.Timestamp | None:
    """When the latest validation ran (its summary is rewritten on every run, passed or failed)."""
    path = Paths(Path(root)).validation_summary
    return pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC") if path.exists() else None


def validation_history(root: str | Path) -> pd.DataFrame:
    """One row per validated data version (``history.jsonl``): when, rows read and rows kept."""
    path = Paths(Path(root)).reports / "validation" / "history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    frame = pd.DataFrame([json.loads(line) for line in lines if line.strip()],
                         columns=["time", "rows", "good_rows", "dataset", "fingerprint"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


def expectations_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Every expectation of a validation summary: what it checks, whether it held, how many rows broke it."""
    rows = [{"expectation": e["name"], "columns": ", ".join(e.get("columns") or []), "level": e.get("level"),
             "result": "passed" if e["success"] else "FAILED", "bad rows": e.get("unexpected_count"),
             "bad %": e.get("unexpected_percent"), "examples": ", ".join(map(str, e.get("examples") or [])),
             "detail": e.get("message") or ""} for e in summary.get("expectations", [])]
    return pd.DataFrame(rows, columns=["expectation", "columns", "level", "result", "bad rows", "bad %", "examples",
                                       "detail"])


def bad_rows(root: str | Path, summary: dict[str, Any], limit: int = 50) -> pd.DataFrame:
    """Example rows that broke a row-level expectation, with the reason.

    Under the quarantine policy they are ``quarantine.parquet``; otherwise the rows each failed expectation
    reported, looked up by position in the data set that was validated (``data/ingested``), reading only the
    row groups that hold them.
    """
    paths = Paths(Path(root))
    quarantine = paths.reports / "validation" / "quarantine.parquet"
    if quarantine.exists():
        return pq.read_table(quarantine).to_pandas().head(limit)
    wanted = {int(row): e["name"] + "(" + ",".join(e.get("columns") or []) + ")"
              for e in summary.get("expectations", []) if not e["success"] for row in e.get("example_rows") or []}
    positions = sorted(wanted)[:limit]
    frames, offset = [], 0
    for part in sorted((paths.ingested / "events").glob("*.parquet")) if positions else []:
        reader = pq.ParquetFile(part)
        for group in range(reader.metadata.num_row_groups):
            size = reader.metadata.row_group(group).num_rows
            inside = [p - offset for p in positions if offset <= p < offset + size]
            if inside:
                rows = reader.read_row_group(group).take(inside).to_pandas()
                frames.append(rows.assign(reason=[wanted[p + offset] for p in inside]))
            offset += size
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _events(root: str | Path) -> ds.Dataset | None:
    """The validated events (what the models train on), or None before the first successful validation."""
    directory = Paths(Path(root)).validated / "events"
    return ds.dataset(directory, format="parquet") if directory.is_dir() else None


def events_stamp(root: str | Path) -> int | None:
    """Changes whenever a new validated data set is written (its manifest is written last): a cache key."""
    manifest = Paths(Path(root)).validated / "manifest.json"
    return manifest.stat().st_mtime_ns if manifest.exists() else None


@dataclass(frozen=True)
class EventStats:
    """Aggregates of the validated events for the charts, computed in one pass."""

    daily: pd.DataFrame  # day, event_type, events
    users_per_type: dict[str, int]  # shoppers with at least one event of the type
    events_per_type: dict[str, int]
    top_users: list[str]  # most active first
    top_items: list[str]  # most interacted with first


def _merge_counts(running: pa.Table | None, batch: pa.Table, keys: list[str]) -> pa.Table:
    """Add a batch's counts per key to the running ones (memory stays at the number of distinct keys)."""
    counted = batch.group_by(keys).aggregate([([], "count_all")]).rename_columns([*keys, "n"])
    if running is None:
        return counted
    merged = pa.concat_tables([running, counted]).group_by(keys).aggregate([("n", "sum")])
    return merged.rename_columns([*keys, "n"])


def _top(counts: pa.Table, key: str, n: int) -> list[str]:
    return [str(v) for v in counts.sort_by([("n", "descending"), (key, "ascending")]).column(key)[:n].to_pylist()]


def event_stats(root: str | Path, top: int = 5, batch_rows: int = 1 << 20) -> EventStats | None:
    """Daily volume by event type, the funnel counts and the most active shoppers and items.

    Streams the events in batches of ``batch_rows``, so a data set of 100 M events needs memory only for its
    distinct users and items, never for the events themselves.
    """
    dataset = _events(root)
    if dataset is None:
        return None
    daily = pairs = users = items = None
    for batch in dataset.to_batches(columns=["user_id", "item_id", "event_type", "ts"], batch_size=batch_rows):
        table = pa.Table.from_batches([batch])
        days = pa.table({"day": pc.floor_temporal(table["ts"], unit="day"), "event_type": table["event_type"]})
        daily = _merge_counts(daily, days, ["day", "event_type"])
        pairs = _merge_counts(pairs, table.select(["user_id", "event_type"]), ["user_id", "event_type"])
        users = _merge_counts(users, table.select(["user_id"]), ["user_id"])
        items = _merge_counts(items, table.select(["item_id"]), ["item_id"])
    if daily is None or pairs is None or users is None or items is None:
        return None
    per_type = pairs.group_by("event_type").aggregate([("user_id", "count"), ("n", "sum")]).to_pandas()
    per_type = per_type.set_index("event_type")
    frame = daily.to_pandas().rename(columns={"n": "events"}).sort_values(["day", "event_type"], kind="stable")
    return EventStats(frame.reset_index(drop=True),
                      {str(k): int(v) for k, v in per_type["user_id_count"].items()},
                      {str(k): int(v) for k, v in per_type["n_sum"].items()},
                      _top(users, "user_id", top), _top(items, "item_id", top))


def funnel(users_per_type: dict[str, int], events_per_type: dict[str, int]) -> pd.DataFrame:
    """Shoppers and events at each step view -> cart -> fav -> purchase, with the step-to-step conversion."""
    frame = pd.DataFrame({"step": list(EVENT_TYPES),
                          "users": [int(users_per_type.get(t, 0)) for t in EVENT_TYPES],
                          "events": [int(events_per_type.get(t, 0)) for t in EVENT_TYPES]})
    previous = frame["users"].shift(1)
    frame["conversion from previous step"] = (frame["users"] / previous).where(previous > 0)
    first = frame["users"].iloc[0]
    frame["share of viewers"] = frame["users"] / first if first else None
    return frame


@dataclass(frozen=True)
class Freshness:
    """How recent the data behind the models is."""

    source: str | None
    rows: int | None
    users: int | None
    items: int | None
    first_event: pd.Timestamp | None
    last_event: pd.Timestamp | None
    validated_at: pd.Timestamp | None


def _ts_span(files: list[Path]) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """Earliest and latest ``ts`` from the Parquet row-group statistics (no scan); a file without them is read."""
    lows, highs = [], []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        column = meta.schema.names.index("ts")
        stats = [meta.row_group(g).column(column).statistics for g in range(meta.num_row_groups)]
        if all(s is not None and s.has_min_max for s in stats):
            lows += [s.min for s in stats]
            highs += [s.max for s in stats]
        else:
            span = pc.min_max(pq.read_table(path, columns=["ts"]).column("ts"))
            lows.append(span["min"].as_py())
            highs.append(span["max"].as_py())
    def utc(value: Any) -> pd.Timestamp:
        ts = pd.Timestamp(value)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

    lows, highs = [utc(v) for v in lows if v is not None], [utc(v) for v in highs if v is not None]
    return (min(lows) if lows else None), (max(highs) if highs else None)


def freshness(root: str | Path) -> Freshness | None:
    """Size, time span and validation time of the validated data set, or None when there is none."""
    paths = Paths(Path(root))
    manifest = _read(paths.validated / "manifest.json")
    if manifest is None:
        return None
    first, last = _ts_span(sorted((paths.validated / "events").glob("*.parquet")))
    history = validation_history(root)
    validated = history["time"].iloc[-1] if len(history) else pd.Timestamp(
        (paths.validated / "manifest.json").stat().st_mtime, unit="s", tz="UTC")
    return Freshness(manifest.get("source"), manifest.get("rows"), manifest.get("users"), manifest.get("items"),
                     first, last, validated)


# ---- explorers ------------------------------------------------------------------------------------------------

def catalogue(root: str | Path) -> pd.DataFrame | None:
    """The item catalogue of the validated data set (title, brand, price, category), if it has one."""
    path = Paths(Path(root)).validated / "items.parquet"
    return pq.read_table(path).to_pandas() if path.exists() else None


def item_events(root: str | Path, item_id: str) -> pd.DataFrame | None:
    """Every validated event of one item (a filtered scan), or None when there are no validated events."""
    dataset = _events(root)
    if dataset is None:
        return None
    table = dataset.to_table(columns=["user_id", "event_type", "ts"], filter=pc.field("item_id") == item_id)
    return table.to_pandas()


def daily_volume(events: pd.DataFrame) -> pd.DataFrame:
    """Events per UTC day and event type of a small frame (one item's events)."""
    counts = events.groupby([events["ts"].dt.floor("D"), "event_type"]).size()
    return counts.rename("events").reset_index().rename(columns={"ts": "day"})


def item_audience(events: pd.DataFrame) -> pd.DataFrame:
    """Who interacted with an item (its events): per user, events by type and the last time, buyers first."""
    if events.empty:
        return pd.DataFrame(columns=["user_id", *EVENT_TYPES, "last seen"])
    table = events.pivot_table(index="user_id", columns="event_type", values="ts", aggfunc="count", fill_value=0)
    table = table.reindex(columns=list(EVENT_TYPES), fill_value=0)
    table["last seen"] = events.groupby("user_id")["ts"].max()
    return table.sort_values(["purchase", "cart", "fav", "view"], ascending=False, kind="stable").reset_index()


def recommendations_frame(recs: list[Recommendation], catalogue: pd.DataFrame | None) -> pd.DataFrame:
    """Recommendations as a table, with the item's category and title when the catalogue has them."""
    columns = ["rank", "item_id", "reason", "source", "score"]
    frame = pd.DataFrame([{"rank": r.rank, "item_id": r.item_id, "reason": r.reason, "source": r.source,
                           "score": r.score} for r in recs], columns=columns)
    if catalogue is not None:
        extra = [c for c in ("category_id", "title", "brand", "price") if c in catalogue.columns]
        frame = frame.merge(catalogue[["item_id", *extra]], on="item_id", how="left")
    return frame


# the fields of an online experiment's reading (pipelines.experiments.online.look) besides its arms and tests
READING_COLUMNS = ["experiment", "at", "champion_version", "challenger_version", "decision", "applied", "share",
                   "primary", "guardrail", "alpha"]


def experiment_readings(root: str | Path) -> pd.DataFrame:
    """Every reading of every online experiment (``reports/experiments.jsonl``), oldest first: who was tested,
    the decision, ``<arm>_<field>`` for each arm and ``<outcome>_<field>`` for each tested outcome (an unbounded
    interval end is missing). Lines that do not parse or are not readings are left out."""
    from pipelines.experiments.online import history

    rows = []
    for record in history(Paths(Path(root)).reports):
        if not isinstance(record, dict) or not isinstance(record.get("arms"), dict):
            continue
        row = {key: record.get(key) for key in READING_COLUMNS}
        for arm, summary in record["arms"].items():
            row |= {f"{arm}_{f}": v for f, v in summary.items()} if isinstance(summary, dict) else {}
        for outcome, test in (record.get("tests") or {}).items():
            row |= {f"{outcome}_{f}": v for f, v in test.items()} if isinstance(test, dict) else {}
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in READING_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["at"] = pd.to_datetime(frame["at"], utc=True, errors="coerce")
    return frame.dropna(subset=["at"]).reset_index(drop=True)
