"""Item explorer: an item's details, the items the champion finds similar, and the shoppers who interact with it."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, ui
from pipelines.data.schema import EVENT_TYPES
from pipelines.serving.model import UnknownItem


def details_section(item: str, catalogue: pd.DataFrame | None) -> None:
    row = catalogue[catalogue["item_id"] == item] if catalogue is not None else pd.DataFrame()
    if row.empty:
        st.caption("No catalogue entry for this item.")
        return
    info = row.iloc[0]
    cols = st.columns(4)
    for col, (label, field) in zip(cols, (("Title", "title"), ("Category", "category_id"), ("Brand", "brand"),
                                          ("Price", "price")), strict=True):
        value = info.get(field)
        text = "-" if value is None or (not isinstance(value, str) and pd.isna(value)) else value
        col.metric(label, f"{text:.2f}" if isinstance(text, float) else str(text))


def audience_section(root: str, item: str) -> None:
    st.subheader("Who interacts with it")
    rows = ui.item_events(root, item)
    if rows is None:
        ui.empty_state("No validated events yet.", "shoprec pipeline")
        return
    if rows.empty:
        st.caption("No shopper interacted with this item in the validated data.")
        return
    counts = rows["event_type"].value_counts()
    cols = st.columns(len(EVENT_TYPES) + 1)
    cols[0].metric("Shoppers", f"{rows['user_id'].nunique():,}")
    for col, name in zip(cols[1:], EVENT_TYPES, strict=True):
        col.metric(f"{name} events", f"{int(counts.get(name, 0)):,}")
    daily = data.daily_volume(rows)
    chart = alt.Chart(daily).mark_bar().encode(
        x=alt.X("yearmonthdate(day):O", title=None), y=alt.Y("events:Q", title="events"),
        color=alt.Color("event_type:N", scale=ui.EVENT_COLORS, title=None),
        tooltip=[alt.Tooltip("day:T", format="%Y-%m-%d"), "event_type", "events"],
    ).properties(height=180)
    st.altair_chart(chart, width="stretch")
    st.dataframe(data.item_audience(rows), hide_index=True, key="audience", height=300,
                 column_config={"last seen": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})


def main() -> None:
    root = ui.root()
    ui.page_header("Item explorer", "Pick an item: what the model in production shows next to it, and who buys, "
                                    "saves or views it.")
    found = ui.champion_model(root)
    if found is None:
        return
    _, champion, model = found
    stats = ui.event_stats(root)
    examples = stats.top_items if stats is not None else []
    cols = st.columns([2, 1])
    item = cols[0].text_input("Item id", value=examples[0] if examples else "", key="item").strip()
    k = cols[1].slider("How many similar items", 5, 50, 10, key="k_similar")
    if examples:
        st.caption("Most popular items: " + ", ".join(f"`{i}`" for i in examples))
    if not item:
        st.caption("Type an item id to explore it.")
        return
    catalogue = ui.catalogue(root)
    details_section(item, catalogue)
    st.subheader(f"Similar items (champion v{champion})")
    try:
        similar = data.recommendations_frame(model.similar(item, k=k), catalogue)
    except UnknownItem:
        st.warning(f"Item {item} is not in v{champion}'s catalogue.", icon=":material/search_off:")
    else:
        st.dataframe(similar, hide_index=True, key="similar",
                     column_config={"score": st.column_config.NumberColumn(format="%.4f"),
                                    "price": st.column_config.NumberColumn(format="%.2f")})
    audience_section(root, item)


main()
