"""Precomputed top-K lists of every known user, so the API answers them in microseconds instead of milliseconds.

A store is a directory (default ``<root>/serving``) written atomically: ``recommendations.parquet`` (user_id,
rank, item_id, score, source, reason, related_item_id), ``history.parquet`` (each user's newest events as codes of
the model's vocabulary: what the API ranks live events after) and ``manifest.json`` (the model id it was computed
with, k, counts). The lists are the model's ``rank`` with the user's seen items excluded, exactly what the API
computes on the fly, and ignore business rules, which the API applies per request; a store whose model id
differs from the served model's is stale and not used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_dir, read_json, write_json
from pipelines.core.engine import imap_parts
from pipelines.core.errors import ShoprecError
from pipelines.features.interactions import Interactions, PartedHistory
from pipelines.models.base import Ranked
from pipelines.serving.model import Recent, ServingModel

log = logging.getLogger(__name__)

LISTS_FILE = "recommendations.parquet"
HISTORY_FILE = "history.parquet"
MANIFEST_FILE = "manifest.json"
# newest events kept per user: a model trained on parts holds no user history, so the API reads a known user's
# recent history from here to rank it with the live events (no source reads further back: history_len 20, SASRec 50)
STORE_HISTORY = 50
HISTORY_SCHEMA = pa.schema([("user", pa.int32()), ("item", pa.int32()), ("event", pa.int8())])
BATCH_USERS = 1024
LISTS_SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int16()), ("item_id", pa.string()),
                          ("score", pa.float32()), ("source", pa.string()), ("reason", pa.string()),
                          ("related_item_id", pa.string())])
RankFn = Callable[[np.ndarray, int], Ranked]  # users, k -> their lists


def default_store_dir(root: str | Path) -> Path:
    return Path(root) / "serving"


def lists_frame(model: ServingModel, users: np.ndarray, lists: Ranked) -> pd.DataFrame:
    """Long table of ``lists`` (rows of ``users``), one row per (user, rank), padding dropped."""
    row, col = np.nonzero(lists.items >= 0)
    items, sources, related = lists.items[row, col], lists.sources[row, col], lists.related[row, col]
    names = np.asarray(model.source_names, dtype=object)[sources]
    return pd.DataFrame({
        "user_id": model.history_.vocab.users[users[row]].astype(str),
        "rank": (col + 1).astype(np.int16),
        "item_id": model.item_ids[items].astype(str),
        "score": lists.scores[row, col],
        "source": names,
        "reason": model.reasons(sources.tolist(), related.tolist(), items.tolist(), similar=False),
        "related_item_id": np.where(related >= 0, model.item_ids[np.maximum(related, 0)], None),
    })


def write_recommendations(model_dir: str | Path, out_dir: str | Path, k: int = 100,
                          features_dir: str | Path | None = None) -> dict[str, Any]:
    """Batch-score every known user of the model in ``model_dir`` and write their top ``k`` to ``out_dir``.

    A model trained on several parts of users keeps no user state: its users are then ranked one part of
    ``features_dir`` (the features it was trained from) at a time, as tasks on the Dask cluster when one is
    configured. Each part's rows are written as they arrive, so memory holds about one part's lists. Returns a
    summary (users, rows, seconds, model_id, out_dir).
    """
    if k < 1:
        raise ShoprecError(f"k must be at least 1, got {k}")
    start = time.perf_counter()
    model = ServingModel.load(model_dir)
    users_total = rows = 0
    with atomic_dir(out_dir) as tmp:
        with (pq.ParquetWriter(tmp / LISTS_FILE, LISTS_SCHEMA) as writer,
              pq.ParquetWriter(tmp / HISTORY_FILE, HISTORY_SCHEMA) as history_writer):
            for users, table, recent in _part_tables(model, features_dir, k):
                writer.write_table(table)
                history_writer.write_table(recent)
                users_total, rows = users_total + users, rows + table.num_rows
                log.info("batch part written users=%d rows=%d", users, table.num_rows)
        seconds = round(time.perf_counter() - start, 2)
        summary = {"users": users_total, "rows": rows, "k": k, "seconds": seconds, "model_id": model.model_id,
                   "trained_at": model.meta.get("trained_at"), "model_dir": str(Path(model_dir).resolve()),
                   "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(tmp / MANIFEST_FILE, summary)
    log.info("batch recommendations written users=%d rows=%d seconds=%.1f", users_total, rows, seconds)
    return summary | {"out_dir": str(Path(out_dir).resolve())}


def _part_tables(model: ServingModel, features_dir: str | Path | None,
                 k: int) -> Iterator[tuple[int, pa.Table, pa.Table]]:
    """(users, rows of their lists, their recent events) per part: the model's own history, or each part of
    ``features_dir``."""
    if len(model.history_) or features_dir is None:
        users = np.arange(model.history_.n_users)
        yield *_lists_table(model, lambda users, k: model.top_lists(users, k), users, k), _recent(model.history_)
        return
    from pipelines.features.encode import load_features
    from pipelines.models.train import ALL_EVENTS

    store = load_features(features_dir)
    if (store.vocab.n_users, store.vocab.n_items) != (model.history_.n_users, model.history_.n_items):
        raise ShoprecError(f"{features_dir}: not the features the model was trained on "
                           f"({store.vocab.n_users} users / {store.vocab.n_items} items, model: "
                           f"{model.history_.n_users} / {model.history_.n_items})")
    history = store.histories(ALL_EVENTS)
    yield from imap_parts(_attached_part_table, [(model, history, i, k) for i in range(len(history))])


def _attached_part_table(model: ServingModel, history: PartedHistory, i: int,
                         k: int) -> tuple[int, pa.Table, pa.Table]:
    """The lists of part ``i``'s users, ranked by the model attached to that part, and their recent events (a task
    on a cluster)."""
    part = history.part(i)
    attached = model.model.attach(part)
    users = np.unique(part.user).astype(np.int64)
    return *_lists_table(model, lambda users, k: attached.rank(users, k, True), users, k), _recent(part)


def _recent(history: Interactions) -> pa.Table:
    """Each user's newest ``STORE_HISTORY`` events of ``history`` (codes, oldest first)."""
    keep = history.steps_back < STORE_HISTORY
    return pa.Table.from_arrays([pa.array(history.user[keep].astype(np.int32)),
                                 pa.array(history.item[keep].astype(np.int32)),
                                 pa.array(history.event[keep].astype(np.int8))], schema=HISTORY_SCHEMA)


