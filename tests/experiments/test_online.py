"""Online experiments end to end: the registry's challenger alias, the API's stable split of shoppers, and the
online evaluation that reads the logged lists and feedback, decides and acts on the registry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipelines.core.config import ExperimentParams
from pipelines.core.errors import ShoprecError
from pipelines.experiments.arms import arm_of
from pipelines.experiments.online import history, run_online_evaluation
from pipelines.registry import versions as registry
from pipelines.serving.app import create_app
from pipelines.serving.impressions import read_impressions
from pipelines.serving.settings import Settings
from tests.serving.conftest import Project, register
from tests.serving.test_api import wait_until

TOKEN = "experiment-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
USERS = [f"u{n}" for n in range(300)]  # the tiny project's shoppers
QUICK = ExperimentParams(min_shoppers=20)


def _settings(root: Path, **overrides: Any) -> Settings:
    return Settings(root=root, **({"admin_token": TOKEN, "reload_poll_s": 0, "challenger_share": 0.5} | overrides))


@contextmanager
def _api(root: Path, **overrides: Any) -> Iterator[TestClient]:
    """The API on ``root``'s registry, once it is ready (its models load in the background)."""
    with TestClient(create_app(_settings(root, **overrides))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        yield client


def _aliases(root: Path) -> dict[str, str | None]:
    return {alias: registry._alias_version(registry.client(root), alias)
            for alias in (registry.CHAMPION, registry.PREVIOUS, registry.CHALLENGER)}


def test_challenger_alias_and_the_decisions_that_end_an_experiment(registry_root: Path, project: Project):
    assert register(registry_root, project.sasrec_dir, alias="challenger") == "2"
    assert _aliases(registry_root) == {"champion": "1", "previous_champion": None, "challenger": "2"}
    with pytest.raises(ShoprecError, match="not the challenger"):
        registry.conclude_experiment("1", "promote", registry_root)  # a stale reading changes nothing
    registry.conclude_experiment("2", "promote", registry_root)
    assert _aliases(registry_root) == {"champion": "2", "previous_champion": "1", "challenger": None}
    assert registry.show("2", registry_root)["tags"]["experiment"] == "promote"

    register(registry_root, project.model_dir, alias="challenger")
    registry.conclude_experiment("3", "rollback", registry_root)
    assert _aliases(registry_root) == {"champion": "2", "previous_champion": "1", "challenger": None}
    assert registry.show("3", registry_root)["tags"]["experiment"] == "rollback"


def test_without_a_champion_a_challenger_becomes_the_champion(project: Project, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    register(tmp_path, project.model_dir, alias="challenger")
    assert _aliases(tmp_path) == {"champion": "1", "previous_champion": None, "challenger": None}


def test_shoppers_are_split_stably_by_the_configured_share(registry_root: Path, project: Project):
    register(registry_root, project.sasrec_dir, alias="challenger")
    with _api(registry_root) as client:
        info = client.get("/v1/model").json()["experiment"]
        assert info == {"experiment": "v1-vs-v2", "champion_version": "1", "challenger_version": "2",
                        "challenger_share": 0.5}
        arms = {}
        for user in USERS[:80]:
            first, again = (client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
                            for _ in range(2))  # the second one is a cache hit
            assert first["arm"] == again["arm"] == arm_of(f"u:{user}", 0.5, "v1-vs-v2")
            assert first["model_version"] == {"champion": "1", "challenger": "2"}[first["arm"]]
            arms[user] = first["arm"]
        session = client.get("/v1/sessions/s-1/recommendations").json()
        assert session["arm"] == arm_of("a:s-1", 0.5, "v1-vs-v2")
    assert 20 <= sum(arm == "challenger" for arm in arms.values()) <= 60
    logged = read_impressions(registry_root / "data" / "incoming").to_pandas()
    users = logged[logged.surface == "user"]
    assert (users.user_id.map(arms) == users.arm).all()  # each list is logged under its shopper's arm


def test_share_zero_or_no_challenger_serves_everyone_the_champion(registry_root: Path, project: Project):
    with _api(registry_root) as client:  # no challenger alias
        assert client.get("/v1/model").json()["experiment"] is None
        assert {client.get(f"/v1/users/{u}/recommendations").json()["arm"] for u in USERS[:30]} == {"champion"}
    register(registry_root, project.sasrec_dir, alias="challenger")
    with _api(registry_root, challenger_share=0.0) as client:
        assert {client.get(f"/v1/users/{u}/recommendations").json()["model_version"] for u in USERS[:30]} == {"1"}


def _shop(client: TestClient, clicks: dict[str, float], seed: int = 0) -> None:
    """Every shopper asks for a list; one in each arm clicks its first item with that arm's probability."""
    rng = np.random.default_rng(seed)
    for user in USERS[:200]:
        body = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
        if rng.random() < clicks[body["arm"]]:
            event = {"user_id": user, "item_id": body["items"][0]["item_id"], "event_type": "view",
                     "ts": datetime.now(UTC).isoformat()}
            assert client.post("/v1/events", json={"events": [event]}, headers=AUTH).status_code == 200


def test_a_clearly_better_challenger_is_promoted(registry_root: Path, project: Project):
    register(registry_root, project.sasrec_dir, alias="challenger")
    with _api(registry_root) as client:
        _shop(client, {"champion": 0.1, "challenger": 0.9})
    record = run_online_evaluation(registry_root, QUICK)
    assert record["decision"] == "promote" and record["applied"]
    assert record["arms"]["challenger"]["clicks_per_list"] > record["arms"]["champion"]["clicks_per_list"]
    assert record["tests"]["clicks"]["ci_low"] > 0
    assert _aliases(registry_root)["champion"] == "2"
    assert history(registry_root / "reports") == [record]


def test_a_clearly_worse_challenger_is_rolled_back(registry_root: Path, project: Project):
    register(registry_root, project.sasrec_dir, alias="challenger")
    with _api(registry_root) as client:
        _shop(client, {"champion": 0.9, "challenger": 0.1})
    record = run_online_evaluation(registry_root, QUICK)
    assert record["decision"] == "rollback" and record["applied"]
    assert record["tests"]["clicks"]["ci_high"] < 0
    assert _aliases(registry_root) == {"champion": "1", "previous_champion": None, "challenger": None}
    with pytest.raises(ShoprecError, match="no experiment runs"):
        run_online_evaluation(registry_root, QUICK)


def test_equal_arms_keep_collecting_and_too_few_shoppers_decide_nothing(registry_root: Path, project: Project):
    register(registry_root, project.sasrec_dir, alias="challenger")
    with _api(registry_root) as client:
        _shop(client, {"champion": 0.3, "challenger": 0.3})
    assert run_online_evaluation(registry_root, QUICK, apply=False)["decision"] == "continue"
    lopsided = {"champion": 0.0, "challenger": 1.0}
    with _api(registry_root) as client:
        _shop(client, lopsided, seed=1)
    record = run_online_evaluation(registry_root, ExperimentParams(min_shoppers=1000), apply=False)
    assert record["decision"] == "continue" and record["tests"]["clicks"]["ci_low"] > 0
    assert _aliases(registry_root)["challenger"] == "2"
    assert len(history(registry_root / "reports")) == 2
