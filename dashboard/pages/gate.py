"""Deployment gate: every decision, with each check's value, threshold and result."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import ui


def _decision_label(version: object) -> str:
    return f"v{int(version)}" if pd.notna(version) else "last candidate (not registered)"


def overview(history: pd.DataFrame) -> None:
    decisions = history.drop_duplicates(["version", "when"])
    promoted = int((decisions["decision"] == "promoted").sum())
    cols = st.columns(3)
    cols[0].metric("Decisions", len(decisions))
    cols[1].metric("Promoted", promoted)
    cols[2].metric("Rejected", len(decisions) - promoted)
    grid = history.assign(name=history["check"], model=history["version"].map(_decision_label),
                          check=history["check"].map(lambda c: ui.describe_check(c, with_version=False)),
                          result=history["passed"].map({True: "passed", False: "failed"}))
    chart = alt.Chart(grid).mark_rect(stroke="white", strokeWidth=2).encode(
        x=alt.X("model:N", title=None, sort=alt.EncodingSortField("when", order="ascending"),
                axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("check:N", title=None, axis=alt.Axis(labelLimit=420)),
        color=alt.Color("result:N", scale=alt.Scale(domain=["passed", "failed"], range=["#66bb6a", "#e53935"]),
                        title=None),
        tooltip=["model", alt.Tooltip("name:N", title="check"), "value", "threshold", "result",
                 alt.Tooltip("when:T", format="%Y-%m-%d %H:%M")],
    ).properties(height=alt.Step(26), width=alt.Step(56))
    st.altair_chart(chart, width="content")
    st.caption("Each column is one trained model (oldest on the left), each row one check; a model is promoted "
               "only if every check passes. A blank cell: the check did not exist for that model yet.")


def decisions(history: pd.DataFrame) -> None:
    st.subheader("Decisions, newest first")
    for i, ((version, when), checks) in enumerate(history.groupby(["version", "when"], sort=False, dropna=False)):
        decision = checks["decision"].iloc[0]
        failed = int((~checks["passed"]).sum())
        title = (f"{_decision_label(version)}: {decision.upper()} on {ui.when(when)}"
                 + (f" ({failed} check{'s' if failed > 1 else ''} failed)" if failed else ""))
        with st.expander(title, expanded=i == 0, icon=":material/check_circle:" if decision == "promoted"
                         else ":material/block:"):
            table = pd.DataFrame({"check": checks["check"].map(ui.describe_check).to_numpy(),
                                  "value": checks["value"].to_numpy(), "threshold": checks["threshold"].to_numpy(),
                                  "result": checks["passed"].map({True: "passed", False: "FAILED"}).to_numpy(),
                                  "name": checks["check"].to_numpy()})
            st.dataframe(table, hide_index=True, key=f"checks_{i}")


def main() -> None:
    root = ui.root()
    ui.page_header("Deployment gate", "A trained model replaces the one in production only when it passes every "
                                      "check below; the thresholds are set in params.yaml (`gate`).")
    history = ui.gate_history(root)
    if history.empty:
        ui.empty_state("No gate decision yet: the gate runs at the end of every pipeline run.", "shoprec pipeline")
        return
    overview(history)
    decisions(history)


main()
