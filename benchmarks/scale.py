"""Scale benchmark: N synthetic Taobao-like events through ingest -> batch lists, stage by stage.

``python -m benchmarks.scale --events 10000000 --out outputs/bench-scale-10000000`` (``make bench-scale``):

1. writes a Tianchi UserBehavior CSV (``user,item,category,pv|cart|fav|buy,unix seconds``) from the embedded
   generator, sized to ``--events`` at the real Taobao log's proportions (``generate.taobao_proportions``: 101
   events per user, a distinct item per 24 events, a leaf category per 441 items, the 9-day window);
2. writes ``OUT/params.yaml``, the scale profile (``PROFILE``), and runs ingest, validate, split, features,
   train, evaluate, gate and batch-recommend as separate ``shoprec`` processes, each measured on its own (wall
   time, and peak RSS from ``os.wait4``: that child's, floored at this process's own peak so far, which Linux
   counts in from before the child's exec);
3. stores the measurement under its size in ``--results`` (JSON) and rewrites the section between the
   ``scale-benchmark`` markers of ``--doc`` from all stored sizes: a linear projection per stage to 100M events
   on one machine, and from a one-process / N-worker pair at the same size an Amdahl projection to 1B events on
   M machines.

``--workers N`` runs each stage against a ``distributed.LocalCluster`` of N single-threaded worker processes started
here for that stage: the stage process gets ``SHOPREC_DASK_ADDRESS``, so its per-part work runs as Dask tasks, and the
workers are new processes, so the peak RSS each reports after the stage is that stage's alone.

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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from pipelines.core.config import SyntheticParams
from pipelines.core.engine import ADDRESS_ENV, THREADS_ENV
from pipelines.data.generate import taobao_proportions
from pipelines.data.partitions import ROWS_PER_PARTITION, partition_count
from pipelines.data.schema import EVENT_TYPES, events_dir

if TYPE_CHECKING:
    from distributed import Client

STAGES = ("ingest", "validate", "split", "features", "train", "evaluate", "gate", "batch-recommend")
TAOBAO_BEHAVIOUR = pa.array(["pv", "cart", "fav", "buy"])  # in the order of EVENT_TYPES
MARK_START, MARK_END = "<!-- scale-benchmark:start -->", "<!-- scale-benchmark:end -->"
PROJECT_EVENTS = 100_000_000  # one machine: the real Taobao log
PROJECT_CLUSTER_EVENTS = 1_000_000_000  # --project-events default: ten Taobao logs on M machines
PROJECT_MACHINES = (1, 4, 16, 64)
CLUSTER_COMMAND = ".venv/bin/python -m benchmarks.scale --events N --workers 2 --out outputs/bench-scale-N-2w"
ONE_THREAD_COMMAND = f"{THREADS_ENV}=1 .venv/bin/python -m benchmarks.scale --events N --out outputs/bench-scale-N-1t"
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
        # item-item rows are the model's size (items x neighbours): at Taobao's 4M items item cosine's 200 per item
        # alone would be ~6 GB, more than the whole model with these bounds (3.9 GB on disk at 100M)
        "itemcos_neighbours": 50,
        "max_neighbours": 100,
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


def run_stage(stage: str, out: Path, log_file: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One ``shoprec`` stage as a child process (``env``: its environment, None = this one's): wall seconds, its
    peak RSS, exit code and the load before it."""
    shoprec = Path(sys.executable).with_name("shoprec")
    cmd = [str(shoprec), stage, "--root", str(out), "--params", str(out / "params.yaml")]
    if stage == "batch-recommend":  # the candidate's serving model, top-20 of every user, part by part
        cmd = [str(shoprec), stage, "--root", str(out), "--model-dir", str(out / "models" / "candidate"), "--k", "20"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with log_file.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return {"stage": stage, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "exit_code": proc.returncode, "load_before": round(load, 2)}


def result_key(events: int, workers: int, one_thread: bool = False) -> str:
    """Key of a measurement in the results JSON: the size, plus the worker count for a cluster run, or ``1thread``
    for a one-process run held to one thread on a machine of more cores (the ``T(1)`` of the Amdahl pair)."""
    if workers:
        return f"{events}@{workers}workers"
    return f"{events}@1thread" if one_thread else str(events)


def held_to_one_thread(result: dict[str, Any]) -> bool:
    """A one-process run with ``SHOPREC_THREADS=1`` on a machine of more cores: not the machine's one-process
    time (tables, one-machine projection), but the one-core time an Amdahl pair needs."""
    return result.get("workers", 0) == 0 and result.get("threads") == "1" and result.get("cores", 1) > 1


@contextmanager
def dask_workers(workers: int) -> Iterator[Client]:
    """A client of a new LocalCluster of ``workers`` single-threaded worker processes, closed on exit (on failure
    too). No memory limit: a worker that spilled or paused would measure the limit, not the stage."""
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                       memory_limit=0) as cluster,
          Client(cluster, set_as_default=False) as client):
        yield client


