"""Which arm of an experiment a shopper sees: a stable hash of their id, so they keep one arm across requests,
API processes and restarts, and the challenger's share of shoppers is the configured one."""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

Arm = Literal["champion", "challenger"]


def arm_of(shopper_id: str, share: float, experiment: str) -> Arm:
    """``challenger`` for a ``share`` of shoppers, decided by a hash of the experiment id and the shopper id (a new
    experiment reshuffles shoppers, so one experiment's challenger group is not the next one's)."""
    if not 0 <= share <= 1:
        raise ValueError("share must be in [0, 1]")
    digest = hashlib.blake2b(f"{experiment}\x00{shopper_id}".encode(), digest_size=8).digest()
    return "challenger" if int.from_bytes(digest, "big") < share * 2.0**64 else "champion"


def arms_of(shopper_ids: list[str], share: float, experiment: str) -> np.ndarray:
    """``arm_of`` for many shoppers: True where the shopper is in the challenger arm."""
    return np.array([arm_of(s, share, experiment) == "challenger" for s in shopper_ids], dtype=bool)
