"""Column-stochastic weights for push-sum (topology.weights=column_uniform), by hand."""
import numpy as np
import pytest

import topologies
from topologies.weights import column_uniform


def test_each_node_splits_its_mass_over_its_out_neighbours_and_itself():
  A = np.zeros((3, 3), bool)  # 0 -> 1, 0 -> 2, 1 -> 2, 2 -> 0 (A[i, j]: i receives from j)
  for sender, receiver in ((0, 1), (0, 2), (1, 2), (2, 0)):
    A[receiver, sender] = True
  np.testing.assert_allclose(column_uniform(A), [[1 / 3, 0, 1 / 2],
                                                 [1 / 3, 1 / 2, 0],
                                                 [1 / 3, 1 / 2, 1 / 2]])


def test_make_checks_columns_not_rows():
  star = topologies.make("star", 5, weights="column_uniform")  # undirected, irregular
  W = star.matrix()
  np.testing.assert_allclose(W.sum(axis=0), 1)
  assert not np.allclose(W.sum(axis=1), 1) and star.column_stochastic
  assert topologies.make("ring", 5).column_stochastic  # doubly stochastic
  assert not topologies.make("exponential", 8, directed=True).column_stochastic  # rows only
  with pytest.raises(ValueError, match="column 1 sums to 0.5"):
    topologies.check_mixing_matrix(np.array([[1.0, 0.5], [0.0, 0.0]]), column_stochastic=True)
