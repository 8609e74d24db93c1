"""Every served list gets a request id and is on disk as impressions before the response: cached or not, user,
session and similar-item lists; a crashed writer's torn batch is never read; the backlog is bounded."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from pipelines.serving.app import create_app
from pipelines.serving.impressions import ImpressionBacklog, ImpressionLog, read_impressions
from pipelines.serving.model import ServingModel
from pipelines.serving.settings import Settings
from tests.serving.conftest import Project


@pytest.fixture(scope="module")
def served(project: Project) -> ServingModel:
    return ServingModel.load(project.model_dir, version="1")


def _rows(root: Path) -> list[dict]:
    return read_impressions(root / "data" / "incoming").to_pylist()


def test_each_response_is_logged_under_its_own_request_id_before_it_is_sent(served: ServingModel, tmp_path: Path):
    user, item = str(served.history_.vocab.users[0]), str(served.item_ids[0])
    with TestClient(create_app(Settings(root=tmp_path, reload_poll_s=0), served)) as client:
        answers = [client.get(f"/v1/users/{user}/recommendations?k=5").json() for _ in range(2)]  # miss, then hit
        logged = _rows(tmp_path)  # read while the server runs: acknowledged means on disk
        similar = client.get(f"/v1/items/{item}/similar?k=3").json()
        session = client.post("/v1/recommendations", json={
            "session_id": "s-9", "k": 4,
            "recent_events": [{"item_id": item, "event_type": "view", "ts": "2017-12-04T10:00:00Z"}]}).json()
    assert answers[0]["request_id"] != answers[1]["request_id"]
    for answer in answers:
        rows = [r for r in logged if r["request_id"] == answer["request_id"]]
        assert [(r["item_id"], r["position"]) for r in rows] == [(i["item_id"], i["rank"]) for i in answer["items"]]
        assert {(r["user_id"], r["session_id"], r["model_version"], r["arm"], r["surface"]) for r in rows} == {
            (user, None, "1", "champion", "user")}
    rows = _rows(tmp_path)
    sim = [r for r in rows if r["request_id"] == similar["request_id"]]
    assert [r["item_id"] for r in sim] == [i["item_id"] for i in similar["items"]]
    assert {(r["surface"], r["user_id"]) for r in sim} == {("similar", None)}
    ses = [r for r in rows if r["request_id"] == session["request_id"]]
    assert len(ses) == 4 and {(r["surface"], r["session_id"]) for r in ses} == {("session", "s-9")}


def test_without_impressions_nothing_is_logged_yet_responses_keep_their_shape(served: ServingModel, tmp_path: Path):
    user = str(served.history_.vocab.users[0])
    with TestClient(create_app(Settings(root=tmp_path, reload_poll_s=0, impressions=False), served)) as client:
        body = client.get(f"/v1/users/{user}/recommendations").json()
    assert len(body["request_id"]) == 32
    assert not (tmp_path / "data" / "incoming" / "impressions").exists()


def test_a_torn_last_batch_is_not_read(tmp_path: Path):
    log = ImpressionLog(tmp_path)
    for n in range(3):
        body = b'{"user_id":"u","model_version":"1","items":[{"item_id":"i%d","rank":1}]}' % n
        log.submit([(f"r{n}", 0, "user", "champion", body)]).result(timeout=10)
    segment = next((tmp_path / "impressions").glob("segment-*.arrows"))
    with segment.open("ab") as fh:  # a crash in the middle of the next batch
        fh.write(b"\xff\xff\xff\xff\x90\x00\x00\x00garbage")
    assert [r["request_id"] for r in read_impressions(tmp_path).to_pylist()] == ["r0", "r1", "r2"]
    log.close()


def test_the_backlog_is_bounded(tmp_path: Path):
    log = ImpressionLog(tmp_path, max_pending=100)
    with log._lock:  # the writer cannot take anything while the lock is held: rows pile up
        log._pending_rows = 95
        with pytest.raises(ImpressionBacklog):
            log.submit([("r", 0, "user", "champion", b"{}")] * 10)
        log._pending_rows = 0
    log.close()


def _body(n: int) -> bytes:
    return b'{"user_id":"u%d","model_version":"1","items":[{"item_id":"i%d","rank":1}]}' % (n, n)


def test_lists_served_in_one_loop_step_share_one_batch(tmp_path: Path):
    log = ImpressionLog(tmp_path)
    batches = []
    write = log._write
    log._write = lambda rows, waiters: (batches.append(len(rows)), write(rows, waiters))

    async def serve_all() -> None:
        await asyncio.gather(*(log.log(f"r{n}", _body(n), "user") for n in range(40)))
        await log.log("alone", _body(99), "user")  # a later list, on its own: written without waiting

    asyncio.run(serve_all())
    log.close()
    assert batches == [40, 1]
    assert [r["request_id"] for r in read_impressions(tmp_path).to_pylist()] == [f"r{n}" for n in range(40)] + ["alone"]


def test_a_request_returns_only_after_an_fsync_that_follows_its_write(tmp_path: Path, monkeypatch):
    log = ImpressionLog(tmp_path)
    order = []
    real_fsync = os.fsync
    write = log._write
    log._write = lambda rows, waiters: (order.append(("write", len(rows))), write(rows, waiters))
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append(("fsync", 0)), real_fsync(fd)))

    async def serve() -> None:
        await log.log("r0", _body(0), "user")
        order.append(("answered", 0))

    asyncio.run(serve())
    log.close()
    assert order.index(("write", 1)) < order.index(("fsync", 0)) < order.index(("answered", 0))


def test_a_failed_write_fails_its_requests_and_the_next_batch_starts_a_new_segment(tmp_path: Path):
    log = ImpressionLog(tmp_path)
    log.submit([("r0", 0, "user", "champion", _body(0))]).result(timeout=10)
    with pytest.raises(pa.ArrowException):  # a row the schema cannot hold
        log.submit([("bad", "not a time", "user", "champion", _body(1))]).result(timeout=10)
    log.submit([("r2", 0, "user", "champion", _body(2))]).result(timeout=10)
    log.close()
    assert [r["request_id"] for r in read_impressions(tmp_path).to_pylist()] == ["r0", "r2"]
    assert log._pending_rows == 0


def test_a_failed_fsync_fails_its_requests_and_the_next_batch_starts_a_new_segment(tmp_path: Path, monkeypatch):
    log = ImpressionLog(tmp_path)
    real_fsync, failures = os.fsync, [OSError(5, "Input/output error")]

    def fsync(fd: int) -> None:
        if failures and threading.current_thread().name == "impressions-fsync":  # not the directory's fsync
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        log.submit([("r0", 0, "user", "champion", _body(0))]).result(timeout=10)
    log.submit([("r1", 0, "user", "champion", _body(1))]).result(timeout=10)
    log.close()
    assert len(list((tmp_path / "impressions").glob("segment-*.arrows"))) == 2
    assert log._pending_rows == 0


def test_staged_lists_count_towards_the_backlog(tmp_path: Path):
    log = ImpressionLog(tmp_path, max_pending=5)

    async def over_the_bound() -> list[BaseException | None]:
        return await asyncio.gather(*(log.log(f"r{n}", _body(n), "user") for n in range(8)), return_exceptions=True)

    results = asyncio.run(over_the_bound())
    log.close()
    assert results[:5] == [None] * 5 and all(isinstance(r, ImpressionBacklog) for r in results[5:])
    assert len(read_impressions(tmp_path)) == 5 and log._pending_rows == 0
