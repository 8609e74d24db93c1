"""Synthetic Taobao-like data set with planted sequential structure, for demos, CI and load tests.

Real data is too small (or too private) to exercise the whole platform, and pure noise cannot show that a
sequential model beats popularity. So the generator plants what recommenders are meant to find:

* a catalogue: two-level category tree (parents -> leaves), Zipf item popularity inside each leaf,
  brands per parent, lognormal prices per leaf;
* users with 1-3 leaf-category interests that drift (per session, one interest may be swapped for a
  sibling leaf or another popular leaf);
* a successor graph: each item has 3-5 "next" items, mostly in its own leaf. Inside a session a user walks
  from the item on screen to one of its successors, sometimes steps back, sometimes jumps to a popular
  item of an interest; a new session starts on a popular item of an interest or re-opens the last item;
* a funnel (about 89% view, 5.5% cart, 3% fav, 2% purchase) acting on items viewed just before;
* sessions of a few minutes with an evening-peaked time-of-day profile, hours or days apart.

Scale: users are simulated a chunk at a time (one Parquet part per chunk), vectorised over the chunk's users
with a loop over event positions only, so memory is bounded by the chunk and the world (catalogue, successor
graph: arrays linear in the items); 10M events take seconds. ``taobao_proportions(events)`` sizes a data set at
the real Taobao log's proportions (101 events per user, a distinct item per 24 events, its category skew).

Determinism: every random number is drawn per block of ``_RNG_BLOCK`` users from a stream keyed by
``(seed, block)``, so the events depend on the parameters only; ``users_per_chunk`` changes the file split
(it is rounded up to a multiple of the block), never the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.special import ndtri

from pipelines.core.atomic import atomic_dir
from pipelines.core.config import SyntheticParams
from pipelines.core.errors import ShoprecError
from pipelines.data.ingest.adapters import TAOBAO_WINDOW
from pipelines.data.schema import EVENT_TYPES, EVENTS_SCHEMA, ITEMS_SCHEMA, Manifest, events_dir, items_path

_RNG_BLOCK = 64  # users per random stream; the unit of determinism
_WORLD_STREAM, _USER_STREAM = 0, 1

# --- catalogue
_ZIPF_EXPONENT = 1.1  # item popularity inside a leaf ~ 1 / rank**s
_SUCCESSOR_FLATTEN = 0.7  # successors are drawn by popularity**this: related items are not just the hits
_SUCCESSOR_WEIGHTS = np.array([0.36, 0.26, 0.18, 0.12, 0.08])  # walk probability of successor slot 1..5
_SUCCESSOR_SAME_LEAF = 0.8  # else a successor comes from the parent category (complements)
_ITEMS_PER_BRAND = 25
_SUCCESSOR_BLOCK = 1 << 19  # items whose successor slots are drawn together (bounds the temporaries)

# --- the real Taobao UserBehavior log (Tianchi dataset 649), whose proportions ``taobao_proportions`` keeps
TAOBAO_EVENTS, TAOBAO_USERS, TAOBAO_ITEMS, TAOBAO_CATEGORIES, TAOBAO_DAYS = 100_150_807, 987_994, 4_162_024, 9_439, 9
# Spread of leaf-category popularity, fitted to the real 114-user sample: 200 of its items are touched by 2+ of its
# users; 114-user groups of the full-size world touch 167 and 176 (world seeds 7 and 8; +-27 between groups;
# 0.5 gives ~50).
_TAOBAO_CATEGORY_SIGMA = 2.1
# Catalogue items per item the log touches (Zipf tails stay untouched): distinct items come out at 1.005, 0.96,
# 1.00 and 1.02 x events / 24 at 200k, 1M, 10M and 100M events (seed 7).
_CATALOGUE_PER_TOUCHED = 1.45

# --- behaviour
_USER_ACTIVITY_SHAPE = 1.2  # gamma shape of events per user (real Taobao sample: CV ~0.9)
_INTEREST_COUNT_P = np.array([0.35, 0.40, 0.25])  # 1, 2 or 3 leaf interests
_MEAN_SESSION_EVENTS = 6.0  # geometric session length (real sample: ~5.9 with a 30-minute cut)
_P_DRIFT = 0.12  # per session: swap one interest for a related leaf
_P_RELATED_SIBLING = 0.8  # drift goes to a sibling leaf (same parent), else to any leaf by popularity
_P_RESUME = 0.15  # a session re-opens the last item of the previous one
_P_BACK = 0.05  # a view goes back to the previous item of the session
_P_JUMP = 0.2  # a view jumps to a popular item of an interest instead of a successor
_P_ACT_ON_PREVIOUS = 0.2  # cart/fav/purchase on the item viewed before the current one
_EVENT_MIX = np.array([0.89, 0.055, 0.03, 0.02])  # view, cart, fav, purchase (order of EVENT_TYPES)

# --- time
_SESSION_GAP_S = 1800.0  # minimum quiet time between two sessions of a user
_VIEW_GAP = (math.log(35.0), 0.9)  # lognormal (mu, sigma) seconds before a view inside a session
_ACTION_GAP = (math.log(10.0), 0.6)  # ... before a cart/fav/purchase: it follows the view quickly
_MAX_GAP_S = 1200.0
_MAX_BUSY_FRACTION = 0.9  # a user's sessions and gaps are squeezed to fit in this much of the window
# Share of sessions starting in each hour of the day (shape of the real sample: night low, evening peak).
_HOUR_PROFILE = np.array(
    [35, 9, 10, 5, 4, 4, 23, 27, 31, 25, 42, 31, 55, 54, 54, 51, 48, 46, 46, 44, 85, 114, 98, 57], dtype=float
)


@dataclass(frozen=True)
class _GroupSampler:
    """Draws, for many groups at once, one member of each group with probability proportional to its weight."""

    members: np.ndarray  # member ids ordered by group
    start: np.ndarray  # first position of each group in ``members``
    size: np.ndarray
    cum: np.ndarray  # group index + cumulative normalised weight inside the group

    @classmethod
    def build(cls, group_of: np.ndarray, weights: np.ndarray, n_groups: int) -> _GroupSampler:
        order = np.argsort(group_of, kind="stable")
        groups, w = group_of[order], weights[order]
        size = np.bincount(group_of, minlength=n_groups)
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        cw = np.cumsum(w)
        before = (cw - w)[start[groups]]  # cumulative weight before the member's group
        total = cw[start + size - 1][groups] - before
        return cls(order, start, size, groups + (cw - before) / total)

    def sample(self, groups: np.ndarray, u: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """One member per entry of ``groups`` (``u`` uniform in [0, 1)); avoids ``exclude`` if the group allows."""
        last = self.start[groups] + self.size[groups] - 1
        pos = np.minimum(_sorted_search(self.cum, groups + u), last)
        if exclude is not None:
            clash = self.members[pos] == exclude
            first = self.start[groups[clash]]
            pos[clash] = first + (pos[clash] - first + 1) % self.size[groups[clash]]
        return self.members[pos]


_SORT_KEYS_ABOVE = 1 << 16


def _sorted_search(cum: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.searchsorted(cum, keys, side="right")``; many keys are looked up in sorted order.

    Random keys into a large ``cum`` miss the cache on every probe (20M keys into 4M weights: 80 s); numpy
    narrows each search from the previous key when keys ascend, so sorting first costs ~2 s. Same result.
    """
    if len(keys) <= _SORT_KEYS_ABOVE:
        return np.searchsorted(cum, keys, side="right")
    order = np.argsort(keys)
    pos = np.empty(len(keys), np.int64)
    pos[order] = np.searchsorted(cum, keys[order], side="right")
    return pos


