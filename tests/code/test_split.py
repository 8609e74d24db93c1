"""Splitters: the right targets per protocol, and nothing after a target leaks into its history."""

import pandas as pd
import pytest

from pipelines.core.config import SplitParams
from pipelines.core.errors import ShoprecError
from pipelines.data.split import leave_one_out, make_split, temporal
from tests.conftest import make_events


@pytest.fixture
def events() -> pd.DataFrame:
    return make_events([
        ("u1", "a", "view", 0), ("u1", "b", "view", 10), ("u1", "a", "view", 20),
        ("u1", "c", "cart", 30), ("u1", "d", "purchase", 40), ("u1", "d", "view", 50),
        ("u2", "x", "view", 5), ("u2", "y", "view", 15),  # too short for two targets + history
    ])


def test_leave_one_out_targets_last_new_items(events):
    split = leave_one_out(events, exclude_seen=True)
    t = split.targets.set_index("fold")
    assert t.loc["test", "item_id"] == "d" and t.loc["valid", "item_id"] == "c"
    u1 = split.events[split.events.user_id == "u1"]
    assert u1.fold.tolist() == ["train", "train", "train", "valid", "test", "test"]
    assert set(split.targets.user_id) == {"u1"}


def test_leave_one_out_without_exclusion_uses_last_event(events):
    split = leave_one_out(events, exclude_seen=False)
    t = split.targets[split.targets.user_id == "u1"].set_index("fold")
    assert t.loc["test", "item_id"] == "d" and t.loc["valid", "item_id"] == "d"


def test_temporal_split_by_global_time():
    ev = make_events([("u1", "a", "view", 0), ("u1", "b", "view", 86400 * 2),
                      ("u1", "c", "view", 86400 * 3), ("u2", "a", "view", 0), ("u2", "c", "view", 86400 * 3)])
    split = temporal(ev, test_days=1, valid_days=1)
    assert split.events.fold.tolist() == ["train", "valid", "test", "train", "test"]
    assert sorted(map(tuple, split.targets[["user_id", "item_id", "fold"]].values)) == [
        ("u1", "b", "valid"), ("u1", "c", "test"), ("u2", "c", "test")]


def test_changing_a_test_target_changes_no_training_history(events):
    before = leave_one_out(events)
    changed = events.copy()
    changed.loc[(changed.user_id == "u1") & (changed.item_id == "d"), "item_id"] = "zzz"
    after = leave_one_out(changed)
    keep = ["user_id", "item_id", "event_type", "ts"]
    for fold in ("train", "valid"):
        pd.testing.assert_frame_equal(before.events.loc[before.events.fold == fold, keep],
                                      after.events.loc[after.events.fold == fold, keep])


def test_no_targets_is_a_clear_error():
    tiny = make_events([("u1", "a", "view", 0)])
    with pytest.raises(ShoprecError, match="no targets"):
        make_split(tiny, SplitParams())