def read_recent(store_dir: Path, n_users: int) -> Recent | None:
    """The store's recent events per user (None for a store written before it kept them)."""
    path = store_dir / HISTORY_FILE
    if not path.exists():
        return None
    table = pq.read_table(path)
    user = table["user"].to_numpy()
    order = np.argsort(user, kind="stable")  # parts arrive in any order; each user's events stay in time order
    bounds = np.r_[0, np.cumsum(np.bincount(user, minlength=n_users))]
    return Recent(bounds, table["item"].to_numpy()[order].astype(np.int64),
                  table["event"].to_numpy()[order].astype(np.int64))


def _lists_table(model: ServingModel, rank: RankFn, users: np.ndarray, k: int) -> tuple[int, pa.Table]:
    """``users``' top-k lists by ``rank`` as rows of the store, ranked ``BATCH_USERS`` at a time."""
    tables = [pa.Table.from_pandas(lists_frame(model, batch, rank(batch, k)), LISTS_SCHEMA, preserve_index=False)
              for batch in (users[i: i + BATCH_USERS] for i in range(0, len(users), BATCH_USERS))]
    return len(users), pa.concat_tables([LISTS_SCHEMA.empty_table(), *tables])


def read_manifest(store_dir: str | Path) -> dict[str, Any] | None:
    path = Path(store_dir) / MANIFEST_FILE
    return read_json(path) if path.exists() else None


def attach_store(model: ServingModel, store_dir: str | Path) -> bool:
    """Load the store into ``model`` if it was written by the same model; log and return False otherwise."""
    manifest = read_manifest(store_dir)
    if manifest is None:
        log.warning("no serving store at %s: known users are scored on the fly", store_dir)
        return False
    if manifest.get("model_id") != model.model_id:
        log.warning("serving store at %s is stale (model %s, served %s): scoring on the fly",
                    store_dir, manifest.get("model_id"), model.model_id)
        return False
    frame = pd.read_parquet(Path(store_dir) / LISTS_FILE)
    n_users, depth = model.history_.n_users, int(manifest["k"])
    user = model.user_index.get_indexer(frame["user_id"])
    col = frame["rank"].to_numpy(np.int64) - 1
    keep = (user >= 0) & (col < depth)
    user, col, frame = user[keep], col[keep], frame[keep]
    items = np.full((n_users, depth), -1, dtype=np.int64)
    scores = np.zeros((n_users, depth), dtype=np.float32)
    sources = np.full((n_users, depth), -1, dtype=np.int16)
    related = np.full((n_users, depth), -1, dtype=np.int64)
    items[user, col] = model.item_index.get_indexer(frame["item_id"])
    scores[user, col] = frame["score"].to_numpy(np.float32)
    sources[user, col] = frame["source"].map(model.source_index).fillna(-1).to_numpy(np.int16)
    related[user, col] = model.item_index.get_indexer(frame["related_item_id"].fillna(""))
    return model.attach_store(Ranked(items, scores, sources, related), manifest["model_id"],
                              read_recent(Path(store_dir), n_users))