@dataclass(frozen=True)
class _Catalogue:
    """What items.parquet describes, as arrays indexed by item or leaf number."""

    leaf_of_item: np.ndarray
    parent_of_leaf: np.ndarray
    brand_of_item: np.ndarray
    price: np.ndarray


@dataclass(frozen=True)
class _World:
    """The catalogue and the hidden structure users act on."""

    catalogue: _Catalogue
    item_ids: pa.Array  # "i<n>" by item number
    item_categories: pa.Array  # "c<leaf>" by item number
    popular: _GroupSampler  # items of a leaf by Zipf popularity
    interests: _GroupSampler  # leaves (one group) by how many users like them
    siblings: _GroupSampler  # leaves of a parent, uniformly
    successors: np.ndarray  # (items, 5) item numbers
    successor_cum: np.ndarray  # (items, 5) cumulative probability of walking to each slot


@dataclass
class _Draws:
    """Every random number a run of users needs, drawn up front so the simulation is a pure function."""

    n_events: np.ndarray  # per user
    n_interests: np.ndarray  # per user, 1..3
    interests: np.ndarray  # (users, 3) leaf ids; columns past n_interests unused
    first: np.ndarray  # per event: starts a session
    event_type: np.ndarray  # per event: index into EVENT_TYPES
    gap_s: np.ndarray  # per event: seconds since the previous event of the session (0 at a start)
    u_event: np.ndarray  # (events, 3) uniforms for the walk
    u_session: np.ndarray  # (sessions, 7) uniforms for session starts
    u_time: np.ndarray  # (sessions, 3) uniforms for session start times


