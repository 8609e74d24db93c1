"""Ranking data on a Dask cluster: partitions cut at query-group boundaries, so no group spans two workers.

Both GBDT libraries need whole groups per worker: LightGBM takes one group-size vector per partition, XGBoost's
``allow_group_split=True`` path expects each partition to hold complete ``qid`` runs. The rows are scattered to
the workers once (not embedded in the task graph), one piece per partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.rankers.base import RankingData
from pipelines.rankers.metrics import ndcg_at_k_grouped

if TYPE_CHECKING:
    import dask.array as da
    from distributed import Client

ROWS_PER_PARTITION = 500_000  # ~80 MB of float32 features at 40 columns: big enough to amortise a task
# Training rows below this fit one process faster than a cluster: at 10M events (20,000 sampled validation users)
# lightgbm.dask on 2 local workers took 383 s against 34 s in one process (it boosts every round, then keeps the
# early-stopped prefix) and is not deterministic across runs. ~100 bytes a row: 20M rows are ~2 GB.
MIN_DISTRIBUTED_ROWS = 20_000_000


def cluster_for(train: RankingData) -> Client | None:
    """The configured Dask cluster's client when ``train`` is worth spreading over it; None: fit in this process."""
    from pipelines.core.engine import dask_client

    return dask_client() if train.n_rows >= MIN_DISTRIBUTED_ROWS else None


@dataclass
class DaskRankingData:
    """``RankingData`` as Dask arrays whose chunks are whole query groups (``group`` chunked per partition)."""

    X: da.Array
    y: da.Array
    qid: da.Array
    group: da.Array
    n_partitions: int


def group_partitions(group: np.ndarray, n_partitions: int) -> np.ndarray:
    """Group-index boundaries (``[0, ..., len(group)]``) splitting the rows into about equal, non-empty parts."""
    rows = np.concatenate([[0], np.cumsum(group)])
    targets = np.linspace(0, rows[-1], n_partitions + 1)[1:-1]
    cuts = np.searchsorted(rows, targets)  # first group starting at or after each target row
    return np.unique(np.concatenate([[0], cuts, [len(group)]]))


def to_dask(data: RankingData, client: Client, min_partitions: int = 1) -> DaskRankingData:
    """Scatter ``data`` to the cluster in partitions of whole groups (at least one per worker, when possible)."""
    import dask.array as da

    n_workers = max(1, len(client.scheduler_info()["workers"]))
    wanted = max(min_partitions, n_workers, -(-data.n_rows // ROWS_PER_PARTITION))
    bounds = group_partitions(data.group, min(wanted, len(data.group)))
    rows = np.concatenate([[0], np.cumsum(data.group)])[bounds]
    qid = data.qid
    parts: dict[str, list[da.Array]] = {"X": [], "y": [], "qid": [], "group": []}
    for lo, hi, glo, ghi in zip(rows[:-1], rows[1:], bounds[:-1], bounds[1:], strict=True):
        pieces = {"X": data.X[lo:hi], "y": data.labels[lo:hi], "qid": qid[lo:hi], "group": data.group[glo:ghi]}
        futures = client.scatter(list(pieces.values()))
        for (name, value), future in zip(pieces.items(), futures, strict=True):
            parts[name].append(da.from_delayed(future, shape=value.shape, dtype=value.dtype))
    joined = {name: da.concatenate(arrays) for name, arrays in parts.items()}
    return DaskRankingData(joined["X"], joined["y"], joined["qid"], joined["group"], len(bounds) - 1)



def early_stopped(curve: list[float], patience: int) -> tuple[int, list[float]]:
    """(trees kept, curve up to where early stopping would have stopped): LightGBM's rule, applied afterwards.

    ``lightgbm.dask`` cannot early-stop (workers would disagree on when to stop and hang), so the cluster
    trains every round and the best round is picked here from the valid curve, as the local fit would have.
    """
    best = 0
    for i, value in enumerate(curve):
        if value > curve[best]:
            best = i
        elif i - best >= patience:
            return best + 1, curve[: i + 1]
    return best + 1, curve


def staged_ndcg(predict_round: Callable[[int], np.ndarray], n_rounds: int, valid: RankingData, k: int) -> list[float]:
    """Valid NDCG@k after each round, from per-round raw score increments (one pass over the trees in total)."""
    raw = np.zeros(valid.n_rows, dtype=np.float64)
    curve = []
    for i in range(n_rounds):
        raw += predict_round(i)
        curve.append(ndcg_at_k_grouped(raw, valid.labels, valid.group, k=k))
    return curve
