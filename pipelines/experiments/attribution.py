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
    revenue (the item's ``price`` for a purchase where ``prices`` (item_id, price) knows it, else 0).

    An event that names the list it answers (``request_id``, where ``events`` has the column) is credited to that
    list if the list showed its item, whenever it came; any other event to the newest list that showed the item
    to the same shopper at most ``window_s`` before it."""
    if window_s <= 0:
        raise ValueError("window_s must be > 0")
    if "request_id" not in events.column_names:
        events = events.append_column("request_id", pa.nulls(events.num_rows, pa.string()))
    con = duckdb.connect()
    con.register("impressions", impressions)
    con.register("events", events)
    con.register("prices", prices if prices is not None else pa.table({"item_id": pa.array([], pa.string()),
                                                                       "price": pa.array([], pa.float64())}))
    return con.sql(f"""
        WITH ev AS (SELECT *, row_number() OVER () AS n FROM events),
        shown AS (
            SELECT request_id, arm, item_id, ts,
                   coalesce(user_id, '{ANONYMOUS_USER_PREFIX}' || session_id) AS shopper
            FROM impressions WHERE surface <> 'similar' AND coalesce(user_id, session_id) IS NOT NULL
        ), named AS (
            SELECT e.n, s.request_id, s.arm, s.shopper, e.item_id, e.event_type, e.ts, s.ts AS shown_ts
            FROM ev e JOIN shown s ON e.request_id = s.request_id AND e.item_id = s.item_id
        ), windowed AS (
            SELECT e.n, s.request_id, s.arm, e.user_id AS shopper, e.item_id, e.event_type, e.ts, s.ts AS shown_ts
            FROM (SELECT * FROM ev WHERE n NOT IN (SELECT n FROM named)) e
            ASOF JOIN shown s ON e.user_id = s.shopper AND e.item_id = s.item_id AND e.ts >= s.ts
            WHERE epoch(e.ts) - epoch(s.ts) <= {float(window_s)}
        )
        SELECT a.request_id, a.arm, a.shopper, a.item_id, a.event_type,
               epoch(a.ts) - epoch(a.shown_ts) AS seconds_after,
               CASE WHEN a.event_type = 'purchase' THEN coalesce(p.price, 0.0) ELSE 0.0 END AS revenue
        FROM (SELECT * FROM named UNION ALL SELECT * FROM windowed) a
        LEFT JOIN prices p ON p.item_id = a.item_id
        ORDER BY a.ts, a.shopper, a.item_id, a.n
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
