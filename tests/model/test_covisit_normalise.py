"""Co-visitation rows without self-pairs, scaled to sum 1: built from arrays, the same as SciPy's setdiag path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.models.covisit import normalised_covisitation


def _by_setdiag(counts: sp.csr_matrix) -> sp.csr_matrix:
    """The reference: SciPy's diagonal removal and diagonal scaling."""
    c = counts.tocsr(copy=True)
    c.setdiag(0)
    c.eliminate_zeros()
    row_sum = np.asarray(c.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.maximum(row_sum, 1e-9)).astype(np.float32) @ c).tocsr()


@pytest.mark.parametrize(("n", "nnz"), [(50, 600), (3_000, 200_000), (1, 1), (10, 0)])
def test_normalised_rows_equal_the_setdiag_reference_bit_for_bit(n: int, nnz: int):
    rng = np.random.default_rng(n)
    values = (rng.random(nnz) * (rng.random(nnz) > 0.1)).astype(np.float32)  # some explicit zeros
    counts = sp.csr_matrix((values, (rng.integers(0, n, nnz), rng.integers(0, n, nnz))), shape=(n, n),
                           dtype=np.float32)
    got, want = normalised_covisitation(counts), _by_setdiag(counts)
    got.sort_indices()
    want.sort_indices()
    assert got.dtype == want.dtype == np.float32
    for field in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert not (got.diagonal() != 0).any()