def generate(
    out_dir: str | Path, params: SyntheticParams, *, progress: bool = False, users_per_chunk: int = 20_000
) -> Manifest:
    """Write a synthetic canonical data set (events parts, items.parquet, manifest.json) into ``out_dir``.

    The directory appears only complete (atomic swap). The same ``params`` give the same rows whatever
    ``users_per_chunk`` (users per Parquet part, rounded up to a multiple of 64), which only bounds memory.
    """
    if users_per_chunk < 1:
        raise ShoprecError(f"users_per_chunk must be >= 1, got {users_per_chunk}")
    start = _parse_start(params.start)
    start_us = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    world = _build_world(params)
    chunk = math.ceil(users_per_chunk / _RNG_BLOCK) * _RNG_BLOCK
    seen_items = np.zeros(params.items, dtype=bool)
    rows = 0
    with atomic_dir(out_dir) as tmp:
        events_dir(tmp).mkdir()
        for part, users in enumerate(_chunks(params.users, chunk, progress)):
            table, items = _simulate_chunk(world, params, users, start, start_us)
            seen_items[items] = True
            pq.write_table(table, events_dir(tmp) / f"part-{part:05d}.parquet", compression="zstd")
            rows += table.num_rows
        pq.write_table(_items_table(world), items_path(tmp), compression="zstd")
        manifest = Manifest(
            source="synthetic",
            rows=rows,
            users=params.users,
            items=int(seen_items.sum()),
            catalog_items=params.items,
            window_start=start.isoformat(),
            window_end=(start + timedelta(days=params.days)).isoformat(),
            extra=params.model_dump(),
        )
        manifest.write(tmp)
    return manifest


@dataclass(frozen=True)
class GroundTruth:
    """What the generated shoppers would do next: the walk's own next-view probabilities, for simulations of live
    traffic (shoppers who click what they would actually like). Users keep the interests they start with: the
    walk's per-session drift is not replayed."""

    world: _World
    interests: np.ndarray  # (users, 3) leaf ids; columns past n_interests unused
    n_interests: np.ndarray
    share_in_leaf: np.ndarray  # per item: its share of its leaf's popularity
    # after a view: a cart, a purchase, at the generated log's rates per view
    p_cart: float = float(_EVENT_MIX[1] / _EVENT_MIX[0])
    p_purchase: float = float(_EVENT_MIX[3] / _EVENT_MIX[0])

    def next_view(self, user: int, current: int, items: np.ndarray) -> np.ndarray:
        """P(the user's next view is each of ``items``) while looking at item ``current`` (-1: a session start):
        a successor of ``current`` by its walk probability, else a jump to a popular item of an interest."""
        p = np.zeros(len(items))
        jump = 1.0
        if current >= 0:
            slot_p = np.diff(self.world.successor_cum[current], prepend=0.0)
            successor = self.world.successors[current]
            hits = items[:, None] == successor[None, :]
            p += (1.0 - _P_BACK - _P_JUMP) * (hits * slot_p).sum(axis=1)
            jump = _P_JUMP
        leaves = self.interests[user, : self.n_interests[user]]
        liked = np.isin(self.world.catalogue.leaf_of_item[items], leaves)
        return p + jump * liked * self.share_in_leaf[items] / len(leaves)

    def session_start(self, user: int, rng: np.random.Generator) -> int:
        """The item a session opens on: a popular item of one of the user's interests."""
        leaf = self.interests[user, rng.integers(self.n_interests[user])]
        return int(self.world.popular.sample(np.array([leaf]), rng.random(1))[0])


