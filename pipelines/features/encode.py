"""Features stage: encode the split once (vocabulary, integer events, item categories and statistics) for all models.

The split comes as parts of whole users (``pipelines.data.partitions``); this stage keeps them. Two passes, each
holding one part in memory: the first collects the vocabulary (item ids sorted; user codes part after part, sorted
within a part, so each part's users are a contiguous code range), the second writes each part's events and targets
as integer codes (``events/``, ``targets/``), so training never maps strings to codes and never holds every id as a
Python object. Item-side tables (category per item, item statistics) are reductions over the parts; the per-part
work runs here or, when ``SHOPREC_DASK_ADDRESS`` names a cluster, as Dask tasks (``engine.map_parts``).

A :class:`Features` is the encoded events and targets of a set of whole users: one part, or all of a small data set
(``FeatureStore.all``); models take their histories and targets from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_dir, read_json, write_json
from pipelines.core.engine import imap_parts
from pipelines.data.schema import EVENT_TYPES, FOLDS
from pipelines.features.interactions import Interactions, PartedHistory, Vocab
from pipelines.features.ranking import item_categories, latest_categories

ENCODED_EVENTS = ["user", "item", "event", "ts", "fold"]  # int32, int32, int8, int64 unix seconds, int8 FOLDS index
ENCODED_TARGETS = ["user", "item", "event", "fold"]


@dataclass
class Features:
    """Encoded events and targets of whole users; every model reads histories from here, targets stay separate."""

    vocab: Vocab
    events: pd.DataFrame  # ENCODED_EVENTS, sorted by user then time
    targets: pd.DataFrame  # ENCODED_TARGETS
    items: pd.DataFrame | None  # the catalogue, when the data set has one
    category: pd.Series  # category id per item code (NaN unknown): the catalogue's, else the latest known event's
    serving_category: pd.Series  # the same over every event (test fold too): what the served catalogue shows

    @classmethod
    def from_frames(cls, vocab: Vocab, events: pd.DataFrame, targets: pd.DataFrame,
                    items: pd.DataFrame | None) -> Features:
        """Features of split frames with string ids (canonical events + ``fold``), encoded with ``vocab``."""
        ordered = events.sort_values(["user_id", "ts"], kind="stable")
        known = events[events["fold"] != "test"]
        category = pd.Series(item_categories(vocab.items, items, known).to_numpy())
        serving = pd.Series(item_categories(vocab.items, items, events).to_numpy())
        return cls(vocab, _encode_events(ordered, vocab), _encode_targets(targets, vocab), items, category, serving)

    def history(self, folds: tuple[str, ...]) -> Interactions:
        """Events of the given folds as model input; ("train",) for validation, ("train", "valid") for test."""
        return _interactions(self.vocab, self.events[self.events["fold"].isin([FOLDS.index(f) for f in folds])])

    def histories(self, folds: tuple[str, ...]) -> PartedHistory:
        """``history(folds)`` as a history of one part (the shape ``FeatureStore.histories`` has)."""
        return PartedHistory.of(self.history(folds))

    def target_sets(self, fold: str, event_types: tuple[str, ...] = EVENT_TYPES) -> tuple[np.ndarray, list[np.ndarray]]:
        """User codes with targets in ``fold`` and, per user, the target item codes."""
        return _target_sets(self.targets, fold, event_types)


@dataclass
class FeatureStore:
    """The features stage's output on disk: the vocabulary, item tables and the encoded parts of whole users."""

    root: Path
    vocab: Vocab
    items: pd.DataFrame | None
    category: pd.Series
    serving_category: pd.Series
    parts: list[str]  # part file names, in user-code order

    def part(self, name: str) -> Features:
        """The encoded events and targets of one part (its users only)."""
        return Features(self.vocab, pd.read_parquet(self.root / "events" / name),
                        pd.read_parquet(self.root / "targets" / name), self.items, self.category,
                        self.serving_category)

    def histories(self, folds: tuple[str, ...]) -> PartedHistory:
        """The events of ``folds`` as a history of the stored parts, each read when it is used."""
        codes = [FOLDS.index(f) for f in folds]

        def load(i: int) -> Interactions:
            return _interactions(self.vocab, pd.read_parquet(self.root / "events" / self.parts[i],
                                                             filters=[("fold", "in", codes)]))

        return PartedHistory(self.vocab, load, len(self.parts))

    def target_sets(self, fold: str, event_types: tuple[str, ...] = EVENT_TYPES) -> tuple[np.ndarray, list[np.ndarray]]:
        """``Features.target_sets`` over every part (user codes ascend part after part)."""
        sets = [_target_sets(pd.read_parquet(self.root / "targets" / name), fold, event_types) for name in self.parts]
        users = np.concatenate([u for u, _ in sets]) if sets else np.zeros(0, dtype=np.int64)
        return users, [t for _, targets in sets for t in targets]

    @cached_property
    def all(self) -> Features:
        """Every part as one set (memory grows with the log: for models that need all users at once)."""
        events = [pd.read_parquet(self.root / "events" / n) for n in self.parts]
        targets = [pd.read_parquet(self.root / "targets" / n) for n in self.parts]
        return Features(self.vocab, pd.concat(events, ignore_index=True), pd.concat(targets, ignore_index=True),
                        self.items, self.category, self.serving_category)


