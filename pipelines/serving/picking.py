"""The compiled loop that picks a list's items from one ranked part (numba).

A list walks its parts (the model's list, then the fallbacks) and keeps the first admissible items: not taken
(excluded or already listed), allowed by the rules, with a finite score, in the requested category and under the
per-category cap. As vectorised numpy that was some twenty array operations per chunk of a part, about half the CPU
of a cache-missed request; one pass that stops at the last item needed costs a few microseconds.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def admissible(items: np.ndarray, scores: np.ndarray, taken: np.ndarray, allowed: np.ndarray,
               item_category: np.ndarray, category: int, cap: int, per_category: np.ndarray, need: int) -> np.ndarray:
    """Positions in ``items`` of the first ``need`` admissible ones, in order; each item once.

    ``taken``: sorted item codes the list may not take; ``category`` >= 0 keeps that category's items only;
    ``cap`` >= 0 admits at most that many items per known category, counting ``per_category`` (updated in place
    for the items picked). Negative items are padding.
    """
    out = np.empty(max(min(need, len(items)), 0), dtype=np.int64)
    n = 0
    for i in range(len(items)):
        if n == need:
            break
        item = items[i]
        if item < 0 or not allowed[item] or not np.isfinite(scores[i]):
            continue
        c = item_category[item]
        if category >= 0 and c != category:
            continue
        at = np.searchsorted(taken, item)
        if at < len(taken) and taken[at] == item:
            continue
        repeated = False
        for j in range(n):  # a part lists an item once by construction; this keeps a list right if one did not
            if items[out[j]] == item:
                repeated = True
                break
        if repeated:
            continue
        if cap >= 0 and c >= 0:
            if per_category[c] >= cap:
                continue
            per_category[c] += 1
        out[n] = i
        n += 1
    return out[:n]


@njit(cache=True, nogil=True)
def merged_heads(grouped: np.ndarray, starts: np.ndarray, stops: np.ndarray, weights: np.ndarray,
                 share: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``limit`` items of several categories by ``weight`` of their category x their ``share``, ties by
    item code: a merge of the categories' runs ``grouped[starts[j]:stops[j]]`` (each in descending share, ties by
    code), so a shopper of a few categories reads their heads, not every item they hold. Items of share 0 are left
    out; scores are float64 products, as the vectorised version computes them."""
    pos = starts.copy()
    items = np.empty(limit, dtype=np.int64)
    scores = np.empty(limit, dtype=np.float64)
    n = 0
    while n < limit:
        best, best_item, best_score = -1, 0, 0.0
        for j in range(len(pos)):
            if pos[j] >= stops[j]:
                continue
            item = grouped[pos[j]]
            score = weights[j] * np.float64(share[item])
            if score <= 0:
                pos[j] = stops[j]  # the rest of the run has no share either
                continue
            if best < 0 or score > best_score or (score == best_score and item < best_item):
                best, best_item, best_score = j, item, score
        if best < 0:
            break
        items[n], scores[n] = best_item, best_score
        pos[best] += 1
        n += 1
    return items[:n], scores[:n]
