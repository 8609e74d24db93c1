"""Online experiments: each arm's feedback over time, the sequential test's interval and every decision.

Reads ``reports/experiments.jsonl``, which ``shoprec experiment decide`` and the online-evaluation flow append
to at every reading (see docs/experiments.md).
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import ui

ARM_COLORS = alt.Scale(domain=["champion", "challenger"], range=["#1e88e5", "#fb8c00"])
OUTCOME_LABELS = {"clicks": "Clicks per list", "carts": "Add-to-carts per list", "purchases": "Purchases per list",
                  "revenue": "Revenue per list"}
DECISION_ICONS = {"promote": ":material/rocket_launch:", "rollback": ":material/undo:",
                  "continue": ":material/hourglass_top:"}
DECISION_WORDS = {"promote": "Promote", "rollback": "Roll back", "continue": "Continue"}
DECISION_HELP = {"promote": "the challenger is measurably better: it becomes the champion",
                 "rollback": "the challenger is measurably worse (or fails the guardrail): it is removed",
                 "continue": "no measurable difference yet (or too few shoppers): keep collecting"}


def _versions(reading: pd.Series) -> str:
    return f"v{reading['champion_version']} (champion) vs v{reading['challenger_version']} (challenger)"


def latest(reading: pd.Series) -> None:
    """The newest reading: decision, arms' sizes and the primary outcome per arm."""
    primary = reading["primary"] or "clicks"
    cols = st.columns(4)
    applied = "applied to the registry" if reading["applied"] else "not applied to the registry"
    cols[0].metric("Decision", DECISION_WORDS.get(reading["decision"], str(reading["decision"])),
                   help=f"{DECISION_HELP.get(reading['decision'], '')}; {applied}")
    for col, arm in zip(cols[1:3], ("champion", "challenger"), strict=True):
        col.metric(f"Shoppers, {arm}", f"{int(reading.get(f'{arm}_shoppers') or 0):,}",
                   help=f"{int(reading.get(f'{arm}_lists') or 0):,} lists shown")
    low, high = reading.get(f"{primary}_ci_low"), reading.get(f"{primary}_ci_high")
    cols[3].metric(f"Δ {primary} per list (challenger - champion)",
                   f"{reading.get(f'{primary}_difference') or 0:+.4f}",
                   help=f"always-valid {1 - float(reading['alpha'] or 0.05):.0%} interval: {_bound(low)} to "
                        f"{_bound(high)}")
    st.caption(f"{_versions(reading)}, read {ui.when(reading['at'])}; {float(reading['share'] or 0):.0%} of "
               f"shoppers on the challenger.")


def _bound(value: object) -> str:
    return "unbounded" if value is None or pd.isna(value) else f"{float(value):+.4f}"


def arms_over_time(readings: pd.DataFrame) -> None:
    st.subheader("Each arm over time")
    outcomes = [o for o in OUTCOME_LABELS if f"champion_{o}_per_list" in readings]
    if not outcomes:
        st.info("The readings hold no per-arm metrics.", icon=":material/info:")
        return
    outcome = st.selectbox("Outcome", outcomes, format_func=OUTCOME_LABELS.get, key="arm_outcome")
    long = pd.concat([pd.DataFrame({"at": readings["at"], "arm": arm,
                                    "value": pd.to_numeric(readings[f"{arm}_{outcome}_per_list"], errors="coerce"),
                                    "shoppers": readings.get(f"{arm}_shoppers")})
                      for arm in ("champion", "challenger")], ignore_index=True).dropna(subset=["value"])
    chart = alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("at:T", title="reading"), y=alt.Y("value:Q", title=OUTCOME_LABELS[outcome]),
        color=alt.Color("arm:N", scale=ARM_COLORS, title=None),
        tooltip=[alt.Tooltip("at:T", format="%Y-%m-%d %H:%M"), "arm", alt.Tooltip("value:Q", format=".4f"),
                 "shoppers"])
    st.altair_chart(chart, width="stretch")
    st.caption("Per shopper, the outcome per list shown, averaged over the arm's shoppers; feedback is credited "
               "to the newest list that showed the item to the shopper within the attribution window.")


