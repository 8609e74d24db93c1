"""The synthetic generator: canonical schema, determinism, realism, and the planted sequential structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import pipelines.data.generate as gen
from pipelines.core.config import SyntheticParams
from pipelines.core.errors import ShoprecError
from pipelines.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, Manifest, events_dir, items_path

PARAMS = SyntheticParams(users=500, items=500, categories=10, events_per_user=30, days=7, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "synthetic"
    gen.generate(out, PARAMS, users_per_chunk=128)
    return out


@pytest.fixture(scope="module")
def events(dataset: Path) -> pd.DataFrame:
    return pq.read_table(events_dir(dataset)).to_pandas()


@pytest.fixture(scope="module")
def items(dataset: Path) -> pd.DataFrame:
    return pq.read_table(items_path(dataset)).to_pandas()


def test_schemas_and_manifest(dataset: Path, events: pd.DataFrame) -> None:
    parts = sorted(events_dir(dataset).glob("*.parquet"))
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(4)]  # 500 users / 128
    assert all(pq.read_schema(p).equals(EVENTS_SCHEMA) for p in parts)
    assert pq.read_schema(items_path(dataset)).equals(ITEMS_SCHEMA)
    m = Manifest.read(dataset)
    assert (m.source, m.rows, m.users, m.catalog_items) == ("synthetic", len(events), 500, 500)
    assert m.items == events.item_id.nunique()
    assert (m.window_start, m.window_end) == ("2017-11-25T00:00:00+00:00", "2017-12-02T00:00:00+00:00")
    assert m.extra == PARAMS.model_dump()
    assert 0.8 * 500 * 30 < m.rows < 1.2 * 500 * 30
    assert events.user_id.str.fullmatch(r"u\d+").all() and events.item_id.str.fullmatch(r"i\d+").all()


def test_same_params_give_identical_bytes_and_chunking_does_not_change_rows(tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"users": 150})
    gen.generate(tmp_path / "a", params, users_per_chunk=64)
    gen.generate(tmp_path / "b", params, users_per_chunk=64)
    gen.generate(tmp_path / "one_part", params)
    gen.generate(tmp_path / "other_seed", params.model_copy(update={"seed": 4}))
    parts = sorted(p.name for p in events_dir(tmp_path / "a").iterdir())
    assert len(parts) == 3
    for name in parts:
        assert (events_dir(tmp_path / "a") / name).read_bytes() == (events_dir(tmp_path / "b") / name).read_bytes()
    a = pq.read_table(events_dir(tmp_path / "a"))
    assert a.equals(pq.read_table(events_dir(tmp_path / "one_part")))
    assert not a.equals(pq.read_table(events_dir(tmp_path / "other_seed")))


def test_funnel_mix_and_actions_follow_a_view(events: pd.DataFrame) -> None:
    mix = events.event_type.value_counts(normalize=True)
    assert 0.86 <= mix["view"] <= 0.92
    assert 0.04 <= mix["cart"] <= 0.07 and 0.02 <= mix["fav"] <= 0.04 and 0.01 <= mix["purchase"] <= 0.03
    viewed_before = events.assign(view=events.event_type.eq("view"))
    first_view = viewed_before[viewed_before.view].groupby(["session_id", "item_id"]).ts.min()
    actions = events[~viewed_before.view].join(first_view.rename("viewed"), on=["session_id", "item_id"])
    assert (actions.viewed <= actions.ts).all()  # every action is on an item viewed earlier in its session
    assert events.groupby("session_id").event_type.first().eq("view").all()


def test_popularity_is_skewed_and_views_repeat(events: pd.DataFrame) -> None:
    views = events[events.event_type == "view"]
    counts = views.item_id.value_counts()
    assert counts.iloc[: len(counts) // 10].sum() / counts.sum() > 0.4
    assert 0.1 < views.duplicated(["user_id", "item_id"]).mean() < 0.5


def test_time_order_window_and_sessions(events: pd.DataFrame) -> None:
    assert events.ts.min() >= pd.Timestamp("2017-11-25", tz="UTC")
    assert events.ts.max() < pd.Timestamp("2017-12-02", tz="UTC")
    assert events.groupby("user_id", sort=False).ts.apply(lambda s: s.is_monotonic_increasing).all()
    same_user = events.user_id.eq(events.user_id.shift())
    same_session = events.session_id.eq(events.session_id.shift())
    # a session is one contiguous run of a user's events, opened once
    assert events.session_id.nunique() == int((~same_session).sum())
    gap = events.ts.diff().dt.total_seconds()
    assert gap[same_session].median() < 120 and gap[same_session].max() <= 1200
    assert gap[same_user & ~same_session].min() >= 1799 and gap[same_user & ~same_session].median() > 3 * 3600
    lengths = events.groupby("session_id").size()
    assert 3 <= lengths.mean() <= 8 and events.groupby("user_id").session_id.nunique().median() >= 3
    hours = events.ts.dt.hour.value_counts(normalize=True).sort_index()
    assert hours.loc[19:22].sum() > 4 * hours.loc[2:5].sum()  # evening peak, night low


def test_items_cover_events_with_tree_attributes(events: pd.DataFrame, items: pd.DataFrame) -> None:
    assert len(items) == 500 and items.item_id.is_unique
    assert set(events.item_id) <= set(items.item_id)
    joined = events.merge(items, on="item_id", suffixes=("", "_item"))
    assert (joined.category_id == joined.category_id_item).all()
    attrs = items.attributes.map(list)
    assert attrs.map(len).eq(3).all()
    assert (attrs.str[0] == "cat:" + items.category_id).all()
    assert (attrs.str[2] == "brand:" + items.brand).all()
    parents = attrs.str[1].groupby(items.category_id).nunique()
    assert parents.eq(1).all() and attrs.str[1].nunique() > 1  # a two-level tree
    assert (items.price > 0).all() and (items.title == "Item " + items.item_id.str[1:]).all()


def test_next_new_item_is_predictable_from_transitions_not_popularity(events: pd.DataFrame) -> None:
    popularity, transitions = _next_new_item_hit_rates(events, k=10)
    assert transitions >= 0.5  # measured ~0.71 (seeds 0-7); popularity ~0.07-0.15
    assert transitions > 3 * popularity


def test_interests_drift_to_new_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = PARAMS.model_copy(update={"users": 800, "categories": 30})
    gen.generate(tmp_path / "drift", params)
    monkeypatch.setattr(gen, "_P_DRIFT", 0.0)
    gen.generate(tmp_path / "steady", params)
    drifting, steady = (_late_category_novelty(tmp_path / name) for name in ("drift", "steady"))
    assert drifting > steady + 0.1  # measured ~0.5 vs ~0.3


def _late_category_novelty(dataset: Path) -> float:
    """Share of categories in a user's last 3 sessions absent from the first 3 (users with 8+ sessions)."""
    ev = pq.read_table(events_dir(dataset)).to_pandas()
    ev["n"] = ev.session_id.str.rsplit("-", n=1).str[1].astype(int)
    last = ev.groupby("user_id").n.transform("max")
    ev = ev[last >= 7]
    early = ev[ev.n < 3].groupby("user_id").category_id.agg(set)
    late = ev[ev.n > last[ev.index] - 3].groupby("user_id").category_id.agg(set)
    return float(np.mean([len(late[u] - early[u]) / len(late[u]) for u in late.index]))


