"""Memory bounds added for 10M events keep results identical: candidate batches shrink with the catalogue only."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.core.config import SplitParams, SyntheticParams, TrainParams
from pipelines.data.events_io import read_events
from pipelines.data.generate import generate
from pipelines.data.split import make_split
from pipelines.features.interactions import Interactions, Vocab
from pipelines.models import build_source, candidates


def test_candidates_do_not_depend_on_the_cell_budget(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate(tmp_path / "data", SyntheticParams(users=300, items=400, categories=10, events_per_user=20))
    events = make_split(read_events(tmp_path / "data"), SplitParams()).events
    vocab = Vocab.build(events, None)
    history = Interactions.from_events(events[events["fold"] == "train"], vocab)
    sources = {name: build_source(name, TrainParams(), None).fit(history) for name in ("covisit", "popularity")}
    users = np.arange(history.n_users)
    whole = candidates.generate_candidates(sources, users, 20)
    monkeypatch.setattr(candidates, "CELL_BUDGET", 7 * history.n_items)  # 7-user batches
    small = candidates.generate_candidates(sources, users, 20)
    for field in ("users", "group", "user", "item"):
        np.testing.assert_array_equal(getattr(small, field), getattr(whole, field))
    for field in ("scores", "proposed", "source_top"):
        for name in sources:
            np.testing.assert_array_equal(getattr(small, field)[name], getattr(whole, field)[name])


def test_item_cosine_scaled_in_place_equals_the_diagonal_products(tmp_path) -> None:
    import scipy.sparse as sp

    from pipelines.models.item_to_item import top_n_per_row
    from pipelines.models.itemcos import cooccurrence_counts, cosine_from_counts

    generate(tmp_path / "data", SyntheticParams(users=300, items=400, categories=10, events_per_user=20))
    events = read_events(tmp_path / "data")
    history = Interactions.from_events(events, Vocab.build(events, None))
    x = history.seen.astype(np.float32)
    inv = sp.diags(1.0 / np.maximum(np.sqrt(np.asarray(x.sum(axis=0)).ravel()), 1e-9)).astype(np.float32)
    expected = (inv @ (x.T @ x) @ inv).tocsr()  # the formula before the memory fix
    expected.setdiag(0)
    expected.eliminate_zeros()
    expected = top_n_per_row(expected, 50).astype(np.float32)
    got = cosine_from_counts(cooccurrence_counts(history), 50)
    for part in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, part), getattr(expected, part))


def test_item_cosine_built_a_block_of_rows_at_a_time_equals_one_block(tmp_path, monkeypatch) -> None:
    """Bounded memory by blocks changes nothing: tiny blocks over three parts give the one-block matrix."""
    from pipelines.features.interactions import PartedHistory
    from pipelines.models import ItemCosine, itemcos

    generate(tmp_path / "data", SyntheticParams(users=300, items=400, categories=10, events_per_user=20))
    events = read_events(tmp_path / "data")
    vocab = Vocab.build(events, None)
    whole = ItemCosine(neighbours=50).fit(Interactions.from_events(events, vocab)).matrix_
    users = sorted(events["user_id"].unique())
    thirds = [events[events["user_id"].isin(users[i::3])] for i in range(3)]
    parts = PartedHistory.of(*(Interactions.from_events(t, vocab) for t in thirds))
    monkeypatch.setattr(itemcos, "PAIR_BUDGET", 2_000)
    blocked = ItemCosine(neighbours=50).fit_parts(parts).matrix_
    assert len(itemcos.row_blocks(np.ones(400) * 500, 2_000)) == 100
    assert abs(blocked - whole).max() < 1e-6 and blocked.nnz == whole.nnz
