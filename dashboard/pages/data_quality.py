"""Data quality: the latest validation, its failed expectations and bad rows; daily volume; the shopping funnel."""

from __future__ import annotations

from typing import Any

import altair as alt
import streamlit as st

from dashboard import data, ui
from pipelines.data.schema import EVENT_TYPES


def validation_section(root: str, summary: dict[str, Any]) -> None:
    st.subheader("Latest validation")
    failed = [e for e in summary.get("expectations", []) if not e["success"]]
    cols = st.columns(4)
    cols[0].metric("Result", "passed" if summary["success"] else "FAILED",
                   help="Under the quarantine policy a run passes when few enough rows are bad")
    cols[1].metric("Rows checked", f"{summary['rows']:,}")
    cols[2].metric("Bad rows", f"{summary.get('bad_rows', 0):,}", help=f"{summary.get('bad_fraction', 0):.3%}")
    cols[3].metric("Policy", summary.get("policy", "-"),
                   help="fail: any failed expectation stops the pipeline; quarantine: bad rows are set aside")
    history = ui.validation_history(root)
    window = summary.get("window") or {}
    st.caption(f"Checked {ui.when(data.validation_time(root))}; expected time window "
               f"{window.get('start') or 'open'} to {window.get('end') or 'open'}.")
    if failed:
        st.markdown(f"**{len(failed)} expectation{'s' if len(failed) > 1 else ''} failed**")
        for e in failed:
            st.warning(e.get("message") or e["name"], icon=":material/warning:")
    else:
        st.success(f"All {len(summary.get('expectations', []))} expectations held.", icon=":material/check_circle:")
    if not summary["success"]:
        st.warning("The data set was rejected: nothing was trained on it, and the models keep the last validated "
                   "data.", icon=":material/block:")
    shown = {e.get("message") for e in failed}
    for problem in summary.get("problems", []):
        if problem not in shown:  # e.g. too many rows to quarantine
            st.warning(problem, icon=":material/block:")
    with st.expander("Every expectation", expanded=bool(failed)):
        st.dataframe(data.expectations_table(summary), hide_index=True, key="expectations",
                     column_config={"bad %": st.column_config.NumberColumn(format="%.3f")})
    bad = ui.bad_rows(root)
    if not bad.empty:
        st.markdown("**Example bad rows**" + (" (quarantined, set aside from training)"
                                              if summary.get("policy") == "quarantine" else ""))
        st.dataframe(bad, hide_index=True, key="bad_rows")
    if len(history) > 1:
        runs = history.assign(validation=range(1, len(history) + 1))
        chart = alt.Chart(runs).mark_line(point=True).encode(
            x=alt.X("validation:O", title="validated data version", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("rows:Q", title="rows read"),
            tooltip=["validation", alt.Tooltip("time:T", format="%Y-%m-%d %H:%M"), alt.Tooltip("rows:Q", format=","),
                     alt.Tooltip("good_rows:Q", title="rows kept", format=",")])
        st.markdown("**Rows per validated data version**")
        st.altair_chart(chart.properties(height=180), width="stretch")


def volume_section(stats: data.EventStats) -> None:
    st.subheader("Daily volume by event type")
    chart = alt.Chart(stats.daily).mark_bar().encode(
        x=alt.X("yearmonthdate(day):O", title=None),
        y=alt.Y("events:Q", title="events"),
        color=alt.Color("event_type:N", scale=ui.EVENT_COLORS, legend=None),
        row=alt.Row("event_type:N", title=None, sort=list(EVENT_TYPES)),
        tooltip=[alt.Tooltip("day:T", format="%Y-%m-%d"), "event_type", alt.Tooltip("events:Q", format=",")],
    ).properties(height=90, width=600).resolve_scale(y="independent")
    st.altair_chart(chart, width="content")
    st.caption("Each event type has its own scale: views outnumber purchases by far.")


def funnel_section(stats: data.EventStats) -> None:
    st.subheader("Shopping funnel: view -> cart -> favourite -> purchase")
    steps = data.funnel(stats.users_per_type, stats.events_per_type)
    chart = alt.Chart(steps).mark_bar().encode(
        y=alt.Y("step:N", sort=list(EVENT_TYPES), title=None),
        x=alt.X("users:Q", title="shoppers with at least one such event"),
        color=alt.Color("step:N", scale=ui.EVENT_COLORS, legend=None),
        tooltip=["step", alt.Tooltip("users:Q", format=","), alt.Tooltip("events:Q", format=","),
                 alt.Tooltip("conversion from previous step:Q", format=".1%"),
                 alt.Tooltip("share of viewers:Q", format=".1%")],
    )
    labels = chart.mark_text(align="left", dx=4).encode(text=alt.Text("share of viewers:Q", format=".0%"),
                                                        color=alt.value("#424242"))
    st.altair_chart((chart + labels).properties(height=200), width="stretch")
    st.dataframe(steps, hide_index=True, key="funnel", column_config={
        "conversion from previous step": st.column_config.NumberColumn(format="percent"),
        "share of viewers": st.column_config.NumberColumn(format="percent")})
    st.caption("Conversion counts shoppers: of those who did the previous step, the share who also did this one.")


def main() -> None:
    root = ui.root()
    ui.page_header("Data quality", "Can the behaviour logs be trusted? Results of the Great Expectations suite "
                                   "that runs before any training, and what the validated data looks like.")
    summary = ui.validation_summary(root)
    if summary is None:
        ui.empty_state("No validation has run yet. Ingest and validate the demo data with:", "shoprec pipeline")
    else:
        validation_section(root, summary)
    stats = ui.event_stats(root)
    if stats is None:
        ui.empty_state("No validated events yet: volumes and the funnel appear once a data set passes validation.",
                       "shoprec pipeline")
        return
    volume_section(stats)
    funnel_section(stats)


main()
