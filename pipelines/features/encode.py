"""Features stage: encode the split once (vocabulary, integer events, item and user statistics) for all models.

The statistics are the engine-chosen part (``pipelines.core.engine``): pandas on one machine, Dask DataFrames over the
split's Parquet when ``SHOPREC_DASK_ADDRESS`` names a cluster; one implementation serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.atomic import atomic_dir, write_json
from pipelines.core.engine import Frame, collect, read_parquet
from pipelines.data.schema import EVENT_TYPES
from pipelines.features.interactions import Interactions, Vocab


@dataclass
class Features:
    """The encoded split: every model reads histories from here, targets stay separate."""

    vocab: Vocab
    events: pd.DataFrame  # user_id, item_id, event_type, ts, fold (sorted by user, ts)
    targets: pd.DataFrame  # user_id, item_id, event_type, fold
    items: pd.DataFrame | None

    def history(self, folds: tuple[str, ...]) -> Interactions:
        """Events of the given folds as model input; ("train",) for validation, ("train", "valid") for test."""
        return Interactions.from_events(self.events[self.events["fold"].isin(folds)], self.vocab)

    def target_sets(self, fold: str, event_types: tuple[str, ...] = EVENT_TYPES) -> tuple[np.ndarray, list[np.ndarray]]:
        """User codes with targets in ``fold`` and, per user, the target item codes."""
        t = self.targets[(self.targets["fold"] == fold) & self.targets["event_type"].isin(event_types)]
        users = self.vocab.user_codes(t["user_id"])
        items = self.vocab.item_codes(t["item_id"])
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        uniq, starts = np.unique(users, return_index=True)
        return uniq, np.split(items, starts[1:])


def event_counts(events: Frame, key: str, other: str, distinct_name: str) -> Frame:
    """Events per ``key`` and event type plus the number of distinct ``other`` ids, indexed by ``key``.

    Written once against the API pandas and Dask DataFrames share, so one machine and a cluster compute the
    same table (checked in tests/scale); the result is lazy on Dask until ``engine.collect``.
    """
    flags = events[[key]].assign(**{t: (events["event_type"] == t).astype("int64") for t in EVENT_TYPES})
    counts = flags.groupby(key).sum()
    distinct = events.groupby(key)[other].nunique().rename(distinct_name).to_frame()
    return counts.merge(distinct, left_index=True, right_index=True)


def item_stats(events: Frame) -> pd.DataFrame:
    """Counts per item and event type plus conversion rates, for reports and the dashboard."""
    counts = _finish(collect(event_counts(events, "item_id", "user_id", "users")), "item_id")
    counts["view_to_purchase"] = counts["purchase"] / counts["view"].where(counts["view"] > 0)
    return counts.reset_index()


def user_stats(events: Frame) -> pd.DataFrame:
    """Counts per user and event type plus distinct items: activity profiles for reports and the dashboard."""
    return _finish(collect(event_counts(events, "user_id", "item_id", "items")), "user_id").reset_index()


def _finish(counts: pd.DataFrame, key: str) -> pd.DataFrame:
    """Sorted by id with int64 counts and a plain string index, whichever engine computed it."""
    counts = counts.sort_index().astype("int64")
    counts.index = counts.index.astype(str).rename(key)
    return counts.rename_axis(columns="event_type")


def run_features(split_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Stage entry point: read ``split_dir`` and write the encoded features to ``out_dir``."""
    split_dir = Path(split_dir)
    events = pd.read_parquet(split_dir / "events")  # the split's parts of whole users, in part order
    targets = pd.read_parquet(split_dir / "targets")
    items_file = split_dir / "items.parquet"
    items = pd.read_parquet(items_file) if items_file.exists() else None
    vocab = Vocab.build(events, items)
    with atomic_dir(out_dir) as tmp:
        pd.DataFrame({"user_id": vocab.users}).to_parquet(tmp / "users.parquet", index=False)
        pd.DataFrame({"item_id": vocab.items}).to_parquet(tmp / "items_vocab.parquet", index=False)
        events[["user_id", "item_id", "event_type", "ts", "category_id", "fold"]].to_parquet(
            tmp / "events.parquet", index=False
        )
        targets.to_parquet(tmp / "targets.parquet", index=False)
        if items is not None:
            items.to_parquet(tmp / "items.parquet", index=False)
        # engine-chosen: pandas here, Dask DataFrames over the split's Parquet when a cluster is configured
        known = read_parquet(split_dir / "events", ["user_id", "item_id", "event_type"],
                             filters=[("fold", "!=", "test")])
        item_stats(known).to_parquet(tmp / "item_stats.parquet", index=False)
        user_stats(known).to_parquet(tmp / "user_stats.parquet", index=False)
        summary = {"users": len(vocab.users), "items": len(vocab.items), "events": len(events)}
        write_json(tmp / "summary.json", summary)
    return summary


def load_features(features_dir: str | Path) -> Features:
    d = Path(features_dir)
    vocab = Vocab(
        users=pd.read_parquet(d / "users.parquet")["user_id"].to_numpy(dtype=object),
        items=pd.read_parquet(d / "items_vocab.parquet")["item_id"].to_numpy(dtype=object),
    )
    items = pd.read_parquet(d / "items.parquet") if (d / "items.parquet").exists() else None
    return Features(vocab=vocab, events=pd.read_parquet(d / "events.parquet"),
                    targets=pd.read_parquet(d / "targets.parquet"), items=items)
