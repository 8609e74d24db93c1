"""The HTTP API: every endpoint, fallbacks, token, durability, bad input, cache (LRU and Redis), reload."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipelines.data.events_io import read_events
from pipelines.data.schema import EVENTS_SCHEMA
from pipelines.experiments.online import read_events as read_logged_events
from pipelines.serving import ServingModel
from pipelines.serving.app import create_app
from pipelines.serving.settings import Settings
from tests.serving.conftest import Project, listed, register, unstamped

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVENT = {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2017-12-04T10:00:00+01:00"}


@pytest.fixture(scope="module")
def served(project: Project) -> ServingModel:
    return ServingModel.load(project.model_dir, version="1")


def settings(root: Path, **overrides: Any) -> Settings:
    return Settings(root=root, **({"admin_token": TOKEN, "reload_poll_s": 0} | overrides))


@pytest.fixture
def client(served: ServingModel, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path), served)) as c:
        yield c


def known_user(model: ServingModel) -> str:
    return str(model.history_.vocab.users[0])


def wait_until(predicate: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_health_ready_and_model_info(client: TestClient, served: ServingModel):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "version": "1"}
    info = client.get("/v1/model").json()
    assert info["version"] == "1" and info["model_id"] == served.model_id
    assert info["trained_at"] == served.meta["trained_at"] and info["ranker"] == "lightgbm"
    assert info["cache"] == {"backend": "memory", "available": True, "entries": 0, "bytes": 0, "hits": 0, "misses": 0}
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/v1/users/{user_id}/recommendations", "/v1/recommendations", "/v1/items/{item_id}/similar", "/v1/events",
        "/healthz", "/readyz", "/v1/model", "/v1/admin/reload"}


def test_user_recommendations_known_unknown_and_category(client: TestClient, served: ServingModel):
    user = known_user(served)
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 7}).json()
    assert body["known_user"] and body["model_version"] == "1"
    assert [r.__dict__ for r in served.recommend(user, 7)] == body["items"]
    new = client.get("/v1/users/brand-new/recommendations?k=5").json()
    assert not new["known_user"] and [i["source"] for i in new["items"]] == ["popularity"] * 5
    category = str(served.categories[0])
    in_cat = client.get(f"/v1/users/{user}/recommendations", params={"k": 5, "category": category}).json()
    cats = dict(zip(served.item_ids, served.categories[served.item_category], strict=True))
    assert len(in_cat["items"]) == 5 and {cats[i["item_id"]] for i in in_cat["items"]} == {category}
    missing = client.get(f"/v1/users/{user}/recommendations", params={"category": "nope"})
    assert missing.status_code == 404 and missing.json() == {"detail": "unknown category 'nope'"}


def test_session_recommendations(client: TestClient, served: ServingModel):
    item = str(served.item_ids[served.pop_order[0]])
    events = [{"item_id": item, "event_type": "view", "ts": "2017-12-04T10:00:00Z"},
              {"item_id": "unknown-item", "event_type": "cart", "ts": "2017-12-04T10:01:00Z"}]
    anon = client.post("/v1/recommendations", json={"recent_events": events, "k": 10}).json()
    assert anon["user_id"] is None and not anon["known_user"] and len(anon["items"]) == 10
    assert anon["items"][0]["reason"] == f"because you viewed {item}"
    known = client.post("/v1/recommendations", json={"user_id": known_user(served), "recent_events": events}).json()
    assert known["known_user"] and len(known["items"]) == 20
    empty = client.post("/v1/recommendations", json={"user_id": "someone-new"}).json()
    assert [i["source"] for i in empty["items"]] == ["popularity"] * 20


def test_similar_items(client: TestClient, served: ServingModel):
    item = str(served.item_ids[served.pop_order[0]])
    body = client.get(f"/v1/items/{item}/similar", params={"k": 4}).json()
    assert body["item_id"] == item and [i["item_id"] for i in body["items"]] == [
        r.item_id for r in served.similar(item, 4)]
    missing = client.get("/v1/items/nope/similar")
    assert missing.status_code == 404 and "unknown item" in missing.json()["detail"]


def test_responses_are_cached_per_model_and_rules(client: TestClient, served: ServingModel,
                                                  monkeypatch: pytest.MonkeyPatch):
    user = known_user(served)
    first = listed(client.get(f"/v1/users/{user}/recommendations"))
    calls = []
    monkeypatch.setattr(served, "recommend", lambda *a, **kw: calls.append(a) or [])
    assert listed(client.get(f"/v1/users/{user}/recommendations")) == first and not calls  # a cache hit
    assert client.get(f"/v1/users/{user}/recommendations?k=3").json()["items"] == [] and len(calls) == 1
    assert client.get("/v1/model").json()["cache"]["entries"] == 2


def test_cached_answers_match_the_endpoint_for_every_spelling(client: TestClient, served: ServingModel):
    """Cache hits skip FastAPI's parameter handling; equivalent spellings still give identical answers."""
    user = known_user(served)
    canonical = unstamped(client.get(f"/v1/users/{user}/recommendations?k=5&exclude_seen=false").content)
    for query in ("k=5&exclude_seen=false", "exclude_seen=0&k=05", "k=5&exclude_seen=no&unused=1"):
        response = client.get(f"/v1/users/{user}/recommendations?{query}")
        assert response.status_code == 200 and unstamped(response.content) == canonical
        assert response.headers["content-type"] == "application/json"
    assert client.get(f"/v1/users/{user}/recommendations?k=5&k=6").json()["items"][0]["rank"] == 1
    for bad in ("k=5&exclude_seen=maybe", "k=5&category=", "k=5x"):
        assert client.get(f"/v1/users/{user}/recommendations?{bad}").status_code == 422
    stats = client.get("/v1/model").json()["cache"]
    assert stats["hits"] >= 2


