"""Recommendations explorer: one shopper's history next to the champion's top-K, and two versions compared."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, ui
from pipelines.data.schema import EVENT_TYPES
from pipelines.serving.model import UnknownCategory


def history_section(history: pd.DataFrame, user: str) -> None:
    st.markdown(f"**What shopper {user} did** ({len(history)} events)")
    if history.empty:
        st.caption("No events: this shopper is new to the model.")
        return
    chart = alt.Chart(history).mark_circle(size=70).encode(
        x=alt.X("ts:T", title=None), y=alt.Y("event_type:N", sort=list(EVENT_TYPES), title=None),
        color=alt.Color("event_type:N", scale=ui.EVENT_COLORS, legend=None),
        tooltip=["item_id", "category_id", "event_type", alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M")],
    ).properties(height=150)
    st.altair_chart(chart, width="stretch")
    cats = history["category_id"].value_counts().head(5)
    st.caption("Most visited categories: " + ", ".join(f"{c} ({n})" for c, n in cats.items()))
    st.dataframe(history.iloc[::-1], hide_index=True, key="history", height=300,
                 column_config={"ts": st.column_config.DatetimeColumn("time (UTC)", format="YYYY-MM-DD HH:mm")})


def recs_section(frame: pd.DataFrame, title: str, key: str) -> None:
    st.markdown(title)
    st.dataframe(frame, hide_index=True, key=key, column_config={
        "score": st.column_config.NumberColumn(format="%.4f", help="Comparable only within one source"),
        "price": st.column_config.NumberColumn(format="%.2f")})
    mix = frame["source"].value_counts().rename_axis("source").reset_index(name="items")
    st.caption("Where the items come from: " + ", ".join(f"{r.source} ({r.items})" for r in mix.itertuples()))


@dataclass(frozen=True)
class Request:
    """What the page asks every version for."""

    user: str
    k: int
    exclude_seen: bool
    category: str | None


def compare_section(root: str, runs: pd.DataFrame, champion: int, request: Request, base: pd.DataFrame,
                    catalogue: pd.DataFrame | None) -> None:
    st.subheader("Compare with another version")
    versions, _ = ui.version_options(runs)
    others = [v for v in versions if v != champion]
    if not others:
        st.caption("Only one version is registered; each `shoprec pipeline` run adds another to compare with.")
        return
    other = st.selectbox("Version", others, format_func=lambda v: ui.version_label(runs, v), key="compare_version")
    model = ui.serving_model(root, other)
    if model is None:
        return
    try:
        recs = model.recommend(request.user, k=request.k, exclude_seen=request.exclude_seen,
                               category=request.category)
    except UnknownCategory:
        st.caption(f"v{other} does not know category {request.category}.")
        return
    frame = data.recommendations_frame(recs, catalogue)
    common = set(base["item_id"]) & set(frame["item_id"])
    st.metric("Items in both lists", f"{len(common)} of {request.k}")
    side = pd.DataFrame({"rank": base["rank"], f"v{champion} (champion)": base["item_id"],
                         f"v{other}": frame["item_id"].reindex(base.index),
                         f"v{other} reason": frame["reason"].reindex(base.index)})
    st.dataframe(side, hide_index=True, key="side_by_side")


def main() -> None:
    root = ui.root()
    ui.page_header("Recommendations explorer", "Pick a shopper: what they did, what the model in production "
                                               "recommends to them and why.")
    found = ui.champion_model(root)
    if found is None:
        return
    runs, champion, model = found
    stats = ui.event_stats(root)
    examples = stats.top_users if stats is not None else []
    cols = st.columns([2, 1, 1, 1])
    user = cols[0].text_input("Shopper id", value=examples[0] if examples else "", key="user").strip()
    k = cols[1].slider("How many", 5, 50, 10, key="k")
    category = cols[2].selectbox("Category", [None, *sorted(str(c) for c in model.categories)], key="category",
                                 format_func=lambda c: "all categories" if c is None else c)
    exclude = cols[3].toggle("Hide items already seen", value=True, key="exclude_seen")
    if examples:
        st.caption("Most active shoppers: " + ", ".join(f"`{u}`" for u in examples))
    if not user:
        st.caption("Type a shopper id to see their recommendations.")
        return
    if not model.known_user(user):
        st.warning(f"Shopper {user} is not in v{champion}'s training data: they get the list for new shoppers "
                   "(bestsellers).", icon=":material/person_off:")
    catalogue = ui.catalogue(root)
    base = data.recommendations_frame(model.recommend(user, k=k, exclude_seen=exclude, category=category), catalogue)
    left, right = st.columns(2)
    with left:
        history_section(model.history(user), user)
    with right:
        recs_section(base, f"**Top {k} from the champion v{champion}**", "recommendations")
    compare_section(root, runs, champion, Request(user, k, exclude, category), base, catalogue)


main()
