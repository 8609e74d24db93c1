"""The champion is scored on the candidate's test users through its own vocabulary, never by code position."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.evaluation.champion import Champion
from pipelines.features.interactions import Interactions, Vocab
from pipelines.models import CoVisitation


def _events(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=len(pairs), freq="min", tz="UTC")
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                         "event_type": "view", "ts": ts})


def test_lists_are_mapped_by_id_and_unknown_users_get_nothing():
    old = _events([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u2", "c"), ("u3", "b"), ("u3", "c")])
    old_vocab = Vocab.build(old)
    model = CoVisitation({"view": 1.0}, window=3, history_len=5).fit(Interactions.from_events(old, old_vocab))
    # the candidate's vocabulary has a new user and a new item that shift every code
    new_vocab = Vocab(users=np.array(["u0", "u1", "u3"], dtype=object),
                      items=np.array(["0", "a", "b", "c"], dtype=object))
    users = np.array([0, 1, 2])  # u0 (unknown to the champion), u1, u3
    lists = Champion("7", model).lists(new_vocab, users, k=2, exclude_seen=True)
    own = model.rank(old_vocab.user_codes(np.array(["u1", "u3"])), 2).items
    assert (lists[0] == -1).all()
    expected = [new_vocab.item_codes(old_vocab.items[[i]])[0] if i >= 0 else -1 for i in own[0]]
    assert list(lists[1]) == expected
    # u1 saw a and b; co-visitation points to c, and no unseen item is left for the second place
    assert new_vocab.items[lists[1][0]] == "c" and lists[1][1] == -1
