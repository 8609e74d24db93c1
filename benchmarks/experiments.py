"""bench-experiments: the closed-loop simulator of online experiments over repeated seeds (issue 15).

A project on the embedded synthetic data set gets three registered versions: the default two-stage model (the
champion), a popularity model and a random model (both fail the gate; they are registered all the same). Then,
per seed, simulated shoppers (``pipelines.experiments.simulate``) drive the real API and the experiment is read
``--looks`` times, stopping at the first decision, as the hourly flow would:

* random challenger vs the two-stage champion: should be rolled back;
* two-stage challenger vs a popularity champion: should be promoted;
* identical challenger (the champion's own version in both arms): should be promoted in at most alpha of the
  runs, however often it is read.

Writes ``<root>/reports/experiments_benchmark.json`` and, with ``--doc``, the section of docs/BENCHMARKS.md
between the ``experiments-benchmark`` markers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.api_load import update_doc
from pipelines.core.atomic import read_json, write_json
from pipelines.core.config import load_params

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- experiments-benchmark:start -->", "<!-- experiments-benchmark:end -->"
MODELS_FILE = "experiments_benchmark_models.json"
SCENARIOS = [  # name, champion model, challenger model, the right decision
    ("random challenger", "two_stage", "random", "rollback"),
    ("better challenger", "popularity", "two_stage", "promote"),
    ("identical challenger", "two_stage", "two_stage", "continue"),
]


def build(root: Path, params_path: Path) -> dict[str, str]:
    """Train and register the three models in ``root`` once (kept in reports/); model kind -> version."""
    from pipelines.core.paths import Paths
    from pipelines.run import stages

    record = root / "reports" / MODELS_FILE
    if record.exists():
        return read_json(record)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(params_path, root / "params.yaml")
    versions = {}
    here = Path.cwd()
    os.chdir(root)  # a synthetic ingest hashes the working directory (pipelines.data.ingest.sink)
    try:
        for model in ("two_stage", "popularity", "random"):
            started = time.monotonic()
            for _, thunk in stages(load_params(root / "params.yaml", [f"train.model={model}"]), Paths(root)):
                thunk()
            versions[model] = str(read_json(Paths(root).registration)["version"])
            print(f"{model}: version {versions[model]} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        os.chdir(here)
    write_json(record, versions)
    return versions


def run(root: Path, sessions: int, looks: int, seeds: int, share: float) -> dict[str, Any]:
    """Every scenario over ``seeds`` seeds."""
    from pipelines.experiments.simulate import simulate

    params = load_params(root / "params.yaml")
    versions = read_json(root / "reports" / MODELS_FILE)
    results = []
    for name, champion, challenger, right in SCENARIOS:
        for seed in range(seeds):
            record = simulate(root, params.synthetic, versions[champion], versions[challenger], sessions, seed,
                              share, params.experiment, looks)
            arms = record["arms"]
            results.append({"scenario": name, "right": right, "seed": seed, "decision": record["decision"],
                            "sessions": record["simulation"]["sessions"],
                            "seconds": record["simulation"]["seconds"],
                            "clicks_per_list": {arm: arms[arm]["clicks_per_list"] for arm in arms},
                            "difference": record["tests"][params.experiment.primary]["difference"]})
            print(f"{name} seed {seed}: {record['decision']} after {results[-1]['sessions']} sessions",
                  file=sys.stderr)
    return {"sessions": sessions, "looks": looks, "seeds": seeds, "share": share, "alpha": params.experiment.alpha,
            "versions": versions, "results": results}


def markdown(report: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section: per scenario, the decisions over seeds and the sessions they took."""
    lines = [
        f"Command: `{command}` (run {time.strftime('%Y-%m-%d', time.gmtime())}, load average at start "
        f"{report['load']:.2f}). Each run: up to {report['sessions']:,} simulated shopper sessions, "
        f"{report['share']:.0%} on the challenger, the test read {report['looks']} times (stopping at the first "
        f"decision), alpha {report['alpha']}.",
        "",
        "| scenario | right decision | decisions over seeds | sessions to decide (median of decided runs) | "
        "clicks per list, champion / challenger (mean) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, _, _, right in SCENARIOS:
        runs = [r for r in report["results"] if r["scenario"] == name]
        counts = Counter(r["decision"] for r in runs)
        decided = sorted(r["sessions"] for r in runs if r["decision"] != "continue")
        median = f"{decided[len(decided) // 2]:,}" if decided else "-"
        ctr = [sum(r["clicks_per_list"][arm] for r in runs) / len(runs) for arm in ("champion", "challenger")]
        lines.append(f"| {name} | {right} | " + ", ".join(f"{d} {n}/{len(runs)}" for d, n in sorted(counts.items()))
                     + f" | {median} | {ctr[0]:.3f} / {ctr[1]:.3f} |")
    null = [r for r in report["results"] if r["scenario"] == "identical challenger"]
    promoted = sum(r["decision"] == "promote" for r in null)
    lines += ["", f"Identical challenger promoted in {promoted} of {len(null)} runs (the test's error rate: "
                  f"at most {report['alpha']}, read {report['looks']} times each). Wall time "
                  f"{sum(r['seconds'] for r in report['results']):.0f} s of simulation."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("outputs/bench-experiments"))
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--sessions", type=int, default=1500)
    parser.add_argument("--looks", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--doc", type=Path, default=None, help="docs/BENCHMARKS.md to update")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    build(args.root, args.params)
    report = run(args.root, args.sessions, args.looks, args.seeds, args.share) | {"load": load}
    write_json(args.root / "reports" / "experiments_benchmark.json", report)
    command = "python -m benchmarks.experiments " + " ".join(argv if argv is not None else sys.argv[1:])
    body = markdown(report, command)
    print(body)
    if args.doc is not None:
        update_doc(args.doc, body, START, END, heading="Online experiments: closed-loop simulation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
