"""Scale benchmark: N synthetic Taobao-like events through ingest -> batch lists on one machine, stage by stage.

``python -m benchmarks.scale --events 10000000 --out outputs/bench-scale-10000000`` (``make bench-scale``):

1. writes a Tianchi UserBehavior CSV (``user,item,category,pv|cart|fav|buy,unix seconds``) from the embedded
   generator, sized to ``--events`` at the real Taobao log's proportions (``generate.taobao_proportions``: 101
   events per user, a distinct item per 24 events, a leaf category per 441 items, the 9-day window);
2. writes ``OUT/params.yaml``, the scale profile (``PROFILE``), and runs ingest, validate, split, features,
   train, evaluate, gate and batch-recommend as separate ``shoprec`` processes, each measured on its own (wall
   time, and peak RSS from ``os.wait4``, which reports exactly that child's resource usage);
3. stores the measurement under its size in ``--results`` (JSON) and rewrites the section between the
   ``scale-benchmark`` markers of ``--doc`` from all stored sizes, with a power-law fit per stage and the
   projection to 100M events on N Dask workers.

Other processes on the machine slow a run down, so the 1-minute load average is recorded before every stage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from pipelines.core.config import SyntheticParams
from pipelines.data.generate import taobao_proportions
from pipelines.data.schema import EVENT_TYPES, events_dir

STAGES = ("ingest", "validate", "split", "features", "train", "evaluate", "gate", "batch-recommend")
TAOBAO_BEHAVIOUR = pa.array(["pv", "cart", "fav", "buy"])  # in the order of EVENT_TYPES
MARK_START, MARK_END = "<!-- scale-benchmark:start -->", "<!-- scale-benchmark:end -->"
PROJECT_EVENTS = 100_000_000
PROJECT_WORKERS = (1, 4, 8, 16)
BUDGET_S, BUDGET_GB = 75 * 60, 12.0  # issue 13: 100M events in <= 75 minutes, no process above 12 GB

# Overrides of params.yaml for the scale runs, and why (rendered into the doc as the profile):
PROFILE: dict[str, dict[str, Any]] = {
    "train": {
        # SASRec / LightGCN / the deep ranker need TensorFlow epochs over every user at once; the item-side sources
        # are reductions over parts of users, so they train on the full history.
        "sources": ["covisit", "itemcos", "transitions", "popularity", "category_popularity"],
        "rankers": ["lightgbm", "xgboost"],
        # ranker features grow with the users' candidate rows: a seeded sample of validation users bounds them.
        "max_ranker_users": 20_000,
    },
    # every test user is ranked and scored; each source's own lists (diagnostics) on a seeded sample
    "evaluate": {"max_component_users": 20_000},
}


def synthetic_params(events: int, seed: int = 7) -> SyntheticParams:
    """Generator parameters for about ``events`` events at the real Taobao log's proportions, over its window."""
    return taobao_proportions(events, seed=seed)


def write_taobao_csv(params: SyntheticParams, out_csv: Path) -> int:
    """Generate the events and write them as a header-less Taobao CSV (numeric ids, unix seconds); rows written."""
    from pipelines.data.generate import generate

    parquet_dir = out_csv.parent / "generated"
    shutil.rmtree(parquet_dir, ignore_errors=True)
    generate(parquet_dir, params)
    rows = 0
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")  # as the real log: no quotes
    schema = pa.schema([(name, pa.string()) for name in ("user", "item", "category", "behaviour")]
                       + [("timestamp", pa.int64())])
    with pacsv.CSVWriter(out_csv, schema, write_options=options) as writer:
        for part in sorted(events_dir(parquet_dir).glob("*.parquet")):
            writer.write_table(_taobao_rows(pq.read_table(part), schema))
            rows += pq.ParquetFile(part).metadata.num_rows
    shutil.rmtree(parquet_dir)
    return rows


