"""An item that changed category has one category everywhere: the latest one, in ranking features and in serving."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.features.encode import Features
from pipelines.features.interactions import Vocab
from pipelines.features.ranking import ItemInfo
from pipelines.models.train import catalogue
from tests.conftest import make_events


def features(items: pd.DataFrame | None = None) -> Features:
    """Events sorted by user then time, as the features stage stores them, so row order is not time order.

    ``moved`` is seen in ``old`` at t=1 (by u2) and in ``new`` at t=2 (by u1); ``moved_back`` the other way round.
    """
    events = make_events([("u1", "moved", "view", 2), ("u1", "moved_back", "view", 1),
                          ("u2", "moved", "view", 1), ("u2", "moved_back", "view", 2), ("u2", "plain", "view", 3)])
    events["category_id"] = ["new", "new", "old", "old", "old"]
    events["fold"] = "train"
    vocab = Vocab(users=np.array(["u1", "u2"], dtype=object),
                  items=np.array(["moved", "moved_back", "plain", "unseen"], dtype=object))
    return Features.from_frames(vocab, events, pd.DataFrame(columns=["user_id", "item_id", "event_type", "fold"]),
                                items)


def feature_categories(f: Features) -> list[str | None]:
    info = ItemInfo.build(f.vocab, f.items, f.category)
    names = sorted({"new", "old"} | set([] if f.items is None else f.items["category_id"].dropna()))
    return [names[c] if c >= 0 else None for c in info.category]


def served_categories(f: Features) -> list[str | None]:
    """The categories the train stage writes to ``items.parquet`` for serving filters (None where unknown)."""
    return catalogue(f)["category_id"].to_pylist()


def test_latest_event_category_wins_in_features_and_serving():
    f = features()
    expected = ["new", "old", "old", None]
    assert feature_categories(f) == expected
    assert served_categories(f) == expected


def test_catalogue_table_wins_over_events_in_both():
    f = features(pd.DataFrame({"item_id": ["moved_back", "unseen"], "category_id": ["shelf", None]}))
    expected = ["new", "shelf", "old", None]
    assert feature_categories(f) == expected
    assert served_categories(f) == expected