def test_small_catalogue_and_odd_start(tmp_path: Path) -> None:
    params = SyntheticParams(users=30, items=20, categories=50, days=1, start="2020-03-01T13:30:00")
    m = gen.generate(tmp_path / "d", params, progress=True)
    df = pq.read_table(events_dir(tmp_path / "d")).to_pandas()
    assert m.window_start == "2020-03-01T13:30:00+00:00" and df.category_id.nunique() <= 20
    assert df.ts.min() >= pd.Timestamp(m.window_start) and df.ts.max() < pd.Timestamp(m.window_end)


def test_failure_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(gen, "_items_table", broken)
    with pytest.raises(RuntimeError):
        gen.generate(tmp_path / "out", PARAMS.model_copy(update={"users": 200}), users_per_chunk=64)
    assert list(tmp_path.iterdir()) == []


def test_bad_start_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ShoprecError, match="synthetic.start"):
        gen.generate(tmp_path / "out", PARAMS.model_copy(update={"start": "next tuesday"}))


def _next_new_item_hit_rates(events: pd.DataFrame, k: int) -> tuple[float, float]:
    """HR@k on each user's last first-time item: global popularity vs. last-item transition counts.

    Both models learn only from events before each user's held-out one and skip items the user has seen.
    """
    df = events.reset_index(drop=True)
    new = ~df.duplicated(["user_id", "item_id"])
    target = df.index[new].to_series().groupby(df.user_id[new].to_numpy()).max()
    first_row = df.index.to_series().groupby(df.user_id.to_numpy()).min()
    target = target[target > first_row[target.index]]  # needs a history to predict from
    train = df[df.index < df.user_id.map(target).fillna(len(df)).to_numpy()]
    popular = train.item_id.value_counts().index.tolist()
    item, user = train.item_id.to_numpy(), train.user_id.to_numpy()
    step = (user[:-1] == user[1:]) & (item[:-1] != item[1:])
    pairs = pd.DataFrame({"a": item[:-1][step], "b": item[1:][step]}).value_counts()
    following = pairs.reset_index().groupby("a").b.agg(list).to_dict()  # sorted by count already
    seen = train.groupby("user_id").item_id.agg(set).to_dict()
    hits = np.zeros(2)
    for u, row in target.items():
        fresh = [i for i in popular if i not in seen[u]]
        by_transition = [i for i in following.get(df.item_id[row - 1], []) if i not in seen[u]]
        truth = df.item_id[row]
        hits += [truth in fresh[:k], truth in (by_transition + fresh)[:k]]
    return hits[0] / len(target), hits[1] / len(target)