def test_canonical_lists_skip_fastapi_and_equal_its_answers(served: ServingModel, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """A canonical, valid list GET is ranked by the fast path in front of FastAPI; another spelling of the same
    request, routed by FastAPI on an app with its own (empty) cache, gets the same list, and errors stay FastAPI's."""
    from fastapi.routing import APIRouter

    routed = []
    route = APIRouter.__call__
    monkeypatch.setattr(APIRouter, "__call__", lambda self, *a: routed.append(1) or route(self, *a))
    user, item = known_user(served), str(served.item_ids[0])
    category = str(served.categories[0])
    requests = [(f"/v1/users/{user}/recommendations?k=7", "&exclude_seen=True"),
                (f"/v1/users/{user}/recommendations?k=30&exclude_seen=false", "&unused=1&unused=2"),
                (f"/v1/users/{user}/recommendations?category={category}", "&exclude_seen=yes"),
                ("/v1/users/never-seen/recommendations?k=5", "&exclude_seen=1"),
                ("/v1/sessions/s-1/recommendations?k=3", "&exclude_seen=on"),
                (f"/v1/items/{item}/similar?k=4", "&unused=1")]
    with (TestClient(create_app(settings(tmp_path / "a"), served)) as fast,
          TestClient(create_app(settings(tmp_path / "b"), served)) as routed_app):
        for canonical, respelled in requests:
            routed.clear()
            quick = fast.get(canonical)
            assert quick.status_code == 200 and not routed, canonical
            slow = routed_app.get(canonical + respelled)
            assert slow.status_code == 200 and routed, canonical
            assert unstamped(quick.content) == unstamped(slow.content), canonical
        for path, status in ((f"/v1/users/{user}/recommendations?category=no-such-category", 404),
                             ("/v1/items/no-such-item/similar", 404), (f"/v1/users/{user}/recommendations?k=0", 422)):
            routed.clear()
            response = fast.get(path)
            assert response.status_code == status and routed and response.json()["detail"], path


def test_events_need_the_token(served: ServingModel, client: TestClient, tmp_path: Path):
    body = {"events": [EVENT]}
    assert client.post("/v1/events", json=body).status_code == 401
    wrong = client.post("/v1/events", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/admin/reload").status_code == 401
    with TestClient(create_app(Settings(root=tmp_path, reload_poll_s=0), served)) as no_token:
        refused = no_token.post("/v1/events", json=body, headers=AUTH)
        assert refused.status_code == 403 and "SHOPREC_ADMIN_TOKEN" in refused.json()["detail"]
    assert not (tmp_path / "data" / "incoming" / "events").exists()


def test_acknowledged_events_are_durable_and_readable_by_training(served: ServingModel, tmp_path: Path):
    with TestClient(create_app(settings(tmp_path), served)) as first:
        ack = first.post("/v1/events", json={"events": [EVENT, EVENT | {"item_id": "brand-new-item"}]}, headers=AUTH)
        assert ack.status_code == 200 and ack.json()["accepted"] == 2
    with TestClient(create_app(settings(tmp_path), served)) as second:  # a restart
        extra = EVENT | {"event_type": "purchase", "category_id": "c1", "session_id": "s9", "request_id": "r7"}
        assert second.post("/v1/events", json={"events": [extra]}, headers=AUTH).status_code == 200
    log = read_events(tmp_path / "data" / "incoming").sort_values(["item_id", "event_type"])
    assert list(zip(log["item_id"], log["event_type"], log["session_id"].fillna("-"), strict=True)) == [
        ("brand-new-item", "view", "-"), ("i1", "purchase", "s9"), ("i1", "view", "-")]
    assert str(log["ts"].dt.tz) == "UTC" and {t.isoformat() for t in log["ts"]} == {"2017-12-04T09:00:00+00:00"}
    assert not list((tmp_path / "data" / "incoming" / "events").glob(".*"))  # no temporary files left
    assert list(log.columns) == [f.name for f in EVENTS_SCHEMA]  # training sees the canonical columns
    logged = read_logged_events(tmp_path / "data" / "incoming").to_pylist()  # experiments see the list's id
    assert sorted((r["item_id"], r["request_id"] or "-") for r in logged) == [
        ("brand-new-item", "-"), ("i1", "-"), ("i1", "r7")]


@pytest.mark.parametrize("path", [
    "/v1/users/u1/recommendations?k=0", "/v1/users/u1/recommendations?k=201", "/v1/users/u1/recommendations?k=x",
    f"/v1/users/{'u' * 129}/recommendations", "/v1/users/u%01x/recommendations", "/v1/users/u%C2%85/recommendations",
    f"/v1/items/{'i' * 129}/similar", "/v1/items/i%00/similar", "/v1/items/i1/similar?k=500",
    f"/v1/users/u1/recommendations?category={'c' * 129}",
])
def test_bad_query_input_is_a_clear_4xx(client: TestClient, path: str):
    response = client.get(path)
    assert response.status_code == 422 and response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'{"recent_events": "x"}', b'{"k": 0}', b'{"user_id": "' + b"u" * 129 + b'"}',
    b'{"user_id": "a\\u0007b"}', b'{"user_id": "\\ud800"}', b'{"recent_events": [{"item_id": "i1"}]}',
    b'{"recent_events": [{"item_id": "i1", "event_type": "click", "ts": "2017-12-01T00:00:00Z"}]}',
    b'{"recent_events": [{"item_id": "i1", "event_type": "view", "ts": "2017-12-01T00:00:00"}]}',
    b'{"unknown_field": 1}',
])
def test_bad_session_bodies_are_a_clear_4xx(client: TestClient, body: bytes):
    response = client.post("/v1/recommendations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"]