def ground_truth(params: SyntheticParams) -> GroundTruth:
    """The hidden structure ``generate(params)`` plants, for every user (``u<n>`` is user n, ``i<n>`` item n)."""
    world = _build_world(params)
    blocks = [_draw_block(world, params, b) for b in range(math.ceil(params.users / _RNG_BLOCK))]
    popular = world.popular
    groups = np.repeat(np.arange(len(popular.size)), popular.size)
    within = popular.cum - groups  # cumulative share inside the leaf, in member order
    before = np.concatenate([[0.0], within[:-1]])
    before[popular.start[(popular.size > 0)]] = 0.0
    share = np.empty(len(within))
    share[popular.members] = within - before
    return GroundTruth(world, np.concatenate([b.interests for b in blocks]),
                       np.concatenate([b.n_interests for b in blocks]), share)


def taobao_proportions(events: int, seed: int = 7) -> SyntheticParams:
    """Parameters for about ``events`` events at the real Taobao UserBehavior log's proportions.

    Users, touched items and leaf categories scale with the events as in the real log (101 events per user, one
    touched item per 24 events, one category per 441 touched items), over its 9-day window. The real log counts
    only items that were touched, so the catalogue is larger by ``_CATALOGUE_PER_TOUCHED`` (Zipf leaves never
    touch their tail items) and the *distinct items in the events* come out at about ``events / 24``. Category
    popularity has the real log's skew (``_TAOBAO_CATEGORY_SIGMA``).
    """
    touched = events * TAOBAO_ITEMS / TAOBAO_EVENTS
    return SyntheticParams(
        users=max(10, round(events * TAOBAO_USERS / TAOBAO_EVENTS)),
        items=max(20, round(touched * _CATALOGUE_PER_TOUCHED)),
        categories=max(2, round(touched * TAOBAO_CATEGORIES / TAOBAO_ITEMS)),
        events_per_user=TAOBAO_EVENTS / TAOBAO_USERS,
        days=TAOBAO_DAYS,
        start=TAOBAO_WINDOW[0],
        seed=seed,
        category_popularity_sigma=_TAOBAO_CATEGORY_SIGMA,
        category_popularity_quantiles=True,
    )