# --------------------------------------------------------------------------------- the real Taobao proportions

# The full UserBehavior log (Tianchi 649): events by behaviour, pv / cart / fav / buy (sum 100,150,807).
TAOBAO_MIX = {"view": 89_716_264, "cart": 5_530_446, "fav": 2_888_258, "purchase": 2_015_839}
SMALL_TAOBAO = 200_000


@pytest.fixture(scope="module")
def taobao_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticParams, pd.DataFrame]:
    params = gen.taobao_proportions(SMALL_TAOBAO)
    out = tmp_path_factory.mktemp("taobao") / "synthetic"
    gen.generate(out, params, users_per_chunk=512)
    columns = ["user_id", "item_id", "event_type", "category_id"]
    return params, pq.read_table(events_dir(out), columns=columns).to_pandas()


def test_taobao_proportions_scale_the_real_log() -> None:
    full = gen.taobao_proportions(gen.TAOBAO_EVENTS)
    assert (full.users, full.categories, full.days) == (987_994, 9_439, 9)
    assert full.events_per_user == pytest.approx(101.37, abs=0.01)
    assert full.items > gen.TAOBAO_ITEMS  # the catalogue holds items no one touches; the log counts touched ones
    assert full.start == "2017-11-24T16:00:00+00:00"  # midnight in China, where the log's days begin
    tiny = gen.taobao_proportions(100)  # floors keep the parameters valid
    assert (tiny.users, tiny.items, tiny.categories) == (10, 20, 2)
    assert gen.taobao_proportions(10_000, seed=3).seed == 3


def test_generated_log_has_the_real_proportions(taobao_small: tuple[SyntheticParams, pd.DataFrame]) -> None:
    params, events = taobao_small
    per_user = len(events) / events.user_id.nunique()
    assert per_user == pytest.approx(gen.TAOBAO_EVENTS / gen.TAOBAO_USERS, rel=0.1)  # measured 99.2
    touched = events.item_id.nunique()
    assert touched == pytest.approx(len(events) * gen.TAOBAO_ITEMS / gen.TAOBAO_EVENTS, rel=0.25)  # measured 1.005x
    assert events.category_id.nunique() == params.categories  # every leaf category is touched
    assert params.categories == pytest.approx(touched * gen.TAOBAO_CATEGORIES / gen.TAOBAO_ITEMS, rel=0.25)
    mix = events.event_type.value_counts(normalize=True)
    total = sum(TAOBAO_MIX.values())
    for kind, count in TAOBAO_MIX.items():
        assert mix[kind] == pytest.approx(count / total, abs=0.005), kind


