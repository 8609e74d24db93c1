"""Features stage: encode the split once (vocabulary, integer events, item statistics) for all models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.atomic import atomic_dir, write_json
from pipelines.interactions import Interactions, Vocab
from pipelines.schema import EVENT_TYPES


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


def item_stats(events: pd.DataFrame) -> pd.DataFrame:
    """Counts per item and event type plus conversion rates, for reports and the dashboard."""
    counts = events.pivot_table(index="item_id", columns="event_type", values="user_id", aggfunc="size", fill_value=0)
    counts = counts.reindex(columns=list(EVENT_TYPES), fill_value=0)
    counts["users"] = events.groupby("item_id")["user_id"].nunique()
    counts["view_to_purchase"] = counts["purchase"] / counts["view"].where(counts["view"] > 0)
    return counts.reset_index()


def run_features(split_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Stage entry point: read ``split_dir`` and write the encoded features to ``out_dir``."""
    split_dir = Path(split_dir)
    events = pd.read_parquet(split_dir / "events.parquet")
    targets = pd.read_parquet(split_dir / "targets.parquet")
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
        item_stats(events[events["fold"] != "test"]).to_parquet(tmp / "item_stats.parquet", index=False)
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
