"""The compiled list-picking loops against plain-Python statements of the same rules, on random parts."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.serving.picking import admissible, merged_heads


def reference_pick(items, scores, taken, allowed, item_category, category, cap, per_category, need):
    out, listed = [], set()
    for i, item in enumerate(items):
        if len(out) == need:
            break
        if item < 0 or not allowed[item] or not np.isfinite(scores[i]) or item in taken or item in listed:
            continue
        c = item_category[item]
        if category >= 0 and c != category:
            continue
        if cap >= 0 and c >= 0:
            if per_category[c] >= cap:
                continue
            per_category[c] += 1
        out.append(i)
        listed.add(item)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_admissible_follows_every_rule(seed: int):
    rng = np.random.default_rng(seed)
    n_items, n_cats = int(rng.integers(5, 300)), int(rng.integers(1, 12))
    items = rng.integers(-1, n_items, int(rng.integers(0, 400)))  # repeats and padding included
    scores = rng.normal(size=len(items)).astype(np.float32)
    scores[rng.random(len(items)) < 0.05] = -np.inf
    taken = np.unique(rng.integers(0, n_items, int(rng.integers(0, 40))))
    allowed = rng.random(n_items) > 0.1
    item_category = rng.integers(-1, n_cats, n_items)
    category = int(rng.integers(-1, n_cats)) if rng.random() < 0.3 else -1
    cap = int(rng.integers(0, 6)) if rng.random() < 0.5 else -1
    need = int(rng.integers(0, 60))
    start = rng.integers(0, 3, n_cats)
    ours, theirs = start.copy(), start.copy()
    got = admissible(items, scores, taken, allowed, item_category, category, cap, ours, need)
    assert got.tolist() == reference_pick(items, scores, set(taken.tolist()), allowed, item_category, category, cap,
                                          theirs, need)
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("seed", range(20))
def test_merged_heads_is_the_sorted_whole_cut_to_the_limit(seed: int):
    rng = np.random.default_rng(seed)
    n_items, n_cats = int(rng.integers(1, 500)), int(rng.integers(1, 20))
    popularity = rng.integers(0, 5, n_items).astype(np.float64)  # ties and zeros
    category = rng.integers(0, n_cats, n_items)
    share = (popularity / np.maximum(np.bincount(category, popularity, n_cats)[category], 1e-9)).astype(np.float32)
    order = np.argsort(-popularity, kind="stable")
    grouped = order[np.argsort(category[order], kind="stable")]
    ends = np.r_[0, np.cumsum(np.bincount(category, minlength=n_cats))]
    liked = np.flatnonzero(rng.random(n_cats) < 0.5)
    weights = rng.integers(1, 4, len(liked)).astype(np.float64)
    limit = int(rng.integers(0, 300))
    items, scores = merged_heads(grouped, ends[liked], ends[liked + 1], weights, share, limit)
    every = np.concatenate([grouped[ends[c]: ends[c + 1]] for c in liked]) if len(liked) else np.zeros(0, np.int64)
    whole = np.repeat(weights, ends[liked + 1] - ends[liked]) * share[every]
    best = np.lexsort((every, -whole))
    best = best[whole[best] > 0][:limit]
    assert items.tolist() == every[best].tolist()
    assert scores.tolist() == whole[best].tolist()
