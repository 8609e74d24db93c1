"""Gate stage: a model is promoted only when every check passes; the decision is a JSON record."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_dir, read_json, write_json
from pipelines.core.config import GateParams


@dataclass
class Check:
    name: str
    value: float | bool
    threshold: float | bool
    passed: bool


@dataclass
class GateDecision:
    passed: bool
    checks: list[Check]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def decide(metrics: dict[str, Any], validation: dict[str, Any], params: GateParams) -> GateDecision:
    """Apply the thresholds in ``params`` to the candidate's test metrics and the validation result."""
    overall = metrics["models"]["candidate"]["overall"]
    lift = metrics.get("lift_vs_baseline", {}).get("candidate", {}).get("ndcg@10", {})
    checks = [
        Check("data_validation_passed", bool(validation.get("success")), True, bool(validation.get("success"))),
        Check("ndcg@10", overall["ndcg@10"], params.min_ndcg_at_10, overall["ndcg@10"] >= params.min_ndcg_at_10),
        Check("hr@10", overall["hr@10"], params.min_hr_at_10, overall["hr@10"] >= params.min_hr_at_10),
        Check("lift_ndcg@10_vs_popularity", lift.get("mean", 0.0), params.min_lift_over_popularity,
              lift.get("mean", 0.0) >= params.min_lift_over_popularity),
        Check("lift_ndcg@10_ci_low_above_zero", lift.get("ci_low", 0.0), 0.0, lift.get("ci_low", 0.0) > 0.0),
    ]
    checks += _cold_start_and_latency(metrics, params)
    if "vs_champion" in metrics:
        high = metrics["vs_champion"]["ndcg@10"]["ci_high"]
        checks.append(Check(f"ndcg@10_vs_champion_v{metrics['vs_champion']['version']}_ci_high", round(high, 6),
                            -params.max_champion_regression, high >= -params.max_champion_regression))
    return GateDecision(passed=all(c.passed for c in checks), checks=checks)


def _cold_start_and_latency(metrics: dict[str, Any], params: GateParams) -> list[Check]:
    """Cold-start NDCG@10 against popularity (when the segment exists) and per-user scoring time."""
    models = metrics["models"]
    checks = []
    if metrics.get("cold_start_users", 0) and "baseline" in models:
        gap = models["baseline"]["cold_start"]["ndcg@10"] - models["candidate"]["cold_start"]["ndcg@10"]
        checks.append(Check("cold_start_ndcg@10_regression_vs_popularity", round(gap, 6),
                            params.max_cold_start_regression, gap <= params.max_cold_start_regression))
    if "ms_per_user" in models["candidate"]:
        ms = models["candidate"]["ms_per_user"]
        checks.append(Check("scoring_ms_per_user", ms, params.max_ms_per_user, ms <= params.max_ms_per_user))
    return checks


def run_gate(
    metrics_path: str | Path, validation_path: str | Path, model_dir: str | Path,
    champion_dir: str | Path, out_path: str | Path, params: GateParams,
) -> GateDecision:
    """Stage entry point: record the decision; on a pass, swap the candidate in as champion atomically (a
    challenger leaves the champion's directory alone unless there is none yet)."""
    decision = decide(read_json(metrics_path), read_json(validation_path), params)
    record = decision.to_dict() | {"model_dir": str(model_dir), "promoted_to": None}
    if decision.passed and params.promote_to == "challenger" and Path(champion_dir).exists():
        record["promoted_to"] = "challenger"
    elif decision.passed:
        with atomic_dir(champion_dir) as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        record["promoted_to"] = str(champion_dir)
    write_json(out_path, record)
    return decision
