"""Overview: the model in production, how it compares with the one before, how fresh its data is, the last gate."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, ui


def champion_section(root: str, runs: pd.DataFrame) -> None:
    """Version, promotion date and data version of the champion; headline metrics against the previous one."""
    st.subheader("Model in production")
    champion = data.alias_row(runs, data.CHAMPION)
    if champion is None:
        message = ("Models were trained but none passed the deployment gate yet." if len(runs)
                   else "No model has been trained and registered yet.")
        ui.empty_state(message + " Train one on the demo data:", "make demo")
        return
    previous = data.alias_row(runs, data.PREVIOUS)
    left, right = st.columns([1, 4])
    left.metric("Champion", f"v{champion['version']}", help=f"MLflow run {champion['run_id']}")
    right.markdown(f"**{champion['model']}**  \n"
                   f"Promoted {ui.when(champion['promoted_at'])} · trained on **{champion['data_source']}** data, "
                   f"version `{champion['data_md5']}` (md5 of the validated events) · run `{champion['run_name']}`")
    if previous is None:
        st.caption("There is no previous champion yet: the changes below appear after the next promotion.")
    else:
        st.caption(f"Changes are against the previous champion v{previous['version']} "
                   f"(promoted {ui.when(previous['promoted_at'])}), on each model's own test users.")
    cols = st.columns(len(ui.HEADLINE))
    for col, name in zip(cols, ui.HEADLINE, strict=True):
        value = champion[name]
        delta = None
        if previous is not None and pd.notna(value) and pd.notna(previous[name]):
            delta = ui.fmt_delta(name, value - previous[name])
        unchanged = delta is not None and float(delta.removesuffix(" pp")) == 0
        col.metric(ui.METRIC_LABELS[name], ui.fmt_metric(name, value), delta, help=ui.METRIC_HELP.get(name),
                   delta_color="off" if unchanged else "normal", delta_arrow="off" if unchanged else "auto")
    paired = ui.paired_comparison(root, int(champion["version"]))
    if paired is not None:
        parts = [f"{label} {paired[key]['mean']:+.3f} (95% interval {paired[key]['ci_low']:+.3f} to "
                 f"{paired[key]['ci_high']:+.3f})" for key, label in (("ndcg@10", "NDCG@10"), ("hr@10", "hit rate@10"))
                 if key in paired]
        st.caption(f"Measured on the same test users when it was evaluated, against v{paired['version']} (then in "
                   f"production): " + "; ".join(parts) + ".")
    if previous is not None:
        rows = [{"model": f"v{row['version']} ({label})", "metric": ui.METRIC_LABELS[m], "value": row[m]}
                for label, row in (("champion", champion), ("previous", previous))
                for m in ("ndcg_at_10", "hr_at_10", "coverage")]
        chart = alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
            x=alt.X("value:Q", title=None),
            y=alt.Y("model:N", title=None, sort=[rows[0]["model"], rows[-1]["model"]], axis=alt.Axis(labelLimit=200)),
            color=alt.Color("model:N", legend=None),
            row=alt.Row("metric:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
            tooltip=["model", "metric", alt.Tooltip("value:Q", format=".3f")],
        ).properties(height=60)
        st.altair_chart(chart, width="stretch")


def freshness_section(root: str) -> None:
    """What the current data covers and when it was last validated."""
    st.subheader("Data freshness")
    fresh = ui.freshness(root)
    if fresh is None:
        ui.empty_state("No validated data yet. Ingest and validate the demo data with:", "shoprec pipeline")
        return
    cols = st.columns(4)
    cols[0].metric("Latest event", ui.day(fresh.last_event), help=ui.when(fresh.last_event))
    cols[1].metric("Last validated", ui.day(fresh.validated_at), help=ui.when(fresh.validated_at))
    cols[2].metric("Events", f"{fresh.rows:,}" if fresh.rows is not None else "-")
    cols[3].metric("Shoppers / items", f"{fresh.users or 0:,} / {fresh.items or 0:,}")
    span = ((fresh.last_event - fresh.first_event).total_seconds() / 86400
            if fresh.first_event is not None and fresh.last_event is not None else None)
    st.caption(f"Source: {fresh.source}; events from {ui.when(fresh.first_event)} to {ui.when(fresh.last_event)}"
               + (f" ({span:.1f} days)" if span is not None else "") + f", validated {ui.when(fresh.validated_at)}.")


def gate_section(root: str) -> None:
    """The most recent gate decision, with the checks that failed."""
    st.subheader("Last deployment gate decision")
    history = ui.gate_history(root)
    if history.empty:
        ui.empty_state("No gate decision yet: the gate runs at the end of the pipeline.", "shoprec pipeline")
        return
    first = history.iloc[0]  # newest first
    latest = history[history["when"] == first["when"]]
    version = f"v{int(first['version'])}" if pd.notna(first["version"]) else "the last candidate"
    failed = latest[~latest["passed"]]
    if first["decision"] == "promoted":
        st.success(f"{version} passed all {len(latest)} checks and was promoted ({ui.when(first['when'])}).",
                   icon=":material/check_circle:")
    else:
        st.warning(f"{version} was rejected ({ui.when(first['when'])}): {len(failed)} of {len(latest)} checks "
                   f"failed; the champion was left unchanged.", icon=":material/block:")
        for _, check in failed.iterrows():
            st.markdown(f"- **{ui.describe_check(check['check'])}**: value {check['value']}, "
                        f"threshold {check['threshold']}")
    st.page_link("pages/gate.py", label="All gate decisions", icon=":material/arrow_forward:")


def main() -> None:
    root = ui.root()
    ui.page_header("Overview", "Is the recommender in production good and safe? Everything here is read from the "
                               "project's model registry, gate records and validation reports.")
    champion_section(root, ui.runs(root))
    freshness_section(root)
    gate_section(root)


main()