def _parse_start(start: str) -> datetime:
    """The window start; a timestamp without offset is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(start)
    except ValueError:
        raise ShoprecError(f"synthetic.start: not an ISO 8601 timestamp: {start!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _chunks(n_users: int, chunk: int, progress: bool) -> Iterator[np.ndarray]:
    """User ids chunk by chunk, with a progress bar over users if asked."""
    spans = [np.arange(lo, min(lo + chunk, n_users)) for lo in range(0, n_users, chunk)]
    if not progress:
        yield from spans
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True)) as bar:  # stdout stays free for command output
        task = bar.add_task("generating users", total=n_users)
        for users in spans:
            yield users
            bar.advance(task, len(users))


def _names(prefix: str, ids: np.ndarray) -> pa.Array:
    """Vectorised ``f"{prefix}{id}"``."""
    return pc.binary_join_element_wise(prefix, pa.array(ids).cast(pa.string()), "")


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Start position of each run in a flat array of runs with these lengths."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


# --------------------------------------------------------------------------------------------- catalogue


def _build_world(params: SyntheticParams) -> _World:
    """Catalogue, popularity and successor graph, from the world stream of the seed."""
    rng = np.random.default_rng([params.seed, _WORLD_STREAM])
    cat = _catalogue(rng, params.items, min(params.categories, params.items))
    n_leaves = len(cat.parent_of_leaf)
    rank = _rank_within(cat.leaf_of_item, rng.random(params.items))
    popularity = 1.0 / (rank + 1.0) ** _ZIPF_EXPONENT
    leaf_items = np.bincount(cat.leaf_of_item, minlength=n_leaves)
    successors, successor_cum = _successor_graph(rng, cat, popularity)
    leaf_likes = leaf_items * _leaf_popularity(rng, n_leaves, params)
    return _World(
        catalogue=cat,
        item_ids=_names("i", np.arange(params.items)),
        item_categories=_names("c", cat.leaf_of_item),
        popular=_GroupSampler.build(cat.leaf_of_item, popularity, n_leaves),
        interests=_GroupSampler.build(np.zeros(n_leaves, np.int64), leaf_likes, 1),
        siblings=_GroupSampler.build(cat.parent_of_leaf, np.ones(n_leaves), int(cat.parent_of_leaf.max()) + 1),
        successors=successors,
        successor_cum=successor_cum,
    )


def _leaf_popularity(rng: np.random.Generator, n_leaves: int, params: SyntheticParams) -> np.ndarray:
    """Lognormal factor of how many users take each leaf as an interest.

    Independent draws by default. With ``category_popularity_quantiles`` the leaves get the distribution's evenly
    spaced quantiles instead, in the random order of the same draws: with the Taobao spread (sigma 2) a few
    hundred independent draws are dominated by their largest, so a small log's share of touched items would
    swing with the seed (0.75-1.08 x the target at 200k-500k events; 0.91-1.02 with quantiles).
    """
    draws = rng.lognormal(0.0, params.category_popularity_sigma, n_leaves)
    if not params.category_popularity_quantiles:
        return draws
    rank = np.empty(n_leaves, np.int64)
    rank[np.argsort(draws, kind="stable")] = np.arange(n_leaves)
    return np.exp(params.category_popularity_sigma * ndtri((rank + 0.5) / n_leaves))


def _catalogue(rng: np.random.Generator, n_items: int, n_leaves: int) -> _Catalogue:
    """Leaves of uneven size under about sqrt(leaves) parents; brands per parent; prices per leaf and brand."""
    n_parents = max(1, round(math.sqrt(n_leaves)))
    parent_of_leaf = rng.permutation(n_leaves) % n_parents
    leaf_weight = rng.lognormal(0.0, 0.6, n_leaves)
    extra = rng.choice(n_leaves, n_items - n_leaves, p=leaf_weight / leaf_weight.sum())
    leaf_of_item = rng.permutation(np.concatenate([np.arange(n_leaves), extra]))  # every leaf has an item
    parent_of_item = parent_of_leaf[leaf_of_item]
    n_brands = np.maximum(3, np.bincount(parent_of_item, minlength=n_parents) // _ITEMS_PER_BRAND)
    local_brand = (n_brands[parent_of_item] * rng.random(n_items) ** 2).astype(np.int64)  # a few big brands
    brand_of_item = _offsets(n_brands)[parent_of_item] + local_brand
    log_price = (
        math.log(30.0)
        + rng.normal(0.0, 0.8, n_leaves)[leaf_of_item]
        + rng.normal(0.0, 0.3, int(n_brands.sum()))[brand_of_item]
        + rng.normal(0.0, 0.4, n_items)
    )
    price = np.maximum(np.round(np.exp(log_price), 2), 0.5)
    return _Catalogue(leaf_of_item, parent_of_leaf, brand_of_item, price)


def _rank_within(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each entry by ``keys`` inside its group."""
    order = np.lexsort((keys, groups))
    starts = _offsets(np.bincount(groups))
    rank = np.empty(len(groups), np.int64)
    rank[order] = np.arange(len(groups)) - starts[groups[order]]
    return rank