def _interactions(vocab: Vocab, events: pd.DataFrame) -> Interactions:
    """Encoded events (ENCODED_EVENTS, sorted by user then time) as the arrays models take."""
    return Interactions(vocab, events["user"].to_numpy(np.int32), events["item"].to_numpy(np.int32),
                        events["event"].to_numpy(np.int8), events["ts"].to_numpy(np.int64))


def _target_sets(targets: pd.DataFrame, fold: str, event_types: tuple[str, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """User codes with targets in ``fold`` among encoded ``targets`` and, per user, the target item codes."""
    t = targets[(targets["fold"] == FOLDS.index(fold)) & targets["event"].isin([EVENT_TYPES.index(e)
                                                                                for e in event_types])]
    users, items = t["user"].to_numpy(np.int64), t["item"].to_numpy(np.int64)
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    uniq, starts = np.unique(users, return_index=True)
    return uniq, np.split(items, starts[1:])


def event_counts(events: pd.DataFrame, key: str, other: str, distinct_name: str) -> pd.DataFrame:
    """Events per ``key`` and event type plus the number of distinct ``other`` ids, indexed by ``key``."""
    flags = events[[key]].assign(**{t: (events["event"] == code).astype("int64") for code, t in enumerate(EVENT_TYPES)})
    counts = flags.groupby(key).sum()
    counts[distinct_name] = events.groupby(key)[other].nunique()
    return counts


def item_stats(part_counts: list[pd.DataFrame], vocab: Vocab) -> pd.DataFrame:
    """Counts per item and event type plus conversion rates (users are disjoint between parts, so distinct users
    per item add up), for reports and the dashboard."""
    counts = pd.concat(part_counts).groupby(level=0).sum() if part_counts else pd.DataFrame()
    return _finish(counts, vocab.arrow_items, "item_id").assign(
        view_to_purchase=lambda c: c["purchase"] / c["view"].where(c["view"] > 0)).reset_index()


def user_stats(part_counts: list[pd.DataFrame], vocab: Vocab) -> pd.DataFrame:
    """Counts per user and event type plus distinct items: activity profiles for reports and the dashboard."""
    return _finish(pd.concat(part_counts), vocab.arrow_users, "user_id").reset_index()


def _finish(counts: pd.DataFrame, ids: pa.Array, key: str) -> pd.DataFrame:
    """Counts indexed by string id, sorted by id, int64."""
    counts = counts.astype("int64")
    counts.index = pd.Index(ids.take(pa.array(counts.index.to_numpy())).to_numpy(zero_copy_only=False),
                            dtype=str, name=key)
    return counts.sort_index().rename_axis(columns="event_type")


def run_features(split_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Stage entry point: read ``split_dir``'s parts and write the encoded features to ``out_dir``."""
    split_dir = Path(split_dir)
    parts = sorted(p.name for p in (split_dir / "events").glob("*.parquet"))
    items_file = split_dir / "items.parquet"
    items = pd.read_parquet(items_file) if items_file.exists() else None
    vocab, offsets = _vocabulary(split_dir, parts, items)
    with atomic_dir(out_dir) as tmp:
        for name in ("events", "targets"):
            (tmp / name).mkdir()
        pq.write_table(pa.table({"user_id": vocab.arrow_users}), tmp / "users.parquet")
        pq.write_table(pa.table({"item_id": vocab.arrow_items}), tmp / "items_vocab.parquet")
        jobs = [(split_dir, tmp, name, int(offset)) for name, offset in zip(parts, offsets, strict=True)]
        item_counts, latest, latest_known = (_Folded(reduce) for reduce in (_summed, _latest, _latest))
        user_counts, events = [], 0  # one row per user, users disjoint between parts: nothing to fold
        for r in imap_parts(_encode_part, jobs):  # in part order: a later part wins a tie of latest categories
            item_counts.add(r["item_counts"])
            latest.add(r["latest"])
            latest_known.add(r["latest_known"])
            user_counts.append(r["user_counts"])
            events += r["events"]
        pd.DataFrame({  # per item code; models see the known folds' categories, the served catalogue all
            "category_id": _latest_categories(latest_known.totals(), vocab, items).to_numpy(),
            "serving_category_id": _latest_categories(latest.totals(), vocab, items).to_numpy(),
        }).to_parquet(tmp / "item_categories.parquet", index=False)
        if items is not None:
            items.to_parquet(tmp / "items.parquet", index=False)
        item_stats(item_counts.totals(), vocab).to_parquet(tmp / "item_stats.parquet", index=False)
        user_stats(user_counts, vocab).to_parquet(tmp / "user_stats.parquet", index=False)
        summary = {"users": vocab.n_users, "items": vocab.n_items, "events": events, "parts": len(parts)}
        write_json(tmp / "summary.json", summary | {"part_names": parts})
    return summary


class _Folded:
    """A reduction of per-part item tables folded as the parts arrive, so memory holds a few parts' tables and the
    running total (each part of a Taobao-sized log touches over a million items: holding every part's tables until
    the end grew with the log, 6.7 GB at 100M events). ``reduce`` of tables in part order is associative."""

    PENDING = 4  # parts' tables held before they are folded into the total

    def __init__(self, reduce: Callable[[list[pd.DataFrame]], pd.DataFrame]):
        self.reduce, self.tables = reduce, []

    def add(self, table: pd.DataFrame) -> None:
        self.tables.append(table)
        if len(self.tables) > self.PENDING:
            self.tables = [self.reduce(self.tables)]

    def totals(self) -> list[pd.DataFrame]:
        """The reduction of every part added, as a list of one table (none when no part was added)."""
        return [self.reduce(self.tables)] if self.tables else []


def _summed(counts: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-item counts of several parts added up (users are disjoint between parts, so distinct users add up)."""
    return pd.concat(counts).groupby(level=0).sum() if len(counts) > 1 else counts[0]


def _latest(partials: list[pd.DataFrame]) -> pd.DataFrame:
    """The latest category per item over partial ``latest_categories`` in part order (a later part wins ties)."""
    if len(partials) == 1:
        return partials[0]
    return latest_categories(pd.concat(partials).rename_axis("item_id").reset_index())


def _vocabulary(split_dir: Path, parts: list[str], items: pd.DataFrame | None) -> tuple[Vocab, np.ndarray]:
    """Item ids (sorted, catalogue included) and user ids part after part; the first user code of each part."""
    item_ids = [pa.array(items["item_id"], pa.string())] if items is not None else []
    user_ids = []
    for name in parts:
        table = pq.read_table(split_dir / "events" / name, columns=["user_id", "item_id"])
        user_ids.append(pc.unique(table["user_id"]).cast(pa.string()).sort())
        item_ids.append(pc.unique(table["item_id"]).cast(pa.string()))
        if sum(len(a) for a in item_ids) > 4 * len(item_ids[0]) + 1_000_000:  # bound the buffer of repeats
            item_ids = [pc.unique(pa.chunked_array(item_ids, pa.string()))]
    items_sorted = pc.unique(pa.chunked_array(item_ids, pa.string())).sort()
    sizes = np.array([len(u) for u in user_ids], dtype=np.int64)
    users = pa.chunked_array(user_ids, pa.string()).combine_chunks() if user_ids else pa.array([], pa.string())
    return Vocab(users, items_sorted), np.r_[0, np.cumsum(sizes)[:-1]]


def _encode_part(split_dir: Path, out: Path, name: str, offset: int) -> dict:
    """Write one part's events and targets as codes; return its partial item-side tables (a task on a cluster)."""
    vocab_items = pq.read_table(out / "items_vocab.parquet")["item_id"].combine_chunks()
    events = pd.read_parquet(split_dir / "events" / name)
    targets = pd.read_parquet(split_dir / "targets" / name)
    users = pc.unique(pa.array(events["user_id"], pa.string())).sort()
    vocab = _PartVocab(users, vocab_items, offset)
    enc_events, enc_targets = _encode_events(events, vocab), _encode_targets(targets, vocab)
    enc_events.to_parquet(out / "events" / name, index=False)
    enc_targets.to_parquet(out / "targets" / name, index=False)
    known = enc_events[enc_events["fold"] != FOLDS.index("test")]
    coded = pd.DataFrame({"item_id": enc_events["item"].to_numpy(), "ts": events["ts"].to_numpy(),
                          "category_id": events["category_id"].to_numpy()})
    return {"events": len(enc_events), "item_counts": event_counts(known, "item", "user", "users"),
            "user_counts": event_counts(known, "user", "item", "items"), "latest": latest_categories(coded),
            "latest_known": latest_categories(coded[(events["fold"] != "test").to_numpy()])}


class _PartVocab:
    """Codes of one part's ids: its users (sorted, from ``offset``) and the data set's items, via Arrow hashing."""

    def __init__(self, users: pa.Array, items: pa.Array, offset: int):
        self.users, self.items, self.offset = users, items, offset

    def user_codes(self, ids: pd.Series) -> np.ndarray:
        return self.offset + _index_in(ids, self.users)

    def item_codes(self, ids: pd.Series) -> np.ndarray:
        return _index_in(ids, self.items)


def _index_in(ids: pd.Series, value_set: pa.Array) -> np.ndarray:
    codes = pc.index_in(pa.array(ids, pa.string()), value_set=value_set)
    return codes.fill_null(-1).to_numpy().astype(np.int64)


def _encode_events(events: pd.DataFrame, vocab: Vocab | _PartVocab) -> pd.DataFrame:
    ts = events["ts"].astype("datetime64[us, UTC]").to_numpy(dtype="datetime64[us]").astype(np.int64) // 1_000_000
    return pd.DataFrame({
        "user": vocab.user_codes(events["user_id"]).astype(np.int32),
        "item": vocab.item_codes(events["item_id"]).astype(np.int32),
        "event": pd.Categorical(events["event_type"], categories=EVENT_TYPES).codes.astype(np.int8),
        "ts": ts,
        "fold": pd.Categorical(events["fold"], categories=FOLDS).codes.astype(np.int8),
    })


def _encode_targets(targets: pd.DataFrame, vocab: Vocab | _PartVocab) -> pd.DataFrame:
    return pd.DataFrame({
        "user": vocab.user_codes(targets["user_id"]).astype(np.int32),
        "item": vocab.item_codes(targets["item_id"]).astype(np.int32),
        "event": pd.Categorical(targets["event_type"], categories=EVENT_TYPES).codes.astype(np.int8),
        "fold": pd.Categorical(targets["fold"], categories=FOLDS).codes.astype(np.int8),
    })


def _latest_categories(partials: list[pd.DataFrame], vocab: Vocab, items: pd.DataFrame | None) -> pd.Series:
    """Category per item code: the catalogue's, else that of the item's latest event over all parts (a later part
    wins a tie, as a later row does within a part)."""
    merged = pd.concat(partials).rename_axis("item_id").reset_index() if partials else None
    category = (latest_categories(merged)["category_id"] if merged is not None else pd.Series(dtype=object))
    category = category.reindex(np.arange(vocab.n_items))
    if items is not None:
        listed = pd.Series(items["category_id"].to_numpy(), index=vocab.item_codes(items["item_id"]))
        category = listed.dropna().combine_first(category).reindex(np.arange(vocab.n_items))
    return category


def load_features(features_dir: str | Path) -> FeatureStore:
    d = Path(features_dir)
    vocab = Vocab(users=pq.read_table(d / "users.parquet")["user_id"].combine_chunks(),
                  items=pq.read_table(d / "items_vocab.parquet")["item_id"].combine_chunks())
    items = pd.read_parquet(d / "items.parquet") if (d / "items.parquet").exists() else None
    categories = pd.read_parquet(d / "item_categories.parquet")
    return FeatureStore(d, vocab, items, categories["category_id"], categories["serving_category_id"],
                        read_json(d / "summary.json")["part_names"])
