"""Every dashboard page through Streamlit's AppTest: real content on the tiny project, guidance on an empty one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import data
from pipelines.data.events_io import read_events
from tests.conftest import REPO, make_events
from tests.dashboard.conftest import FAILED_EXPECTATION, READINGS

APP = REPO / "dashboard" / "app.py"
PAGES = ["overview", "models", "gate", "data_quality", "recommendations", "items", "experiments"]


def open_page(root: Path, page: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app on ``root``, switched to ``page``, after a run without exceptions."""
    monkeypatch.setenv("SHOPREC_ROOT", str(root))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if page != "overview":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """All visible text of the page (markdown, captions, alerts, titles), one string to search."""
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "success")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.mark.parametrize("page", PAGES)
def test_empty_project_says_what_to_run(page: str, empty_project: Path, monkeypatch: pytest.MonkeyPatch):
    at = open_page(empty_project, page, monkeypatch)
    assert at.info, "an empty page explains what is missing"
    commands = [c.value for c in at.code]
    assert any(c in ("make demo", "shoprec pipeline", "shoprec experiment decide") for c in commands), commands
    assert not (empty_project / "mlflow.db").exists(), "reading must not create an MLflow store"


def test_overview_shows_the_champion_against_the_previous_one(project: Path, monkeypatch: pytest.MonkeyPatch):
    at = open_page(project, "overview", monkeypatch)
    runs = data.model_runs(project)
    champion, previous = data.alias_row(runs, "champion"), data.alias_row(runs, "previous_champion")
    shown = metrics(at)
    assert shown["Champion"] == "v2"
    assert f"trained on **synthetic** data, version `{champion['data_md5']}`" in texts(at)
    ndcg = next(m for m in at.metric if m.label == "Ranking quality (NDCG@10)")
    assert ndcg.value == f"{champion['ndcg_at_10']:.3f}"
    assert ndcg.delta == f"{champion['ndcg_at_10'] - previous['ndcg_at_10']:+.3f}"
    assert shown["Events"] == f"{data.freshness(project).rows:,}"
    page = texts(at)
    assert "previous champion v1" in page
    paired = data.paired_comparison(project, champion)
    assert f"against v1 (then in production): NDCG@10 {paired['ndcg@10']['mean']:+.3f}" in page
    assert "v3 was rejected" in page and "Ranking quality (NDCG@10) at least the minimum" in page


def test_models_lists_every_run_and_compares_two(project: Path, monkeypatch: pytest.MonkeyPatch):
    at = open_page(project, "models", monkeypatch)
    runs_table = at.dataframe[0].value
    assert list(runs_table["version"]) == [3, 2, 1]
    assert list(runs_table["status"]) == ["rejected", "champion", "previous champion"]
    assert runs_table["ndcg_at_10"].notna().all()
    compare = at.get("dataframe")[1].value  # champion v2 against the newest other version, v3
    assert list(compare.columns) == ["metric", "v2", "v3", "B - A"]
    settings = at.dataframe[2].value
    assert "gate.min_ndcg_at_10" in set(settings["setting"]) and "validate.policy" in set(settings["setting"])
    segments = at.dataframe[3].value
    assert {"all test users", "cold-start users"} <= set(segments["segment"])
    assert set(segments["model"]) == {"this model", "popularity baseline"}

    at.selectbox(key="compare_b").set_value(1).run()
    assert not at.exception
    assert list(at.dataframe[1].value.columns) == ["metric", "v2", "v1", "B - A"]


def test_gate_shows_every_decision_with_its_checks(project: Path, monkeypatch: pytest.MonkeyPatch):
    at = open_page(project, "gate", monkeypatch)
    shown = metrics(at)
    assert (shown["Decisions"], shown["Promoted"], shown["Rejected"]) == ("3", "2", "1")
    tables = [t.value for t in at.dataframe]
    assert len(tables) == 3
    newest = tables[0].set_index("name")
    assert newest.loc["ndcg@10", "result"] == "FAILED" and newest.loc["ndcg@10", "threshold"] == "2"
    assert newest.loc["data_validation_passed", "result"] == "passed"
    history = data.gate_history(project, data.model_runs(project))
    assert len(pd.concat(tables)) == len(history)
    assert "v3: REJECTED" in " ".join(e.label for e in at.expander)


def test_data_quality_names_the_failed_expectation_and_its_rows(project: Path, monkeypatch: pytest.MonkeyPatch):
    at = open_page(project, "data_quality", monkeypatch)
    summary = data.validation_summary(project)
    shown = metrics(at)
    assert shown["Policy"] == "quarantine"
    assert shown["Bad rows"] == f"{summary['bad_rows']:,}" and summary["bad_rows"] > 0
    assert any(FAILED_EXPECTATION in w.value for w in at.warning)
    bad = next(t.value for t in at.dataframe if "reason" in t.value.columns)
    assert bad["reason"].str.contains(FAILED_EXPECTATION).all()
    funnel = next(t.value for t in at.dataframe if "step" in t.value.columns)
    assert list(funnel["step"]) == ["view", "cart", "fav", "purchase"]
    events = read_events(project / "data" / "validated")
    assert funnel.loc[0, "users"] == events.loc[events["event_type"] == "view", "user_id"].nunique()


