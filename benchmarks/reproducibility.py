"""bench-repro: the same ``shoprec benchmark`` command twice, on an idle machine and beside a job that keeps one
core busy, to show that a model's result depends on its data, code and parameters only (issue 16).

Each run is a subprocess (``shoprec benchmark --dataset D --out OUT/<run>``) whose machine load is sampled every
5 s. The busy run starts a second process that spins on one core for the whole run. Written: ``OUT/repro.json``
and, with ``--doc``, the section of docs/BENCHMARKS.md between the ``repro-benchmark`` markers: the command, each
run's wall time, peak RSS, load and how every iterative fit stopped, every model's test HR@10 / NDCG@10 in both
runs with the difference, and the deployed ranker's validation score against its test score.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.api_load import update_doc
from pipelines.core.atomic import read_json, write_json

START, END = "<!-- repro-benchmark:start -->", "<!-- repro-benchmark:end -->"
SHARED = Path(os.environ.get("SHOPREC_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
BEAUTY = SHARED / "datasets" / "amazon-beauty"
DEFAULT_DATASET = f"seqfile:{BEAUTY / 'Beauty.txt'},attributes={BEAUTY / 'Beauty_item2attributes.json'}"
TOLERANCE = 0.002  # the bound on test metrics between the two runs
TARGETS = {"wall_seconds": 300, "peak_rss_mb": 4096}


def _spin() -> None:
    """Keep one core busy until terminated (the "other job" of the busy run)."""
    while True:
        pass


class LoadSampler:
    """The 1-minute load average every ``every`` seconds while a run lasts."""

    def __init__(self, every: float = 5.0):
        self.every, self.samples = every, []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        values = self.samples or [os.getloadavg()[0]]
        return {"mean": round(sum(values) / len(values), 2), "max": round(max(values), 2)}


def run_once(name: str, dataset: str, out: Path, sets: list[str], busy: bool) -> dict[str, Any]:
    """One ``shoprec benchmark`` subprocess (with a spinning neighbour when ``busy``); its metrics and load."""
    command = [str(Path(sys.executable).parent / "shoprec"), "benchmark", "--dataset", dataset, "--out",
               str(out / name), *(arg for s in sets for arg in ("--set", s))]
    neighbour = multiprocessing.Process(target=_spin, daemon=True) if busy else None
    if neighbour is not None:
        neighbour.start()
    print(f"{name}: {' '.join(command)}", flush=True)
    try:
        with LoadSampler() as load:
            proc = subprocess.run(command, capture_output=True, text=True)
    finally:
        if neighbour is not None:
            neighbour.terminate()
            neighbour.join()
    if proc.returncode != 0:
        raise SystemExit(f"bench-repro: the {name} run failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    report = read_json(out / name / "metrics.json")
    return {"name": name, "busy": busy, "load": load.summary(), "report": report}


def model_scores(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every component's and the served model's test HR@10 / NDCG@10."""
    test = report["test"]
    scores = {name: test["models"][name]["overall"] for name in test["models"]}
    scores |= {name: m for name, m in test.get("components", {}).items()}
    return {name: {"hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"]} for name, m in scores.items()}