def test_over_time(readings: pd.DataFrame) -> None:
    st.subheader("The sequential test")
    outcomes = [o for o in OUTCOME_LABELS if f"{o}_difference" in readings]
    if not outcomes:
        st.info("The readings hold no test results.", icon=":material/info:")
        return
    primary = readings["primary"].dropna().iloc[-1] if readings["primary"].notna().any() else outcomes[0]
    outcome = st.selectbox("Tested outcome", outcomes, index=outcomes.index(primary) if primary in outcomes else 0,
                           format_func=OUTCOME_LABELS.get, key="test_outcome")
    frame = pd.DataFrame({"at": readings["at"],
                          "difference": pd.to_numeric(readings[f"{outcome}_difference"], errors="coerce"),
                          "low": pd.to_numeric(readings.get(f"{outcome}_ci_low"), errors="coerce"),
                          "high": pd.to_numeric(readings.get(f"{outcome}_ci_high"), errors="coerce"),
                          "p_value": pd.to_numeric(readings.get(f"{outcome}_p_value"), errors="coerce"),
                          "decision": readings["decision"]})
    base = alt.Chart(frame).encode(x=alt.X("at:T", title="reading"))
    band = base.transform_filter("isValid(datum.low) && isValid(datum.high)").mark_area(
        opacity=0.25, color="#fb8c00").encode(y=alt.Y("low:Q", title="challenger - champion"), y2="high:Q")
    line = base.mark_line(point=True, color="#fb8c00").encode(
        y="difference:Q", tooltip=[alt.Tooltip("at:T", format="%Y-%m-%d %H:%M"),
                                   alt.Tooltip("difference:Q", format="+.4f"), alt.Tooltip("low:Q", format="+.4f"),
                                   alt.Tooltip("high:Q", format="+.4f"), alt.Tooltip("p_value:Q", format=".3f"),
                                   "decision"])
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(strokeDash=[4, 4], color="#616161").encode(y="y:Q")
    st.altair_chart(band + line + zero, width="stretch")
    st.caption("The difference of the arms' means and its always-valid confidence interval (mixture sequential "
               "probability ratio test): it may be read at any time without inflating false alarms. The "
               "challenger is promoted when the primary outcome's interval lies above 0 and rolled back when the "
               "primary or the guardrail interval lies below 0. A missing band: the interval is still unbounded.")


def decisions(readings: pd.DataFrame) -> None:
    st.subheader("Readings, newest first")
    primary = readings["primary"].fillna("clicks")
    table = pd.DataFrame({
        "read": readings["at"].map(ui.when), "experiment": readings["experiment"],
        "champion": readings["champion_version"], "challenger": readings["challenger_version"],
        "decision": readings["decision"], "applied": readings["applied"].fillna(False).astype(bool),
        "shoppers (champion / challenger)": [f"{int(c or 0):,} / {int(h or 0):,}" for c, h in
                                             zip(readings.get("champion_shoppers", pd.Series(0, index=readings.index)),
                                                 readings.get("challenger_shoppers",
                                                              pd.Series(0, index=readings.index)), strict=True)],
        "primary": primary,
        "difference": [readings.at[i, f"{p}_difference"] if f"{p}_difference" in readings else None
                       for i, p in primary.items()],
        "p-value": [readings.at[i, f"{p}_p_value"] if f"{p}_p_value" in readings else None
                    for i, p in primary.items()],
    }).iloc[::-1]
    st.dataframe(table, hide_index=True, key="readings")
    for decision, group in readings[readings["decision"] != "continue"].groupby("decision"):
        st.caption(f"{DECISION_WORDS.get(decision, decision)}: {len(group)} reading(s), last "
                   f"{ui.when(group['at'].iloc[-1])}")


def main() -> None:
    root = ui.root()
    ui.page_header("Experiments", "A model that passes the gate can be tried on a share of shoppers first (`gate."
                                  "promote_to: challenger`); the online evaluation compares its shoppers' clicks, "
                                  "carts and purchases with the champion's and promotes it or rolls it back.")
    readings = ui.experiment_readings(root)
    if readings.empty:
        ui.empty_state("No online experiment has been read yet: serve a challenger, then read the experiment with",
                       "shoprec experiment decide")
        return
    names = list(dict.fromkeys(readings["experiment"].fillna("(unnamed)").iloc[::-1]))
    name = st.selectbox("Experiment", names, key="experiment") if len(names) > 1 else names[0]
    chosen = readings[readings["experiment"].fillna("(unnamed)") == name].reset_index(drop=True)
    latest(chosen.iloc[-1])
    arms_over_time(chosen)
    test_over_time(chosen)
    decisions(chosen)


main()
