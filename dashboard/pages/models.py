"""Models: every trained version with its test metrics, trends over versions, two versions side by side, segments."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, ui

_TREND_DEFAULT = ["ndcg_at_10", "hr_at_10", "coverage"]
_STATUS_COLORS = alt.Scale(domain=["champion", "previous champion", "passed gate", "rejected"],
                           range=["#2e7d32", "#81c784", "#1976d2", "#d32f2f"])


def runs_table(runs: pd.DataFrame) -> None:
    st.subheader("All trained models")
    columns = ["version", "status", "registered", "promoted_at", "model", "data_source", "data_md5",
               *data.RUN_METRICS]
    config = {m: st.column_config.NumberColumn(ui.METRIC_LABELS[m], format="%.3f") for m in data.RUN_METRICS}
    config |= {"version": st.column_config.NumberColumn("version", format="v%d"),
               "registered": st.column_config.DatetimeColumn("trained", format="YYYY-MM-DD HH:mm"),
               "promoted_at": st.column_config.DatetimeColumn("promoted", format="YYYY-MM-DD HH:mm"),
               "data_md5": "data md5", "data_source": "data source",
               "model": st.column_config.TextColumn("model", help="two-stage: candidate sources -> rankers tried; the "
                                                    "best ranker on held-out validation users is deployed")}
    st.dataframe(runs[columns].iloc[::-1], hide_index=True, column_config=config)
    st.caption("Metrics are measured on each run's held-out test events (the last thing each user did).")


def trends(runs: pd.DataFrame) -> None:
    st.subheader("Trends across versions")
    chosen = st.multiselect("Metrics", list(data.RUN_METRICS), default=_TREND_DEFAULT,
                            format_func=ui.METRIC_LABELS.get, key="trend_metrics")
    if not chosen:
        st.caption("Pick at least one metric.")
        return
    long = runs.melt(id_vars=["version", "status", "registered"], value_vars=chosen, var_name="metric")
    long["metric"] = long["metric"].map(ui.METRIC_LABELS)
    base = alt.Chart(long).encode(
        x=alt.X("version:O", title="model version"),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        tooltip=["version", "status", "metric", alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("registered:T", title="trained", format="%Y-%m-%d %H:%M")],
    )
    lines = base.mark_line(color="#9e9e9e").encode(detail="metric:N")
    points = base.mark_point(filled=True, size=90).encode(color=alt.Color("status:N", scale=_STATUS_COLORS))
    chart = (lines + points).properties(width=260, height=180).facet(
        facet=alt.Facet("metric:N", title=None), columns=3).resolve_scale(y="independent")
    st.altair_chart(chart, width="content")
    if len(runs) < 2:
        st.caption("A trend needs at least two versions: each `shoprec pipeline` run adds one.")


def side_by_side(root: str, runs: pd.DataFrame) -> list[int]:
    """Two versions' metrics and differing parameters; returns the versions chosen (one if there is only one)."""
    st.subheader("Two models side by side")
    versions, champion = ui.version_options(runs)
    first = champion if champion is not None else versions[0]
    other = next((v for v in versions if v != first), first)
    cols = st.columns(2)
    a = cols[0].selectbox("Model A", versions, index=versions.index(first),
                          format_func=lambda v: ui.version_label(runs, v), key="compare_a")
    b = cols[1].selectbox("Model B", versions, index=versions.index(other),
                          format_func=lambda v: ui.version_label(runs, v), key="compare_b")
    if a == b:
        st.caption("Pick two different versions to see the differences" + (
            "." if len(versions) > 1 else "; train another one first (`shoprec pipeline`)."))
    row_a, row_b = (runs[runs["version"] == v].iloc[0] for v in (a, b))
    table = pd.DataFrame({"metric": [ui.METRIC_LABELS[m] for m in data.RUN_METRICS],
                          f"v{a}": [ui.fmt_metric(m, row_a[m]) for m in data.RUN_METRICS],
                          f"v{b}": [ui.fmt_metric(m, row_b[m]) for m in data.RUN_METRICS],
                          "B - A": [_delta(m, row_a[m], row_b[m]) for m in data.RUN_METRICS]})
    left, right = st.columns([2, 3])
    left.dataframe(table, hide_index=True, key="compare_table")
    long = pd.DataFrame([{"version": f"v{r['version']}", "metric": ui.METRIC_LABELS[m], "value": r[m]}
                         for r in (row_a, row_b) for m in ("ndcg_at_10", "hr_at_10", "recall_at_10", "coverage")])
    chart = alt.Chart(long).mark_bar().encode(
        x=alt.X("version:N", title=None, axis=alt.Axis(labelAngle=0)), y=alt.Y("value:Q", title=None),
        color=alt.Color("version:N", legend=None), column=alt.Column("metric:N", title=None),
        tooltip=["version", "metric", alt.Tooltip("value:Q", format=".4f")],
    ).properties(width=90, height=220)
    right.altair_chart(chart, width="content")
    if a != b:
        params_a, params_b = ui.run_params(root, a), ui.run_params(root, b)
        keys = sorted(k for k in params_a.keys() | params_b.keys() if params_a.get(k) != params_b.get(k))
        st.markdown("**Settings that differ**" if keys else "Both were trained with the same settings.")
        if keys:
            st.dataframe(pd.DataFrame({"setting": keys, f"v{a}": [params_a.get(k, "-") for k in keys],
                                       f"v{b}": [params_b.get(k, "-") for k in keys]}), hide_index=True)
    return [a] if a == b else [a, b]


