"""One ranking path: the evaluated lists, the batch store's lists and the API's lists are the same, item by item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import EvaluateParams
from pipelines.evaluation.evaluate import evaluate_models
from pipelines.features.encode import load_features
from pipelines.serving import ServingModel
from pipelines.serving.store import write_recommendations
from tests.serving.conftest import Project

K = 20


@pytest.mark.parametrize("which", ["model_dir", "sasrec_dir"])
def test_evaluated_stored_and_served_lists_are_identical(project: Project, tmp_path: Path, which: str):
    """On the serving model's history: what evaluate.py scores, what the store holds and what the API answers
    (scored on the fly, no store) for every test user."""
    model_dir = getattr(project, which)
    served = ServingModel.load(model_dir)
    features = load_features(project.root / "data" / "features").all
    lists: dict[str, np.ndarray] = {}
    evaluate_models({"candidate": served.model}, features, EvaluateParams(ks=[K], bootstrap_samples=0),
                    exclude_seen=True, lists_out=lists)
    users = lists["users"]
    assert len(users) >= 200 and (lists["candidate"] >= 0).all()  # full lists, nothing left to the fallbacks
    evaluated = {str(served.history_.vocab.users[u]): list(served.item_ids[row]) for u, row in
                 zip(users, lists["candidate"], strict=True)}

    write_recommendations(model_dir, tmp_path / "serving", k=K)
    frame = pd.read_parquet(tmp_path / "serving" / "recommendations.parquet").sort_values(["user_id", "rank"])
    stored = frame.groupby("user_id")["item_id"].agg(list).to_dict()

    assert served.store is None
    served_lists = {user: [r.item_id for r in served.recommend(user, K)] for user in evaluated}
    for user, items in evaluated.items():
        assert stored[user] == items, user
        assert served_lists[user] == items, user
    on_the_fly = served.top_lists(users, K)
    np.testing.assert_array_equal(on_the_fly.items, lists["candidate"])


def test_a_session_is_ranked_like_the_same_history(project: Project):
    """The session path is the batch path on another sequence: a known user's own history as the "session"
    gives the user's batch list, with the same sources and explanations."""
    model = ServingModel.load(project.model_dir).model
    history = model.history
    users = np.arange(0, history.n_users, 3)
    batch = model.rank(users, K)
    bounds = history.user_bounds
    for row, user in enumerate(users):
        span = slice(bounds[user], bounds[user + 1])
        one = model.rank_sequence(history.item[span], history.event[span], K, user=int(user))
        for field in ("items", "sources", "related"):
            np.testing.assert_array_equal(getattr(one, field)[0], getattr(batch, field)[row])
        np.testing.assert_allclose(one.scores[0], batch.scores[row], rtol=1e-6)
    assert set(model.source_names) == set(model.components) and model.ranker_name == "lightgbm"
    chosen = model.component_lists(users, K)[f"ranker:{model.ranker_name}"]
    np.testing.assert_array_equal(chosen, batch.items)
