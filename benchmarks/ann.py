"""Vector index benchmark: ``python -m benchmarks.ann --items N --doc docs/BENCHMARKS.md`` (``make bench-ann``).

Builds ``VectorIndex`` (pipelines/models/vector_index.py) on N synthetic item vectors, L2-normalised and clustered
(N / 250 random centres; an item is its centre plus isotropic noise, cosine ~0.7 to it), and measures:

- build time, resident memory after the vectors exist, after the build, and the run's peak;
- single-query latency (one query per ``search`` call, as a request makes it) p50 / p99 at k=100 and k=300, and
  recall@100 against exact inner-product search (brute force here, independent of the index's own code) on 1,000
  queries, over a sweep of ``n_probe`` around the default;
- ``tune``'s choice for recall@100 >= 0.95 on 500 other queries, then measured on the 1,000;
- exact search's single-query latency over the same N items, the alternative.

Two query sets: "one interest" (a fresh draw around one random centre, like an item of that cluster) and "two
interests" (the normalised sum of draws around two random centres: a user between two clusters, whose best items
lie scattered over both and over the rest of the catalogue, the harder case for any index).
Results go to stdout as JSON and between the ann-benchmark markers of ``--doc``.

``--model lightgcn`` (or ``sasrec``) measures a trained model instead (``python -m benchmarks.ann --model lightgcn
--items 100000 --doc docs/BENCHMARKS.md``): the model is fitted on a synthetic log over N items (users walk within
one or two clusters of consecutive codes) with the index threshold at its default, and its index lists
(``recommend``, seen items excluded) are compared with the same model's exact lists: recall@100, and the time per user
in batches of 1,024 and one user per call. Its results go between the ann-model-benchmark markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.api_load import update_doc
from pipelines.core.config import LightGCNParams, SASRecParams
from pipelines.features.interactions import Interactions, Vocab
from pipelines.models.base import CELL_BUDGET, top_k
from pipelines.models.lightgcn import LightGCN
from pipelines.models.retrieval import VectorRecommender
from pipelines.models.sasrec import SASRec
from pipelines.models.vector_index import TRAIN_POINTS_PER_LIST, VectorIndex, overlap

START, END = "<!-- ann-benchmark:start -->", "<!-- ann-benchmark:end -->"
MODEL_START, MODEL_END = "<!-- ann-model-benchmark:start -->", "<!-- ann-model-benchmark:end -->"
EVENTS_PER_USER = 10
MODEL_CLUSTER = 100  # consecutive item codes a user walks in
HEADING = "Vector index (ANN)"
ITEMS_PER_CLUSTER = 250
NOISE = 1.0  # norm of the noise relative to the centre's: item-to-centre cosine 1 / sqrt(2)
CHUNK = 500_000  # vectors generated per step, so that generation adds little to the peak


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Catalogue:
    """Clustered, normalised vectors: items, and queries drawn around the same centres."""

    def __init__(self, n: int, dim: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = self._normalise(self.rng.standard_normal((max(1, n // ITEMS_PER_CLUSTER), dim),
                                                                dtype=np.float32))
        self.items = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, CHUNK):
            self.items[start:start + CHUNK] = self.draw(min(CHUNK, n - start))

    @staticmethod
    def _normalise(v: np.ndarray) -> np.ndarray:
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    def draw(self, m: int, interests: int = 1) -> np.ndarray:
        total = np.zeros((m, self.dim), dtype=np.float32)
        for _ in range(interests):
            centres = self.centres[self.rng.integers(0, len(self.centres), m)]
            noise = self.rng.standard_normal((m, self.dim), dtype=np.float32) * np.float32(NOISE / np.sqrt(self.dim))
            total += self._normalise(centres + noise)
        return self._normalise(total)


def exact_top(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top k codes by inner product, a few queries at a time (bounded score matrix)."""
    step = max(1, CELL_BUDGET // len(items))
    return np.vstack([top_k(queries[s:s + step] @ items.T, k)[0] for s in range(0, len(queries), step)])


def latency(search: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, float]]:
    """One call per query; codes found and p50 / p99 / max milliseconds."""
    search(queries[:1], k)  # warm
    found, times = [], []
    for row in range(len(queries)):
        t = time.perf_counter()
        items, _ = search(queries[row:row + 1], k)
        times.append(time.perf_counter() - t)
        found.append(items[0])
    ms = np.array(times) * 1e3
    return np.vstack(found), {"p50_ms": round(float(np.percentile(ms, 50)), 3),
                              "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 3)}


def run(n: int, dim: int, n_queries: int, seed: int, exact_queries: int) -> dict[str, Any]:
    load = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    data = Catalogue(n, dim, seed)
    query_sets = {"one interest": data.draw(n_queries, 1), "two interests": data.draw(n_queries, 2)}
    tune_queries = {name: data.draw(500, interests) for name, interests in (("one interest", 1),
                                                                             ("two interests", 2))}
    generate_s = time.perf_counter() - t0
    rss_vectors = rss_mb()

    t = time.perf_counter()
    index = VectorIndex.build(data.items, exact_below=0, seed=seed)
    build_s = time.perf_counter() - t
    rss_built, peak_built = rss_mb(), peak_rss_mb()
    default_probe = index.n_probe
    n_lists = index.n_lists

    truth = {name: exact_top(data.items, q, 300) for name, q in query_sets.items()}
    probes = sorted({max(1, default_probe // 8), max(1, default_probe // 4), max(1, default_probe // 2), default_probe,
                     min(n_lists, default_probe * 2), min(n_lists, default_probe * 4)})
    sets: dict[str, Any] = {}
    for name, queries in query_sets.items():
        rows = []
        for probe in probes:
            index.n_probe = probe
            found, lat100 = latency(index.search, queries, 100)
            found300, lat300 = latency(index.search, queries[:300], 300)
            rows.append({"n_probe": probe, "recall@100": round(overlap(found, truth[name][:, :100]), 4),
                         "recall@300": round(overlap(found300, truth[name][:300]), 4),
                         "k100": lat100, "k300": lat300})
        index.n_probe = default_probe
        library_recall = index.recall(queries, 100)  # the index's own exact pass: must agree with the brute force
        t = time.perf_counter()
        tuned_recall_on_tune_set = index.tune(tune_queries[name], 100, target=0.95)
        tune_s = time.perf_counter() - t
        found, lat100 = latency(index.search, queries, 100)
        sets[name] = {"sweep": rows, "library_recall@100_at_default": round(library_recall, 4),
                      "tuned": {"n_probe": index.n_probe, "tune_s": round(tune_s, 1),
                                "recall@100_tune_queries": round(tuned_recall_on_tune_set, 4),
                                "recall@100": round(overlap(found, truth[name][:, :100]), 4), "k100": lat100}}
        index.n_probe = default_probe

    def exact_search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return top_k(q @ data.items.T, k)

    _, exact_lat = latency(exact_search, query_sets["one interest"][:exact_queries], 100)
    return {
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "cpus": os.cpu_count(), "load_at_start": load,
        "machine": platform.processor() or platform.machine(), "faiss": faiss.__version__,
        "items": n, "dim": dim, "queries": n_queries, "seed": seed, "n_lists": n_lists,
        "default_n_probe": default_probe, "k_factor": index.k_factor,
        "train_vectors": min(n, TRAIN_POINTS_PER_LIST * n_lists),
        "generate_s": round(generate_s, 1), "build_s": round(build_s, 1),
        "rss_vectors_mb": round(rss_vectors), "rss_after_build_mb": round(rss_built),
        "index_mb": round(rss_built - rss_vectors), "peak_rss_after_build_mb": round(peak_built),
        "peak_rss_mb": round(peak_rss_mb()), "sets": sets, "exact_k100": exact_lat, "exact_queries": exact_queries,
    }


def markdown(r: dict[str, Any], command: str) -> str:
    load = r["load_at_start"]
    lines = [
        f"Run {r['at']} on {r['cpus']} cores (load average at start {load[0]} / {load[1]} / {load[2]}: other work "
        f"on the machine counts), faiss {r['faiss']}, {r['items']:,} items x {r['dim']} float32, "
        f"IVF with {r['n_lists']:,} lists, 4-bit PQ fast scan, the best {r['k_factor']} x k re-scored exactly (default "
        f"n_probe {r['default_n_probe']}), seed {r['seed']}.",
        "",
        f"Command: `{command}`",
        "",
        f"Build {r['build_s']} s (k-means on {r['train_vectors']:,} vectors, then every vector "
        f"filed; both cores). Resident memory: {r['rss_vectors_mb']:,} MB with the vectors, "
        f"{r['rss_after_build_mb']:,} MB after the build (the index: {r['index_mb']:,} MB), peak "
        f"{r['peak_rss_after_build_mb']:,} MB up to the build and {r['peak_rss_mb']:,} MB over the run (exact "
        "ground truth included). Exact search over the same items, one query, k=100: p50 / p99 "
        f"{r['exact_k100']['p50_ms']} / {r['exact_k100']['p99_ms']} ms ({r['exact_queries']} queries).",
        "",
        f"Single queries (one `search` call each, {r['queries']:,} queries; recall against brute-force inner "
        "product over all items):",
        "",
        "| queries | n_probe | recall@100 | k=100 p50 / p99 ms | recall@300 | k=300 p50 / p99 ms "
        f"({min(300, r['queries'])} queries) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in r["sets"].items():
        for row in s["sweep"]:
            mark = " (default)" if row["n_probe"] == r["default_n_probe"] else ""
            lines.append(f"| {name} | {row['n_probe']}{mark} | {row['recall@100']:.4f} | {row['k100']['p50_ms']} / "
                         f"{row['k100']['p99_ms']} | {row['recall@300']:.4f} | {row['k300']['p50_ms']} / "
                         f"{row['k300']['p99_ms']} |")
        tuned = s["tuned"]
        lines.append(f"| {name}, `tune(target=0.95)` on 500 other queries ({tuned['tune_s']} s) | {tuned['n_probe']} "
                     f"| {tuned['recall@100']:.4f} | {tuned['k100']['p50_ms']} / {tuned['k100']['p99_ms']} | | |")
    lines += ["", "`VectorIndex.recall` (its own exact pass over the stored vectors) at the default n_probe: "
              + ", ".join(f"{name} {s['library_recall@100_at_default']:.4f}" for name, s in r["sets"].items())
              + " (the brute-force figures above at the same n_probe should match)."]
    return "\n".join(lines)


def walks(n_items: int, n_users: int, seed: int) -> Interactions:
    """Each user views EVENTS_PER_USER items, alternating between one or two random clusters of MODEL_CLUSTER codes."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n_items // MODEL_CLUSTER)
    clusters = rng.integers(0, n_clusters, (n_users, 2))
    one = rng.random(n_users) < 0.5
    clusters[one, 1] = clusters[one, 0]  # half the users keep to one cluster
    steps = np.arange(EVENTS_PER_USER)
    cluster = np.where(steps % 2 == 0, clusters[:, :1], clusters[:, 1:])
    items = np.minimum(cluster * MODEL_CLUSTER + rng.integers(0, MODEL_CLUSTER, cluster.shape), n_items - 1)
    vocab = Vocab(users=np.array([f"u{u}" for u in range(n_users)], dtype=object),
                  items=np.array([f"i{i}" for i in range(n_items)], dtype=object))
    return Interactions(vocab, np.repeat(np.arange(n_users, dtype=np.int32), EVENTS_PER_USER),
                        items.ravel().astype(np.int32), np.zeros(items.size, dtype=np.int8),
                        np.tile(steps.astype(np.int64), n_users))


def fit_model(name: str, history: Interactions, seed: int, budget_s: float) -> VectorRecommender:
    """The model with its shipped hyper-parameters but ``budget_s`` of training and no validation targets."""
    if name == "sasrec":
        return SASRec(SASRecParams(time_budget_s=budget_s, max_epochs=1000), seed=seed).fit(history)
    return LightGCN(LightGCNParams(time_budget_s=budget_s, max_epochs=1000), seed=seed).fit(history)


def per_user(model: VectorRecommender, users: np.ndarray, k: int, single: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Lists of ``users`` in one ``recommend`` call, its ms per user, and single-user calls' p50 / p99 ms with
    faiss's default OpenMP threads and with one (after TensorFlow's training its threads contend with faiss's)."""
    model.recommend(users[:1], k)  # warm (TF traces its functions on first use)
    t = time.perf_counter()
    lists, _ = model.recommend(users, k)
    batched = (time.perf_counter() - t) * 1e3 / len(users)
    threads = faiss.omp_get_max_threads()
    single_lat = {}
    for n_threads in (threads, 1):
        faiss.omp_set_num_threads(n_threads)
        single_lat[n_threads] = latency(lambda u, n: model.recommend(u, n), users[:single], k)[1]
    faiss.omp_set_num_threads(threads)
    return lists, {"batched_ms_per_user": round(batched, 3), "single": single_lat}


def run_model(name: str, n_items: int, seed: int, budget_s: float, n_users: int, k: int = 100) -> dict[str, Any]:
    load = [round(x, 2) for x in os.getloadavg()]
    history = walks(n_items, n_items // 2, seed)
    t = time.perf_counter()
    model = fit_model(name, history, seed, budget_s)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    model.index_items(model.params.ann_min_items)  # the build and tuning fit ran, timed alone (same result)
    index_s = time.perf_counter() - t
    exact = copy.copy(model)
    exact.index_ = None  # what a catalogue below the threshold gets: the same vectors, scored exactly
    users = np.sort(np.random.default_rng(seed + 1).choice(history.n_users, n_users, replace=False))
    found, ann_time = per_user(model, users, k, single=200)
    truth, exact_time = per_user(exact, users, k, single=200)
    seen = history.seen[np.repeat(users, k), found.ravel()]
    return {
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "cpus": os.cpu_count(), "load_at_start": load,
        "load_at_end": [round(x, 2) for x in os.getloadavg()], "faiss": faiss.__version__, "model": name,
        "items": n_items, "users": history.n_users, "events": len(history.item), "seed": seed,
        "train_budget_s": budget_s, "fit_s": round(fit_s, 1), "index_s": round(index_s, 1),
        "epochs": len(model.history_), "ann": model.report["ann"], "k": k, "measured_users": n_users,
        f"list_recall@{k}": round(overlap(found, truth), 4), "seen_listed": int(np.asarray(seen).sum()),
        "ann_time": ann_time, "exact_time": exact_time,
    }


def model_markdown(r: dict[str, Any], command: str) -> str:
    ann, k = r["ann"], r["k"]
    a, e = r["ann_time"], r["exact_time"]
    return "\n".join([
        f"Run {r['at']} on {r['cpus']} cores (load average {r['load_at_start'][0]} at start, {r['load_at_end'][0]} at "
        f"end: other work on the machine counts), faiss {r['faiss']}: {r['model']} fitted for "
        f"{r['train_budget_s']:.0f} s ({r['epochs']} evaluations or epochs, fit {r['fit_s']} s in all) on a "
        f"synthetic log of {r['users']:,} users x {r['events'] // r['users']} views over "
        f"{r['items']:,} items, seed {r['seed']}.",
        "",
        f"Command: `{command}`",
        "",
        f"Index of the item vectors (built and tuned in {r['index_s']} s): {ann['n_lists']:,} lists, n_probe tuned to "
        f"{ann['n_probe']} (recall@100 {ann['tuning_recall@100']} on 512 users' vectors), recorded recall@100 "
        f"{ann['recall@100']} on 512 others.",
        "",
        f"`recommend(users, {k})` of {r['measured_users']:,} other users, seen items excluded: the index lists hold "
        f"{r[f'list_recall@{k}']:.4f} of the exact lists' items ({r['seen_listed']} seen items listed).",
        "",
        "| path | ms per user, batch of all | one user per call, p50 / p99 ms (200 users), by faiss threads |",
        "| --- | --- | --- |",
        f"| index | {a['batched_ms_per_user']} | {_single(a)} |",
        f"| exact | {e['batched_ms_per_user']} | {_single(e)} (faiss unused) |",
    ])


def _single(timing: dict[str, Any]) -> str:
    return ", ".join(f"{n}: {lat['p50_ms']} / {lat['p99_ms']}" for n, lat in timing["single"].items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--exact-queries", type=int, default=200, help="single queries timed for exact search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doc", default=None, help="markdown file with the ann-benchmark markers")
    parser.add_argument("--model", choices=["sasrec", "lightgcn"], default=None,
                        help="measure this model's index lists against its exact lists instead")
    parser.add_argument("--train-seconds", type=float, default=120.0, help="--model: training budget")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.ann " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.model is not None:
        result = run_model(args.model, args.items, args.seed, args.train_seconds, args.queries) | {"command": command}
        print(json.dumps(result, indent=2))
        if args.doc is not None:
            update_doc(Path(args.doc), model_markdown(result, command), MODEL_START, MODEL_END, HEADING)
        return
    result = run(args.items, args.dim, args.queries, args.seed, args.exact_queries) | {"command": command}
    print(json.dumps(result, indent=2))
    if args.doc is not None:
        update_doc(Path(args.doc), markdown(result, command), START, END, HEADING)


if __name__ == "__main__":
    main()