def test_taobao_popularity_has_a_head_and_a_long_tail(taobao_small: tuple[SyntheticParams, pd.DataFrame]) -> None:
    counts = taobao_small[1].item_id.value_counts()
    assert 0.15 < (counts == 1).mean() < 0.3  # items touched once; measured 0.19 at 200k, 0.20 at 10M and 100M
    top = counts.iloc[: len(counts) // 100].sum() / counts.sum()  # top 1% of items: 0.35 at 200k, 0.38 at 100M
    assert top > 0.3


def test_taobao_proportions_are_deterministic(tmp_path: Path) -> None:
    params = gen.taobao_proportions(20_000)
    gen.generate(tmp_path / "a", params, users_per_chunk=64)
    gen.generate(tmp_path / "b", params)
    assert pq.read_table(events_dir(tmp_path / "a")).equals(pq.read_table(events_dir(tmp_path / "b")))


def test_sorted_lookup_equals_searchsorted() -> None:
    rng = np.random.default_rng(0)
    cum = np.cumsum(rng.random(10_000))
    keys = rng.random(3 * gen._SORT_KEYS_ABOVE) * cum[-1]
    keys[:100] = cum[:100]  # ties go right, as searchsorted(side="right")
    assert (gen._sorted_search(cum, keys) == np.searchsorted(cum, keys, side="right")).all()


def test_successor_graph_does_not_depend_on_its_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    params = SyntheticParams(users=10, items=3_000, categories=40)
    whole = gen._build_world(params)
    monkeypatch.setattr(gen, "_SUCCESSOR_BLOCK", 7)
    blocked = gen._build_world(params)
    assert (whole.successors == blocked.successors).all() and (whole.successor_cum == blocked.successor_cum).all()


def test_a_sequence_file_lists_each_users_distinct_items_in_first_touch_order(
    dataset: Path, events: pd.DataFrame, items: pd.DataFrame, tmp_path: Path
) -> None:
    """The Beauty-format copy ingests back through ``seqfile:`` with every user's first touches, in order."""
    import json

    from pipelines.data.ingest import ingest
    from pipelines.data.sequences import write_sequences

    counts = write_sequences(dataset, tmp_path / "seq.txt")
    firsts = events.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item_id"])
    per_user = firsts.groupby("user_id")["item_id"].apply(list)
    kept = per_user[per_user.map(len) >= 3]
    lines = [line.split() for line in (tmp_path / "seq.txt").read_text().splitlines()]
    assert counts["users"] == len(lines) == len(kept) and counts["interactions"] == sum(map(len, kept))
    kept_firsts = firsts[firsts["user_id"].isin(kept.index)]
    item_first = kept_firsts.groupby("item_id")["ts"].min().reset_index().sort_values(["ts", "item_id"])
    code = dict(zip(item_first["item_id"], map(str, range(1, len(item_first) + 1)), strict=True))
    user_first = kept_firsts.groupby("user_id")["ts"].min().reset_index().sort_values(["ts", "user_id"])
    expected = [[code[i] for i in kept[u]] for u in user_first["user_id"]]
    assert [line[1:] for line in lines] == expected and min(map(len, expected)) >= 3
    attributes = json.loads(Path(str(counts["attributes"])).read_text())
    assert len(attributes) == counts["items"] and all(len(a) == 3 for a in attributes.values())
    manifest = ingest(f"seqfile:{tmp_path / 'seq.txt'},attributes={counts['attributes']}", tmp_path / "ingested")
    assert manifest.users == counts["users"] and manifest.rows == counts["interactions"]
    assert len(items) >= counts["items"]
