"""Live shopper state: a posted event changes that shopper's next list (through the gate's two-stage path), for
known users, new users and anonymous sessions; bounded, expiring, shared through Redis and surviving its loss."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipelines.data.events_io import read_events
from pipelines.serving import ServingModel
from pipelines.serving.app import create_app
from pipelines.serving.events import UserEvent
from pipelines.serving.live import MemoryLiveHistory, RedisLiveHistory, user_shopper
from tests.serving.conftest import Project
from tests.serving.test_api import AUTH, known_user, settings

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def served(project: Project) -> ServingModel:
    return ServingModel.load(project.model_dir, version="1")


def event(user: str | None, item: str, minutes: int = 0, kind: str = "view", session: str | None = None) -> dict:
    ts = (NOW + timedelta(minutes=minutes)).isoformat()
    return {k: v for k, v in {"user_id": user, "item_id": item, "event_type": kind, "ts": ts,
                              "session_id": session}.items() if v is not None}


def items_of(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def unlisted_item(model: ServingModel, listed: list[str]) -> str:
    """A popular item outside ``listed`` with related items, to be the shopper's new click."""
    return next(str(model.item_ids[i]) for i in model.pop_order
                if str(model.item_ids[i]) not in listed and len(model.similar(str(model.item_ids[i]), 5)) == 5)


def test_an_event_changes_the_next_list_towards_the_clicked_item(served: ServingModel, tmp_path: Path):
    user = known_user(served)
    with TestClient(create_app(settings(tmp_path), served)) as client:
        before = items_of(client.get(f"/v1/users/{user}/recommendations?k=10"))
        assert items_of(client.get(f"/v1/users/{user}/recommendations?k=10")) == before  # cached
        clicked = unlisted_item(served, before)
        ack = client.post("/v1/events", json={"events": [event(user, clicked, m, "cart") for m in range(3)]},
                          headers=AUTH)
        assert ack.status_code == 200 and ack.json()["live"] is True
        after = client.get(f"/v1/users/{user}/recommendations?k=10").json()
    assert items_of_json(after) != before and clicked not in items_of_json(after)  # seen: excluded
    related = {r.item_id for r in served.similar(clicked, 20) if r.source != "popularity"}
    assert related & {i["item_id"] for i in after["items"]}
    assert any(i["reason"] == f"because you viewed {clicked}" for i in after["items"])
    # the same list the two-stage model ranks for the history followed by the event: the gate's path
    expected = served.recommend(user, 10, recent_events=[event(user, clicked, m, "cart") for m in range(3)])
    assert [i["item_id"] for i in after["items"]] == [r.item_id for r in expected]


def test_new_users_and_anonymous_sessions_get_lists_from_their_events(served: ServingModel, tmp_path: Path):
    item = str(served.item_ids[served.pop_order[0]])
    with TestClient(create_app(settings(tmp_path), served)) as client:
        cold = client.get("/v1/sessions/s-1/recommendations?k=5").json()
        assert cold["session_id"] == "s-1" and [i["source"] for i in cold["items"]] == ["popularity"] * 5
        assert client.post("/v1/events", json={"events": [event(None, item, session="s-1"),
                                                          event("new-user", item)]}, headers=AUTH).status_code == 200
        anon = client.get("/v1/sessions/s-1/recommendations?k=5").json()
        new = client.get("/v1/users/new-user/recommendations?k=5").json()
        posted = client.post("/v1/recommendations", json={"session_id": "s-1", "k": 5}).json()
    assert anon["items"][0]["reason"] == f"because you viewed {item}" and item not in items_of_json(anon)
    assert not new["known_user"] and items_of_json(new) == items_of_json(anon) == items_of_json(posted)
    logged = read_events(tmp_path / "data" / "incoming")
    assert sorted(logged["user_id"]) == ["new-user", "session:s-1"]


