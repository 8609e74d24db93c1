"""Train / validation / test splits as plain functions (the Microsoft Recommenders way).

Every event gets a ``fold``: ``train`` events are the history for validation, ``train`` + ``valid``
events the history for test. Targets live in a separate table so that no model input can see them.

* ``leave_one_out``: per user, the last *new* item (not seen earlier by that user, when
  ``exclude_seen``) is the test target and the one before it the validation target.
* ``temporal``: a global time cut; the last ``test_days`` are test, the ``valid_days`` before validation.
  Each user's targets are the new items of that window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.atomic import atomic_dir, write_json
from pipelines.core.config import SplitParams
from pipelines.core.errors import ShoprecError
from pipelines.data.events_io import read_events, read_items, write_items

FOLDS = ("train", "valid", "test")
TARGET_COLUMNS = ["user_id", "item_id", "event_type"]


@dataclass
class Split:
    events: pd.DataFrame  # canonical events + ``fold`` in FOLDS (test-fold events are never model input)
    targets: pd.DataFrame  # user_id, item_id, event_type, fold in {valid, test}


def _order(events: pd.DataFrame) -> pd.DataFrame:
    # A stable sort keeps the source order for equal timestamps (sequence files rely on it).
    return events.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)


def _first_seen(events: pd.DataFrame) -> np.ndarray:
    return ~events.duplicated(["user_id", "item_id"]).to_numpy()


def leave_one_out(events: pd.DataFrame, exclude_seen: bool = True) -> Split:
    """Hold out each user's last (new) item for test and the one before for validation."""
    ev = _order(events)
    eligible = _first_seen(ev) if exclude_seen else np.ones(len(ev), dtype=bool)
    # Rank eligible events from the end of each user's sequence: 0 = test target, 1 = validation target.
    rank_from_end = (
        pd.Series(eligible.astype(int)[::-1]).groupby(ev["user_id"].to_numpy()[::-1]).cumsum().to_numpy()[::-1]
    )
    n_eligible = pd.Series(eligible.astype(int)).groupby(ev["user_id"]).transform("sum").to_numpy()
    usable = n_eligible >= 2  # a validation and a test target; users without training events go below
    is_test = usable & eligible & (rank_from_end == 1)
    is_valid = usable & eligible & (rank_from_end == 2)
    # Everything from the validation target on is valid-fold, from the test target on test-fold.
    ev["_v"] = is_valid
    ev["_t"] = is_test
    after_valid = ev.groupby("user_id")["_v"].cummax().to_numpy()
    after_test = ev.groupby("user_id")["_t"].cummax().to_numpy()
    fold = np.where(after_test, "test", np.where(after_valid, "valid", "train"))
    ev = ev.drop(columns=["_v", "_t"]).assign(fold=fold)
    has_train = ev[ev["fold"] == "train"].groupby("user_id").size()
    keep_users = set(has_train.index)
    targets = pd.concat(
        [
            ev.loc[is_valid, TARGET_COLUMNS].assign(fold="valid"),
            ev.loc[is_test, TARGET_COLUMNS].assign(fold="test"),
        ]
    )
    targets = targets[targets["user_id"].isin(keep_users)].reset_index(drop=True)
    return Split(events=ev, targets=targets)


def temporal(events: pd.DataFrame, test_days: float, valid_days: float, exclude_seen: bool = True) -> Split:
    """Global time cut: the last ``test_days`` are test, the ``valid_days`` before them validation."""
    ev = _order(events)
    end = ev["ts"].max()
    test_start = end - pd.Timedelta(days=test_days)
    valid_start = test_start - pd.Timedelta(days=valid_days)
    fold = np.where(ev["ts"] > test_start, "test", np.where(ev["ts"] > valid_start, "valid", "train"))
    ev = ev.assign(fold=fold)
    eligible = _first_seen(ev) if exclude_seen else np.ones(len(ev), dtype=bool)
    train_users = set(ev.loc[ev["fold"] == "train", "user_id"])
    parts = []
    for name in ("valid", "test"):
        sel = ev[(ev["fold"] == name) & eligible & ev["user_id"].isin(train_users)]
        parts.append(sel[TARGET_COLUMNS].drop_duplicates(["user_id", "item_id"]).assign(fold=name))
    return Split(events=ev, targets=pd.concat(parts).reset_index(drop=True))


def make_split(events: pd.DataFrame, params: SplitParams) -> Split:
    if params.protocol == "leave_one_out":
        split = leave_one_out(events, params.exclude_seen)
    else:
        split = temporal(events, params.test_days, params.valid_days, params.exclude_seen)
    if split.targets.empty:
        raise ShoprecError(f"split: protocol {params.protocol} produced no targets (too few events per user?)")
    return split


def run_split(dataset_dir: str | Path, out_dir: str | Path, params: SplitParams) -> dict[str, int]:
    """Stage entry point: split a validated data set into ``out_dir`` (events.parquet, targets.parquet)."""
    split = make_split(read_events(dataset_dir), params)
    items = read_items(dataset_dir)
    with atomic_dir(out_dir) as tmp:
        split.events.to_parquet(tmp / "events.parquet", index=False)
        split.targets.to_parquet(tmp / "targets.parquet", index=False)
        if items is not None:
            write_items(items, tmp / "items.parquet")
        summary = {
            "protocol": params.protocol,
            "events": len(split.events),
            **{f"{f}_events": int((split.events["fold"] == f).sum()) for f in FOLDS},
            **{f"{f}_targets": int((split.targets["fold"] == f).sum()) for f in ("valid", "test")},
        }
        write_json(tmp / "summary.json", summary)
    return summary
