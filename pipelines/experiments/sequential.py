"""The mixture sequential probability ratio test (mSPRT) of a difference in means between two arms.

A fixed-sample test checked again and again as data arrive raises false alarms far above its level. The mSPRT
(Johari, Pekelis & Walsh, "Always valid inference", 2017) mixes the likelihood ratio of the observed difference over
a normal prior N(0, tau^2) on the true one, so ``P(Lambda_n >= 1/alpha at any n | no difference) <= alpha``: the
experiment may be read at every request without inflating its error. For an estimate ``d`` with variance ``v``::

    Lambda = sqrt(v / (v + tau^2)) * exp(tau^2 d^2 / (2 v (v + tau^2)))

and inverting it gives an always-valid confidence sequence for the difference. Per-arm means and variances of
per-shopper outcomes (clicks, carts, purchases, revenue per impression) feed it; with thousands of shoppers per arm
the normal approximation of each mean holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Decision = Literal["promote", "rollback", "continue"]


@dataclass(frozen=True)
class ArmStats:
    """Count, mean and (unbiased) variance of one arm's per-unit outcomes."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, values: np.ndarray) -> ArmStats:
        values = np.asarray(values, dtype=np.float64)
        n = len(values)
        return cls(n, float(values.mean()) if n else 0.0, float(values.var(ddof=1)) if n > 1 else 0.0)


@dataclass(frozen=True)
class SequentialResult:
    """The challenger-minus-champion difference, its always-valid interval at level ``alpha``, the mixture
    likelihood ratio and the always-valid p-value ``min(1, 1 / Lambda)`` (valid at this look; a running minimum
    over looks stays valid)."""

    difference: float
    ci_low: float
    ci_high: float
    likelihood_ratio: float
    p_value: float


def msprt(champion: ArmStats, challenger: ArmStats, tau: float, alpha: float = 0.05) -> SequentialResult:
    """The mSPRT of ``challenger.mean - champion.mean`` with mixing scale ``tau`` (the size of difference the test
    is most sensitive to: about the smallest one worth detecting)."""
    if tau <= 0 or not 0 < alpha < 1:
        raise ValueError("tau must be > 0 and alpha in (0, 1)")
    if champion.n < 2 or challenger.n < 2:
        return SequentialResult(0.0, -math.inf, math.inf, 1.0, 1.0)
    d = challenger.mean - champion.mean
    v = champion.var / champion.n + challenger.var / challenger.n
    if v <= 0:  # no spread at all: nothing to learn yet
        return SequentialResult(d, -math.inf, math.inf, 1.0, 1.0)
    t2 = tau * tau
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    # {theta : Lambda(d - theta) < 1/alpha}: the always-valid confidence sequence
    half = math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))
    lr = math.exp(min(log_lr, 700.0))
    return SequentialResult(d, d - half, d + half, lr, min(1.0, 1.0 / lr))


def decide(result: SequentialResult, guardrail: SequentialResult | None = None) -> Decision:
    """Promote when the primary metric is surely better (its interval above 0), roll back when it or the
    ``guardrail`` metric is surely worse (interval below 0), else keep collecting."""
    if result.ci_high < 0 or (guardrail is not None and guardrail.ci_high < 0):
        return "rollback"
    if result.ci_low > 0:
        return "promote"
    return "continue"
