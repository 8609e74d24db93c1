"""Splitters: the right targets per protocol, and nothing after a target leaks into its history."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import SplitParams
from pipelines.core.errors import ShoprecError
from pipelines.data.events_io import write_events
from pipelines.data.partitions import bucket_of
from pipelines.data.schema import Manifest, events_dir
from pipelines.data.split import leave_one_out, run_split, temporal
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


def _dataset(root: Path, events: pd.DataFrame, parts: int, partitioned: bool) -> Path:
    """A canonical data set of ``parts`` event parts: user buckets (as validation writes them) or row chunks."""
    events_dir(root).mkdir(parents=True)
    if partitioned:
        import pyarrow as pa

        bucket = bucket_of(pa.array(events["user_id"]), parts)
        chunks = [events[bucket == b] for b in range(parts)]
    else:
        bounds = np.linspace(0, len(events), parts + 1).astype(int)
        chunks = [events.iloc[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    for n, chunk in enumerate(chunks):
        write_events(chunk, events_dir(root) / f"part-{n:05d}.parquet")
    extra = {"partitions": parts} if partitioned else {}
    Manifest(source="test", rows=len(events), extra=extra).write(root)
    return root


def _synthetic(n_users: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{rng.integers(0, 40)}", "view", int(t)) for u in range(n_users)
            for t in np.sort(rng.integers(0, 9 * 86_400, 8))]
    return make_events(rows)


def _read(split_dir: Path, what: str) -> pd.DataFrame:
    frame = pd.read_parquet(split_dir / what)
    return frame.sort_values(list(frame.columns[:3]) + (["ts"] if "ts" in frame else []),
                             kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("protocol", ["leave_one_out", "temporal"])
@pytest.mark.parametrize("partitioned", [True, False])
def test_split_by_parts_equals_one_part(tmp_path, monkeypatch, protocol, partitioned):
    """Whole users per part (buckets from validation, or row chunks shuffled by the stage) change nothing,
    and the temporal cut is the whole data set's, not each part's."""
    monkeypatch.setattr("pipelines.data.partitions.ROWS_PER_PARTITION", 150)  # 480 events: 4 buckets
    events, params = _synthetic(), SplitParams(protocol=protocol)
    run_split(_dataset(tmp_path / "one", events, 1, False), tmp_path / "split1", params)
    summary = run_split(_dataset(tmp_path / "many", events, 4, partitioned), tmp_path / "split4", params)
    assert summary["parts"] == 4
    assert len(list((tmp_path / "split4" / "events").glob("*.parquet"))) == 4
    for what in ("events", "targets"):
        pd.testing.assert_frame_equal(_read(tmp_path / "split1", what), _read(tmp_path / "split4", what))
    assert not list(tmp_path.glob(".split-buckets-*"))  # the shuffle's temporary parts are gone


def test_no_targets_is_a_clear_error(tmp_path):
    tiny = make_events([("u1", "a", "view", 0)])
    with pytest.raises(ShoprecError, match="no targets"):
        run_split(_dataset(tmp_path / "data", tiny, 1, False), tmp_path / "split", SplitParams())
    assert not (tmp_path / "split").exists()
