"""The large-catalogue benchmark builds what it claims: a valid params.yaml whose generated catalogue has the asked
number of items at Taobao's categories per item, with the scale profile; and a model trained from it holds every
catalogue item, touched or not (the vocabulary takes the catalogue in)."""

from __future__ import annotations

from pathlib import Path

import yaml

from benchmarks import catalogue, scale
from pipelines.core.config import load_params
from pipelines.data.generate import TAOBAO_EVENTS, TAOBAO_USERS, generate
from pipelines.data.split import run_split
from pipelines.features.encode import load_features, run_features


def test_catalogue_params_size_the_catalogue_not_the_log(tmp_path: Path) -> None:
    raw = catalogue.catalogue_params(Path("params.yaml"), items=4_000_000, users=20_000)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    assert params.data.source == "synthetic"
    assert (params.synthetic.items, params.synthetic.users) == (4_000_000, 20_000)
    assert params.synthetic.categories == 9_072  # Taobao: 9,439 categories over 4,162,024 items
    assert abs(params.synthetic.events_per_user - TAOBAO_EVENTS / TAOBAO_USERS) < 1e-9
    assert params.train.sources == scale.PROFILE["train"]["sources"]


def test_the_features_vocabulary_holds_every_catalogue_item(tmp_path: Path) -> None:
    """What the benchmark's model is sized by: every catalogue item gets a code, not only the touched ones."""
    raw = catalogue.catalogue_params(Path("params.yaml"), items=30_000, users=40)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    manifest = generate(tmp_path / "data", params.synthetic)
    assert manifest.items < 30_000  # 40 users touch a small share of the catalogue
    run_split(tmp_path / "data", tmp_path / "split", params.split)
    run_features(tmp_path / "split", tmp_path / "features")
    assert load_features(tmp_path / "features").vocab.n_items == 30_000
