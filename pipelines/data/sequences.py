"""A canonical data set written as a sequence file (the Amazon Beauty format ``seqfile:`` ingests).

The benchmark's published comparisons use purchase-sequence files; a generated one at a chosen size checks the
same pipeline's time and memory on data of that shape without the real file. Each user's line holds the distinct
items they touched, in the order they first touched them (a sequence data set lists an item once per user), users
with fewer than three such items left out (leave-one-out needs a train, a validation and a test item). Ids become
integers from 1 in order of first appearance; item attributes (category, parent, brand) go to a JSON object of
item -> attribute ids, as ``Beauty_item2attributes.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from pipelines.core.atomic import atomic_file
from pipelines.data.schema import events_dir, items_path

MIN_ITEMS = 3


def write_sequences(data_dir: str | Path, out: str | Path) -> dict[str, int | str]:
    """Write ``out`` (one ``user item item ...`` line per user) and ``<stem>_item2attributes.json`` beside it
    from the data set in ``data_dir``; returns the counts and the attributes path."""
    data_dir, out = Path(data_dir), Path(out)
    events = str(events_dir(data_dir) / "*.parquet")
    con = duckdb.connect()
    con.execute(f"""
        CREATE TEMP TABLE firsts AS
        SELECT user_id, item_id, min(ts) AS ts FROM read_parquet('{events}') GROUP BY user_id, item_id;
        CREATE TEMP TABLE kept AS
        SELECT * FROM firsts WHERE user_id IN
            (SELECT user_id FROM firsts GROUP BY user_id HAVING count(*) >= {MIN_ITEMS});
        CREATE TEMP TABLE item_codes AS
        SELECT item_id, row_number() OVER (ORDER BY first_ts, item_id) AS code
        FROM (SELECT item_id, min(ts) AS first_ts FROM kept GROUP BY item_id);
    """)
    rows = con.execute("""
        SELECT list(c.code ORDER BY k.ts, c.code) AS items
        FROM kept k JOIN item_codes c USING (item_id)
        GROUP BY k.user_id ORDER BY min(k.ts), k.user_id
    """).fetchall()
    with atomic_file(out) as tmp, tmp.open("w") as f:
        for user, (items,) in enumerate(rows, start=1):
            f.write(f"{user} {' '.join(map(str, items))}\n")
    attributes_out = out.with_name(f"{out.stem}_item2attributes.json")
    attributes: dict[str, list[int]] = {}
    if items_path(data_dir).is_file():
        tags: dict[str, int] = {}
        for code, values in con.execute(f"""
                SELECT c.code, i.attributes FROM read_parquet('{items_path(data_dir)}') i
                JOIN item_codes c USING (item_id) ORDER BY c.code""").fetchall():
            attributes[str(code)] = [tags.setdefault(tag, len(tags) + 1) for tag in values or []]
    with atomic_file(attributes_out) as tmp:
        tmp.write_text(json.dumps(attributes))
    n_items = con.execute("SELECT count(*) FROM item_codes").fetchone()[0]
    interactions = sum(len(items) for (items,) in rows)
    return {"users": len(rows), "items": int(n_items), "interactions": interactions, "attributes": str(attributes_out)}
