"""Every graph at several N: the sparsity pattern the paper means, symmetric and doubly stochastic
where promised, connected; closed-form spectral gaps."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import topologies
from topologies.graphs import near_square_factors

STATIC = ["ring", "torus", "grid", "complete", "star", "hypercube", "exponential", "erdos_renyi",
          "random_regular", "small_world"]


def edges(W):
  """Set of undirected off-diagonal pairs (i, j), i < j, with W[i, j] != 0."""
  i, j = np.nonzero(W)
  return {(a, b) for a, b in zip(i.tolist(), j.tolist()) if a < b}


def expected_edges(name, n):
  i = np.arange(n)
  if name == "ring":
    pairs = zip(i, (i + 1) % n)
  elif name == "complete":
    pairs = ((a, b) for a in range(n) for b in range(n))
  elif name == "star":
    pairs = ((0, b) for b in range(1, n))
  elif name == "hypercube":
    pairs = ((a, a ^ (1 << k)) for a in range(n) for k in range(n.bit_length() - 1))
  elif name == "exponential":
    pairs = ((a, (a + 2**k) % n) for a in range(n) for k in range(n.bit_length()) if 2**k < n)
  elif name in ("torus", "grid"):
    rows, cols = near_square_factors(n)
    pairs = []
    for r in range(rows):
      for c in range(cols):
        for dr, dc in ((0, 1), (1, 0)):
          rr, cc = r + dr, c + dc
          if name == "grid" and (rr >= rows or cc >= cols):
            continue
          pairs.append((r * cols + c, (rr % rows) * cols + cc % cols))
  return {(min(a, b), max(a, b)) for a, b in pairs if a != b}


@pytest.mark.parametrize("n", [4, 8, 12, 16])
@pytest.mark.parametrize("name", ["ring", "torus", "grid", "complete", "star", "exponential"])
def test_deterministic_graphs_have_the_paper_sparsity_pattern(name, n):
  W = topologies.make(name, n).matrix(0)
  assert edges(W) == expected_edges(name, n)


@pytest.mark.parametrize("n", [2, 4, 8, 32])
def test_hypercube_is_xor_neighbours_with_degree_log2_n(n):
  props = topologies.make("hypercube", n).properties()
  assert props["degree_min"] == props["degree_max"] == int(np.log2(n))
  assert edges(topologies.make("hypercube", n).matrix()) == expected_edges("hypercube", n)
  assert props["diameter"] == int(np.log2(n))


@pytest.mark.parametrize("name, n", [(name, n) for name in STATIC for n in
                                     ([8, 16, 32] if name == "hypercube" else [8, 16, 30])])
@pytest.mark.parametrize("weights", ["metropolis_hastings", "max_degree"])
def test_static_graphs_symmetric_doubly_stochastic_connected(name, n, weights):
  topology = topologies.make(name, n, weights=weights, seed=3)
  W = topology.matrix(0)
  assert W.shape == (n, n) and (W >= 0).all()
  np.testing.assert_allclose(W, W.T, atol=1e-12)
  np.testing.assert_allclose(W.sum(0), 1, atol=1e-12)
  np.testing.assert_allclose(W.sum(1), 1, atol=1e-12)
  props = topology.properties()
  assert props["connected"] and props["num_components"] == 1
  assert props["symmetric"] and props["doubly_stochastic"] and not props["directed"]
  assert 0 < props["spectral_gap"] <= 1 + 1e-12


def test_random_graphs_follow_their_options_and_seed():
  rr = topologies.make("random_regular", 20, degree=3, seed=1).properties()
  assert rr["degree_min"] == rr["degree_max"] == 3
  sw = topologies.make("small_world", 20, degree=4, rewire_prob=0.0, seed=1)
  assert edges(sw.matrix()) == {(min(a, b), max(a, b)) for a in range(20) for h in (1, 2)
                                for b in [(a + h) % 20]}  # p = 0: the ring lattice
  dense = topologies.make("erdos_renyi", 30, edge_prob=0.9, seed=0).properties()
  sparse = topologies.make("erdos_renyi", 30, edge_prob=0.2, seed=0).properties()
  assert dense["degree_mean"] > 2 * sparse["degree_mean"]
  same = [topologies.make("erdos_renyi", 30, seed=s).matrix() for s in (5, 5, 6)]
  np.testing.assert_array_equal(same[0], same[1])
  assert not np.array_equal(same[0], same[2])


@pytest.mark.parametrize("n", [3, 5, 8, 16, 33])
def test_ring_uniform_spectral_gap_closed_form(n):
  gap = topologies.make("ring", n, weights="uniform").properties()["spectral_gap"]
  assert gap == pytest.approx(1 - (1 / 3 + 2 / 3 * np.cos(2 * np.pi / n)), abs=1e-12)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_complete_graph_is_exact_averaging_with_gap_one(n):
  topology = topologies.make("complete", n)
  np.testing.assert_allclose(topology.matrix(), np.full((n, n), 1 / n), atol=1e-15)
  assert topology.properties()["spectral_gap"] == pytest.approx(1.0)


def test_uniform_weights_need_a_regular_graph():
  with pytest.raises(ValueError, match="needs a regular graph; degrees range 1..7"):
    topologies.make("star", 8, weights="uniform")


def test_max_degree_weights_and_laziness():
  A = topologies.make("star", 5, weights="max_degree").matrix() != 0
  W = topologies.make("star", 5, weights="max_degree").matrix()
  np.testing.assert_allclose(W[A & ~np.eye(5, dtype=bool)], 1 / 5)
  lazy = topologies.make("star", 5, weights="max_degree", laziness=0.25).matrix()
  np.testing.assert_allclose(lazy, 0.75 * W + 0.25 * np.eye(5))
  # laziness maps each eigenvalue lambda to (1 - beta) lambda + beta
  ring = topologies.make("ring", 8, weights="uniform", laziness=0.5).properties()["spectral_gap"]
  assert ring == pytest.approx(0.5 * (1 - (1 / 3 + 2 / 3 * np.cos(2 * np.pi / 8))))


def test_directed_exponential_is_ying_et_al_circulant():
  topology = topologies.make("exponential", 16, directed=True)
  W = topology.matrix()
  for i in range(16):
    assert set(np.flatnonzero(W[i])) == {i, *((i + 2**k) % 16 for k in range(4))}
  np.testing.assert_allclose(W[W != 0], 1 / 5)
  props = topology.properties()
  assert props["directed"] and not props["symmetric"] and props["doubly_stochastic"]


def test_properties_and_neighbor_form():
  topology = topologies.make("torus", 16)
  props = topology.properties()
  assert (props["degree_min"], props["degree_max"], props["diameter"]) == (4, 4, 4)
  assert props["spectral_gap"] == pytest.approx(0.4)  # 1 - (1 + 2 cos(pi/2) + 2) / 5
  indices, weights = topology.neighbors(0)
  assert indices.shape == weights.shape == (16, 5)
  dense = np.zeros((16, 16))
  np.add.at(dense, (np.arange(16)[:, None], indices), weights)
  np.testing.assert_array_equal(dense, topology.matrix())


def test_importing_topologies_does_not_import_jax():
  code = "import sys, topologies; topologies.make('ring', 8).properties(); " \
         "sys.exit('jax' in sys.modules)"
  repo = pathlib.Path(__file__).resolve().parents[2]
  assert subprocess.run([sys.executable, "-c", code], cwd=repo).returncode == 0


def test_attached_nodes_keep_the_base_graph_and_link_each_to_k_base_nodes():
  t = topologies.make("ring", 9, attached_nodes=3, attached_degree=2, seed=5)
  W = t.matrix(0)
  A = (W != 0) & ~np.eye(9, dtype=bool)
  ring6 = np.zeros((6, 6), bool)
  for i in range(6):
    ring6[i, (i + 1) % 6] = ring6[(i + 1) % 6, i] = True
  assert np.array_equal(A[:6, :6], ring6)
  assert A[6:, :6].sum(axis=1).tolist() == [2, 2, 2] and not A[6:, 6:].any()
  assert np.array_equal(A, A.T)
  np.testing.assert_allclose(W.sum(axis=0), 1, atol=1e-12)  # MH weights on the whole graph
  np.testing.assert_allclose(W.sum(axis=1), 1, atol=1e-12)
  again = topologies.make("ring", 9, attached_nodes=3, attached_degree=2, seed=5).matrix(0)
  assert np.array_equal(W, again)  # fixed by the seed
  with pytest.raises(ValueError, match="attached_degree must be in"):
    topologies.make("ring", 9, attached_nodes=3, attached_degree=7)
