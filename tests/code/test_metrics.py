"""Metric functions against cases computed by hand."""

import math

import numpy as np
import pytest

from pipelines.evaluation.metrics import (
    coverage,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    novelty,
    paired_bootstrap_ci,
    per_user_metrics,
    recall_at_k,
)

RECS = np.array([[5, 3, 9, 1], [2, 4, 6, 8], [7, 0, 1, 2]])
TARGETS = [np.array([3]), np.array([8, 2]), np.array([11])]


def test_hit_rate():
    assert hit_rate_at_k(RECS, TARGETS, 1).tolist() == [0, 1, 0]
    assert hit_rate_at_k(RECS, TARGETS, 2).tolist() == [1, 1, 0]


def test_recall_counts_share_of_targets():
    assert recall_at_k(RECS, TARGETS, 2).tolist() == [1.0, 0.5, 0.0]
    assert recall_at_k(RECS, TARGETS, 4).tolist() == [1.0, 1.0, 0.0]


def test_ndcg_by_hand():
    got = ndcg_at_k(RECS, TARGETS, 4)
    # user 0: hit at rank 2 -> 1/log2(3); ideal 1
    assert got[0] == pytest.approx(1 / math.log2(3))
    # user 1: hits at ranks 1 and 4 -> (1 + 1/log2(5)) / (1 + 1/log2(3))
    assert got[1] == pytest.approx((1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert got[2] == 0.0


def test_mrr_is_first_hit():
    assert mrr_at_k(RECS, TARGETS, 4).tolist() == [0.5, 1.0, 0.0]
    assert mrr_at_k(RECS, TARGETS, 1).tolist() == [0.0, 1.0, 0.0]


def test_coverage_and_novelty():
    assert coverage(RECS, 20) == pytest.approx(len(np.unique(RECS)) / 20)
    pop = np.ones(12)
    assert novelty(RECS, pop) == pytest.approx(math.log2(12))


def test_per_user_metrics_names():
    got = per_user_metrics(RECS, TARGETS, [1, 2])
    assert set(got) == {f"{m}@{k}" for m in ("hr", "recall", "ndcg", "mrr") for k in (1, 2)}


def test_bootstrap_interval_excludes_zero_only_for_real_gain():
    rng = np.random.default_rng(1)
    base = rng.random(2000)
    mean, lo, hi = paired_bootstrap_ci(base + 0.1, base, samples=200)
    assert mean == pytest.approx(0.1) and lo > 0
    mean, lo, hi = paired_bootstrap_ci(rng.random(2000), rng.random(2000), samples=200)
    assert lo < 0 < hi


def test_bootstrap_in_blocks_of_resamples_gives_the_same_interval(monkeypatch):
    """Resamples are drawn a block at a time (memory bounded at a million users); the block size changes which
    draws are made, not what the interval estimates."""
    from pipelines.evaluation import metrics

    rng = np.random.default_rng(4)
    a, b = rng.random(3000), rng.random(3000) * 0.9
    whole = paired_bootstrap_ci(a, b, samples=1000)
    monkeypatch.setattr(metrics, "BOOTSTRAP_CELLS", 3 * 3000)  # three resamples per block
    blocked = paired_bootstrap_ci(a, b, samples=1000)
    assert blocked[0] == whole[0]
    assert blocked[1] == pytest.approx(whole[1], abs=0.002) and blocked[2] == pytest.approx(whole[2], abs=0.002)
    assert blocked[1] < whole[0] < blocked[2]
