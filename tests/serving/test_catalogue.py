"""Products added after training: logged durably, similar items for them, exploration slots in lists, stock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipelines.serving import ServingModel
from pipelines.serving.app import create_app
from pipelines.serving.catalogue import CatalogueLog
from pipelines.serving.model import Rules
from tests.serving.conftest import Project
from tests.serving.test_api import AUTH, known_user, settings, wait_until


@pytest.fixture(scope="module")
def served(project: Project) -> ServingModel:
    return ServingModel.load(project.model_dir, version="1").with_rules(Rules(explore_share=0.2))


def items_of(response: Any) -> list[tuple[str, str]]:
    assert response.status_code == 200, response.text
    return [(i["item_id"], i["source"]) for i in response.json()["items"]]


def like(model: ServingModel, item_id: str, new_id: str) -> dict[str, Any]:
    """A new product in the category of ``item_id``, with a title of its own."""
    category = model.categories[model.item_category[model.item_index.get_loc(item_id)]]
    return {"item_id": new_id, "category_id": str(category), "attributes": ["colour:red"], "title": "Red gloss",
            "brand": "acme", "price": 9.5}


def test_a_new_product_gets_similar_items_and_reaches_a_matching_shopper(served: ServingModel, tmp_path: Path):
    user = known_user(served)
    last = served.history(user)["item_id"].iloc[-1]
    with TestClient(create_app(settings(tmp_path), served)) as client:
        before = items_of(client.get(f"/v1/users/{user}/recommendations?k=10"))
        assert client.get("/v1/items/NEW-1/similar").status_code == 404
        ack = client.post("/v1/catalogue/items", headers=AUTH,
                          json={"items": [like(served, last, "NEW-1"), like(served, last, "NEW-2")]})
        assert ack.status_code == 200, ack.text
        assert ack.json() | {"batch": ""} == {"accepted": 2, "added": 2, "updated": 0, "batch": ""}
        similar = items_of(client.get("/v1/items/NEW-1/similar?k=10"))
        after = items_of(client.get(f"/v1/users/{user}/recommendations?k=10"))  # the cached list is not served
        assert client.get("/v1/model").json()["new_items"] == 2
    assert ("NEW-2", "new_items") in similar  # the other new product, in an exploration slot
    category = served.item_category[served.item_index.get_loc(last)]
    assert all(served.item_category[served.item_index.get_loc(i)] == category for i, s in similar if s == "content"
               and i != "NEW-2")
    explored = [i for i, source in after if source == "new_items"]
    assert len(explored) == 2 and set(explored) == {"NEW-1", "NEW-2"}  # 0.2 of 10 slots
    assert after[0] == before[0]  # exploration never takes the top slot
    assert [x for x in after if x[1] != "new_items"] == before[:8]


def test_without_exploration_share_lists_stay_the_model_s(served: ServingModel, tmp_path: Path):
    user = known_user(served)
    plain = served.with_rules(Rules())
    last = served.history(user)["item_id"].iloc[-1]
    grown = plain.with_catalogue([like(plain, last, "NEW-1") | {"in_stock": True}], "r1")
    assert [r.item_id for r in grown.recommend(user, 10)] == [r.item_id for r in plain.recommend(user, 10)]


def test_a_session_on_a_new_product_gets_its_neighbours(served: ServingModel, tmp_path: Path):
    item = str(served.item_ids[served.pop_order[0]])
    grown = served.with_catalogue([like(served, item, "NEW-1") | {"in_stock": True},
                                   like(served, item, "NEW-2") | {"in_stock": True}], "r1")
    recs = grown.recommend(None, 10, recent_events=[{"item_id": "NEW-1", "event_type": "view"}])
    assert "NEW-2" in [r.item_id for r in recs] and "NEW-1" not in [r.item_id for r in recs]
    assert len(recs) == 10


def test_out_of_stock_items_leave_lists_until_back(served: ServingModel, tmp_path: Path):
    user = known_user(served)
    with TestClient(create_app(settings(tmp_path), served)) as client:
        top = items_of(client.get(f"/v1/users/{user}/recommendations?k=10"))[0][0]
        category = str(served.categories[served.item_category[served.item_index.get_loc(top)]])
        gone = {"items": [{"item_id": top, "category_id": category, "in_stock": False}]}
        ack = client.post("/v1/catalogue/items", headers=AUTH, json=gone).json()
        assert (ack["added"], ack["updated"]) == (0, 1)
        assert top not in [i for i, _ in items_of(client.get(f"/v1/users/{user}/recommendations?k=10"))]
        back = {"items": [{"item_id": top, "category_id": category}]}
        assert client.post("/v1/catalogue/items", headers=AUTH, json=back).status_code == 200
        assert items_of(client.get(f"/v1/users/{user}/recommendations?k=10"))[0][0] == top


def test_an_id_sent_twice_in_one_batch_keeps_its_last_row(served: ServingModel, tmp_path: Path):
    first = {"item_id": "NEW-1", "category_id": "c-a", "title": "first"}
    with TestClient(create_app(settings(tmp_path), served)) as client:
        ack = client.post("/v1/catalogue/items", headers=AUTH,
                          json={"items": [first, first | {"category_id": "c-b", "in_stock": False}]})
        assert ack.status_code == 200, ack.text
        assert (ack.json()["accepted"], ack.json()["added"]) == (2, 1)
        assert client.get("/v1/model").json()["new_items"] == 1
        model = client.app.state.serving.model
    assert model.categories[model.item_category[model.item_index.get_loc("NEW-1")]] == "c-b"
    assert "NEW-1" in model.out_of_stock


@pytest.mark.parametrize("body", [
    {"items": []},
    {"items": [{"item_id": "x"}]},  # no category
    {"items": [{"item_id": "x", "category_id": "c", "price": -1}]},
    {"items": [{"item_id": "x", "category_id": "c", "colour": "red"}]},
    {"items": [{"item_id": "x\u0001", "category_id": "c"}]},
    {"items": [{"item_id": "x", "category_id": "c", "title": ""}]},
])
def test_bad_items_are_refused_and_nothing_is_stored(served: ServingModel, tmp_path: Path, body: dict):
    with TestClient(create_app(settings(tmp_path), served)) as client:
        response = client.post("/v1/catalogue/items", headers=AUTH, json=body)
        assert response.status_code == 422
        assert client.get("/v1/model").json()["new_items"] == 0
    assert CatalogueLog(tmp_path / "data" / "incoming").batches() == []


def test_catalogue_writes_need_the_token(served: ServingModel, tmp_path: Path):
    with TestClient(create_app(settings(tmp_path), served)) as client:
        body = {"items": [{"item_id": "x", "category_id": "c"}]}
        assert client.post("/v1/catalogue/items", json=body).status_code == 401
    assert CatalogueLog(tmp_path / "data" / "incoming").batches() == []


def test_a_restarted_api_serves_the_logged_products(project: Project, tmp_path: Path):
    config = settings(tmp_path, model_dir=project.model_dir, explore_share=0.2)
    with TestClient(create_app(config)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        added = {"items": [{"item_id": "NEW-9", "category_id": "c-new", "title": "brand new thing"}]}
        assert client.post("/v1/catalogue/items", headers=AUTH, json=added).status_code == 200
    with TestClient(create_app(config)) as client:  # a new process: the log is replayed at load
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/v1/model").json()["new_items"] == 1
        assert client.get("/v1/items/NEW-9/similar?k=5").status_code == 200
