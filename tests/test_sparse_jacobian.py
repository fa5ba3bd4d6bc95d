"""Sparse Jacobians (`sparsity=`): pattern forms, groups, the CSR result, bad input, exactness.

Exact claims use `np.array_equal`: the same result at any worker count, in-process or
not; the sparse result's entries equal the dense loop Jacobian's for an `f` whose outputs
are each computed from their own inputs alone (the chain below). SciPy's own test case
(*Numerical Optimization*, p. 198, x just inside its bounds) is held to SciPy's rtol.
"""
import sys

import numpy as np
import pytest

sparse = pytest.importorskip("scipy.sparse")

from engine.derivatives._sparse import assemble_csr, missed_nonzero, resolve_sparsity  # noqa: E402
from engine.fd._space import ParamSpace  # noqa: E402

N = 12


def chain(x):
    """*Numerical Optimization* (2nd ed.), p. 198: r_i = 3 e_(i-1) + 2 e_i, e_i = x_(i+1)^3 - x_i^2."""
    e = x[1:] ** 3 - x[:-1] ** 2
    r = np.zeros(x.size)
    r[1:] += 3 * e
    r[:-1] += 2 * e
    return r


def chain_pattern(n=N):
    i = np.arange(n)
    return np.abs(i[:, None] - i[None, :]) <= 1


class TestResolve:
    def test_a_pattern_alone_is_grouped_and_a_pair_is_checked(self):
        alone = resolve_sparsity(chain_pattern())
        assert alone.n_groups == 3 and np.array_equal(alone.groups, np.arange(N) % 3)
        pair = resolve_sparsity((sparse.csr_array(chain_pattern()), np.arange(N)))
        assert pair.n_groups == N
        with pytest.raises(ValueError, match=r"sparsity\[1\] \(the groups\)` puts columns 0 and 1"):
            resolve_sparsity((chain_pattern(), np.arange(N) // 2))

    def test_a_tuple_of_another_length_is_refused(self):
        with pytest.raises(ValueError, match=r"\(pattern, groups\)"):
            resolve_sparsity((chain_pattern(), np.arange(N), None))

    def test_without_scipy_the_error_names_the_extra(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "scipy.sparse", None)
        with pytest.raises(ImportError, match=r"numgrad-engine\[sparse\]"):
            resolve_sparsity(chain_pattern())


class TestAssemble:
    def test_each_entry_comes_from_its_columns_group_and_only_the_patterns_entries_are_stored(self):
        sparsity = resolve_sparsity(chain_pattern())
        values = np.arange(3 * N, dtype=float).reshape(3, N) + 1.0   # group k, row i
        values[0, 0] = 0.0                                              # an entry that is 0
        result = assemble_csr(sparsity, values)
        assert isinstance(result, sparse.csr_array) and result.shape == (N, N)
        assert result.nnz == chain_pattern().sum()   # the explicit 0 is kept
        rows, cols = np.nonzero(chain_pattern())
        assert np.array_equal(result.toarray()[rows, cols], values[cols % 3, rows])
        assert result.has_sorted_indices

    def test_a_missed_nonzero_is_named_by_row_and_entry(self):
        sparsity = resolve_sparsity(np.eye(4))
        dense = np.eye(4)
        missed_nonzero(sparsity, dense, ParamSpace(np.zeros(4)))   # nothing outside: no error
        dense[2, 0], dense[3, 1] = 1e-3, -5.0
        with pytest.raises(ValueError, match=r"output 3 depends on x\[1\] \(column 1.*-5\.0\), and 2 "
                                             "entries outside"):
            missed_nonzero(sparsity, dense, ParamSpace(np.zeros(4)))
