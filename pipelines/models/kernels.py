"""Compiled per-row loops (numba) for the sparse candidate paths, where vectorised numpy has to sort whole batches.

Top lists of sparse score rows are a per-row selection: each user's stored entries plus the head of a prior order,
best ``width`` kept. In numpy that is one sort of every stored entry of a batch (a popular item's co-visitation row
holds ~30,000 neighbours at 10M events, so ~11,000 entries per user) plus searches to skip stored and excluded items
in the prior's head: ~6 ms per user over three item-to-item sources at 417k items, most of the ranking time. Per
row, a scratch mark per item and a partition of the row's keys do the same in linear time.

Keys pack (value descending, item ascending) into one uint64 as ``best_per_row`` orders lists, so both paths give
the same lists, ties included.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NO_KEY = np.uint64(np.iinfo(np.uint64).max)  # an empty slot: after every real key
MINUS_INF_BITS = np.uint32(0xFF800000)  # descending_bits(-inf): listed scores have smaller bits


def descending_bits(values: np.ndarray) -> np.ndarray:
    """uint32 per float32 value whose ascending order is the values' descending order (-0.0 counts as 0.0)."""
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    return ~np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))


def from_descending_bits(desc: np.ndarray) -> np.ndarray:
    """The float32 values of ``descending_bits``."""
    up = ~desc.astype(np.uint32)
    return np.where(up >> 31, up & np.uint32(0x7FFFFFFF), ~up).view(np.float32)


