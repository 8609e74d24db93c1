"""The item vector index: exact below the size threshold, IVF above it, with recall measured against exact search."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest

from pipelines.models.base import top_k
from pipelines.models.vector_index import VectorIndex, default_lists, overlap

DIM = 32


def clustered(n: int, seed: int, clusters: int = 240, noise: float = 0.5) -> np.ndarray:
    """L2-normalised float32 vectors around ``clusters`` random centres (item-to-centre cosine ~0.9 at 0.5)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noisy = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, DIM)).astype(np.float32) * (
        noise / np.sqrt(DIM))
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def drawn() -> np.ndarray:
    return clustered(60_300, seed=0)


@pytest.fixture(scope="module")
def items(drawn: np.ndarray) -> np.ndarray:
    return drawn[:60_000]


@pytest.fixture(scope="module")
def queries(drawn: np.ndarray) -> np.ndarray:
    return drawn[60_000:]  # other draws around the same centres: user vectors near the items, not equal to any


@pytest.fixture(scope="module")
def ann(items: np.ndarray) -> VectorIndex:
    return VectorIndex.build(items, exact_below=0, seed=0)


def test_small_catalogues_are_scored_exactly_as_brute_force():
    vectors = clustered(3_000, seed=2)
    queries = clustered(40, seed=3)
    index = VectorIndex.build(vectors)
    assert index.exact and len(index) == 3_000
    found, scores = index.search(queries, 25)
    expected_items, expected_scores = top_k(queries @ vectors.T, 25)
    np.testing.assert_array_equal(found, expected_items)
    np.testing.assert_array_equal(scores, expected_scores)
    assert index.recall(queries, 25) == 1.0


def test_lists_longer_than_the_catalogue_are_padded():
    vectors = clustered(10, seed=4)
    found, scores = VectorIndex.build(vectors).search(vectors[:3], 15)
    assert found.shape == scores.shape == (3, 15)
    assert (found[:, :10] >= 0).all() and (found[:, 10:] == -1).all() and np.isneginf(scores[:, 10:]).all()
    assert scores.dtype == np.float32 and found.dtype == np.int64
    np.testing.assert_array_equal(found[:, 0], [0, 1, 2])  # a normalised vector is its own best match


def test_large_catalogues_get_an_ivf_index_with_recall_at_50_of_at_least_095(ann, queries):
    assert not ann.exact and len(ann) == 60_000
    assert ann.recall(queries, 50) >= 0.95


def test_recall_is_measured_against_exact_search_over_the_stored_vectors(items, queries):
    index = VectorIndex.build(items[:20_000], exact_below=0)
    index.n_probe = 2  # few lists: a real approximation
    found, _ = index.search(queries, 40)
    truth, _ = top_k(queries @ items[:20_000].T, 40)
    measured = index.recall(queries, 40)
    assert measured == pytest.approx(overlap(found, truth)) and measured < 0.99


def test_probing_every_list_finds_the_exact_lists_with_exact_scores(items, queries):
    index = VectorIndex.build(items[:20_000], exact_below=0)
    index.n_probe = 10**6  # clamped to the number of lists
    assert index.n_probe == index.n_lists == default_lists(20_000)
    found, scores = index.search(queries, 40)
    truth, _ = top_k(queries @ items[:20_000].T, 40)
    assert overlap(found, truth) >= 0.99  # the quantised scan ranks candidates; only k_factor * k are re-scored
    # the returned scores are the exact inner products (re-scored against the float vectors), best first
    np.testing.assert_allclose(scores, np.einsum("md,mkd->mk", queries, items[:20_000][found]), rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_excluded_items_are_left_out_and_the_list_stays_full(ann, items, queries):
    exact = VectorIndex.build(items, exact_below=10**9)
    for index in (exact, ann):
        best, _ = index.search(queries[:50], 30)
        banned = [row[::2] for row in best]  # every other item of each row's own list
        found, scores = index.search(queries[:50], 30, exclude=banned)
        assert (found >= 0).all() and np.isfinite(scores).all()
        for row, gone in zip(found, banned, strict=True):
            assert not np.isin(row, gone).any()
        assert (np.diff(scores, axis=1) <= 0).all()  # still best first


def test_exact_search_with_exclusions_is_the_brute_force_list_without_them():
    vectors = clustered(2_000, seed=5)
    queries = clustered(20, seed=6)
    banned = [np.arange(r, 2_000, 7) for r in range(20)]
    found, _ = VectorIndex.build(vectors).search(queries, 10, exclude=banned)
    scores = queries @ vectors.T
    for r, gone in enumerate(banned):
        scores[r, gone] = -np.inf
    np.testing.assert_array_equal(found, top_k(scores, 10)[0])


@pytest.mark.parametrize("exact_below", [0, 10**9])
def test_added_vectors_are_found_under_their_new_codes(items, exact_below):
    index = VectorIndex.build(items[:20_000], exact_below=exact_below)
    new = clustered(5, seed=7)
    codes = np.array([20_000, 10**12, 4_000_000])  # any new codes, not only the next ones
    index.add(codes, new[:3])
    found, scores = index.search(new[:3], 5)
    np.testing.assert_array_equal(found[:, 0], codes)
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)
    assert len(index) == 20_003
    with pytest.raises(ValueError, match="new and distinct"):
        index.add([7], new[3:4])  # code 7 is stored already


@pytest.mark.parametrize("exact_below", [0, 10**9])
def test_a_joblib_round_trip_gives_identical_answers(items, queries, exact_below):
    index = VectorIndex.build(items[:20_000], exact_below=exact_below)
    index.n_probe = 8
    buffer = io.BytesIO()
    joblib.dump(index, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    assert loaded.exact == index.exact and loaded.n_probe == index.n_probe and len(loaded) == len(index)
    for a, b in zip(index.search(queries, 40, exclude=[q[:3] for q in index.search(queries, 3)[0]]),
                    loaded.search(queries, 40, exclude=[q[:3] for q in index.search(queries, 3)[0]]), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.add([99_999], queries[:1])  # the loaded index still takes new items
    assert loaded.search(queries[:1], 1)[0][0, 0] == 99_999


def test_the_same_vectors_and_seed_give_the_same_index(items, queries, ann):
    again = VectorIndex.build(items, exact_below=0, seed=0)
    assert np.array_equal(again.__getstate__()["ann"], ann.__getstate__()["ann"])
    for a, b in zip(ann.search(queries, 50), again.search(queries, 50), strict=True):
        np.testing.assert_array_equal(a, b)


def test_tune_picks_the_fewest_probes_that_reach_the_target(items, queries):
    index = VectorIndex.build(items[:20_000], exact_below=0)
    achieved = index.tune(queries, 50, target=0.9)
    assert achieved >= 0.9
    chosen = index.n_probe
    if chosen > 1:
        index.n_probe = chosen // 2
        assert index.recall(queries, 50) < 0.9


def test_the_number_of_lists_follows_4_sqrt_n_with_enough_vectors_per_list():
    assert default_lists(1_000_000) == 4096
    assert default_lists(4_000_000) == 8192
    assert default_lists(60_000) == 1024
    assert default_lists(1_000) * 39 <= 1_000
    assert default_lists(10) == 1
