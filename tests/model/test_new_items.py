"""The evaluation's new-item slice: test targets that are items without events in the evaluation history, hit by
each model's list and by its exploration list (new items closest in content to the user's recent items)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.atomic import read_json
from pipelines.core.config import EvaluateParams, SplitParams, SyntheticParams, TrainParams
from pipelines.data.generate import generate
from pipelines.data.split import run_split
from pipelines.evaluation.evaluate import evaluate_models, run_evaluate
from pipelines.features.encode import Features, load_features, run_features
from pipelines.features.interactions import Vocab
from pipelines.models import Popularity
from pipelines.models.content import ContentIndex
from pipelines.models.train import EVAL_HISTORY, catalogue, run_train
from tests.conftest import make_events

CATEGORIES = ("shoes", "hats")
PER_CATEGORY = 30
N_USERS = 20


def _catalogue() -> pd.DataFrame:
    """Thirty old items per category and one new item per category that shares its category and attribute."""
    rows = [{"item_id": f"{c}-{i:02d}", "category_id": c, "attributes": [f"kind:{c}"]}
            for c in CATEGORIES for i in range(PER_CATEGORY)]
    rows += [{"item_id": f"new-{c}", "category_id": c, "attributes": [f"kind:{c}"]} for c in CATEGORIES]
    return pd.DataFrame(rows)


def _features(target_of: dict[str, str] | None = None) -> Features:
    """Users who view items of one category (train, valid), then in the test fold the new item of it, their
    target unless ``target_of`` names another one (user -> item)."""
    rows, fold, targets = [], [], []
    for u in range(N_USERS):
        user, category = f"u{u:02d}", CATEGORIES[u % 2]
        for step in range(7):
            rows.append((user, f"{category}-{(u // 2 * 3 + step) % PER_CATEGORY:02d}", "view", 60 * (10 * u + step)))
            fold.append("train" if step < 6 else "valid")
        rows.append((user, f"new-{category}", "view", 60 * (10 * u + 8)))
        fold.append("test")
        targets.append((user, (target_of or {}).get(user, f"new-{category}"), "view", "test"))
    items = _catalogue()
    events = make_events(rows).assign(fold=fold)
    events["category_id"] = events["item_id"].map(items.set_index("item_id")["category_id"])
    frame = pd.DataFrame(targets, columns=["user_id", "item_id", "event_type", "fold"])
    return Features.from_frames(Vocab.build(events, items), events, frame, items)


def _evaluate(features: Features, share: float, lists: dict[str, np.ndarray] | None = None) -> dict:
    """Evaluate popularity as candidate and baseline with the content index training would ship."""
    model = Popularity().fit(features.history(EVAL_HISTORY))
    content = ContentIndex.fit(catalogue(features).to_pandas())
    return evaluate_models({"candidate": model, "baseline": model}, features,
                           EvaluateParams(bootstrap_samples=20, explore_share=share), exclude_seen=True,
                           lists_out=lists, content=content)


def test_the_exploration_list_hits_new_items_that_popularity_never_shows():
    section = _evaluate(_features(), 0.1)["new_items"]
    assert (section["new_items"], section["users"], section["targets"]) == (2, N_USERS, N_USERS)
    entry = section["models"]["baseline"]
    assert entry["served"]["hr@10"] == entry["served"]["recall@20"] == 0.0  # no events: popularity's last items
    assert entry["explore"]["hr@5"] == entry["explore"]["recall@10"] == 1.0  # the one slot of 5 or 10: the new item
    assert section["content_index"] is True
    assert entry["explore_overall"]["hr@10"] == 1.0  # here every target is new, so exploring costs nothing
    assert entry["explore_cost"]["hr@10"]["mean"] == 1.0


def test_without_a_share_the_exploration_lists_are_the_served_ones():
    lists: dict[str, np.ndarray] = {}
    report = _evaluate(_features(), 0.0, lists)
    for name, entry in report["new_items"]["models"].items():
        assert entry["explore"] == entry["served"]
        assert entry["explore_overall"] == {m: v for m, v in report["models"][name]["overall"].items()
                                            if m.startswith(("hr@", "ndcg@"))}
        for k in (5, 10, 20):
            np.testing.assert_array_equal(lists[f"{name}:explore@{k}"], lists[name][:, :k])


def test_changing_test_targets_changes_no_exploration_list():
    """The new items come from the evaluation history and the catalogue: targets only score the lists."""
    features = _features()
    moved = _features({f"u{u:02d}": f"{CATEGORIES[u % 2]}-29" for u in range(N_USERS)})
    assert not moved.targets.equals(features.targets)
    mine, theirs = {}, {}
    report = _evaluate(features, 0.1, mine)
    other = _evaluate(moved, 0.1, theirs)
    assert set(mine) == set(theirs) and len(mine) == 9  # users, 2 models x (list + 3 exploration lists)
    for key, value in mine.items():
        np.testing.assert_array_equal(theirs[key], value, err_msg=key)
    assert other["new_items"]["users"] == 0 and report["new_items"]["users"] == N_USERS
    assert other["new_items"]["new_items"] == report["new_items"]["new_items"]


def test_run_evaluate_writes_the_slice(tmp_path: Path):
    generate(tmp_path / "data", SyntheticParams(users=300, items=400, categories=6, events_per_user=20, seed=4))
    run_split(tmp_path / "data", tmp_path / "split", SplitParams(protocol="temporal", test_days=2, valid_days=1))
    run_features(tmp_path / "split", tmp_path / "features")
    run_train(tmp_path / "features", tmp_path / "model", TrainParams(model="popularity"))
    params = EvaluateParams(bootstrap_samples=10)
    run_evaluate(tmp_path / "features", tmp_path / "model", tmp_path / "metrics", params, SplitParams())
    section = read_json(tmp_path / "metrics" / "metrics.json")["new_items"]
    store = load_features(tmp_path / "features")
    seen = np.unique(store.all.history(EVAL_HISTORY).item)
    assert section["new_items"] == store.vocab.n_items - len(seen) > 0  # catalogue items nobody touched yet
    users, targets = store.target_sets("test")
    with_new = sum(bool(np.setdiff1d(t, seen).size) for t in targets)
    assert section["users"] == with_new and section["content_index"] is True
    assert set(section["models"]) == {"candidate", "baseline"}
    assert section["explore_share"] == pytest.approx(0.1)
