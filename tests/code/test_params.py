"""One default per parameter: params.yaml lists every parameter the code reads, with the schema's default.

Hyper-parameters of SASRec, LightGCN and the rankers are typed too, so a misspelt key fails at load time with
one line naming it, not later inside a model as a raw ``TypeError``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from pipelines.core.config import Params, load_params
from pipelines.core.errors import ShoprecError
from tests.conftest import REPO


def leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted names of every parameter of ``model`` (sections recurse; dicts and lists are values)."""
    out = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out |= leaves(kind, f"{key}.")
        else:
            out.add(key)
    return out


def yaml_leaves(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out |= yaml_leaves(value, f"{name}.") if isinstance(value, dict) and name not in DICT_VALUES else {name}
    return out


DICT_VALUES = {"train.event_weights"}  # parameters whose value is a mapping


def test_params_yaml_lists_every_parameter():
    listed = yaml_leaves(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert leaves(Params) - listed == set(), "parameters the code reads but params.yaml does not list"
    assert listed - leaves(Params) == set(), "keys of params.yaml no parameter reads"


def test_schema_defaults_are_the_values_params_yaml_ships():
    assert load_params(REPO / "params.yaml").model_dump() == Params().model_dump()


@pytest.mark.parametrize("text, key", [
    ("train:\n  sasrec:\n    lrr: 0.1\n", "train.sasrec.lrr"),
    ("train:\n  lightgcn:\n    layer: 2\n", "train.lightgcn.layer"),
    ("train:\n  ranker_params:\n    lightgbm:\n      num_leafs: 7\n", "train.ranker_params.lightgbm.num_leafs"),
    ("train:\n  ranker_params:\n    xgboost:\n      eta: 0.3\n", "train.ranker_params.xgboost.eta"),
    ("train:\n  ranker_params:\n    deep:\n      hiden: [8]\n", "train.ranker_params.deep.hiden"),
    ("train:\n  ranker_params:\n    catboost: {}\n", "train.ranker_params.catboost"),
])
def test_a_misspelt_key_is_one_line_naming_it(tmp_path, text: str, key: str):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ShoprecError) as info:
        load_params(p)
    assert str(info.value) == f"{p}: {key}: Extra inputs are not permitted"


def test_a_misspelt_override_fails_the_same_way():
    with pytest.raises(ShoprecError, match=r"^params.yaml: train.sasrec.lrr: Extra inputs are not permitted$"):
        load_params("params.yaml", ["train.sasrec.lrr=0.1"])


def test_a_wrong_type_names_the_key():
    with pytest.raises(ShoprecError, match=r"train.ranker_params.deep.max_epochs: Input should be a valid integer"):
        load_params("params.yaml", ["train.ranker_params.deep.max_epochs=many"])


def test_the_demo_overrides_keep_working():
    """``make demo`` shortens the deep models' epochs with --set; every one of them must load and apply."""
    demo = re.search(r"^DEMO_SET := (.*?)\n\S", (REPO / "Makefile").read_text(), re.S | re.M)
    overrides = re.findall(r"--set (\S+)", demo.group(1))
    assert len(overrides) == 3
    train = load_params(REPO / "params.yaml", overrides).train
    assert (train.sasrec.max_epochs, train.lightgcn.max_epochs, train.ranker_params.deep.max_epochs) == (9, 15, 10)
    assert train.sasrec.lr == Params().train.sasrec.lr  # the rest of the section stays as shipped


def test_models_default_to_the_schema():
    """The model classes have no defaults of their own: built bare, they carry params.yaml's values."""
    from pipelines.models.lightgcn import LightGCN
    from pipelines.models.sasrec import SASRec
    from pipelines.rankers import build_ranker

    train = load_params(REPO / "params.yaml").train
    assert SASRec().params == train.sasrec
    assert LightGCN().params == train.lightgcn
    assert LightGCN().event_weights == train.event_weights
    for name in ("lightgbm", "xgboost", "deep"):
        assert build_ranker(name).params == getattr(train.ranker_params, name)
