"""The scale benchmark's own logic: the Taobao CSV it writes ingests back to the same events, the fits recover
known laws, and the doc update touches only its marked section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import scale as bench_scale
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


def fake_result(events: int) -> dict:
    stages = [{"stage": s, "seconds": 1e-5 * events * (i + 1), "peak_rss_mb": 100 + events / 1e4, "exit_code": 0,
               "load_before": 1.0} for i, s in enumerate(bench_scale.STAGES)]
    return {"events_requested": events, "events": events, "users": events // 40, "catalogue_items": events // 40,
            "csv_mb": 1, "generate_csv_seconds": 1.0, "stages": stages,
            "total_seconds": sum(s["seconds"] for s in stages),
            "max_peak_rss_mb": max(s["peak_rss_mb"] for s in stages),
            "ranker_fit_seconds": 1e-5 * events, "quality": {}, "date": "d", "machine": "m", "complete": True}


def test_projection_is_amdahl_over_the_parallel_part() -> None:
    p = bench_scale.projection([fake_result(n) for n in (1_000_000, 3_000_000)], events=100_000_000)
    assert p["stages"]["train"]["exponent"] == pytest.approx(1.0)
    ranker_mean = np.mean([10.0, 30.0])  # fake fits: 1e-5 * events at 1M and 3M, taken as constant
    assert p["parallel_seconds"] == round(p["stages"]["features"]["seconds"] + ranker_mean)
    users = bench_scale.synthetic_params(100_000_000).users  # the real log's proportions: ~986k users
    assert p["users"] == users and p["all_users_ranker_seconds"] == round(ranker_mean * users / 20_000)
    assert p["workers"][1] == p["serial_seconds"] + p["parallel_seconds"]
    assert np.diff(list(p["workers"].values())).max() < 0  # more workers, less time


def test_update_doc_rewrites_only_the_marked_section(tmp_path: Path) -> None:
    doc = tmp_path / "B.md"
    doc.write_text(f"# B\nkeep\n{bench_scale.MARK_START}\nold\n{bench_scale.MARK_END}\nafter\n")
    section = bench_scale.render([fake_result(1_000_000), fake_result(3_000_000)], "make bench-scale EVENTS=N")
    bench_scale.update_doc(doc, section)
    text = doc.read_text()
    assert text.startswith("# B\nkeep\n") and text.endswith(f"{bench_scale.MARK_END}\nafter\n")
    assert "old" not in text and "| train |" in text and "Projection to 100M" in text
    doc.write_text("no markers")
    with pytest.raises(SystemExit):
        bench_scale.update_doc(doc, section)


def test_memory_flag_uses_the_measured_ram_of_the_machine_that_ran() -> None:
    results = [fake_result(1_000_000), fake_result(3_000_000)]
    projected = bench_scale.projection(results)["stages"]["evaluate"]["peak_gb"]  # 9.9 GB at 100M
    results[-1]["memory_gb"] = max(1, int(projected) - 1)
    assert f"| {projected} (over this machine's RAM) |" in bench_scale.render(results, "cmd")
    results[-1]["memory_gb"] = int(projected) + 100
    assert "(over this machine's RAM) |" not in bench_scale.render(results, "cmd")