def test_data_quality_of_a_rejected_data_set(failed_project: Path, monkeypatch: pytest.MonkeyPatch):
    at = open_page(failed_project, "data_quality", monkeypatch)
    assert metrics(at)["Result"] == "FAILED"
    assert any(w.value.startswith(f"{FAILED_EXPECTATION}(ts)") for w in at.warning)
    assert any(w.value.startswith("The data set was rejected") for w in at.warning)
    bad = next(t.value for t in at.dataframe if "reason" in t.value.columns)
    window_start = pd.Timestamp(data.validation_summary(failed_project)["window"]["start"])
    assert len(bad) > 0 and (bad["ts"] < window_start).all()  # the rows GX reported, read from data/ingested
    assert any(c.value == "shoprec pipeline" for c in at.code)  # no validated events: says what to run


def test_recommendations_for_a_known_user_and_a_second_version(project: Path, monkeypatch: pytest.MonkeyPatch):
    from pipelines.serving.model import ServingModel

    at = open_page(project, "recommendations", monkeypatch)
    user = at.text_input(key="user").value
    model = ServingModel.from_registry(project, "champion")
    assert model.known_user(user)
    recs = next(t.value for t in at.dataframe if "reason" in t.value.columns)
    expected = model.recommend(user, k=10)
    assert list(recs["item_id"]) == [r.item_id for r in expected]
    assert recs["reason"].str.len().gt(0).all() and recs["source"].notna().all()
    history = next(t.value for t in at.dataframe if "event_type" in t.value.columns)
    assert len(history) == len(model.history(user))
    side = next(t.value for t in at.dataframe if "v2 (champion)" in t.value.columns)
    assert len(side) == 10 and at.selectbox(key="compare_version").value == 3

    category = str(recs.loc[0, "category_id"])
    at.selectbox(key="category").set_value(category).run()
    assert not at.exception
    in_category = next(t.value for t in at.dataframe if "reason" in t.value.columns)
    assert len(in_category) == 10 and (in_category["category_id"] == category).all()

    at.text_input(key="user").set_value("nobody-like-this").run()
    assert not at.exception
    assert any("not in v2" in w.value for w in at.warning)


def test_item_explorer_shows_similar_items_and_audience(project: Path, monkeypatch: pytest.MonkeyPatch):
    at = open_page(project, "items", monkeypatch)
    item = at.text_input(key="item").value
    similar = next(t.value for t in at.dataframe if "reason" in t.value.columns)
    assert len(similar) == 10 and item not in set(similar["item_id"])
    audience = next(t.value for t in at.dataframe if "last seen" in t.value.columns)
    events = read_events(project / "data" / "validated")
    counts = events["item_id"].value_counts()
    assert counts[item] == counts.max()  # the most popular item is shown first
    assert len(audience) == events.loc[events["item_id"] == item, "user_id"].nunique()

    at.text_input(key="item").set_value("no-such-item").run()
    assert not at.exception
    assert any("not in v2's catalogue" in w.value for w in at.warning)


def test_explorers_warn_when_a_model_cannot_be_loaded(project: Path, monkeypatch: pytest.MonkeyPatch):
    from dashboard import ui
    from pipelines.core.errors import ShoprecError
    from pipelines.serving.model import ServingModel

    def missing(cls: type, root: str, ref: str) -> ServingModel:
        raise ShoprecError(f"{root}/mlartifacts/...: no serving.joblib (not a trained model directory)")

    monkeypatch.setattr(ServingModel, "from_registry", classmethod(missing))
    ui._serving_model.clear()
    try:
        for page in ("recommendations", "items"):
            at = open_page(project, page, monkeypatch)
            assert any("Model v2 cannot be loaded" in w.value for w in at.warning), page
    finally:
        ui._serving_model.clear()


def test_gate_history_falls_back_to_the_last_decision_file(tmp_path: Path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gate.json").write_text(
        '{"passed": false, "checks": [{"name": "hr@10", "value": 0.01, "threshold": 0.02, "passed": false}]}')
    history = data.gate_history(tmp_path, data.model_runs(tmp_path))
    assert history[["check", "value", "threshold", "passed", "decision"]].to_dict("records") == [
        {"check": "hr@10", "value": "0.01", "threshold": "0.02", "passed": False, "decision": "rejected"}]
    assert history["version"].isna().all()