def _peak_rss_kb() -> int:
    """Peak RSS in KiB of the process it runs in (a worker, via ``Client.run``): ``VmHWM``, the high-water mark of its
    own memory since exec. Not ``getrusage``: Linux counts in ``ru_maxrss`` the memory of the process that started it
    (here the benchmark process, hundreds of MB) as it was before exec."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


def run_stages(out: Path, log_file: Path, workers: int = 0) -> list[dict[str, Any]]:
    """Every stage in order, stopping at the first that fails.

    With ``workers`` > 0 each stage gets a cluster of its own: new worker processes, so their peak RSS starts over,
    and the stage process finds it through ``SHOPREC_DASK_ADDRESS``; the workers' largest peak after the stage is its
    ``worker_peak_rss_mb``. A new cluster, not ``Client.restart``: repeated restarts of a LocalCluster hang
    (dask/distributed#8534; here on the 4th to 10th restart), a new one starts in about a second.
    """
    stages: list[dict[str, Any]] = []
    for stage in STAGES:
        if workers:
            with dask_workers(workers) as client:
                result = run_stage(stage, out, log_file, {**os.environ, ADDRESS_ENV: client.scheduler.address})
                result["worker_peak_rss_mb"] = round(max(client.run(_peak_rss_kb).values()) / 1024)
        else:
            result = run_stage(stage, out, log_file)
        stages.append(result)
        print(json.dumps(result), flush=True)
        if result["exit_code"] != 0:
            break
    return stages


def run_benchmark(events: int, out: Path, base_params: Path, workers: int = 0) -> dict[str, Any]:
    """Generate, run every stage (on ``workers`` local Dask workers if > 0), and collect the measurement of this
    size (stops at the first failing stage)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "UserBehavior.csv"
    syn = synthetic_params(events)
    start = time.perf_counter()
    rows = write_taobao_csv(syn, csv_path)
    generate_s = round(time.perf_counter() - start, 1)
    (out / "params.yaml").write_text(yaml.safe_dump(profile_params(base_params, csv_path), sort_keys=False))
    log_file = out / "stages.log"
    log_file.unlink(missing_ok=True)
    stages = run_stages(out, log_file, workers)
    cluster = {"max_worker_peak_rss_mb": max(s["worker_peak_rss_mb"] for s in stages)} if workers else {}
    return {
        "events_requested": events,
        "workers": workers,
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
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "complete": len(stages) == len(STAGES) and stages[-1]["exit_code"] == 0,
        "commit": _commit(),
        "pipelines_tree": _pipelines_tree(),
        "threads": os.environ.get(THREADS_ENV) or str(os.cpu_count()),
        "profile": PROFILE,
        **cluster,
    }


def _commit() -> str:
    """The short commit the run measured (``+`` when the work tree had changes), or ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def _pipelines_tree() -> str:
    """The git tree id of ``pipelines/`` (the code every stage runs; ``+`` when it has uncommitted changes): equal for
    commits that changed only docs or benchmarks, so their runs compare."""
    try:
        tree = subprocess.run(["git", "rev-parse", "HEAD:pipelines"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "pipelines"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return tree.stdout.strip()[:12] + ("+" if dirty.stdout.strip() else "")


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


def one_process(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The one-process runs on all cores by size (``workers`` 0; entries stored before the field existed ran in one
    process, one part at a time)."""
    return sorted((r for r in results if r.get("workers", 0) == 0 and not held_to_one_thread(r)),
                  key=lambda r: r["events_requested"])


def code_of(result: dict[str, Any]) -> str:
    """The pipeline code a run measured: the tree of ``pipelines/`` (else its commit); runs stored before either was
    recorded share one."""
    return str(result.get("pipelines_tree") or result.get("commit", "before"))


def newest_code(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the code the newest run measured: fits and projections never mix code that changed between."""
    if not results:
        return []
    newest = code_of(max(results, key=lambda r: r["date"]))
    return [r for r in results if code_of(r) == newest]


def projection(results: list[dict[str, Any]], events: int = PROJECT_EVENTS) -> dict[str, Any]:
    """Per-stage time and memory of the complete one-process runs at ``events`` (both ``c + d * events``).

    Time is projected linearly, not by the log-log exponent: every stage mixes a fixed part (start-up, rankers on
    a fixed user sample) with a part linear in the events, and a power law fitted over that mix bends too low
    outside the measured range. The exponent is reported as a description of the measured range only.
    """
    complete = [r for r in one_process(newest_code(results)) if r["complete"]]
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
    return {"events": events, "sizes": [int(s) for s in sizes], "stages": stages,
            "seconds": sum(s["seconds"] for s in stages.values())}


def amdahl(one_s: float, cluster_s: float, workers: int) -> tuple[float, float]:
    """Serial and parallel seconds ``(s, p)`` of ``T(w) = s + p / w`` from ``T(1)`` and ``T(workers)``, both clipped
    to ``[0, T(1)]``: a stage no faster on the cluster is all serial, one faster than ``T(1) / workers`` (less
    contention than in one process) all parallel."""
    p = min(max((one_s - cluster_s) * workers / (workers - 1), 0.0), one_s)
    return one_s - p, p


def cluster_pair(results: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The complete one-process run on one thread and the complete run on the most workers (2 or more) of the same
    code at the largest size measured both ways; None when there is no such pair. Amdahl's ``T(1)`` is one core's
    time: a run whose parts share all cores in threads is not one (runs stored before ``threads`` was recorded ran
    one part at a time)."""
    single = {r["events_requested"]: r for r in results
              if r.get("workers", 0) == 0 and r.get("threads", "1") == "1" and r["complete"]}
    clusters = [r for r in results if r.get("workers", 0) >= 2 and r["complete"] and r["events_requested"] in single
                and code_of(r) == code_of(single[r["events_requested"]])]
    if not clusters:
        return None
    best = max(clusters, key=lambda r: (r["events_requested"], r["workers"]))
    return single[best["events_requested"]], best


def cluster_projection(one: dict[str, Any], cluster: dict[str, Any], events: int = PROJECT_CLUSTER_EVENTS,
                       machines: tuple[int, ...] = PROJECT_MACHINES) -> dict[str, Any]:
    """Each stage's ``s`` and ``p`` (``amdahl`` of the pair) times ``k = events / measured events``, on M machines
    of the measuring machine's cores: ``k * s + k * p / (M * cores)`` seconds.

    Parts have a fixed number of rows, so k times the events is k times the parts at the measured per-part cost;
    the serial part (ingest, validate, the driver's reductions over the parts) is taken as linear too, which is
    pessimistic where it is start-up.
    """
    workers, cores = cluster["workers"], cluster["cores"]
    k = events / one["events"]
    parts = partition_count(one["events"])
    stages: dict[str, dict[str, Any]] = {}
    for single, parted in zip(one["stages"], cluster["stages"], strict=True):
        s, p = amdahl(single["seconds"], parted["seconds"], workers)
        stages[single["stage"]] = {
            "serial_seconds": s, "parallel_seconds": p, "per_part_seconds": p / parts,
            "slower": parted["seconds"] > single["seconds"], "worker_peak_gb": parted["worker_peak_rss_mb"] / 1024,
            "minutes": {m: (k * s + k * p / (m * cores)) / 60 for m in machines},
        }
    return {"events": events, "measured_size": one["events_requested"], "workers": workers, "cores": cores,
            "parts": parts, "projected_parts": partition_count(events), "stages": stages,
            "minutes": {m: sum(v["minutes"][m] for v in stages.values()) for m in machines}}


# ------------------------------------------------------------------------------------------ the doc section


def render(results: list[dict[str, Any]], command: str, project_events: int = PROJECT_CLUSTER_EVENTS) -> str:
    """The markdown between the markers: command, profile, the one-process tables per stage and size, the cluster
    runs next to their one-process size, and both projections."""
    single = one_process(results)
    clusters = sorted((r for r in results if r.get("workers", 0) > 0),
                      key=lambda r: (r["events_requested"], r["workers"]))
    train, evaluate = PROFILE["train"], PROFILE["evaluate"]
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
        "`os.wait4`, which is floored at the benchmark process's own peak so far (Linux counts the memory a child had",
        "before its exec; `parent_peak_rss_mb` in the results JSON), so a small stage shows that floor. Profile",
        "applied to `params.yaml` (`benchmarks/scale.py`, `PROFILE`):",
        "",
        *[f"- `{section}.{key}: {json.dumps(value)}`" for section, values in PROFILE.items()
          for key, value in values.items()],
        "",
        f"Candidate sources: {', '.join(train['sources'])}",
        f"(item cosine is built a block of rows at a time); rankers: {', '.join(train['rankers'])}. SASRec, LightGCN",
        "and the deep ranker are left out: they train on every user's sequences at once (they join all parts), so",
        "they are not part of the bounded-memory path measured here.",
        f"Ranker training uses a seeded sample of {train['max_ranker_users']:,} validation users "
        "(`train.max_ranker_users`); every test",
        f"user is evaluated (exact metrics), each source's own diagnostic lists on a seeded sample of "
        f"{evaluate['max_component_users']:,} users",
        "(`evaluate.max_component_users`).",
        "",
    ]
    if single:
        lines += _render_sizes(single)
    lines += ["", f"Machine: {(single or clusters)[-1]['machine']}, shared with other engineers' jobs (see load "
              "average).", ""]
    lines += _render_clusters(single, [r for r in results if held_to_one_thread(r)], clusters)
    if len([r for r in one_process(newest_code(results)) if r["complete"]]) >= 2:
        lines += _render_projection(projection(results), single[-1].get("memory_gb", _memory_gb()))
    pair = cluster_pair(results)
    lines += (_render_cluster_projection(cluster_projection(*pair, events=project_events)) if pair else [
        "**Projection to a cluster**: needs a complete one-process run on one thread and a complete run on 2 or",
        f"more workers of the same code at the same size (`{ONE_THREAD_COMMAND}` and `{CLUSTER_COMMAND}`)."])
    return "\n".join(lines)


def _render_sizes(results: list[dict[str, Any]]) -> list[str]:
    """The one-process runs: seconds and peak GB per stage and size, then one row per size."""
    head = " | ".join(f"{_millions(r['events_requested'])} s | {_millions(r['events_requested'])} peak GB"
                      for r in results)
    lines = [f"| stage | {head} |", "| --- |" + " --- | --- |" * len(results)]
    for i, stage in enumerate(STAGES):
        cells = []
        for r in results:
            s = r["stages"][i] if i < len(r["stages"]) else None
            cells.append("- | -" if s is None else f"{s['seconds']:.1f} | {s['peak_rss_mb'] / 1024:.2f}"
                         + _exit_note(s))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **all stages** | " + " | ".join(
        f"**{r['total_seconds']:.0f}** | **{r['max_peak_rss_mb'] / 1024:.2f}**" for r in results) + " |")
    lines += ["", "| size | events | users | items | CSV MB | generate s | load avg (1 min) before stages "
              "| date | code (threads) | test NDCG@10 candidate / popularity | within budget |", "| --- " * 11 + "|"]
    for r in results:
        q = r["quality"]
        ok = r["complete"] and r["total_seconds"] < BUDGET_S and r["max_peak_rss_mb"] / 1024 < BUDGET_GB
        quality = (f"{q['candidate_ndcg@10']:.4f} / {q['baseline_ndcg@10']:.4f} ({q['users']:,} users)"
                   if "candidate_ndcg@10" in q else "-")
        lines.append(f"| {_millions(r['events_requested'])} | {r['events']:,} | {r['users']:,} "
                     f"| {r['catalogue_items']:,} | {r['csv_mb']} | {r['generate_csv_seconds']} | {_loads(r)} "
                     f"| {r['date']} | {_code(r)} | {quality} | {'yes' if ok else 'no'} |")
    return lines


