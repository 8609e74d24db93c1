"""Online evaluation: the logged impressions and feedback of a champion-vs-challenger experiment, as each arm's
metrics, an always-valid test per outcome and a decision that may be read (and acted on) at any time.

The unit is the shopper (arms are split by shopper): per shopper, each outcome (clicks, carts, purchases, revenue)
per list shown, over the lists of the experiment (from the first challenger list on, each arm's lists from its own
model version). ``look`` computes one reading; ``run_online_evaluation`` appends it to
``reports/experiments.jsonl`` (the history the dashboard plots) and, when asked, acts on it in the registry:
promote makes the challenger the champion, rollback removes the challenger alias.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from pipelines.core.atomic import atomic_file
from pipelines.core.config import ExperimentParams, Outcome
from pipelines.core.errors import ShoprecError
from pipelines.data.schema import events_dir
from pipelines.experiments.attribution import OUTCOMES, attribute, shopper_outcomes
from pipelines.experiments.sequential import ArmStats, SequentialResult, decide, msprt
from pipelines.serving.events import LOG_SCHEMA
from pipelines.serving.impressions import SCHEMA, read_impressions

ARMS = ("champion", "challenger")
HISTORY_FILE = "experiments.jsonl"


def read_events(directory: str | Path) -> pa.Table:
    """The API's event log under ``directory`` (``<dir>/events/part-*.parquet``) with each event's request id
    (null where the client sent none, or the batch predates it); empty when there is none."""
    parts = sorted(events_dir(directory).glob("part-*.parquet"))
    if not parts:
        return LOG_SCHEMA.empty_table()
    return ds.dataset(parts, schema=LOG_SCHEMA, format="parquet").to_table()


def experiment_impressions(impressions: pa.Table, champion: str, challenger: str) -> pa.Table:
    """The lists of the experiment: each arm's lists from its own version, from the first challenger list on (the
    champion's lists before it were shown to every shopper, challenger group included)."""
    con = duckdb.connect()
    con.register("impressions", impressions)
    return con.sql("""
        WITH mine AS (
            SELECT * FROM impressions
            WHERE (arm = 'champion' AND model_version = $champion)
               OR (arm = 'challenger' AND model_version = $challenger)
        )
        SELECT * FROM mine WHERE ts >= (SELECT min(ts) FROM mine WHERE arm = 'challenger')
    """, params={"champion": champion, "challenger": challenger}).to_arrow_table().cast(SCHEMA)


def _rates(outcomes: pa.Table, arm: str, outcome: Outcome) -> np.ndarray:
    """Per shopper of ``arm``: ``outcome`` per list shown."""
    mask = np.asarray(outcomes.column("arm").to_numpy(zero_copy_only=False) == arm)
    lists = outcomes.column("lists").to_numpy()[mask].astype(np.float64)
    return outcomes.column(outcome).to_numpy()[mask].astype(np.float64) / np.maximum(lists, 1.0)


def _arm_summary(outcomes: pa.Table, arm: str) -> dict[str, Any]:
    """Shoppers, lists, outcome totals and per-list rates (per shopper, averaged) of one arm."""
    mask = np.asarray(outcomes.column("arm").to_numpy(zero_copy_only=False) == arm)
    lists = outcomes.column("lists").to_numpy()[mask]
    summary: dict[str, Any] = {"shoppers": int(mask.sum()), "lists": int(lists.sum())}
    for outcome in OUTCOMES:
        total = outcomes.column(outcome).to_numpy()[mask].sum()
        summary[outcome] = float(total) if outcome == "revenue" else int(total)
        rates = _rates(outcomes, arm, outcome)  # type: ignore[arg-type]
        summary[f"{outcome}_per_list"] = float(rates.mean()) if len(rates) else 0.0
    return summary


def _test(outcomes: pa.Table, outcome: Outcome, params: ExperimentParams) -> SequentialResult:
    """The mSPRT of the challenger-minus-champion difference of ``outcome`` per list, its mixture scale
    ``effect_size`` pooled standard deviations of that outcome."""
    champion, challenger = (ArmStats.of(_rates(outcomes, arm, outcome)) for arm in ARMS)
    sd = math.sqrt(max((champion.var + challenger.var) / 2, 0.0))
    if sd == 0:
        return SequentialResult(challenger.mean - champion.mean, -math.inf, math.inf, 1.0, 1.0)
    return msprt(champion, challenger, tau=params.effect_size * sd, alpha=params.alpha)


