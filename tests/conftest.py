"""Shared fixtures: where the read-only real data lives, and small canonical frames."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``$SHOPREC_SHARED_DIR`` or ``../shared`` beside the repo; tests needing it skip when it is absent."""
    path = Path(os.environ.get("SHOPREC_SHARED_DIR", REPO.parent / "shared"))
    if not (path / "datasets").is_dir():
        pytest.skip(f"shared data sets not found at {path}")
    return path


def make_events(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    """Canonical events from (user, item, event_type, seconds since 2017-11-25)."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "sec"])
    frame["ts"] = pd.Timestamp("2017-11-25", tz="UTC") + pd.to_timedelta(frame.pop("sec"), unit="s")
    frame["category_id"] = None
    frame["session_id"] = None
    return frame


def move_python_random(monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    """Make ``random.randint`` answer as if another thread had drawn ``offset`` times before.

    Keras seeds a layer built without a seed from Python's global ``random``; a model whose fit depends on this
    would change with whatever else the process (a Prefect worker, a retry's jitter) draws.
    """
    import random

    source = random.Random(offset)
    monkeypatch.setattr(random, "randint", source.randint)