def _code(result: dict[str, Any]) -> str:
    """Which code and profile a run measured: its commit and thread count (older runs recorded neither, and ran
    one part at a time with item cosine's 200 and co-visitation's 500 neighbours per item)."""
    if "commit" not in result:
        return "before 93cc810 (1)"
    changed = "" if result.get("profile") == PROFILE else ", other profile"
    return f"{result['commit']} ({result.get('threads', '?')}{changed})"


def _render_clusters(single: list[dict[str, Any]], one_thread: list[dict[str, Any]],
                     clusters: list[dict[str, Any]]) -> list[str]:
    """One table per cluster run: its stages next to the one-process run of the same size and code (on all cores,
    else the one held to one thread), and the workers' peak."""
    if not clusters:
        return [f"The same size on local Dask workers: not measured: run `{CLUSTER_COMMAND}`.", ""]
    by_size = {r["events_requested"]: r for r in single}
    by_size_one = {r["events_requested"]: r for r in one_thread}
    lines: list[str] = []
    for c in clusters:
        n, size = c["workers"], c["events_requested"]
        comparable = [r for r in (by_size.get(size), by_size_one.get(size))
                      if r is not None and code_of(r) == code_of(c)]  # other code: not comparable
        base = comparable[0] if comparable else None
        one = "one process s" if base is None or not held_to_one_thread(base) else "one process, one thread s"
        lines += [
            f"**The same size on {n} local Dask workers**: {_millions(c['events_requested'])} events "
            f"(`--workers {n}`, {c['date']}, code {_code(c)}): a LocalCluster of {n}",
            f"single-threaded worker processes on the same {c['cores']} cores as the stage process, started for each",
            "stage; the biggest worker's peak RSS (`VmHWM`, its own since exec) from `Client.run` after the stage.",
            f"Load avg (1 min) before stages: {_loads(c)}.",
            *([] if base is not None else [
                "The one-process run of this size measured other code, so its column is left empty (`-`): "
                "rerun both to compare."]),
            "",
            f"| stage | {one} | {n} workers s | speed-up | stage process peak GB | biggest worker peak GB |",
            "| --- " * 6 + "|",
        ]
        for i, stage in enumerate(STAGES):
            one_s = base["stages"][i]["seconds"] if base and i < len(base["stages"]) else None
            s = c["stages"][i] if i < len(c["stages"]) else None
            lines.append(f"| {stage} | {'-' if one_s is None else f'{one_s:.1f}'} | " + (
                "- | - | - | - |" if s is None else
                f"{s['seconds']:.1f}{_exit_note(s)} | {_speed_up(one_s, s['seconds'])} "
                f"| {s['peak_rss_mb'] / 1024:.2f} | {s['worker_peak_rss_mb'] / 1024:.2f} |"))
        one_total = base["total_seconds"] if base else None
        lines += [f"| **all stages** | **{'-' if one_total is None else f'{one_total:.0f}'}** "
                  f"| **{c['total_seconds']:.0f}** | **{_speed_up(one_total, c['total_seconds'])}** "
                  f"| **{c['max_peak_rss_mb'] / 1024:.2f}** | **{c['max_worker_peak_rss_mb'] / 1024:.2f}** |", ""]
    return lines


