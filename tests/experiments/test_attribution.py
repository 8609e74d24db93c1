"""Feedback is credited to the newest list that showed the item to the same shopper within the window, and summed
per shopper and arm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from pipelines.data.schema import EVENTS_SCHEMA
from pipelines.experiments.attribution import attribute, shopper_outcomes
from pipelines.serving.events import LOG_SCHEMA
from pipelines.serving.impressions import SCHEMA

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _impressions(rows: list[tuple]) -> pa.Table:
    names = [f.name for f in SCHEMA]
    return pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows], schema=SCHEMA)


def _events(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([{"user_id": u, "item_id": i, "event_type": e, "ts": T0 + timedelta(seconds=s),
                                  "category_id": None, "session_id": None} for u, i, e, s in rows],
                                schema=EVENTS_SCHEMA)


def _logged(rows: list[tuple]) -> pa.Table:
    """Events as the API logs them: with the request id the client named (or None)."""
    return pa.Table.from_pylist([{"user_id": u, "item_id": i, "event_type": e, "ts": T0 + timedelta(seconds=s),
                                  "category_id": None, "session_id": None, "request_id": r}
                                 for u, i, e, s, r in rows], schema=LOG_SCHEMA)


@pytest.fixture
def shown() -> pa.Table:
    at = T0
    return _impressions([
        ("r1", at, "u1", None, "1", "champion", "user", "a", 1),
        ("r1", at, "u1", None, "1", "champion", "user", "b", 2),
        ("r2", at + timedelta(seconds=60), "u1", None, "1", "champion", "user", "a", 3),  # shown again later
        ("r3", at, None, "s9", "2", "challenger", "session", "c", 1),
        ("r4", at, None, None, "1", "champion", "similar", "d", 1),
    ])


def test_events_go_to_the_newest_list_showing_the_item_within_the_window(shown):
    events = _events([
        ("u1", "a", "view", 30),       # after r1 only
        ("u1", "a", "purchase", 90),   # after r2 (newer)
        ("u1", "b", "cart", 4000),     # outside a 1-hour window
        ("u1", "z", "view", 10),       # never listed
        ("u2", "a", "view", 10),       # another shopper
        ("session:s9", "c", "purchase", 5),
        ("u1", "d", "view", 5),        # only in a similar-items list: no shopper to credit
        ("u1", "a", "view", -5),       # before any list
    ])
    prices = pa.table({"item_id": ["a", "c"], "price": [10.0, 2.5]})
    got = attribute(shown, events, window_s=3600, prices=prices).to_pylist()
    assert [(r["request_id"], r["shopper"], r["item_id"], r["event_type"], r["revenue"]) for r in got] == [
        ("r3", "session:s9", "c", "purchase", 2.5), ("r1", "u1", "a", "view", 0.0),
        ("r2", "u1", "a", "purchase", 10.0)]
    assert [r["seconds_after"] for r in got] == [5, 30, 30]


def test_outcomes_are_summed_per_shopper_and_arm(shown):
    events = _events([("u1", "a", "view", 30), ("u1", "a", "purchase", 90), ("session:s9", "c", "view", 5)])
    outcomes = shopper_outcomes(shown, attribute(shown, events, window_s=3600)).to_pylist()
    assert outcomes == [
        {"shopper": "session:s9", "arm": "challenger", "lists": 1, "clicks": 1, "carts": 0, "purchases": 0,
         "revenue": 0.0},
        {"shopper": "u1", "arm": "champion", "lists": 2, "clicks": 1, "carts": 0, "purchases": 1, "revenue": 0.0},
    ]
    with pytest.raises(ValueError):
        attribute(shown, events, window_s=0)


def test_an_event_naming_its_list_is_credited_to_it_whenever_it_comes(shown):
    events = _logged([
        ("u1", "a", "view", 90, "r1"),         # names the older list: r1, not the newer r2
        ("u1", "b", "purchase", 7200, "r1"),   # long after the window, still r1's
        ("u1", "a", "cart", 100, "r404"),      # an unknown list: the window rule (r2)
        ("u1", "z", "view", 10, "r1"),         # r1 did not show z: not credited
        ("u1", "a", "view", 95, None),         # no request id: the window rule
    ])
    got = attribute(shown, events, window_s=3600).to_pylist()
    assert [(r["request_id"], r["item_id"], r["event_type"], r["seconds_after"]) for r in got] == [
        ("r1", "a", "view", 90), ("r2", "a", "view", 35), ("r2", "a", "cart", 40), ("r1", "b", "purchase", 7200)]