def _finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded interval end is null."""
    return value if math.isfinite(value) else None


def look(events_dir: str | Path, params: ExperimentParams, champion: str, challenger: str, experiment: str,
         prices: pa.Table | None = None) -> dict[str, Any]:
    """One reading of the experiment from the impressions and events logged under ``events_dir``: each arm's
    metrics, the test of the primary and guardrail outcomes, and the decision (``continue`` until each arm has
    ``min_shoppers``)."""
    shown = experiment_impressions(read_impressions(events_dir), champion, challenger)
    outcomes = shopper_outcomes(shown, attribute(shown, read_events(events_dir), params.window_s, prices))
    arms = {arm: _arm_summary(outcomes, arm) for arm in ARMS}
    measured = [params.primary] + ([params.guardrail] if params.guardrail else [])
    tests = {outcome: _test(outcomes, outcome, params) for outcome in dict.fromkeys(measured)}
    enough = min(arm["shoppers"] for arm in arms.values()) >= params.min_shoppers
    decision = decide(tests[params.primary], tests.get(params.guardrail) if params.guardrail else None)
    shoppers = sum(arm["shoppers"] for arm in arms.values())
    return {
        "experiment": experiment, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "champion_version": champion, "challenger_version": challenger,
        "share": arms["challenger"]["shoppers"] / shoppers if shoppers else 0.0,
        "window_s": params.window_s, "alpha": params.alpha, "primary": params.primary, "guardrail": params.guardrail,
        "decision": decision if enough else "continue", "applied": False, "arms": arms,
        "tests": {outcome: {"difference": r.difference, "ci_low": _finite(r.ci_low), "ci_high": _finite(r.ci_high),
                            "p_value": r.p_value, "likelihood_ratio": r.likelihood_ratio}
                  for outcome, r in tests.items()},
    }


def append_history(reports: Path, record: dict[str, Any]) -> None:
    """Add one reading to ``reports/experiments.jsonl`` atomically (the file is rewritten whole: a reader never
    sees half a line)."""
    path = reports / HISTORY_FILE
    before = path.read_bytes() if path.exists() else b""
    with atomic_file(path) as tmp:
        tmp.write_bytes(before + json.dumps(record, separators=(",", ":")).encode() + b"\n")


def history(reports: Path) -> list[dict[str, Any]]:
    """Every recorded reading, oldest first (lines that do not parse are skipped)."""
    path = reports / HISTORY_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def prices_of(model_dir: Path) -> pa.Table | None:
    """``item_id, price`` of the champion's catalogue, where it knows prices (revenue of purchases)."""
    path = model_dir / "items.parquet"
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "price" not in table.column_names:
        return None
    return table.select(["item_id", "price"]).cast(pa.schema([("item_id", pa.string()), ("price", pa.float64())]))


def run_online_evaluation(root: str | Path, params: ExperimentParams, apply: bool = True,
                          events_dir: str | Path | None = None, experiment: str | None = None) -> dict[str, Any]:
    """Read the running experiment (the registry's champion and challenger), record the reading, and act on a
    promote or rollback when ``apply``; refused when no challenger is registered."""
    from pipelines.registry import versions as registry

    root = Path(root)
    challenger = registry.challenger_version(root)
    found = registry.champion_dir(root)
    if challenger is None or found is None:
        raise ShoprecError(f"no experiment runs in {root.resolve()}: the registry has no champion and challenger "
                           "(a gate with gate.promote_to=challenger sets one)")
    champion, champion_dir = found
    record = look(events_dir or root / "data" / "incoming", params, champion, challenger,
                  experiment or f"v{champion}-vs-v{challenger}", prices_of(champion_dir))
    if apply and record["decision"] != "continue":
        registry.conclude_experiment(challenger, record["decision"], root)
        record["applied"] = True
    append_history(root / "reports", record)
    return record