def _taobao_rows(events: pa.Table, schema: pa.Schema) -> pa.Table:
    """Canonical events as Taobao columns: ``u12`` -> ``12``, view -> pv, purchase -> buy, microseconds -> s."""
    def number(name: str) -> pa.Array:
        return pc.utf8_slice_codeunits(events[name], 1)

    behaviour = TAOBAO_BEHAVIOUR.take(pc.index_in(events["event_type"], pa.array(EVENT_TYPES)))
    seconds = pc.divide(events["ts"].cast(pa.int64()), 1_000_000)  # integer division: floor for these instants
    return pa.Table.from_arrays([number("user_id"), number("item_id"), number("category_id"), behaviour, seconds],
                                schema=schema)


def profile_params(base: Path, csv_path: Path) -> dict[str, Any]:
    """``base`` params.yaml with the scale profile applied and the CSV as the data source."""
    raw = yaml.safe_load(base.read_text()) or {}
    raw.setdefault("data", {})["source"] = f"taobao:{csv_path}"
    for section, values in PROFILE.items():
        raw.setdefault(section, {}).update(values)
    return raw


def run_stage(stage: str, out: Path, log_file: Path) -> dict[str, Any]:
    """One ``shoprec`` stage as a child process: wall seconds, its peak RSS, exit code and the load before it."""
    shoprec = Path(sys.executable).with_name("shoprec")
    cmd = [str(shoprec), stage, "--root", str(out), "--params", str(out / "params.yaml")]
    if stage == "batch-recommend":  # the candidate's serving model, top-20 of every user, part by part
        cmd = [str(shoprec), stage, "--root", str(out), "--model-dir", str(out / "models" / "candidate"), "--k", "20"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with log_file.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return {"stage": stage, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "exit_code": proc.returncode, "load_before": round(load, 2)}


def run_benchmark(events: int, out: Path, base_params: Path) -> dict[str, Any]:
    """Generate, run every stage, and collect the measurement of this size (stops at the first failing stage)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "UserBehavior.csv"
    syn = synthetic_params(events)
    start = time.perf_counter()
    rows = write_taobao_csv(syn, csv_path)
    generate_s = round(time.perf_counter() - start, 1)
    (out / "params.yaml").write_text(yaml.safe_dump(profile_params(base_params, csv_path), sort_keys=False))
    log_file = out / "stages.log"
    log_file.unlink(missing_ok=True)
    stages: list[dict[str, Any]] = []
    for stage in STAGES:
        result = run_stage(stage, out, log_file)
        stages.append(result)
        print(json.dumps(result), flush=True)
        if result["exit_code"] != 0:
            break
    return {
        "events_requested": events,
        "events": rows,
        "users": syn.users,
        "catalogue_items": syn.items,
        "csv_mb": round(csv_path.stat().st_size / 2**20),
        "generate_csv_seconds": generate_s,
        "stages": stages,
        "total_seconds": round(sum(s["seconds"] for s in stages), 1),
        "max_peak_rss_mb": max(s["peak_rss_mb"] for s in stages),
        "load_after": round(os.getloadavg()[0], 2),
        "quality": _quality(out),
        "ranker_fit_seconds": _ranker_fit_seconds(out),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {_memory_gb()} GB RAM, {platform.machine()}",
        "memory_gb": _memory_gb(),
        "complete": len(stages) == len(STAGES) and stages[-1]["exit_code"] == 0,
    }


def _memory_gb() -> int:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return round(pages / 2**30)


def _quality(out: Path) -> dict[str, Any]:
    """Test NDCG@10 / HR@10 of the candidate and the baseline, and the evaluated sample (sanity, not a target)."""
    path = out / "metrics" / "metrics.json"
    if not path.exists():
        return {}
    metrics = json.loads(path.read_text())
    models = metrics["models"]
    return {"users": metrics["users"], "users_with_targets": metrics.get("users_with_targets"),
            "chosen": metrics.get("validation", {}).get("selection", {}).get("chosen"),
            **{f"{name}_{m}": models[name]["overall"][m] for name in models for m in ("ndcg@10", "hr@10")}}


def _ranker_fit_seconds(out: Path) -> float:
    """Seconds the GBDT rankers took inside the train stage (the part ``lightgbm.dask``/``xgboost.dask`` spread)."""
    path = out / "models" / "candidate" / "meta.json"
    if not path.exists():
        return 0.0
    timings = (json.loads(path.read_text()).get("two_stage") or {}).get("timings", {})
    return round(sum(v for k, v in timings.items() if k.startswith("fit_ranker_")), 1)


# ------------------------------------------------------------------------------------------ fit and projection


def power_fit(sizes: list[float], values: list[float]) -> tuple[float, float]:
    """``value = a * size**b`` by least squares in log-log space; (a, b). One size gives b = 1 (linear)."""
    if len(sizes) < 2:
        return values[0] / sizes[0], 1.0
    b, log_a = np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-3)), 1)
    return float(math.exp(log_a)), float(b)


def linear_fit(sizes: list[float], values: list[float]) -> tuple[float, float]:
    """``value = c + d * size`` by least squares; (c, d). Memory grows with the data plus a fixed start-up cost."""
    if len(sizes) < 2:
        return 0.0, values[0] / sizes[0]
    d, c = np.polyfit(sizes, values, 1)
    return float(c), float(d)


def projection(results: list[dict[str, Any]], events: int = PROJECT_EVENTS) -> dict[str, Any]:
    """Per-stage time and memory at ``events`` (both ``c + d * events``), and total time on N Dask workers.

    Time is projected linearly, not by the log-log exponent: every stage mixes a fixed part (start-up, rankers on
    a fixed user sample) with a part linear in the events, and a power law fitted over that mix bends too low
    outside the measured range. The exponent is reported as a description of the measured range only.
    Model (Amdahl): the features stage and the GBDT ranker fits are the work the Dask paths spread over N
    workers (time / N, plus nothing for communication: optimistic); every other stage keeps running in one
    process, as the code does today.
    """
    complete = [r for r in results if r["complete"]]
    sizes = [float(r["events"]) for r in complete]
    stages: dict[str, dict[str, float]] = {}
    for i, stage in enumerate(STAGES):
        secs = [r["stages"][i]["seconds"] for r in complete]
        mem = [r["stages"][i]["peak_rss_mb"] / 1024 for r in complete]
        _, b = power_fit(sizes, secs)
        tc, td = linear_fit(sizes, secs)
        c, d = linear_fit(sizes, mem)
        stages[stage] = {"exponent": round(b, 2), "seconds": round(tc + td * events),
                         "peak_gb": round(c + d * events, 1)}
    # the rankers train on a fixed sample of users (PROFILE), so their time does not grow with the events
    ranker_s = float(np.mean([r["ranker_fit_seconds"] for r in complete]))
    parallel = stages["features"]["seconds"] + ranker_s
    serial = sum(s["seconds"] for s in stages.values()) - parallel
    # without the sample (max_ranker_users: null) ranker work grows with the validation users, ~1 per user
    users = synthetic_params(events).users
    all_users_ranker_s = ranker_s * users / PROFILE["train"]["max_ranker_users"]
    return {"events": events, "sizes": [int(s) for s in sizes], "stages": stages, "ranker_seconds": round(ranker_s),
            "parallel_seconds": round(parallel), "serial_seconds": round(serial),
            "workers": {n: round(serial + parallel / n) for n in PROJECT_WORKERS}, "users": users,
            "all_users_ranker_seconds": round(all_users_ranker_s)}


# ------------------------------------------------------------------------------------------ the doc section


def render(results: list[dict[str, Any]], command: str) -> str:
    """The markdown between the markers: command, profile, table per stage and size, fit and projection."""
    results = sorted(results, key=lambda r: r["events_requested"])
    head = " | ".join(f"{_millions(r['events_requested'])} s | {_millions(r['events_requested'])} peak GB"
                      for r in results)
    lines = [
        "Reproduce (from the repo root; `EVENTS` sizes the run, default 10000000):",
        "",
        "```bash",
        command,
        "```",
        "",
        "Each size: the generator writes a Taobao UserBehavior CSV at the real log's proportions (101 events per",
        "user, a distinct item per 24 events, a leaf category per 441 items, the 9 days of the Taobao window;",
        "`generate.taobao_proportions`; the items column below is the larger catalogue); then every stage runs as its",
        "own `shoprec STAGE --root OUT --params OUT/params.yaml` process. Wall time per process; peak RSS from",
        "`os.wait4` (that process alone). Profile applied to `params.yaml` (`benchmarks/scale.py`, `PROFILE`):",
        "",
        *[f"- `{section}.{key}: {json.dumps(value)}`" for section, values in PROFILE.items()
          for key, value in values.items()],
        "",
        "SASRec, LightGCN and the deep ranker are left out: they stop on time budgets (240 s, 90 s, 90 s in",
        "params.yaml), so at 10M events on 2 cores they would train a fraction of an epoch and add ~7 minutes of",
        "TensorFlow for a model that has not converged (not measured here). Item-item cosine is left out for memory:",
        "it multiplies the whole user x item matrix with itself (measured +1.2 GB transient at 3M events, fitted",
        "twice more at the end of training for the test and serving histories); with it the 10M train stage",
        "peaked at 9.8 GB (run of 2026-11-28 01:17 UTC). Ranker training and evaluation use seeded samples of",
        "20,000 users each, so ranker-feature memory and full-ranking time stay flat while the sources see every",
        "event.",
        "",
        f"| stage | {head} |",
        "| --- |" + " --- | --- |" * len(results),
    ]
    for i, stage in enumerate(STAGES):
        cells = []
        for r in results:
            s = r["stages"][i] if i < len(r["stages"]) else None
            cells.append("- | -" if s is None else f"{s['seconds']:.1f} | {s['peak_rss_mb'] / 1024:.2f}"
                         + ("" if s["exit_code"] == 0 else f" (exit {s['exit_code']})"))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **all stages** | " + " | ".join(
        f"**{r['total_seconds']:.0f}** | **{r['max_peak_rss_mb'] / 1024:.2f}**" for r in results) + " |")
    lines += ["", "| size | events | users | items | CSV MB | generate s | load avg (1 min) before stages "
              "| date | test NDCG@10 candidate / popularity | within budget |", "| --- " * 10 + "|"]
    for r in results:
        q = r["quality"]
        loads = ", ".join(f"{s['load_before']:.1f}" for s in r["stages"])
        ok = r["complete"] and r["total_seconds"] < BUDGET_S and r["max_peak_rss_mb"] / 1024 < BUDGET_GB
        quality = (f"{q['candidate_ndcg@10']:.4f} / {q['baseline_ndcg@10']:.4f} ({q['users']:,} users)"
                   if "candidate_ndcg@10" in q else "-")
        lines.append(f"| {_millions(r['events_requested'])} | {r['events']:,} | {r['users']:,} "
                     f"| {r['catalogue_items']:,} | {r['csv_mb']} | {r['generate_csv_seconds']} | {loads} "
                     f"| {r['date']} | {quality} | {'yes' if ok else 'no'} |")
    lines += ["", f"Machine: {results[-1]['machine']}, shared with other engineers' jobs (see load average).", ""]
    if len([r for r in results if r["complete"]]) >= 2:
        lines += _render_projection(projection(results), results[-1].get("memory_gb", _memory_gb()))
    return "\n".join(lines)


def _render_projection(p: dict[str, Any], machine_gb: float) -> list[str]:
    """The projection table; peaks above ``machine_gb`` (the measured RAM of the machine that ran) are flagged."""
    sizes = ", ".join(_millions(s) for s in p["sizes"])
    lines = [
        f"**Projection to {_millions(p['events'])} events** (the real Taobao log), fitted on the complete runs "
        f"({sizes}): time and peak memory per stage as `c + d * events` (least squares). The exponent `b` of a",
        "log-log fit describes the measured range only: it is below 1 where a fixed part (start-up, rankers on a",
        "fixed 20,000-user sample) still dominates, which a power law would wrongly extend to 100M.",
        "",
        "| stage | exponent b (1M-10M) | projected s, one machine | projected peak GB |",
        "| --- | --- | --- | --- |",
    ]
    for stage, s in p["stages"].items():
        flag = " (over this machine's RAM)" if s["peak_gb"] > machine_gb else ""
        lines.append(f"| {stage} | {s['exponent']} | {s['seconds']:,} | {s['peak_gb']}{flag} |")
    workers = " | ".join(f"{n} worker{'s' if n > 1 else ''}: {secs / 60:,.0f} min" for n, secs in p["workers"].items())
    users = p["users"]
    lines += [
        "",
        f"On N Dask workers (Amdahl): the features stage and the GBDT ranker fits ({p['parallel_seconds'] / 60:,.0f} "
        f"min at {_millions(p['events'])} on one machine; the rankers as the mean of the measured fits, since they "
        f"train on a fixed user sample) divide by N; the other stages ({p['serial_seconds'] / 60:,.0f} min) stay in "
        f"one process as the code runs them today. {workers}. With this profile Dask buys little: the",
        "single-process stages dominate, and three of them would not fit this machine's memory at 100M events.",
        f"Without the ranker sample (`train.max_ranker_users: null`, all {users:,} validation users at "
        f"{_millions(p['events'])}), the ranker fits grow with the users to about "
        f"{p['all_users_ranker_seconds'] / 3600:,.1f} h on one machine (measured seconds per 20,000 users, assumed "
        "linear); that is the part `lightgbm.dask` / `xgboost.dask` divide by N.",
        "",
        "Assumptions, stated plainly: the linear fits use three sizes at most one decade apart, on a shared",
        "machine; communication and Parquet reads from object storage are not modelled (optimistic for the parallel",
        "part); ingest, validate (Great Expectations on one pandas frame), split, the candidate sources and the",
        "evaluation are single-process, so their projected memory must fit the machine that runs them - a stage",
        "marked over this machine's RAM needs a bigger driver or a partitioned rewrite before 100M events.",
    ]
    return lines


def _millions(events: int | float) -> str:
    return f"{events / 1e6:.0f}M" if events >= 1e6 else f"{events / 1e3:.0f}k"


def update_doc(doc: Path, section: str) -> None:
    """Replace the text between the markers (the markers must exist: other sections belong to others)."""
    text = doc.read_text()
    if MARK_START not in text or MARK_END not in text:
        raise SystemExit(f"{doc}: markers {MARK_START} / {MARK_END} not found")
    before, rest = text.split(MARK_START, 1)
    _, after = rest.split(MARK_END, 1)
    doc.write_text(f"{before}{MARK_START}\n{section}\n{MARK_END}{after}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path, required=True, help="working directory of this run")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="base params.yaml")
    parser.add_argument("--results", type=Path, default=Path("docs/scale-benchmark.json"),
                        help="measurements by size (updated); the doc is rendered from all of them")
    parser.add_argument("--doc", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--render-only", action="store_true", help="re-render the doc from --results, run nothing")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    stored: dict[str, Any] = json.loads(args.results.read_text()) if args.results.exists() else {}
    # a size measured with another list of stages ran another pipeline: it is dropped, not mixed in
    stored = {size: r for size, r in stored.items() if [s["stage"] for s in r["stages"]] == list(STAGES)}
    if not args.render_only:
        result = run_benchmark(args.events, args.out, args.params)
        result["parent_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        stored[str(args.events)] = result
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(stored, indent=2) + "\n")
        print(f"total {result['total_seconds']} s, max peak RSS {result['max_peak_rss_mb']} MB, "
              f"complete={result['complete']}")
    command = "make bench-scale EVENTS=N   # = .venv/bin/python -m benchmarks.scale --events N " \
              "--out outputs/bench-scale-N"
    update_doc(args.doc, render(list(stored.values()), command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
