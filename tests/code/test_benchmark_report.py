"""The quality benchmark's reference rows belong to the data set they were published for, with their source."""

from __future__ import annotations

from pathlib import Path

from benchmarks.quality import StageClock, markdown, published_results

TEST = {"users": 3, "models": {"baseline": {"overall": {"hr@10": 0.1, "ndcg@10": 0.05, "hr@20": 0.2, "ndcg@20": 0.06}}}}


def _dataset(tmp_path: Path, readme: str | None) -> str:
    (tmp_path / "seq.txt").write_text("1 2 3\n")
    if readme is not None:
        (tmp_path / "README.md").write_text(readme)
    return f"seqfile:{tmp_path / 'seq.txt'},attributes={tmp_path / 'attrs.json'}"


def test_reference_rows_come_from_the_data_sets_own_readme(tmp_path: Path):
    readme = ("# D\n\n## Published test results (full ranking)\n| model | HR@10 | source |\n| --- | --- | --- |\n"
              "| ModelX | 0.1234 | paper X, table 2 |\n\n## Other\n| a | b |\n| --- | --- |\n| 1 | 2 |\n")
    dataset = _dataset(tmp_path, readme)
    assert published_results(dataset) == (["model", "HR@10", "source"], [["ModelX", "0.1234", "paper X, table 2"]])
    text = markdown("cmd", TEST, StageClock(), dataset)
    assert "| ModelX | 0.1234 | paper X, table 2 |" in text and "| 1 | 2 |" not in text


def test_a_data_set_without_published_results_shows_no_reference(tmp_path: Path):
    dataset = _dataset(tmp_path, "# Taobao sample\n\nNo published table here.\n")
    text = markdown("cmd", TEST, StageClock(), dataset)
    assert published_results(dataset) == ([], []) and "Published" not in text
    assert "SASRec" not in markdown("cmd", TEST, StageClock(), "synthetic")


def test_beauty_reference_keeps_its_sources(shared_dir: Path):
    header, rows = published_results(f"seqfile:{shared_dir / 'datasets/amazon-beauty/Beauty.txt'}")
    assert header[-1] == "source" and rows and all(row[-1] for row in rows)


def _run(name: str, ndcg: float, capped: list[str]) -> dict:
    training = {"epochs": 30, "best_epoch": 20, "stopped_by": "time cap" if capped else "patience", "seconds": 90.0}
    overall = {"hr@10": 0.11, "ndcg@10": ndcg}
    report = {"wall_seconds": 250.0, "timings": [{"peak_rss_mb": 3000}, {"peak_rss_mb": 3500}],
              "test": {"models": {"candidate": {"overall": overall}}, "time_cap_hit": capped,
                       "components": {"ranker:deep": overall, "source:sasrec": {"hr@10": 0.1, "ndcg@10": 0.06}}},
              "validation": {"sources": {"sasrec": {"training": training}},
                             "selection": {"chosen": "deep", "results": {"deep": {"ndcg@10": 0.08},
                                                                         "source:sasrec": {"ndcg@10": 0.065}}}}}
    return {"name": name, "busy": name == "busy", "load": {"mean": 1.0, "max": 2.0}, "report": report}


def test_reproducibility_report_flags_a_difference_beyond_the_tolerance():
    from benchmarks.reproducibility import markdown as repro_markdown
    from benchmarks.reproducibility import summarise

    same = summarise([_run("idle", 0.0700, []), _run("busy", 0.0712, [])])
    assert same["within_tolerance"] and same["largest_difference"] == 0.0012
    moved = summarise([_run("idle", 0.0700, []), _run("busy", 0.0730, ["source:sasrec"])])
    assert not moved["within_tolerance"]
    text = repro_markdown(moved, "cmd", "seqfile:x")
    assert "largest difference 0.0030, **NOT met**" in text and "| busy | one core spinning |" in text
    assert "30 / 20 / time cap / 90 s" in text and "gap +0.0100" in text and "sasrec +0.0050" in text
    assert "Wall <= 300 s: 250 s, met" in text and "Peak RSS <= 4,096 MB: 3,500 MB, met" in text
