"""Train / validation / test splits as plain functions (the Microsoft Recommenders way).

Every event gets a ``fold``: ``train`` events are the history for validation, ``train`` + ``valid``
events the history for test. Targets live in a separate table so that no model input can see them.

* ``leave_one_out``: per user, the last *new* item (not seen earlier by that user, when
  ``exclude_seen``) is the test target and the one before it the validation target.
* ``temporal``: a global time cut; the last ``test_days`` are test, the ``valid_days`` before validation.
  Each user's targets are the new items of that window.

Both protocols are per user (the temporal cut is global, but computed once before), so the stage splits a data
set one part of whole users at a time (``pipelines.data.partitions``) and memory holds one part, whatever the
size of the log. The output mirrors the parts: ``events/part-*.parquet`` and ``targets/part-*.parquet``.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_dir, write_json
from pipelines.core.config import SplitParams
from pipelines.core.engine import map_parts
from pipelines.core.errors import DataError, ShoprecError
from pipelines.data.events_io import read_items, write_items
from pipelines.data.partitions import partition_count, shuffle_by_user
from pipelines.data.schema import EVENTS_SCHEMA, FOLDS, Manifest, events_dir

log = logging.getLogger(__name__)

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


def temporal(events: pd.DataFrame, test_days: float, valid_days: float, exclude_seen: bool = True,
             end: pd.Timestamp | None = None) -> Split:
    """Global time cut: the last ``test_days`` before ``end`` (default: the newest event) are test, the
    ``valid_days`` before them validation. A part of a larger data set passes the whole data set's ``end``."""
    ev = _order(events)
    end = ev["ts"].max() if end is None else end
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


def make_split(events: pd.DataFrame, params: SplitParams, end: pd.Timestamp | None = None) -> Split:
    """Split ``events`` (whole users); ``end`` is the newest event of the whole data set (temporal protocol)."""
    if params.protocol == "leave_one_out":
        return leave_one_out(events, params.exclude_seen)
    return temporal(events, params.test_days, params.valid_days, params.exclude_seen, end)


def run_split(dataset_dir: str | Path, out_dir: str | Path, params: SplitParams) -> dict[str, int | str]:
    """Stage entry point: split a validated data set into ``out_dir``, one part of whole users at a time.

    Writes ``events/`` (canonical events + ``fold``) and ``targets/`` parts named like the user parts, the
    catalogue (``items.parquet``) when there is one, and ``summary.json``.
    """
    totals: Counter[str] = Counter()
    with user_parts(Path(dataset_dir)) as parts, atomic_dir(out_dir) as tmp:
        end = _newest(parts) if params.protocol == "temporal" else None
        (tmp / "events").mkdir()
        (tmp / "targets").mkdir()
        for counts in map_parts(_split_part, [(path, tmp, params, end) for path in parts]):
            totals.update(counts)
        if not totals["valid_targets"] + totals["test_targets"]:
            raise ShoprecError(f"split: protocol {params.protocol} produced no targets (too few events per user?)")
        items = read_items(dataset_dir)
        if items is not None:
            write_items(items, tmp / "items.parquet")
        summary = {"protocol": params.protocol, "parts": len(parts), "events": totals["events"],
                   **{f"{f}_events": totals[f"{f}_events"] for f in FOLDS},
                   **{f"{f}_targets": totals[f"{f}_targets"] for f in ("valid", "test")}}
        write_json(tmp / "summary.json", summary)
    return summary


def _split_part(path: Path, out: Path, params: SplitParams, end: pd.Timestamp | None) -> Counter[str]:
    """Split one part of whole users into ``out``; its event and target counts (a task on a cluster)."""
    split = make_split(_read_part(path), params, end)
    split.events.to_parquet(out / "events" / path.name, index=False)
    split.targets.to_parquet(out / "targets" / path.name, index=False)
    counts: Counter[str] = Counter(events=len(split.events))
    counts.update({f"{f}_events": int((split.events["fold"] == f).sum()) for f in FOLDS})
    counts.update({f"{f}_targets": int((split.targets["fold"] == f).sum()) for f in ("valid", "test")})
    log.info("split part=%s events=%d", path.name, len(split.events))
    return counts


@contextmanager
def user_parts(dataset_dir: Path) -> Iterator[list[Path]]:
    """The data set's event parts as parts of whole users: as they are when validation wrote them so (its manifest
    says ``partitions``), else shuffled into user buckets in a temporary directory beside ``dataset_dir``."""
    parts = sorted(events_dir(dataset_dir).glob("*.parquet"))
    if not parts:
        raise DataError(events_dir(dataset_dir), "no events parquet parts; run `shoprec validate` first")
    manifest = Manifest.read(dataset_dir)
    n = partition_count(manifest.rows)
    if manifest.extra.get("partitions") == len(parts) or (len(parts) == 1 and n == 1):
        yield parts
        return
    with tempfile.TemporaryDirectory(dir=dataset_dir.parent, prefix=".split-buckets-") as tmp:
        yield shuffle_by_user(parts, Path(tmp), n)


def _read_part(path: Path) -> pd.DataFrame:
    return pq.read_table(path, schema=EVENTS_SCHEMA).to_pandas()


def _newest(parts: list[Path]) -> pd.Timestamp:
    """The newest event of all parts (reads the ``ts`` column only)."""
    newest = max(pc.max(pq.read_table(p, columns=["ts"], schema=EVENTS_SCHEMA)["ts"]).as_py() for p in parts)
    return pd.Timestamp(newest)