def test_an_unregistered_newer_gate_decision_joins_the_history(tmp_path: Path):
    """A gate run without registration (``dvc repro``) is shown; the file of the last registered run is not doubled."""
    registered = {"passed": True, "checks": [{"name": "hr@10", "value": 0.5, "threshold": 0.02, "passed": True}]}
    artifacts = tmp_path / "mlartifacts" / "r1" / "artifacts"
    (artifacts / "gate").mkdir(parents=True)
    (artifacts / "gate" / "gate.json").write_text(json.dumps(registered))
    runs = pd.DataFrame([{"version": 1, "run_id": "r1", "artifact_uri": artifacts.as_uri(),
                          "registered": pd.Timestamp("2026-01-01", tz="UTC")}])
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gate.json").write_text(json.dumps(registered))
    assert data.gate_history(tmp_path, runs)["version"].tolist() == [1]
    newer = {"passed": False, "checks": [{"name": "hr@10", "value": 0.01, "threshold": 0.02, "passed": False}]}
    (tmp_path / "metrics" / "gate.json").write_text(json.dumps(newer))
    history = data.gate_history(tmp_path, runs)
    assert pd.isna(history.loc[0, "version"]) and history.loc[0, "decision"] == "rejected"
    assert history.loc[1, "version"] == 1


def test_funnel_converts_shoppers_step_by_step():
    steps = data.funnel({"view": 3, "cart": 1, "purchase": 1}, {"view": 5, "cart": 1, "purchase": 2}).set_index("step")
    assert steps["users"].to_dict() == {"view": 3, "cart": 1, "fav": 0, "purchase": 1}
    assert steps.loc["cart", "conversion from previous step"] == pytest.approx(1 / 3)
    assert pd.isna(steps.loc["purchase", "conversion from previous step"])  # nobody favourited
    assert steps.loc["purchase", "share of viewers"] == pytest.approx(1 / 3)


def test_event_stats_stream_in_batches_to_the_same_answer(project: Path):
    events = read_events(project / "data" / "validated")
    whole, batched = data.event_stats(project), data.event_stats(project, batch_rows=997)
    assert batched.daily.equals(whole.daily)
    assert (batched.users_per_type, batched.top_users, batched.top_items) == (
        whole.users_per_type, whole.top_users, whole.top_items)
    assert whole.users_per_type == events.groupby("event_type")["user_id"].nunique().to_dict()
    assert whole.daily["events"].sum() == len(events)
    counts = events["user_id"].value_counts()
    assert [counts[u] for u in whole.top_users] == list(counts.head(len(whole.top_users)))


def test_bad_rows_are_looked_up_by_position_in_the_ingested_data(tmp_path: Path):
    events = make_events([(f"u{i}", f"i{i}", "view", i) for i in range(10)])
    (tmp_path / "data" / "ingested" / "events").mkdir(parents=True)
    for part, rows in enumerate((events.iloc[:6], events.iloc[6:])):  # two files, row groups of 4 rows
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False),
                       tmp_path / "data" / "ingested" / "events" / f"part-{part:05d}.parquet", row_group_size=4)
    summary = {"expectations": [{"name": "expect_x", "columns": ["ts"], "success": False, "example_rows": [7, 1, 5]},
                                {"name": "expect_y", "columns": [], "success": True, "example_rows": [0]}]}
    bad = data.bad_rows(tmp_path, summary)
    assert list(bad["user_id"]) == ["u1", "u5", "u7"] and set(bad["reason"]) == {"expect_x(ts)"}


def test_experiments_shows_each_arm_the_test_and_every_reading(project: Path, monkeypatch: pytest.MonkeyPatch):
    at = open_page(project, "experiments", monkeypatch)
    shown = metrics(at)
    assert shown["Decision"] == "Promote"
    assert shown["Shoppers, champion"] == "300" and shown["Shoppers, challenger"] == "300"
    assert shown["Δ clicks per list (challenger - champion)"] == "+0.0500"
    assert "v2 (champion) vs v3 (challenger)" in texts(at)
    table = next(t.value for t in at.dataframe if "decision" in t.value.columns)
    assert list(table["decision"]) == ["promote", "continue", "continue"]  # newest first
    assert list(table["shoppers (champion / challenger)"]) == ["300 / 300", "120 / 120", "40 / 40"]
    assert len(READINGS) == len(table)
    at.selectbox(key="arm_outcome").select("purchases").run()
    assert not at.exception


def test_experiment_readings_skip_broken_lines_and_keep_unbounded_intervals(project: Path, tmp_path: Path):
    reports = tmp_path / "reports"
    reports.mkdir()
    lines = (project / "reports" / "experiments.jsonl").read_text().splitlines()
    (reports / "experiments.jsonl").write_text("\n".join([lines[0], "{not json", "[1, 2]", '{"at": "x"}',
                                                          lines[2][: len(lines[2]) // 2], lines[1]]) + "\n")
    readings = data.experiment_readings(tmp_path)
    assert list(readings["decision"]) == ["continue", "continue"]
    assert readings["clicks_ci_low"].isna().tolist() == [True, False]
    assert readings["champion_shoppers"].tolist() == [40, 120]
    assert data.experiment_readings(tmp_path / "nothing").empty
