"""Precomputed top-K lists of every known user, so the API answers them in microseconds instead of milliseconds.

A store is a directory (default ``<root>/serving``) written atomically: ``recommendations.parquet`` (user_id,
rank, item_id, score, source, reason, related_item_id) and ``manifest.json`` (the model id it was computed
with, k, counts). The lists are the model's ``rank`` with the user's seen items excluded, exactly what the API
computes on the fly, and ignore business rules, which the API applies per request; a store whose model id
differs from the served model's is stale and not used.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.atomic import atomic_dir, read_json, write_json
from pipelines.core.errors import ShoprecError
from pipelines.models.base import Ranked
from pipelines.serving.model import ServingModel

log = logging.getLogger(__name__)

LISTS_FILE = "recommendations.parquet"
MANIFEST_FILE = "manifest.json"
BATCH_USERS = 1024


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
        "reason": [model.reason(n, int(r), int(i), False) for n, r, i in zip(names, related, items, strict=True)],
        "related_item_id": np.where(related >= 0, model.item_ids[np.maximum(related, 0)], None),
    })


def write_recommendations(model_dir: str | Path, out_dir: str | Path, k: int = 100) -> dict[str, Any]:
    """Batch-score every known user of the model in ``model_dir`` and write their top ``k`` to ``out_dir``.

    Returns a summary (users, rows, seconds, model_id, out_dir).
    """
    if k < 1:
        raise ShoprecError(f"k must be at least 1, got {k}")
    start = time.perf_counter()
    model = ServingModel.load(model_dir)
    users = np.arange(model.history_.n_users)
    frames = [lists_frame(model, batch, model.top_lists(batch, k))
              for batch in (users[i: i + BATCH_USERS] for i in range(0, len(users), BATCH_USERS))]
    frame = pd.concat(frames, ignore_index=True) if frames else lists_frame(model, users, model.top_lists(users, k))
    seconds = round(time.perf_counter() - start, 2)
    summary = {"users": len(users), "rows": len(frame), "k": k, "seconds": seconds, "model_id": model.model_id,
               "trained_at": model.meta.get("trained_at"), "model_dir": str(Path(model_dir).resolve()),
               "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with atomic_dir(out_dir) as tmp:
        frame.to_parquet(tmp / LISTS_FILE, index=False)
        write_json(tmp / MANIFEST_FILE, summary)
    log.info("batch recommendations written users=%d rows=%d seconds=%.1f", len(users), len(frame), seconds)
    return summary | {"out_dir": str(Path(out_dir).resolve())}


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
    return model.attach_store(Ranked(items, scores, sources, related), manifest["model_id"])