def _render_projection(p: dict[str, Any], machine_gb: float) -> list[str]:
    """The one-machine projection table; peaks above ``machine_gb`` (the measured RAM of the machine that ran) are
    flagged."""
    sizes = ", ".join(_millions(s) for s in p["sizes"])
    target = _millions(p["events"])
    lines = [
        f"**Projection to {target} events on one machine** (every stage in one process), fitted on the complete",
        f"one-process runs ({sizes}): time and peak memory per stage as `c + d * events` (least squares). The exponent",
        "`b` of a log-log fit describes the measured range only: it is below 1 where a fixed part (start-up, rankers "
        "on",
        f"a fixed {PROFILE['train']['max_ranker_users']:,}-user sample) still dominates, which a power law would",
        f"wrongly extend to {target}.",
        "",
        f"| stage | exponent b ({_millions(p['sizes'][0])}-{_millions(p['sizes'][-1])}) | projected s, one machine "
        "| projected peak GB |",
        "| --- | --- | --- | --- |",
    ]
    for stage, s in p["stages"].items():
        flag = " (over this machine's RAM)" if s["peak_gb"] > machine_gb else ""
        lines.append(f"| {stage} | {s['exponent']} | {s['seconds']:,} | {s['peak_gb']}{flag} |")
    lines += [
        "",
        f"All stages: {p['seconds'] / 60:,.0f} min on one machine (budget {BUDGET_S / 60:.0f} min, no process above "
        f"{BUDGET_GB:.0f} GB). The linear fits use",
        f"{len(p['sizes'])} sizes on a shared machine; Parquet reads from object storage are not modelled. A stage",
        "marked over this machine's RAM needs a bigger machine at that size; on a cluster its per-part work moves to",
        "the workers (below), while ingest, validate and gate stay in one process.",
        "",
    ]
    return lines