def unpack(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item codes (-1) and float32 values (-inf) of packed keys (``NO_KEY``: an empty slot)."""
    empty = keys == NO_KEY
    items = np.where(empty, -1, (keys & np.uint64(0xFFFFFFFF)).astype(np.int64))
    values = np.where(empty, np.float32(-np.inf), from_descending_bits((keys >> np.uint64(32)).astype(np.uint32)))
    return items, values.astype(np.float32)


@njit(cache=True, nogil=True)
def sparse_plus_prior_top(indptr: np.ndarray, indices: np.ndarray, desc: np.ndarray, prior_desc: np.ndarray,
                          order: np.ndarray, ex_indptr: np.ndarray, ex_indices: np.ndarray,
                          width: int) -> np.ndarray:  # pragma: no cover - compiled
    """(n_rows, width) packed keys of each row's best items: its stored entries (``desc`` bits of their scores) and,
    for every other item, the prior (``prior_desc``) read in ``order``; excluded items (``ex_*`` rows) never listed.

    Only finite scores are listed (``desc`` of -inf is skipped). Stored entries must be distinct per row.
    """
    n_rows, n_items = len(indptr) - 1, len(prior_desc)
    out = np.full((n_rows, width), NO_KEY, dtype=np.uint64)
    skip = np.zeros(n_items, dtype=np.bool_)
    longest = 0
    for r in range(n_rows):
        longest = max(longest, indptr[r + 1] - indptr[r])
    keys = np.empty(longest + width, dtype=np.uint64)
    for r in range(n_rows):
        a, b, ea, eb = indptr[r], indptr[r + 1], ex_indptr[r], ex_indptr[r + 1]
        for j in range(ea, eb):
            skip[ex_indices[j]] = True
        m = 0
        for j in range(a, b):
            item = indices[j]
            if not skip[item] and desc[j] < MINUS_INF_BITS:
                keys[m] = (np.uint64(desc[j]) << np.uint64(32)) | np.uint64(item)
                m += 1
        for j in range(a, b):
            skip[indices[j]] = True  # scored by its entry, not by the prior alone
        taken, p = 0, 0
        while taken < width and p < len(order):
            item = order[p]
            p += 1
            if not skip[item] and prior_desc[item] < MINUS_INF_BITS:
                keys[m] = (np.uint64(prior_desc[item]) << np.uint64(32)) | np.uint64(item)
                m += 1
                taken += 1
        for j in range(a, b):
            skip[indices[j]] = False
        for j in range(ea, eb):
            skip[ex_indices[j]] = False
        row = keys[:m]
        if m > width:
            row = np.partition(row, width - 1)[:width]
        row = np.sort(row)
        out[r, : len(row)] = row
    return out


@njit(cache=True, nogil=True)
def csr_pairs(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int, rows: np.ndarray,
              cols: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """``matrix[rows[i], cols[i]]`` of a CSR matrix (0 where nothing is stored), rows in any order, indices unsorted.

    Queries are answered row by row through a dense scratch row, so a row of 30,000 entries costs one pass however
    many of its cells are asked for; when the asked rows hold far fewer entries than the matrix has columns (one
    session's row of a 4M-item catalogue: zeroing the scratch row alone cost 0.4 ms), each row is sorted and
    searched instead.
    """
    out = np.zeros(len(rows), dtype=data.dtype)
    by_row = np.argsort(rows, kind="mergesort")
    entries = 0
    i = 0
    while i < len(by_row):
        r = rows[by_row[i]]
        entries += indptr[r + 1] - indptr[r]
        while i < len(by_row) and rows[by_row[i]] == r:
            i += 1
    dense = n_cols <= 4 * (entries + len(rows))
    scratch = np.zeros(n_cols if dense else 0, dtype=data.dtype)
    i = 0
    while i < len(by_row):
        r = rows[by_row[i]]
        start, end = indptr[r], indptr[r + 1]
        if dense:
            for j in range(start, end):
                scratch[indices[j]] = data[j]
            while i < len(by_row) and rows[by_row[i]] == r:
                out[by_row[i]] = scratch[cols[by_row[i]]]
                i += 1
            for j in range(start, end):
                scratch[indices[j]] = 0
        else:
            order = np.argsort(indices[start:end])
            keys = indices[start:end][order]
            while i < len(by_row) and rows[by_row[i]] == r:
                pos = np.searchsorted(keys, cols[by_row[i]])
                if pos < len(keys) and keys[pos] == cols[by_row[i]]:
                    out[by_row[i]] = data[start + order[pos]]
                i += 1
    return out


@njit(cache=True, nogil=True)
def top_per_row_mask(indptr: np.ndarray, indices: np.ndarray, desc: np.ndarray,
                     n: int) -> np.ndarray:  # pragma: no cover - compiled
    """bool per stored entry: whether it is among its row's ``n`` best (``desc`` bits of the values, the lower
    column first among equals), so a pruned row is the same whatever order its entries are stored in."""
    keep = np.ones(len(indices), dtype=np.bool_)
    for r in range(len(indptr) - 1):
        a, b = indptr[r], indptr[r + 1]
        if b - a <= n:
            continue
        keys = np.empty(b - a, dtype=np.uint64)
        for j in range(a, b):
            keys[j - a] = (np.uint64(desc[j]) << np.uint64(32)) | np.uint64(indices[j])
        kth = np.partition(keys, n - 1)[n - 1]
        for j in range(a, b):
            keep[j] = keys[j - a] <= kth
    return keep


@njit(cache=True, nogil=True)
def cosine_top_rows(indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray, inv_norm: np.ndarray,
                    first_row: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """CSR (indptr, indices, data) of the cosine rows of a block of co-occurrence ``counts`` (rows = items
    ``first_row`` on): ``count * inv_norm[row] * inv_norm[col]`` in float32, the diagonal and zeros dropped, each
    row's ``n`` best kept (the lower column first among equals), columns sorted.

    One pass per row instead of scaling, pruning and rebuilding the block with numpy (which held several copies
    of a 40M-entry block and sorted it twice).
    """
    n_rows = len(indptr) - 1
    longest = 0
    for r in range(n_rows):
        longest = max(longest, indptr[r + 1] - indptr[r])
    values = np.empty(longest, dtype=np.float32)
    bits = values.view(np.uint32)
    cols = np.empty(longest, dtype=np.int64)
    keys = np.empty(longest, dtype=np.uint64)
    out_ptr = np.zeros(n_rows + 1, dtype=np.int64)
    out_idx = np.empty(min(len(indices), n_rows * n), dtype=np.int32)
    out_val = np.empty(len(out_idx), dtype=np.float32)
    pos = 0
    for r in range(n_rows):
        item = first_row + r
        scale = inv_norm[item]
        m = 0
        for j in range(indptr[r], indptr[r + 1]):
            col = indices[j]
            value = np.float32(np.float32(counts[j] * scale) * inv_norm[col])
            if col == item or value == 0:
                continue
            values[m], cols[m] = value, col
            b = bits[m]
            desc = b if b >> np.uint32(31) else ~(b | np.uint32(0x80000000))
            keys[m] = (np.uint64(desc) << np.uint64(32)) | np.uint64(col)
            m += 1
        kth = NO_KEY
        if m > n:
            kth = np.partition(keys[:m], n - 1)[n - 1]
        start = pos
        for j in range(m):
            if keys[j] <= kth:
                out_idx[pos], out_val[pos] = cols[j], values[j]
                pos += 1
        order = np.argsort(out_idx[start:pos])
        out_idx[start:pos] = out_idx[start:pos][order]
        out_val[start:pos] = out_val[start:pos][order]
        out_ptr[r + 1] = pos
    return out_ptr, out_idx[:pos].copy(), out_val[:pos].copy()
