"""Atomic writes keep the old content on failure; bad params give a one-line error naming the field."""

import pytest

from pipelines.core.atomic import atomic_dir, atomic_file
from pipelines.core.config import load_params
from pipelines.core.errors import ShoprecError


def test_atomic_file_keeps_old_content_on_error(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(ValueError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise ValueError
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_swaps_only_on_success(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError
    assert (target / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_repo_params_load():
    params = load_params("params.yaml")
    assert params.validate_.policy in {"fail", "quarantine"}


@pytest.mark.parametrize(
    "text, fragment",
    [("validate:\n  policy: maybe\n", "validate.policy"), ("split: [1\n", "not valid YAML"),
     ("train:\n  bogus: 1\n", "train.bogus")],
)
def test_bad_params_name_the_field(tmp_path, text, fragment):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ShoprecError, match=fragment) as info:
        load_params(p)
    assert "\n" not in str(info.value)


def test_overrides_set_nested_fields_and_are_checked(tmp_path):
    params = load_params("params.yaml", ["train.sasrec.time_budget_s=5", "split.protocol=temporal"])
    assert params.train.sasrec.time_budget_s == 5 and params.split.protocol == "temporal"
    with pytest.raises(ShoprecError, match="split.protocol"):
        load_params("params.yaml", ["split.protocol=random"])
    with pytest.raises(ShoprecError, match="KEY=VALUE"):
        load_params("params.yaml", ["novalue"])