def _delta(name: str, a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or pd.isna(a) or pd.isna(b) else ui.fmt_delta(name, b - a)


def segments(root: str, versions: list[int]) -> None:
    """NDCG@10 for all test users, cold-start users and purchase-only users, against the bestseller list."""
    st.subheader("Segments: new shoppers and buyers")
    seg = ui.segments(root)
    seg = seg[seg["version"].isin(versions)]
    if seg.empty:
        st.caption("These runs logged no metrics artifact with segments.")
        return
    seg = seg.assign(version=seg["version"].map(lambda v: f"v{v}"))
    chart = alt.Chart(seg).mark_bar().encode(
        x=alt.X("model:N", title=None, axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("ndcg@10:Q", title="ranking quality (NDCG@10)"),
        color=alt.Color("model:N", title=None, legend=alt.Legend(orient="bottom")),
        column=alt.Column("segment:N", title=None, sort=list(data.SEGMENTS.values())),
        row=alt.Row("version:N", title=None),
        tooltip=["version", "segment", "model", "users", alt.Tooltip("ndcg@10:Q", format=".4f"),
                 alt.Tooltip("hr@10:Q", format=".1%")],
    ).properties(width=120, height=160)
    st.altair_chart(chart, width="content")
    st.dataframe(seg, hide_index=True, key="segment_table",
                 column_config={"ndcg@10": st.column_config.NumberColumn(format="%.4f"),
                                "hr@10": st.column_config.NumberColumn(format="percent")})
    if "purchase-only" not in set(seg["segment"]):
        st.caption("No purchase-only segment: no test user's held-out event was a purchase in these runs.")
    st.caption("Cold-start users have fewer than 3 events before their test event. "
               "The popularity baseline recommends the current bestsellers to everyone.")


def components(root: str, version: int) -> None:
    """For a two-stage model: how each candidate source and ranker scores on its own."""
    parts = ui.components(root, version)
    if parts.empty:
        return
    st.subheader(f"Building blocks of v{version}")
    chart = alt.Chart(parts).mark_bar().encode(
        x=alt.X("ndcg@10:Q", title="ranking quality (NDCG@10) on its own"),
        y=alt.Y("component:N", sort="-x", title=None, axis=alt.Axis(labelLimit=200)),
        color=alt.Color("kind:N", title=None),
        tooltip=["component", "kind", alt.Tooltip("ndcg@10:Q", format=".4f"), alt.Tooltip("hr@10:Q", format=".1%")],
    )
    st.altair_chart(chart, width="stretch")
    st.caption("Sources propose candidate items; rankers order the pooled candidates. The deployed ranker was "
               "chosen on held-out validation users.")


def main() -> None:
    root = ui.root()
    ui.page_header("Models", "Every trained model version with its offline test metrics, read from MLflow.")
    runs = ui.runs(root)
    if runs.empty:
        ui.empty_state("No trained models yet. Run the pipeline, which trains, evaluates and registers one:",
                       "make demo")
        return
    runs_table(runs)
    trends(runs)
    chosen = side_by_side(root, runs)
    segments(root, chosen)
    components(root, chosen[0])


main()