def _render_cluster_projection(p: dict[str, Any]) -> list[str]:
    """The Amdahl projection of one one-process / N-worker pair to M machines, with its assumptions."""
    n, cores, machines = p["workers"], p["cores"], list(p["minutes"])
    head = " | ".join(f"{m} machine{'s' if m > 1 else ''} ({m * cores} workers) min" for m in machines)
    stages = p["stages"]
    lines = [
        f"**Projection to {_millions(p['events'])} events on M machines** of this machine's size ({cores} cores each, "
        f"so M x {cores} Dask",
        f"workers), from the {_millions(p['measured_size'])} runs in one process on one thread "
        f"(`SHOPREC_THREADS=1`) and on {n} workers. Per stage, "
        "Amdahl `T(w) = s + p / w` solved",
        f"from the two measured times: `p = (T1 - T{n}) * {n} / {n - 1}`, `s = T1 - p`, both clipped to [0, T1]. "
        "Both grow",
        "with the events, `k = projected / measured events`: `T = k * s + k * p / (M * cores)`.",
        "",
        f"| stage | measured s | measured p | p per part ({p['parts']} of {ROWS_PER_PARTITION:,} rows) | {head} |",
        "| --- " * (4 + len(machines)) + "|",
    ]
    for stage, v in stages.items():
        minutes = " | ".join(f"{v['minutes'][m]:,.1f}" for m in machines)
        lines.append(f"| {stage} | {v['serial_seconds']:.1f} | {v['parallel_seconds']:.1f} "
                     f"| {v['per_part_seconds']:.1f} | {minutes} |")
    lines.append(f"| **all stages** | **{sum(v['serial_seconds'] for v in stages.values()):.1f}** "
                 f"| **{sum(v['parallel_seconds'] for v in stages.values()):.1f}** | | "
                 + " | ".join(f"**{p['minutes'][m]:,.0f}**" for m in machines) + " |")
    lines.append("")
    slower = [stage for stage, v in stages.items() if v["slower"]]
    if slower:
        lines += [f"Slower on {n} workers than in one process, so `p = 0` and all of it counts as serial: "
                  f"{', '.join(slower)}.", ""]
    if p["parts"] < n:
        lines += [f"Only {p['parts']} part(s) at the measured size for {n} workers: a stage cannot spread over more "
                  f"workers than parts, so `p` is understated; measure at {n * ROWS_PER_PARTITION:,} events or more.",
                  ""]
    peak_stage = max(stages, key=lambda stage: stages[stage]["worker_peak_gb"])
    lines += [
        "Assumptions, stated plainly: network and object-store reads are not modelled (the workers here share one "
        "local",
        f"disk). Parts have {ROWS_PER_PARTITION:,} rows ({p['projected_parts']:,} parts at {_millions(p['events'])} "
        "events), so the parallel work is linear in the parts",
        "at the per-part cost measured here; the exponents `b` of the one-process sizes (one-machine projection) show",
        "how close to linear each stage was over the measured range (above 1: this is optimistic). The serial part",
        "(ingest, validate, gate, the driver's reductions over the parts) is taken as linear in the events too,",
        "pessimistic where it is start-up. Memory per worker is the measured worker peak",
        f"({stages[peak_stage]['worker_peak_gb']:.2f} GB, in {peak_stage}): it depends on the part size, not the "
        "total; the stage process, which",
        "holds the reductions, grows with the total (its peak per stage in the one-machine projection).",
    ]
    return lines