def _successor_graph(
    rng: np.random.Generator, cat: _Catalogue, popularity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """3-5 successors per item, mostly from its leaf, else from its parent category; walk probabilities.

    Slots are drawn for a block of items at a time, so the temporaries stay small at millions of items.
    """
    n_items, slots = len(cat.leaf_of_item), len(_SUCCESSOR_WEIGHTS)
    weight = popularity**_SUCCESSOR_FLATTEN
    u_scope, u_pick = rng.random((2, n_items * slots))
    by_leaf = _GroupSampler.build(cat.leaf_of_item, weight, len(cat.parent_of_leaf))
    by_parent = _GroupSampler.build(cat.parent_of_leaf[cat.leaf_of_item], weight, int(cat.parent_of_leaf.max()) + 1)
    anywhere: _GroupSampler | None = None
    successor = np.empty(n_items * slots, np.int64)
    for lo in range(0, n_items, _SUCCESSOR_BLOCK):
        hi = min(lo + _SUCCESSOR_BLOCK, n_items)
        span = slice(lo * slots, hi * slots)
        source = np.repeat(np.arange(lo, hi), slots)
        leaf = np.repeat(cat.leaf_of_item[lo:hi], slots)
        parent = cat.parent_of_leaf[leaf]
        pick, out = u_pick[span], successor[span]
        # each slot is drawn by the narrowest scope that has another item: its leaf (most slots), else its
        # parent category, else anywhere
        in_leaf = (u_scope[span] < _SUCCESSOR_SAME_LEAF) & (by_leaf.size[leaf] > 1)
        in_parent = ~in_leaf & (by_parent.size[parent] > 1)
        elsewhere = ~in_leaf & ~in_parent
        out[in_leaf] = by_leaf.sample(leaf[in_leaf], pick[in_leaf], exclude=source[in_leaf])
        out[in_parent] = by_parent.sample(parent[in_parent], pick[in_parent], exclude=source[in_parent])
        if elsewhere.any():
            if anywhere is None:
                anywhere = _GroupSampler.build(np.zeros(n_items, np.int64), weight, 1)
            groups = np.zeros(int(elsewhere.sum()), np.int64)
            out[elsewhere] = anywhere.sample(groups, pick[elsewhere], exclude=source[elsewhere])
    n_successors = rng.integers(3, slots + 1, n_items)
    walk = np.where(np.arange(slots) < n_successors[:, None], _SUCCESSOR_WEIGHTS, 0.0)
    cum = np.cumsum(walk, axis=1) / walk.sum(axis=1, keepdims=True)
    cum[:, -1] = 1.0
    return successor.reshape(n_items, slots), cum


def _items_table(world: _World) -> pa.Table:
    """items.parquet: every catalogue item with its leaf, parent, brand and price."""
    cat = world.catalogue
    n = len(cat.leaf_of_item)
    tags = pa.concat_arrays(
        [
            _names("cat:c", cat.leaf_of_item),
            _names("parent:p", cat.parent_of_leaf[cat.leaf_of_item]),
            _names("brand:b", cat.brand_of_item),
        ]
    )
    item_major = (np.arange(n)[:, None] + np.array([0, n, 2 * n])).ravel()
    attributes = pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)), tags.take(item_major))
    columns = [
        world.item_ids,
        world.item_categories,
        attributes,
        _names("Item ", np.arange(n)),
        _names("b", cat.brand_of_item),
        pa.array(cat.price),
    ]
    return pa.Table.from_arrays(columns, schema=ITEMS_SCHEMA)


# --------------------------------------------------------------------------------------------- users


def _simulate_chunk(
    world: _World, params: SyntheticParams, users: np.ndarray, start: datetime, start_us: int
) -> tuple[pa.Table, np.ndarray]:
    """Events of these users (a whole number of random blocks), as a table in user and time order."""
    blocks = range(users[0] // _RNG_BLOCK, (users[-1] // _RNG_BLOCK) + 1)
    draws = _concat([_draw_block(world, params, b) for b in blocks])
    items = _walk(world, draws)
    day_offset = start.hour * 3600.0 + start.minute * 60.0 + start.second
    ts_us = start_us + _timestamps(draws, params.days, day_offset)
    return _events_table(world, users, draws, items, ts_us), items


def _draw_block(world: _World, params: SyntheticParams, block: int) -> _Draws:
    """All random inputs of one block of users, from the stream ``(seed, block)``."""
    rng = np.random.default_rng([params.seed, _USER_STREAM, block])
    n_users = min(_RNG_BLOCK, params.users - block * _RNG_BLOCK)
    mean_extra = params.events_per_user - 1.0  # every user has at least one event
    n_events = 1 + rng.poisson(rng.gamma(_USER_ACTIVITY_SHAPE, mean_extra / _USER_ACTIVITY_SHAPE, n_users))
    n_interests = 1 + np.searchsorted(np.cumsum(_INTEREST_COUNT_P)[:-1], rng.random(n_users), side="right")
    interests = world.interests.sample(np.zeros(3 * n_users, np.int64), rng.random(3 * n_users))
    total = int(n_events.sum())
    first = rng.random(total) < 1.0 / _MEAN_SESSION_EVENTS
    first[_offsets(n_events)] = True
    event_type = np.searchsorted(_action_cum(params.events_per_user), rng.random(total), side="right")
    event_type[first] = 0  # a session opens with a view
    is_view = event_type == 0
    mu = np.where(is_view, _VIEW_GAP[0], _ACTION_GAP[0])
    sigma = np.where(is_view, _VIEW_GAP[1], _ACTION_GAP[1])
    gap_s = np.minimum(np.exp(mu + sigma * rng.standard_normal(total)), _MAX_GAP_S)
    gap_s[first] = 0.0
    n_sessions = int(first.sum())
    return _Draws(
        n_events=n_events,
        n_interests=n_interests,
        interests=interests.reshape(n_users, 3),
        first=first,
        event_type=event_type,
        gap_s=gap_s,
        u_event=rng.random((total, 3)),
        u_session=rng.random((n_sessions, 7)),
        u_time=rng.random((n_sessions, 3)),
    )


def _action_cum(events_per_user: float) -> np.ndarray:
    """Cumulative event-type probabilities for events inside a session, so the overall mix hits _EVENT_MIX.

    Session openings are always views, so the other positions carry the actions at a higher rate.
    """
    opening = 1.0 / _MEAN_SESSION_EVENTS + (1.0 - 1.0 / _MEAN_SESSION_EVENTS) / events_per_user
    mix = _EVENT_MIX / _EVENT_MIX.sum()
    inside = np.concatenate([[0.0], mix[1:] / (1.0 - opening)])
    inside[0] = 1.0 - inside[1:].sum()
    return np.cumsum(inside)[:-1]


def _concat(parts: list[_Draws]) -> _Draws:
    return _Draws(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Draws)))