@pytest.mark.parametrize("event", [
    EVENT | {"ts": "0001-01-01T00:00:00+01:00"}, EVENT | {"event_type": "click"}, EVENT | {"user_id": ""},
    EVENT | {"item_id": "x\ny"}, {k: v for k, v in EVENT.items() if k != "ts"}, EVENT | {"request_id": ""},
    EVENT | {"request_id": 5},
])
def test_bad_events_are_rejected_and_not_logged(client: TestClient, event: dict[str, Any], tmp_path: Path):
    response = client.post("/v1/events", json={"events": [event]}, headers=AUTH)
    assert response.status_code == 422
    assert client.post("/v1/events", json={"events": []}, headers=AUTH).status_code == 422
    assert not (tmp_path / "data" / "incoming" / "events").exists()


def test_oversized_bodies_get_413(served: ServingModel, tmp_path: Path):
    with TestClient(create_app(settings(tmp_path, max_body_bytes=2048), served)) as small:
        big = {"recent_events": [{"item_id": "i1", "event_type": "view", "ts": "2017-12-01T00:00:00Z"}] * 60}
        response = small.post("/v1/recommendations", json=big)
        assert response.status_code == 413 and response.json() == {"detail": "request body larger than 2048 bytes"}

        def chunks() -> Iterator[bytes]:  # no content-length: the size is counted while streaming
            yield b'{"events": ['
            yield b" " * 4096
            yield b"]}"

        streamed = small.post("/v1/events", content=chunks(), headers=AUTH | {"content-type": "application/json"})
        assert streamed.status_code == 413