def fits(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """How each iterative fit of the model stopped (``source:NAME`` / ``ranker:NAME`` -> training record)."""
    validation = report.get("validation") or {}
    found = {}
    for kind in ("sources", "rankers"):
        for name, part in validation.get(kind, {}).items():
            if "training" in part:
                found[f"{kind[:-1]}:{name}"] = part["training"]
    return found


def validation_gap(report: dict[str, Any]) -> dict[str, Any] | None:
    """The deployed ranker's NDCG@10 on the selection users against the served list's on every test user, and
    the same gap for each source's own list: sources never learn from the selection users, so their gap is the
    shift between validation and test targets, the part of the ranker's gap that is not optimism."""
    selection = (report.get("validation") or {}).get("selection")
    served = report["test"].get("models", {}).get("candidate")
    if not selection or served is None:
        return None
    chosen, results = selection["chosen"], selection["results"]
    valid, test = results[chosen]["ndcg@10"], served["overall"]["ndcg@10"]
    components = report["test"].get("components", {})
    sources = {name: round(results[name]["ndcg@10"] - components[name]["ndcg@10"], 5)
               for name in results if name.startswith("source:") and name in components}
    return {"ranker": chosen, "valid_ndcg@10": valid, "test_ndcg@10": test, "gap": round(valid - test, 5),
            "source_gaps": sources}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run facts and the largest difference of any model's test metric between the runs."""
    scores = [model_scores(r["report"]) for r in runs]
    diffs = {name: {m: round(abs(scores[0][name][m] - scores[1][name][m]), 5) for m in scores[0][name]}
             for name in scores[0] if name in scores[1]}
    largest = max((v for d in diffs.values() for v in d.values()), default=0.0)
    per_run = []
    for run, score in zip(runs, scores, strict=True):
        report = run["report"]
        per_run.append({
            "name": run["name"], "busy": run["busy"], "load": run["load"],
            "wall_seconds": report["wall_seconds"],
            "peak_rss_mb": max(t["peak_rss_mb"] for t in report["timings"]),
            "time_cap_hit": report["test"].get("time_cap_hit", []), "fits": fits(report),
            "scores": score, "validation_gap": validation_gap(report),
        })
    return {"runs": per_run, "differences": diffs, "largest_difference": largest,
            "within_tolerance": largest <= TOLERANCE}


def _check(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def markdown(summary: dict[str, Any], command: str, dataset: str) -> str:
    """The BENCHMARKS.md section."""
    runs = summary["runs"]
    lines = [f"Command: `{command}` (each run: `shoprec benchmark --dataset {dataset} --out OUT/<run>`), "
             f"{time.strftime('%Y-%m-%d', time.gmtime())}.", "",
             "| run | other job | load (mean / max) | wall s | peak RSS MB | fits cut by the time cap |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(f"| {r['name']} | {'one core spinning' if r['busy'] else 'none'} | "
                     f"{r['load']['mean']} / {r['load']['max']} | {r['wall_seconds']:.0f} | {r['peak_rss_mb']:,} | "
                     f"{', '.join(r['time_cap_hit']) or 'none'} |")
    lines += ["", "How each iterative fit stopped (epochs run, epoch kept, reason, seconds):", "",
              "| fit | " + " | ".join(r["name"] for r in runs) + " |", "| --- |" + " --- |" * len(runs)]
    for fit in runs[0]["fits"]:
        cells = []
        for r in runs:
            t = r["fits"].get(fit)
            cells.append(f"{t['epochs']} / {t['best_epoch']} / {t['stopped_by']} / {t['seconds']:.0f} s" if t else "-")
        lines.append(f"| {fit} | " + " | ".join(cells) + " |")
    lines += ["", "| model (test split) | " + " | ".join(f"{r['name']} HR@10 / NDCG@10" for r in runs)
              + " | largest difference |", "| --- |" + " --- |" * (len(runs) + 1)]
    for name, diff in sorted(summary["differences"].items()):
        cells = [f"{r['scores'][name]['hr@10']:.4f} / {r['scores'][name]['ndcg@10']:.4f}" for r in runs]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {max(diff.values()):.4f} |")
    gaps = [r["validation_gap"] for r in runs if r["validation_gap"]]
    if gaps:
        lines += ["", "Deployed ranker, NDCG@10 on the validation users that chose it against test: "
                  + "; ".join(f"{r['name']} {g['ranker']} {g['valid_ndcg@10']:.4f} vs {g['test_ndcg@10']:.4f} "
                              f"(gap {g['gap']:+.4f})" for r, g in zip(runs, gaps, strict=False)) + "."]
        shift = gaps[0].get("source_gaps") or {}
        if shift:
            lines += ["", f"The same gap of each source's own list ({runs[0]['name']}; sources never learn from "
                      "those users, so this is the shift between validation and test targets): "
                      + ", ".join(f"{name[7:]} {gap:+.4f}" for name, gap in sorted(shift.items())) + "."]
    worst_wall = max(r["wall_seconds"] for r in runs)
    worst_rss = max(r["peak_rss_mb"] for r in runs)
    lines += ["", f"- Same seed, test metrics within {TOLERANCE} between the runs: largest difference "
              f"{summary['largest_difference']:.4f}, {_check(summary['within_tolerance'])}.",
              f"- Wall <= {TARGETS['wall_seconds']} s: {worst_wall:.0f} s, "
              f"{_check(worst_wall <= TARGETS['wall_seconds'])}.",
              f"- Peak RSS <= {TARGETS['peak_rss_mb']:,} MB: {worst_rss:,} MB, "
              f"{_check(worst_rss <= TARGETS['peak_rss_mb'])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="ingest SOURCE (default: Amazon Beauty)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-repro"))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE params override")
    parser.add_argument("--doc", type=Path, default=None, help="docs/BENCHMARKS.md to update")
    args = parser.parse_args(argv)
    runs = [run_once("idle", args.dataset, args.out, args.sets, busy=False),
            run_once("busy", args.dataset, args.out, args.sets, busy=True)]
    summary = summarise(runs)
    write_json(args.out / "repro.json", summary)
    command = "python -m benchmarks.reproducibility " + " ".join(argv if argv is not None else sys.argv[1:])
    body = markdown(summary, command, args.dataset)
    print(body)
    if args.doc is not None:
        update_doc(args.doc, body, START, END, heading="Reproducibility: idle and busy machine (issue 16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