@dataclass
class _WalkState:
    """Per user (in walk order): item on screen, item before it in the session (-1: none), interests."""

    cur: np.ndarray
    prev: np.ndarray
    interests: np.ndarray
    n_interests: np.ndarray

    def interest(self, users: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One of each user's interests, uniformly."""
        return self.interests[users, (u * self.n_interests[users]).astype(np.int64)]


def _walk(world: _World, d: _Draws) -> np.ndarray:
    """Item of every event. All users advance one event per step; users with fewer events drop out."""
    order = np.argsort(-d.n_events, kind="stable")  # active users are always a prefix
    base = _offsets(d.n_events)[order]
    n_sorted = d.n_events[order]
    active = np.searchsorted(-n_sorted, -np.arange(n_sorted[0]), side="left")  # users with > t events
    session = np.cumsum(d.first) - 1
    state = _WalkState(
        cur=np.full(len(order), -1, np.int64),
        prev=np.full(len(order), -1, np.int64),
        interests=d.interests[order].copy(),
        n_interests=d.n_interests[order],
    )
    items = np.empty(len(d.first), np.int64)
    for t, m in enumerate(active):
        pos = base[:m] + t
        first, view = d.first[pos], d.event_type[pos] == 0
        starts = np.flatnonzero(first)
        items[pos[starts]] = _start_sessions(world, state, starts, d.u_session[session[pos[starts]]], t > 0)
        views = np.flatnonzero(view & ~first)
        items[pos[views]] = _view(world, state, views, d.u_event[pos[views]])
        acts = np.flatnonzero(~view)
        items[pos[acts]] = _act(state, acts, d.u_event[pos[acts], 0])
    return items


def _start_sessions(world: _World, state: _WalkState, users: np.ndarray, u: np.ndarray, resumable: bool) -> np.ndarray:
    """Opening views: maybe drift an interest, then re-open the last item or a popular item of an interest."""
    drift = u[:, 0] < _P_DRIFT
    _drift(world, state, users[drift], u[drift])
    item = world.popular.sample(state.interest(users, u[:, 5]), u[:, 6])
    if resumable:
        item = np.where(u[:, 4] < _P_RESUME, state.cur[users], item)
    state.prev[users] = -1
    state.cur[users] = item
    return item


def _drift(world: _World, state: _WalkState, users: np.ndarray, u: np.ndarray) -> None:
    """Swap one interest of each user for a sibling leaf (same parent) or, else, any leaf by popularity."""
    slot = (u[:, 1] * state.n_interests[users]).astype(np.int64)
    old = state.interests[users, slot]
    new = world.interests.sample(np.zeros(len(users), np.int64), u[:, 3])
    sib = u[:, 2] < _P_RELATED_SIBLING
    sibling = world.siblings.sample(world.catalogue.parent_of_leaf[old[sib]], u[sib, 3], exclude=old[sib])
    new[sib] = np.where(sibling != old[sib], sibling, new[sib])  # a parent with one leaf has no sibling
    state.interests[users, slot] = new


def _view(world: _World, state: _WalkState, users: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Next view: a successor of the item on screen, or a step back, or a jump to a popular interest item."""
    cur, prev = state.cur[users], state.prev[users]
    slot = (u[:, 1, None] > world.successor_cum[cur]).sum(axis=1)
    item = world.successors[cur, slot]
    jump = (u[:, 0] >= _P_BACK) & (u[:, 0] < _P_BACK + _P_JUMP)
    item[jump] = world.popular.sample(state.interest(users[jump], u[jump, 1]), u[jump, 2])
    back = (u[:, 0] < _P_BACK) & (prev >= 0)
    item[back] = prev[back]
    state.prev[users] = cur
    state.cur[users] = item
    return item


def _act(state: _WalkState, users: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Cart, fav or purchase: on the item on screen, sometimes on the one viewed just before."""
    prev = state.prev[users]
    return np.where((u < _P_ACT_ON_PREVIOUS) & (prev >= 0), prev, state.cur[users])


# --------------------------------------------------------------------------------------------- time


def _session_ordinal(d: _Draws) -> np.ndarray:
    """0-based number of each event's session within its user."""
    user = np.repeat(np.arange(len(d.n_events)), d.n_events)
    opened = np.cumsum(d.first)
    return opened - opened[_offsets(d.n_events)][user]


def _timestamps(d: _Draws, days: int, day_offset_s: float) -> np.ndarray:
    """Microseconds after the window start of every event: ordered per user, sessions apart, inside the window.

    Session starts are drawn by day and hour profile and sorted per user, then shifted so each session
    (the sum of its in-session gaps) ends at least _SESSION_GAP_S before the next one starts; a user too busy
    for the window has all these durations scaled down to fit.
    """
    window = days * 86400.0
    n_users = len(d.n_events)
    offsets = _offsets(d.n_events)
    user = np.repeat(np.arange(n_users), d.n_events)
    session_user = user[d.first]
    wanted = _session_start_candidates(d.u_time, days, day_offset_s, window)
    wanted = wanted[np.lexsort((wanted, session_user))]
    elapsed = np.cumsum(d.gap_s)
    elapsed -= elapsed[offsets][user]  # in-session seconds so far, summed over the user's sessions
    ordinal = _session_ordinal(d)
    busy = elapsed[offsets + d.n_events - 1] + (np.bincount(session_user, minlength=n_users) - 1) * _SESSION_GAP_S
    squeeze = np.minimum(1.0, _MAX_BUSY_FRACTION * window / np.maximum(busy, 1e-9))
    free = window - squeeze * busy
    seconds = wanted[np.cumsum(d.first) - 1] * (free / window)[user] + squeeze[user] * (
        elapsed + ordinal * _SESSION_GAP_S
    )
    return np.minimum((seconds * 1e6).astype(np.int64), int(window * 1e6) - 1)


def _session_start_candidates(u: np.ndarray, days: int, day_offset_s: float, window: float) -> np.ndarray:
    """Seconds after the window start: a uniform day, an hour (on the clock of ``start``) from _HOUR_PROFILE."""
    hour_cum = np.cumsum(_HOUR_PROFILE) / _HOUR_PROFILE.sum()
    hour = np.searchsorted(hour_cum[:-1], u[:, 1], side="right")
    seconds = np.floor(u[:, 0] * days) * 86400.0 + (hour + u[:, 2]) * 3600.0 - day_offset_s
    return np.mod(seconds, window)


def _events_table(world: _World, users: np.ndarray, d: _Draws, items: np.ndarray, ts_us: np.ndarray) -> pa.Table:
    """The chunk's events in EVENTS_SCHEMA; session ids are ``<user_id>-<n>``."""
    user_id = _names("u", users).take(np.repeat(np.arange(len(users)), d.n_events))
    session_id = pc.binary_join_element_wise(user_id, pa.array(_session_ordinal(d)).cast(pa.string()), "-")
    return pa.Table.from_arrays(
        [
            user_id,
            world.item_ids.take(items),
            pa.array(EVENT_TYPES).take(d.event_type),
            pa.array(ts_us, pa.timestamp("us", tz="UTC")),
            world.item_categories.take(items),
            session_id,
        ],
        schema=EVENTS_SCHEMA,
    )
