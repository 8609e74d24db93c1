"""The sequential test keeps its error rate however often it is read, finds real differences, and its interval
covers the truth; arms are stable and sized as configured."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.experiments.arms import arm_of, arms_of
from pipelines.experiments.sequential import ArmStats, decide, msprt

ALPHA = 0.05


def _running(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and unbiased variance after each observation (rows: repeated experiments)."""
    n = np.arange(1, values.shape[1] + 1)
    s1, s2 = np.cumsum(values, axis=1), np.cumsum(values**2, axis=1)
    mean = s1 / n
    var = np.where(n > 1, (s2 - n * mean**2) / np.maximum(n - 1, 1), 0.0)
    return n, mean, var


def _ever_decided(p_a: float, p_b: float, runs: int, n: int, looks: int, seed: int) -> tuple[float, float]:
    """Share of ``runs`` experiments (Bernoulli clicks, ``n`` shoppers per arm, read at ``looks`` evenly spaced
    moments) in which the test ever promoted, and in which it ever rolled back."""
    rng = np.random.default_rng(seed)
    a = (rng.random((runs, n)) < p_a).astype(float)
    b = (rng.random((runs, n)) < p_b).astype(float)
    (count, mean_a, var_a), (_, mean_b, var_b) = _running(a), _running(b)
    promoted, rolled = np.zeros(runs, bool), np.zeros(runs, bool)
    for t in np.linspace(100, n, looks).astype(int) - 1:
        for r in range(runs):
            result = msprt(ArmStats(int(count[t]), mean_a[r, t], var_a[r, t]),
                           ArmStats(int(count[t]), mean_b[r, t], var_b[r, t]), tau=0.01, alpha=ALPHA)
            decision = decide(result)
            promoted[r] |= decision == "promote"
            rolled[r] |= decision == "rollback"
    return float(promoted.mean()), float(rolled.mean())


def test_reading_the_test_at_every_look_keeps_false_alarms_below_alpha():
    """No difference, 50 looks per experiment (a fixed-sample z-test read as often alarms in 34% of these runs)."""
    promoted, rolled = _ever_decided(0.05, 0.05, runs=300, n=20_000, looks=50, seed=1)
    assert promoted + rolled <= ALPHA


def test_a_real_difference_is_found_and_its_sign_is_right():
    promoted, rolled = _ever_decided(0.05, 0.06, runs=60, n=20_000, looks=20, seed=2)
    assert promoted >= 0.8 and rolled == 0
    promoted, rolled = _ever_decided(0.06, 0.05, runs=60, n=20_000, looks=20, seed=3)
    assert rolled >= 0.8 and promoted == 0


def test_the_always_valid_interval_covers_the_true_difference():
    rng = np.random.default_rng(4)
    misses = 0
    for _ in range(400):
        a, b = rng.normal(1.0, 2.0, 3_000), rng.normal(1.3, 2.0, 3_000)
        result = msprt(ArmStats.of(a), ArmStats.of(b), tau=0.2)
        misses += not result.ci_low <= 0.3 <= result.ci_high
    assert misses / 400 <= ALPHA
    assert 0 < result.p_value <= 1 and result.likelihood_ratio > 0


def test_a_guardrail_that_is_surely_worse_rolls_back():
    better = msprt(ArmStats(10_000, 0.05, 0.0475), ArmStats(10_000, 0.07, 0.0651), tau=0.01)
    worse = msprt(ArmStats(10_000, 0.05, 0.0475), ArmStats(10_000, 0.02, 0.0196), tau=0.01)
    assert decide(better) == "promote"
    assert decide(better, guardrail=worse) == "rollback"
    assert decide(msprt(ArmStats(1, 0.0, 0.0), ArmStats(1, 1.0, 0.0), tau=0.1)) == "continue"


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError):
        msprt(ArmStats(10, 0, 1), ArmStats(10, 0, 1), tau=0)
    with pytest.raises(ValueError):
        arm_of("u1", 1.5, "exp")


def test_arms_are_stable_and_sized_by_the_share():
    shoppers = [f"u{i}" for i in range(20_000)]
    challenger = arms_of(shoppers, 0.2, "exp-1")
    assert abs(challenger.mean() - 0.2) < 0.015
    np.testing.assert_array_equal(challenger, arms_of(shoppers, 0.2, "exp-1"))
    assert not arms_of(shoppers, 0.0, "exp-1").any() and arms_of(shoppers, 1.0, "exp-1").all()
    other = arms_of(shoppers, 0.2, "exp-2")
    assert abs((challenger & other).mean() - 0.04) < 0.01  # a new experiment reshuffles shoppers