def _exit_note(stage: dict[str, Any]) -> str:
    return "" if stage["exit_code"] == 0 else f" (exit {stage['exit_code']})"


def _speed_up(one_s: float | None, cluster_s: float) -> str:
    return "-" if one_s is None or cluster_s <= 0 else f"{one_s / cluster_s:.2f}x"


def _loads(result: dict[str, Any]) -> str:
    return ", ".join(f"{s['load_before']:.1f}" for s in result["stages"])


def _millions(events: int | float) -> str:
    if events >= 1e9:
        return f"{events / 1e9:g}B"
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
    parser.add_argument("--workers", type=int, default=0,
                        help="run the stages on a LocalCluster of this many worker processes (0: one process)")
    parser.add_argument("--project-events", type=int, default=PROJECT_CLUSTER_EVENTS,
                        help="size of the projection to M machines")
    parser.add_argument("--out", type=Path, required=True, help="working directory of this run")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="base params.yaml")
    parser.add_argument("--results", type=Path, default=Path("docs/scale-benchmark.json"),
                        help="measurements by size (updated); the doc is rendered from all of them")
    parser.add_argument("--doc", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--render-only", action="store_true", help="re-render the doc from --results, run nothing")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be 0 (one process) or more")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    stored: dict[str, Any] = json.loads(args.results.read_text()) if args.results.exists() else {}
    # a size measured with another list of stages ran another pipeline: it is dropped, not mixed in
    stored = {size: r for size, r in stored.items() if [s["stage"] for s in r["stages"]] == list(STAGES)}
    if not args.render_only:
        result = run_benchmark(args.events, args.out, args.params, args.workers)
        result["parent_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        stored[result_key(args.events, args.workers, held_to_one_thread(result))] = result
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(stored, indent=2) + "\n")
        print(f"total {result['total_seconds']} s, max peak RSS {result['max_peak_rss_mb']} MB, "
              f"complete={result['complete']}")
    command = ("make bench-scale EVENTS=N   # = .venv/bin/python -m benchmarks.scale --events N "
               f"--out outputs/bench-scale-N\n{CLUSTER_COMMAND}   # the same size on 2 local Dask workers\n"
               f"{ONE_THREAD_COMMAND}   # and in one process on one thread: the pair the cluster projection needs")
    update_doc(args.doc, render(list(stored.values()), command, args.project_events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
