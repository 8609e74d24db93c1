"""The closed-loop simulator: shoppers follow the generator's hidden preferences, and a random challenger driven
through the real API loses to the trained champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.core.config import ExperimentParams, TrainParams
from pipelines.data.generate import ground_truth
from pipelines.experiments.simulate import choose, simulate
from pipelines.models.train import run_train
from tests.serving.conftest import TINY, Project, register

TRUTH = ground_truth(TINY)


def test_next_view_is_the_walk_distribution():
    items = np.arange(TINY.items)
    start = TRUTH.next_view(0, -1, items)  # a session start: a popular item of an interest
    assert np.isclose(start.sum(), 1.0)
    leaves = set(TRUTH.interests[0, : TRUTH.n_interests[0]])
    assert {TRUTH.world.catalogue.leaf_of_item[i] for i in np.flatnonzero(start)} <= leaves
    after = TRUTH.next_view(0, 5, items)
    assert after.sum() < 1.0  # a step back is not an item the list can offer
    assert set(np.argsort(-after)[:3]) <= set(TRUTH.world.successors[5])  # the walk's likeliest next views


def test_shoppers_click_what_they_like_and_the_same_seed_repeats_them():
    items = np.arange(TINY.items)
    liked = np.argsort(-TRUTH.next_view(3, 7, items))[:10]
    unrelated = np.argsort(TRUTH.next_view(3, 7, items))[:10]

    def clicks(listed: np.ndarray, seed: int) -> list[int | None]:
        rng = np.random.default_rng(seed)
        return [choose(TRUTH, 3, 7, listed, rng).clicked for _ in range(400)]

    assert clicks(liked, 1) == clicks(liked, 1)
    assert sum(c is not None for c in clicks(liked, 1)) > 100
    assert sum(c is not None for c in clicks(unrelated, 1)) < 10


def test_a_random_challenger_loses_to_the_trained_champion(registry_root: Path, project: Project, tmp_path: Path):
    random_dir = tmp_path / "random"
    run_train(project.root / "data" / "features", random_dir, TrainParams(model="random"))
    register(registry_root, random_dir, alias="challenger")
    record = simulate(registry_root, TINY, "champion", "challenger", sessions=300, seed=0,
                      params=ExperimentParams(min_shoppers=20), looks=3)
    arms = record["arms"]
    assert arms["challenger"]["clicks_per_list"] < arms["champion"]["clicks_per_list"]
    assert record["decision"] == "rollback" and record["tests"]["clicks"]["ci_high"] < 0
    assert record["simulation"]["sessions"] <= 300
    assert not (registry_root / "data" / "incoming").exists()  # a simulation never writes the shop's logs