def test_redis_cache_is_used_and_its_loss_is_survived(served: ServingModel, tmp_path: Path, redis_server: Any,
                                                      caplog: pytest.LogCaptureFixture):
    import redis

    url, proc = redis_server()
    user = known_user(served)
    with TestClient(create_app(settings(tmp_path, redis_url=url), served)) as client:
        first = listed(client.get(f"/v1/users/{user}/recommendations"))
        assert client.get(f"/v1/items/{served.item_ids[0]}/similar").status_code == 200
        store = redis.Redis.from_url(url)
        keys = store.keys("*")  # one hash per shopper / item, the model in each field
        assert len(keys) == 2 and all(served.model_id.encode() in f for k in keys for f in store.hkeys(k))
        cache = client.get("/v1/model").json()["cache"]
        assert cache["backend"] == "redis" and cache["available"] and cache["hits"] == 0
        assert listed(client.get(f"/v1/users/{user}/recommendations")) == first
        proc.kill()
        proc.wait()
        with caplog.at_level(logging.WARNING, logger="pipelines.serving.cache"):
            for _ in range(3):
                again = client.get(f"/v1/users/{user}/recommendations")
                assert again.status_code == 200 and listed(again) == first
            other = client.get(f"/v1/users/{served.history_.vocab.users[1]}/recommendations")
            assert other.status_code == 200 and len(other.json()["items"]) == 20
        assert client.get("/v1/model").json()["cache"]["available"] is False
        outage_logs = [r for r in caplog.records if "redis cache unavailable" in r.getMessage()]
        assert len(outage_logs) == 1  # logged once, not per request


def test_reload_picks_up_a_newly_promoted_champion_without_failing_requests(registry_root: Path, project: Project):
    app = create_app(settings(registry_root))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/v1/model").json()["version"] == "1"
        assert client.post("/v1/admin/reload", headers=AUTH).json() == {
            "version": "1", "previous_version": "1", "reloaded": False}
        register(registry_root, project.sasrec_dir, {"ndcg_at_10": 0.7})
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                statuses.append(client.get("/v1/users/u1/recommendations?k=5").status_code)

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            reloaded = client.post("/v1/admin/reload", headers=AUTH).json()
        finally:
            stop.set()
            thread.join()
        assert reloaded == {"version": "2", "previous_version": "1", "reloaded": True}
        info = client.get("/v1/model").json()
        assert info["version"] == "2" and "sasrec" in info["sources"] and info["metrics"] == {"ndcg_at_10": 0.7}
        assert info["data_version"] == {"source": "synthetic"}
        assert len(statuses) > 5 and set(statuses) == {200}


def test_background_poll_follows_the_alias(registry_root: Path, project: Project):
    with TestClient(create_app(settings(registry_root, reload_poll_s=0.2))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/readyz").json()["version"] == "1"
        register(registry_root, project.model_dir)
        wait_until(lambda: client.get("/readyz").json()["version"] == "2")


def test_not_ready_without_a_model(tmp_path: Path):
    with TestClient(create_app(settings(tmp_path))) as client:
        wait_until(lambda: client.get("/readyz").json().get("detail") != "loading the model")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "nothing to serve" in ready.json()["detail"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/users/u1/recommendations").status_code == 503
        assert client.post("/v1/admin/reload", headers=AUTH).status_code == 503


def test_poll_applies_new_blocked_items_and_a_newly_written_store(project: Project, tmp_path: Path):
    from pipelines.serving.store import write_recommendations

    blocked = tmp_path / "blocked.txt"
    blocked.write_text("# out of stock\n")
    conf = settings(tmp_path, model_dir=project.model_dir, blocked_items_file=blocked, reload_poll_s=0.2)
    with TestClient(create_app(conf)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/v1/model").json()["precomputed"] is False  # no store yet: scored on the fly
        top = client.get("/v1/users/brand-new/recommendations?k=3").json()["items"][0]["item_id"]
        time.sleep(0.05)  # a distinct modification time
        blocked.write_text(f"# out of stock\n{top}\n")
        wait_until(lambda: client.get("/v1/model").json()["rules"]["blocked_items"] == 1)
        after = client.get("/v1/users/brand-new/recommendations?k=3").json()["items"]
        assert top not in {i["item_id"] for i in after} and len(after) == 3
        write_recommendations(project.model_dir, tmp_path / "serving", k=20)
        wait_until(lambda: client.get("/v1/model").json()["precomputed"] is True)
