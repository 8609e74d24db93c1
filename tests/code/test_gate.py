"""The gate promotes only a candidate that passes every check, atomically, and records why."""

import json

import pytest

from pipelines.core.config import GateParams
from pipelines.evaluation.gate import decide, run_gate


def metrics(ndcg=0.05, lift=(0.03, 0.01, 0.05)):
    return {
        "models": {"candidate": {"overall": {"ndcg@10": ndcg, "hr@10": 0.1}}},
        "lift_vs_baseline": {"candidate": {"ndcg@10": dict(zip(("mean", "ci_low", "ci_high"), lift, strict=True))}},
    }


def test_passing_candidate():
    d = decide(metrics(), {"success": True}, GateParams(min_ndcg_at_10=0.01))
    assert d.passed and all(c.passed for c in d.checks)


@pytest.mark.parametrize(
    "m, validation, failed",
    [
        (metrics(ndcg=0.001), {"success": True}, "ndcg@10"),
        (metrics(lift=(0.01, -0.002, 0.02)), {"success": True}, "lift_ndcg@10_ci_low_above_zero"),
        (metrics(), {"success": False}, "data_validation_passed"),
    ],
)
def test_each_check_can_reject(m, validation, failed):
    d = decide(m, validation, GateParams(min_ndcg_at_10=0.01))
    assert not d.passed
    assert [c.name for c in d.checks if not c.passed] == [failed]


def test_rejected_candidate_leaves_champion_untouched(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(ndcg=0.0)))
    (tmp_path / "validation.json").write_text(json.dumps({"success": True}))
    cand, champ = tmp_path / "cand", tmp_path / "champ"
    cand.mkdir(), champ.mkdir()
    (cand / "m.joblib").write_text("new")
    (champ / "m.joblib").write_text("old")
    args = (tmp_path / "metrics.json", tmp_path / "validation.json", cand, champ, tmp_path / "gate.json")
    assert not run_gate(*args, GateParams(min_ndcg_at_10=0.01)).passed
    assert (champ / "m.joblib").read_text() == "old"
    assert json.loads((tmp_path / "gate.json").read_text())["promoted_to"] is None
    (tmp_path / "metrics.json").write_text(json.dumps(metrics()))
    assert run_gate(*args, GateParams()).passed
    assert (champ / "m.joblib").read_text() == "new"


def test_cold_start_regression_and_latency_are_checked():
    m = metrics()
    m["cold_start_users"] = 10
    m["models"]["candidate"] |= {"cold_start": {"ndcg@10": 0.01}, "ms_per_user": 80.0}
    m["models"]["baseline"] = {"cold_start": {"ndcg@10": 0.05}, "overall": {"ndcg@10": 0.01}}
    d = decide(m, {"success": True}, GateParams(max_cold_start_regression=0.02, max_ms_per_user=50))
    assert sorted(c.name for c in d.checks if not c.passed) == [
        "cold_start_ndcg@10_regression_vs_popularity", "scoring_ms_per_user"]


@pytest.mark.parametrize(("ci", "tolerance", "passed"), [
    ((-0.02, -0.03, -0.01), 0.0, False),   # worse than the champion beyond the interval
    ((-0.01, -0.02, 0.005), 0.0, True),    # interval reaches zero: not shown to be worse
    ((-0.02, -0.03, -0.01), 0.015, True),  # worse, but within the allowed regression
])
def test_champion_comparison_rejects_only_a_clear_regression(ci, tolerance, passed):
    m = metrics()
    m["vs_champion"] = {"version": "3", "ndcg@10": dict(zip(("mean", "ci_low", "ci_high"), ci, strict=True))}
    d = decide(m, {"success": True}, GateParams(max_champion_regression=tolerance))
    check = next(c for c in d.checks if c.name == "ndcg@10_vs_champion_v3_ci_high")
    assert (check.passed, d.passed) == (passed, passed)
    assert check.value == ci[2] and check.threshold == -tolerance