def items_of_json(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def test_bad_or_old_events_leave_the_lists_unchanged(served: ServingModel, tmp_path: Path):
    user = known_user(served)
    item = str(served.item_ids[served.pop_order[0]])
    old = served.history_end.to_pydatetime().isoformat()  # already in the model's history
    with TestClient(create_app(settings(tmp_path), served)) as client:
        before = items_of(client.get(f"/v1/users/{user}/recommendations"))
        bad = [event(user, item) | {"event_type": "click"}, {"item_id": item, "event_type": "view", "ts": old}]
        for body in bad:
            response = client.post("/v1/events", json={"events": [event(user, item), body]}, headers=AUTH)
            assert response.status_code == 422 and response.json()["detail"][0]["msg"]
        assert client.get("/v1/model").json()["live"]["shoppers"] == 0
        assert not (tmp_path / "data" / "incoming" / "events").exists()
        ok = client.post("/v1/events", json={"events": [event(user, item) | {"ts": old}]}, headers=AUTH)
        assert ok.status_code == 200
        assert items_of(client.get(f"/v1/users/{user}/recommendations")) == before


def test_memory_state_is_capped_expires_and_forgets_the_least_active():
    clock = [0.0]
    live = MemoryLiveHistory(max_events=3, ttl_s=10, max_shoppers=2, clock=lambda: clock[0])

    async def scenario() -> None:
        await live.add([UserEvent(**event("a", f"i{n}", n)) for n in range(5)])
        state = await live.recent(user_shopper("a"))
        assert [e["item_id"] for e in state.events] == ["i2", "i3", "i4"] and state.version == 1
        await live.add([UserEvent(**event("b", "x")), UserEvent(**event("c", "y"))])
        assert (await live.recent(user_shopper("a"))).events == []  # least recently active, over max_shoppers
        clock[0] = 9.9
        assert await live.version(user_shopper("c")) == 1
        clock[0] = 10.0
        assert (await live.recent(user_shopper("c"))).version == 0  # expired

    asyncio.run(scenario())


def test_redis_state_is_shared_capped_expiring_and_kept_across_restarts(served: ServingModel, tmp_path: Path,
                                                                         redis_server: Any):
    url, _ = redis_server()
    user = known_user(served)

    async def capped() -> None:
        live = RedisLiveHistory(url, max_events=2, ttl_s=1)
        await live.add([UserEvent(**event("a", f"i{n}", n)) for n in range(4)])
        other = RedisLiveHistory(url, max_events=2, ttl_s=1)  # another API process
        state = await other.recent(user_shopper("a"))
        assert [e["item_id"] for e in state.events] == ["i2", "i3"] and state.version == 1
        await asyncio.sleep(2.1)
        assert (await other.recent(user_shopper("a"))).version == 0
        await live.close()
        await other.close()

    asyncio.run(capped())
    clicked = unlisted_item(served, [])
    with TestClient(create_app(settings(tmp_path, redis_url=url), served)) as first:
        assert first.post("/v1/events", json={"events": [event(user, clicked)]}, headers=AUTH).json()["live"]
        after = items_of(first.get(f"/v1/users/{user}/recommendations"))
    with TestClient(create_app(settings(tmp_path, redis_url=url), served)) as restarted:
        assert items_of(restarted.get(f"/v1/users/{user}/recommendations?k=20")) == after
        assert restarted.get("/v1/model").json()["live"] == {"backend": "redis", "available": True}
    assert after == [r.item_id for r in served.recommend(user, 20, recent_events=[event(user, clicked)])]


def test_losing_redis_mid_run_still_answers(served: ServingModel, tmp_path: Path, redis_server: Any,
                                            caplog: pytest.LogCaptureFixture):
    url, proc = redis_server()
    user = known_user(served)
    with TestClient(create_app(settings(tmp_path, redis_url=url), served)) as client:
        assert client.post("/v1/events", json={"events": [event(user, unlisted_item(served, []))]},
                           headers=AUTH).json()["live"]
        proc.kill()
        proc.wait()
        with caplog.at_level(logging.WARNING, logger="pipelines.serving.live"):
            ack = client.post("/v1/events", json={"events": [event(user, "i-later")]}, headers=AUTH)
            assert ack.status_code == 200 and ack.json()["live"] is False  # logged on disk, not live
            plain = items_of(client.get(f"/v1/users/{user}/recommendations"))
            assert plain == [r.item_id for r in served.recommend(user, 20)]
            assert client.get("/v1/sessions/s/recommendations").status_code == 200
        assert client.get("/v1/model").json()["live"]["available"] is False
    assert len([r for r in caplog.records if "redis live state unavailable" in r.getMessage()]) == 1
    assert len(read_events(tmp_path / "data" / "incoming")) == 2
