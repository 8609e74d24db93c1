"""The scale benchmark's own logic: the Taobao CSV it writes ingests back to the same events, the fits and the
Amdahl projection recover known numbers, cluster runs are stored and rendered next to their one-process size, and
the doc update touches only its marked section."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import scale as bench_scale
from pipelines.core.engine import ADDRESS_ENV
from pipelines.data.events_io import read_events
from pipelines.data.generate import generate, taobao_proportions
from pipelines.data.ingest import ingest


def test_taobao_csv_ingests_back_to_the_generated_events(tmp_path: Path) -> None:
    params = bench_scale.synthetic_params(4_000)
    csv = tmp_path / "UserBehavior.csv"
    rows = bench_scale.write_taobao_csv(params, csv)
    generate(tmp_path / "direct", params)
    direct = read_events(tmp_path / "direct")
    assert rows == len(direct) > 3_000
    manifest = ingest(f"taobao:{csv}", tmp_path / "ingested")
    via_csv = read_events(tmp_path / "ingested")
    assert manifest.rows == rows
    for column in ("user_id", "item_id", "category_id"):  # u12 -> 12 and back as strings
        assert (via_csv[column].to_numpy() == direct[column].str.slice(1).to_numpy()).all(), column
    assert (via_csv["event_type"].to_numpy() == direct["event_type"].to_numpy()).all()
    assert (via_csv["ts"] == direct["ts"].dt.floor("s")).all()
    start, end = (pd.Timestamp(t) for t in (manifest.window_start, manifest.window_end))
    assert via_csv["ts"].between(start, end, inclusive="left").all()  # inside the Taobao window: validates


def test_benchmark_sizes_the_generator_at_the_real_taobao_proportions() -> None:
    assert bench_scale.synthetic_params(10_000_000, seed=3) == taobao_proportions(10_000_000, seed=3)
    full = bench_scale.synthetic_params(100_150_807)  # the real log's size
    assert (full.users, full.categories, full.days) == (987_994, 9_439, 9)
    assert not any(hasattr(bench_scale, name) for name in ("EVENTS_PER_USER", "EVENTS_PER_ITEM", "ITEMS_PER_CATEGORY"))


def test_profile_keeps_base_params_and_applies_the_overrides(tmp_path: Path) -> None:
    base = tmp_path / "params.yaml"
    base.write_text("train:\n  n_per_source: 7\nevaluate:\n  ks: [10]\n")
    raw = bench_scale.profile_params(base, tmp_path / "x.csv")
    assert raw["data"]["source"] == f"taobao:{tmp_path / 'x.csv'}"
    assert raw["train"]["n_per_source"] == 7 and raw["train"]["max_ranker_users"] == 20_000
    assert raw["evaluate"] == {"ks": [10], "max_component_users": 20_000}


def test_fits_recover_known_laws() -> None:
    sizes = [1e6, 3e6, 1e7]
    a, b = bench_scale.power_fit(sizes, [2e-4 * s**1.2 for s in sizes])
    assert b == pytest.approx(1.2) and a == pytest.approx(2e-4)
    c, d = bench_scale.linear_fit(sizes, [0.5 + 3e-7 * s for s in sizes])
    assert c == pytest.approx(0.5) and d == pytest.approx(3e-7)


def fake_result(events: int, workers: int = 0) -> dict:
    stages = [{"stage": s, "seconds": 1e-5 * events * (i + 1), "peak_rss_mb": 100 + events / 1e4, "exit_code": 0,
               "load_before": 1.0} for i, s in enumerate(bench_scale.STAGES)]
    result = {"events_requested": events, "events": events, "workers": workers, "users": events // 40,
              "catalogue_items": events // 40, "csv_mb": 1, "generate_csv_seconds": 1.0, "stages": stages,
              "total_seconds": sum(s["seconds"] for s in stages),
              "max_peak_rss_mb": max(s["peak_rss_mb"] for s in stages),
              "ranker_fit_seconds": 1e-5 * events, "quality": {}, "date": "d", "machine": "m", "cores": 2,
              "complete": True}
    if workers:
        for s in stages:
            s["worker_peak_rss_mb"] = 512
        result["max_worker_peak_rss_mb"] = 512
    return result


# serial s and parallel p per stage of the pair below: T1 = s + p in one process, T2 = s + p / 2 on 2 workers;
# gate is slower on the cluster (p = 0), ingest faster than half (all parallel: s = 0)
PAIR_S = {"ingest": 0.0, "validate": 2.0, "split": 3.0, "features": 4.0, "train": 5.0, "evaluate": 6.0,
          "batch-recommend": 8.0}
PAIR_P = {"ingest": 0.0, "validate": 16.0, "split": 24.0, "features": 32.0, "train": 40.0, "evaluate": 48.0,
          "batch-recommend": 64.0}


def fake_pair(events: int = 8_000_000) -> tuple[dict, dict]:
    one, cluster = fake_result(events), fake_result(events, workers=2)
    for a, b in zip(one["stages"], cluster["stages"], strict=True):
        name = a["stage"]
        if name == "gate":
            a["seconds"], b["seconds"] = 7.0, 9.0
        elif name == "ingest":
            a["seconds"], b["seconds"] = 8.0, 2.0  # (8 - 2) * 2 = 12 > 8: clipped, p = T1
        else:
            a["seconds"], b["seconds"] = PAIR_S[name] + PAIR_P[name], PAIR_S[name] + PAIR_P[name] / 2
    for r in (one, cluster):
        r["total_seconds"] = sum(s["seconds"] for s in r["stages"])
    return one, cluster


def test_amdahl_solves_serial_and_parallel_from_two_times() -> None:
    assert bench_scale.amdahl(10.0, 6.0, 2) == pytest.approx((2.0, 8.0))
    assert bench_scale.amdahl(12.0, 5.0, 4) == pytest.approx((12.0 - 28.0 / 3, 28.0 / 3))
    assert bench_scale.amdahl(10.0, 12.0, 2) == (10.0, 0.0)  # slower on the cluster: all serial
    assert bench_scale.amdahl(10.0, 2.0, 2) == (0.0, 10.0)  # better than 1/N: clipped to all parallel


def test_cluster_projection_is_amdahl_per_stage_scaled_to_the_events() -> None:
    one, cluster = fake_pair()
    p = bench_scale.cluster_projection(one, cluster, events=1_000_000_000)
    stages = p["stages"]
    assert stages["ingest"]["serial_seconds"] == 0.0 and stages["ingest"]["parallel_seconds"] == 8.0
    assert stages["gate"]["serial_seconds"] == 7.0 and stages["gate"]["parallel_seconds"] == 0.0
    assert stages["gate"]["slower"] and not stages["train"]["slower"]
    for name in PAIR_S:
        if name != "ingest":
            assert stages[name]["serial_seconds"] == pytest.approx(PAIR_S[name]), name
            assert stages[name]["parallel_seconds"] == pytest.approx(PAIR_P[name]), name
    assert p["parts"] == 4 and p["projected_parts"] == 500  # parts of 2,000,000 rows
    assert stages["train"]["per_part_seconds"] == pytest.approx(10.0)
    # k = 1e9 / 8e6 = 125; s sums to 35, p to 232 over M * 2 cores: seconds 125 * 35 + 125 * 232 / (2 M)
    assert p["minutes"] == pytest.approx({1: 18_875 / 60, 4: 8_000 / 60, 16: 5_281.25 / 60, 64: 4_601.5625 / 60})
    assert stages["features"]["minutes"][4] == pytest.approx((125 * 4 + 125 * 32 / 8) / 60)
    assert np.diff(list(p["minutes"].values())).max() < 0  # more machines, less time


def test_cluster_pair_takes_the_largest_size_measured_both_ways() -> None:
    one_small, cluster_small = fake_pair(4_000_000)
    one, cluster = fake_pair(8_000_000)
    lone = fake_result(16_000_000, workers=2)  # no one-process run at 16M
    failed = fake_result(8_000_000, workers=4) | {"complete": False}
    pair = bench_scale.cluster_pair([one_small, cluster_small, one, cluster, lone, failed])
    assert pair is not None and pair[0] is one and pair[1] is cluster
    assert bench_scale.cluster_pair([one, lone, fake_result(8_000_000, workers=1)]) is None  # 1 worker solves nothing


def test_amdahls_one_core_time_comes_from_a_one_thread_run_not_from_threads_on_every_core() -> None:
    one, cluster = fake_pair(8_000_000)
    threaded = one | {"threads": "2"}  # parts on both cores in threads: not T(1)
    one_thread = one | {"threads": "1"}
    assert bench_scale.cluster_pair([threaded, cluster]) is None
    pair = bench_scale.cluster_pair([threaded, one_thread, cluster])
    assert pair is not None and pair[0] is one_thread and pair[1] is cluster
    assert bench_scale.one_process([threaded, one_thread, cluster]) == [threaded]  # tables: the machine's time
    assert bench_scale.held_to_one_thread(one_thread) and not bench_scale.held_to_one_thread(threaded)
    assert bench_scale.result_key(8_000_000, 0, one_thread=True) == "8000000@1thread"
    text = bench_scale.render([threaded, cluster], "cmd")
    assert "needs a complete one-process run on one thread" in text and bench_scale.ONE_THREAD_COMMAND in text


def test_one_machine_projection_uses_only_the_one_process_runs() -> None:
    results = [fake_result(n) for n in (1_000_000, 3_000_000)]
    p = bench_scale.projection(results, events=100_000_000)
    assert p["stages"]["train"]["exponent"] == pytest.approx(1.0)
    assert p["stages"]["train"]["seconds"] == 5_000  # 1e-5 * events * 5, linear
    assert p["seconds"] == 36_000  # 1e-5 * 1e8 * (1 + ... + 8)
    cluster = fake_result(3_000_000, workers=2)
    for s in cluster["stages"]:
        s["seconds"] = 1.0
    assert bench_scale.projection([*results, cluster], events=100_000_000) == p
    assert "parallel_seconds" not in p and "workers" not in p


def test_cluster_results_have_their_own_key() -> None:
    assert bench_scale.result_key(8_000_000, 0) == "8000000"
    assert bench_scale.result_key(8_000_000, 2) == "8000000@2workers"


def test_update_doc_rewrites_only_the_marked_section(tmp_path: Path) -> None:
    doc = tmp_path / "B.md"
    doc.write_text(f"# B\nkeep\n{bench_scale.MARK_START}\nold\n{bench_scale.MARK_END}\nafter\n")
    section = bench_scale.render([fake_result(1_000_000), fake_result(3_000_000)], "make bench-scale EVENTS=N")
    bench_scale.update_doc(doc, section)
    text = doc.read_text()
    assert text.startswith("# B\nkeep\n") and text.endswith(f"{bench_scale.MARK_END}\nafter\n")
    assert "old" not in text and "| train |" in text and "Projection to 100M events on one machine" in text
    assert f"not measured: run `{bench_scale.CLUSTER_COMMAND}`" in text and "**Projection to a cluster**: needs" in text
    doc.write_text("no markers")
    with pytest.raises(SystemExit):
        bench_scale.update_doc(doc, section)


def test_render_shows_the_one_process_sizes_and_the_cluster_run_next_to_its_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench_scale.PROFILE["train"], "max_ranker_users", 12_345)  # the text follows PROFILE
    text = bench_scale.render([fake_result(1_000_000), fake_result(3_000_000), *fake_pair(8_000_000)], "cmd")
    lines = text.splitlines()
    # one-process tables: each size once, the cluster run is not a column or a row of its own
    assert "| stage | 1M s | 1M peak GB | 3M s | 3M peak GB | 8M s | 8M peak GB |" in lines
    assert sum(line.startswith("| 8M | 8,000,000 |") for line in lines) == 1
    # the cluster table: one process / 2 workers / speed-up, stage process and biggest worker peak
    assert any(line.startswith("**The same size on 2 local Dask workers**: 8M events") for line in lines)
    assert "| train | 45.0 | 25.0 | 1.80x | 0.88 | 0.50 |" in lines
    assert "| gate | 7.0 | 9.0 | 0.78x | 0.88 | 0.50 |" in lines
    # the cluster projection: s and p per stage, minutes per machine count, total per M
    assert "| train | 5.0 | 40.0 | 10.0 | 52.1 | 20.8 | 13.0 | 11.1 |" in lines  # (125 * 5 + 125 * 40 / 2M) / 60
    assert "| **all stages** | **35.0** | **232.0** | | **315** | **133** | **88** | **77** |" in lines
    assert "all of it counts as serial: gate." in text and "Projection to 1B events on M machines" in text
    assert "12,345 validation users" in text and "seeded sample of 20,000 users" in text
    assert "GBDT" not in text and "divide by N" not in text  # the old model: only features + rankers parallel
    assert "not measured" not in text


def test_main_stores_cluster_runs_under_their_own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results, doc = tmp_path / "scale.json", tmp_path / "B.md"
    old = fake_result(1_000_000)
    del old["workers"]  # stored before the field existed: one process
    other_pipeline = fake_result(2_000_000) | {"stages": fake_result(2_000_000)["stages"][:3]}
    results.write_text(json.dumps({"1000000": old, "2000000": other_pipeline}))
    doc.write_text(f"{bench_scale.MARK_START}\n{bench_scale.MARK_END}\n")
    calls = []

    def run_benchmark(events: int, out: Path, base_params: Path, workers: int) -> dict:
        calls.append((events, workers))
        return fake_result(events, workers)

    monkeypatch.setattr(bench_scale, "run_benchmark", run_benchmark)
    bench_scale.main(["--events", "1000000", "--workers", "2", "--out", str(tmp_path / "run"),
                      "--results", str(results), "--doc", str(doc)])
    stored = json.loads(results.read_text())
    assert calls == [(1_000_000, 2)]
    assert list(stored) == ["1000000", "1000000@2workers"] and stored["1000000@2workers"]["workers"] == 2
    text = doc.read_text()
    assert "| 1M | 1,000,000 |" in text and "**The same size on 2 local Dask workers**: 1M events" in text


def test_workers_give_every_stage_process_the_scheduler_address(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Real 1-worker LocalClusters, a fake stage runner: a cluster's address in each child's environment, a worker
    peak per stage, and every cluster closed afterwards, also when a stage raises."""
    envs: list[dict[str, str] | None] = []

    def run_stage(stage: str, out: Path, log_file: Path, env: dict[str, str] | None = None) -> dict:
        envs.append(env)
        if stage == fail_at:
            raise RuntimeError(stage)
        return {"stage": stage, "seconds": 0.1, "peak_rss_mb": 1, "exit_code": 0, "load_before": 0.0}

    monkeypatch.setattr(bench_scale, "run_stage", run_stage)
    base = tmp_path / "params.yaml"
    base.write_text("train: {}\n")
    fail_at = None
    ballast = np.ones(400 * 2**20 // 8)  # 400 MB in this process: getrusage in a worker would report at least that
    result = bench_scale.run_benchmark(4_000, tmp_path / "run", base, workers=1)
    del ballast
    addresses = {env[ADDRESS_ENV] for env in envs}
    assert len(envs) == len(addresses) == len(bench_scale.STAGES)  # a new cluster per stage
    assert all(a.startswith("tcp://") for a in addresses) and all(env["PATH"] == os.environ["PATH"] for env in envs)
    assert result["workers"] == 1 and result["complete"]
    assert all(10 < s["worker_peak_rss_mb"] < 350 for s in result["stages"])  # the worker's own memory only
    assert result["max_worker_peak_rss_mb"] == max(s["worker_peak_rss_mb"] for s in result["stages"])
    for address in addresses:
        _assert_closed(address)

    envs.clear()
    fail_at = "validate"
    with pytest.raises(RuntimeError, match="validate"):
        bench_scale.run_benchmark(4_000, tmp_path / "run", base, workers=1)
    assert len(envs) == 2
    _assert_closed(envs[-1][ADDRESS_ENV])

    envs.clear()
    fail_at = None
    bench_scale.run_stages(tmp_path / "run", tmp_path / "run" / "stages.log")
    assert envs == [None] * len(bench_scale.STAGES)  # one process: the children inherit this environment


def _assert_closed(address: str) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


def test_memory_flag_uses_the_measured_ram_of_the_machine_that_ran() -> None:
    results = [fake_result(1_000_000), fake_result(3_000_000)]
    projected = bench_scale.projection(results)["stages"]["evaluate"]["peak_gb"]  # 9.9 GB at 100M
    results[-1]["memory_gb"] = max(1, int(projected) - 1)
    assert f"| {projected} (over this machine's RAM) |" in bench_scale.render(results, "cmd")
    results[-1]["memory_gb"] = int(projected) + 100
    assert "(over this machine's RAM) |" not in bench_scale.render(results, "cmd")


def test_fits_and_pairs_never_mix_runs_of_different_code() -> None:
    old = [fake_result(n) | {"date": "2026-12-03"} for n in (1_000_000, 3_000_000)]
    new = [fake_result(n) | {"date": "2026-12-06", "commit": c, "pipelines_tree": "5b6352dffd93"}
           for n, c in ((3_000_000, "abc1234+"), (9_000_000, "def5678"))]  # commits that left pipelines/ alone
    for r in new:
        for s in r["stages"]:
            s["seconds"] *= 0.5
    assert bench_scale.projection(old + new, events=100_000_000)["sizes"] == [3_000_000, 9_000_000]
    old_cluster = fake_result(9_000_000, workers=2) | {"date": "2026-12-03"}
    assert bench_scale.cluster_pair([*new, old_cluster]) is None  # its one-process size measured other code
    text = bench_scale.render([*new, old_cluster], "cmd")
    assert "measured other code" in text and "abc1234+ (" in text
