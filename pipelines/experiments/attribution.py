"""Attribution: which served list each feedback event answers, and what each arm's lists earned.

An event (view = click, cart, fav, purchase) of a shopper on an item is attributed to the newest impression that
listed that item to the same shopper at most ``window_s`` before it (DuckDB's ASOF join: the log may be far larger
than memory). Similar-item lists carry no shopper and are not attributed. Per shopper and arm the outcomes are then
summed, so the sequential test (``pipelines.experiments.sequential``) compares arms over shoppers, the unit the
arms are split by.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from pipelines.serving.events import ANONYMOUS_USER_PREFIX

OUTCOMES = ("clicks", "carts", "purchases", "revenue")


def attribute(impressions: pa.Table, events: pa.Table, window_s: float,
              prices: pa.Table | None = None) -> pa.Table:
    """One row per attributed event: request id, arm, shopper, item, event type, seconds after the impression and
    revenue (the item's ``price`` for a purchase where ``prices`` (item_id, price) knows it, else 0)."""
    if window_s <= 0:
        raise ValueError("window_s must be > 0")
    con = duckdb.connect()
    con.register("impressions", impressions)
    con.register("events", events)
    con.register("prices", prices if prices is not None else pa.table({"item_id": pa.array([], pa.string()),
                                                                       "price": pa.array([], pa.float64())}))
    return con.sql(f"""
        WITH shown AS (
            SELECT request_id, arm, item_id, ts,
                   coalesce(user_id, '{ANONYMOUS_USER_PREFIX}' || session_id) AS shopper
            FROM impressions WHERE surface <> 'similar' AND coalesce(user_id, session_id) IS NOT NULL
        )
        SELECT s.request_id, s.arm, e.user_id AS shopper, e.item_id, e.event_type,
               epoch(e.ts) - epoch(s.ts) AS seconds_after,
               CASE WHEN e.event_type = 'purchase' THEN coalesce(p.price, 0.0) ELSE 0.0 END AS revenue
        FROM events e
        ASOF JOIN shown s ON e.user_id = s.shopper AND e.item_id = s.item_id AND e.ts >= s.ts
        LEFT JOIN prices p ON p.item_id = e.item_id
        WHERE epoch(e.ts) - epoch(s.ts) <= {float(window_s)}
        ORDER BY e.ts, e.user_id, e.item_id
    """).to_arrow_table()


def shopper_outcomes(impressions: pa.Table, attributed: pa.Table) -> pa.Table:
    """Per shopper and arm: lists shown and the attributed clicks, carts, purchases and revenue (0 when none)."""
    con = duckdb.connect()
    con.register("impressions", impressions)
    con.register("attributed", attributed)
    return con.sql(f"""
        WITH lists AS (
            SELECT coalesce(user_id, '{ANONYMOUS_USER_PREFIX}' || session_id) AS shopper, arm,
                   count(DISTINCT request_id) AS lists
            FROM impressions WHERE surface <> 'similar' AND coalesce(user_id, session_id) IS NOT NULL
            GROUP BY ALL
        ), earned AS (
            SELECT shopper, arm,
                   count(*) FILTER (WHERE event_type = 'view') AS clicks,
                   count(*) FILTER (WHERE event_type = 'cart') AS carts,
                   count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                   sum(revenue) AS revenue
            FROM attributed GROUP BY ALL
        )
        SELECT l.shopper, l.arm, l.lists,
               coalesce(e.clicks, 0) AS clicks, coalesce(e.carts, 0) AS carts,
               coalesce(e.purchases, 0) AS purchases, coalesce(e.revenue, 0.0) AS revenue
        FROM lists l LEFT JOIN earned e USING (shopper, arm)
        ORDER BY l.arm, l.shopper
    """).to_arrow_table()
