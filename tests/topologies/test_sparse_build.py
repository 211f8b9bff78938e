"""Weights and the neighbour form built from the nonzeros only: the same entries as the dense
formulas (bit for bit) on irregular and directed graphs, and no [N, N] temporaries beyond W."""
import tracemalloc

import numpy as np
import pytest

import topologies
from topologies import weights
from topologies.topology import to_neighbors


def random_adjacency(n, p, directed, seed):
  rng = np.random.default_rng(seed)
  A = rng.random((n, n)) < p
  A = A if directed else np.triu(A, 1) | np.triu(A, 1).T
  np.fill_diagonal(A, False)
  return A


def dense_formula(name, A):
  """The textbook formulas written on whole [N, N] arrays."""
  d = A.sum(axis=1)
  eye = np.eye(len(A), dtype=bool)
  if name == "metropolis_hastings":
    W = np.where(A, 1.0 / (1.0 + np.maximum(d[:, None], d[None, :])), 0.0)
  elif name == "max_degree":
    W = np.where(A, 1.0 / (1.0 + d.max()), 0.0)
  else:  # the in-average of a directed graph
    return np.where(A | eye, 1.0 / (d[:, None] + 1.0), 0.0)
  return np.where(eye, 1.0 - W.sum(axis=1)[:, None], W)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n, p", [(7, 0.3), (16, 0.15), (33, 0.5)])
def test_weights_equal_the_dense_formulas_bit_for_bit(n, p, seed):
  A = random_adjacency(n, p, directed=False, seed=seed)
  assert len(set(A.sum(axis=1))) > 1 or n == 7  # irregular degrees
  for name in ("metropolis_hastings", "max_degree"):
    np.testing.assert_array_equal(weights.WEIGHTS[name](A), dense_formula(name, A))
  D = random_adjacency(n, p, directed=True, seed=seed)
  np.testing.assert_array_equal(weights.metropolis_hastings(D, directed=True),
                                dense_formula("in_average", D))


def loop_neighbors(W, k):
  """Row by row: the nonzero columns in increasing order, then (self, 0) up to k slots."""
  n = len(W)
  indices, values = np.zeros((n, k), np.int32), np.zeros((n, k), W.dtype)
  for i in range(n):
    cols = [j for j in range(n) if W[i, j] != 0]
    indices[i] = cols + [i] * (k - len(cols))
    values[i] = [W[i, j] for j in cols] + [0] * (k - len(cols))
  return indices, values


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_neighbor_form_equals_a_loop_with_padded_rows(dtype):
  rng = np.random.default_rng(0)
  W = (rng.random((12, 12)) * (rng.random((12, 12)) < 0.3)).astype(dtype)  # irregular, directed
  W[3] = 0  # an empty row: all padding
  W[5, 5] = 0.0  # a row without its diagonal: padding still points at the node
  widest = int((W != 0).sum(axis=1).max())
  for k in (None, widest + 2):
    indices, values = to_neighbors(W, k)
    want_i, want_v = loop_neighbors(W, widest if k is None else k)
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_array_equal(values, want_v)
    assert indices.dtype == np.int32 and values.dtype == dtype
  with pytest.raises(ValueError, match=f"a row has {widest} nonzeros, more than width=2"):
    to_neighbors(W, 2)


def test_exponential_topology_needs_no_nxn_temporaries_beyond_w():
  n = 1024
  w_bytes = n * n * 8  # the float64 W the topology keeps
  tracemalloc.start()
  topology = topologies.make("exponential", n)
  _, build_peak = tracemalloc.get_traced_memory()
  tracemalloc.reset_peak()
  indices, _ = topology.neighbors(0)
  _, neighbors_peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert indices.shape == (n, 20)  # 2 log2(N) - 1 neighbours and the node itself
  # W, the bool adjacency and bool-sized checks (~1.25 W); the dense formulas took 3.1 W
  assert build_peak < 1.6 * w_bytes, build_peak / w_bytes
  # W and the adjacency held, the nonzeros' positions (~1.26 W); the argsort took 2.4 W
  assert neighbors_peak < 1.6 * w_bytes, neighbors_peak / w_bytes
