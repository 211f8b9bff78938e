"""Time-varying graphs and communication schedules."""
import functools

import numpy as np
import pytest

import topologies


def product(topology, rounds):
  return functools.reduce(lambda acc, t: topology.matrix(t) @ acc, rounds,
                          np.eye(topology.num_nodes))


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_one_peer_exponential_period_averages_exactly_for_powers_of_two(n):
  topology = topologies.make("one_peer_exponential", n)
  tau = int(np.log2(n))
  assert topology.time_varying and topology.period == tau
  for t in range(2 * tau):
    W = topology.matrix(t)
    peer = (np.arange(n) + 2 ** (t % tau)) % n
    expected = 0.5 * np.eye(n)
    expected[np.arange(n), peer] += 0.5
    np.testing.assert_array_equal(W, expected)
  # any tau consecutive rounds, not only those starting at 0
  for start in (0, 1):
    np.testing.assert_allclose(product(topology, range(start, start + tau)),
                               np.full((n, n), 1 / n), atol=1e-12)
  props = topology.properties()
  assert props["doubly_stochastic"] and props["directed"]
  assert props["symmetric"] == (n == 2)  # i + 1 = i - 1 only on two nodes
  assert props["spectral_gap_period_product"] == pytest.approx(1.0)
  assert props["neighbor_width"] == 2


def test_one_peer_exponential_is_not_exact_off_powers_of_two():
  topology = topologies.make("one_peer_exponential", 6)  # tau = 3
  assert not np.allclose(product(topology, range(3)), 1 / 6)
  np.testing.assert_allclose(product(topology, range(300)), 1 / 6, atol=1e-6)  # still mixes


def test_random_neighbors_redraws_per_round_reproducibly():
  a = topologies.make("random_neighbors", 12, degree=3, seed=7, num_rounds=20)
  b = topologies.make("random_neighbors", 12, degree=3, seed=7, num_rounds=20)
  assert a.time_varying and a.period is None
  for t in range(20):
    W = a.matrix(t)
    np.testing.assert_array_equal(W, b.matrix(t))
    np.testing.assert_allclose(W, W.T)
    np.testing.assert_allclose(W.sum(0), 1)
    assert (((W != 0) & ~np.eye(12, dtype=bool)).sum(1) >= 3).all()  # its own 3 draws at least
  assert not np.array_equal(a.matrix(0), a.matrix(1))
  assert not np.array_equal(a.matrix(0),
                            topologies.make("random_neighbors", 12, degree=3, seed=8).matrix(0))


def test_random_neighbors_directed_is_row_stochastic_when_asked():
  topology = topologies.make("random_neighbors", 10, degree=2, seed=0, directed=True)
  for t in range(5):
    W = topology.matrix(t)
    off = (W != 0) & ~np.eye(10, dtype=bool)
    assert (off.sum(1) == 2).all()
    np.testing.assert_allclose(W[W != 0], 1 / 3)
  props = topology.properties()
  assert props["directed"] and props["row_stochastic"] and not props["doubly_stochastic"]
  assert topology.neighbor_width == 3


def test_edge_file_rounds_repeat_with_their_period(tmp_path):
  path = tmp_path / "two_rounds.txt"
  path.write_text("round 0\n0 1\n2 3\nround 1\n1 2\n3 0\n")
  topology = topologies.make("from_edges", 4, edges_file=str(path))
  assert topology.time_varying and topology.period == 2
  np.testing.assert_array_equal(topology.matrix(0), topology.matrix(2))
  assert topology.matrix(1)[1, 2] == 0.5 and topology.matrix(0)[1, 2] == 0
  # each round is disconnected; their union is the ring, so the graph is accepted
  assert topology.properties()["connected"]
  path.write_text("round 0\n0 1\nround 1\n1 0\n2 3\n")
  with pytest.raises(ValueError, match=r"over one period\) is disconnected: 2 connected"):
    topologies.make("from_edges", 4, edges_file=str(path))


def test_final_merge_schedule():
  topology = topologies.make("ring", 8, num_rounds=10, schedule="final_merge")
  ring = topologies.make("ring", 8).matrix()
  assert topology.time_varying and topology.dense_rounds == (9,)
  for t in range(9):
    np.testing.assert_array_equal(topology.matrix(t), ring)
  np.testing.assert_allclose(topology.matrix(9), np.full((8, 8), 1 / 8), atol=1e-15)
  assert topology.neighbor_width == 8  # the sparse form covers the merge round too
  props = topology.properties()
  assert props["schedule"] == "final_merge" and props["dense_rounds"] == "9"
  assert props["spectral_gap"] == pytest.approx(
      topologies.make("ring", 8).properties()["spectral_gap"])
  assert props["dense_spectral_gap"] == pytest.approx(1.0)


def test_dense_window_schedule_and_errors():
  topology = topologies.make("one_peer_exponential", 8, num_rounds=12, schedule="dense_window",
                             schedule_window=3, schedule_topology="exponential")
  assert topology.dense_rounds == (9, 10, 11)
  np.testing.assert_array_equal(topology.matrix(10), topologies.make("exponential", 8).matrix())
  np.testing.assert_array_equal(topology.matrix(4),
                                topologies.make("one_peer_exponential", 8).matrix(4))
  with pytest.raises(ValueError, match="needs the run's length: num_rounds >= 1"):
    topologies.make("ring", 8, schedule="final_merge")
  with pytest.raises(ValueError, match="1 <= schedule_window <= num_rounds=12, got "
                                       "schedule_window=13"):
    topologies.make("ring", 8, num_rounds=12, schedule="dense_window", schedule_window=13)
  with pytest.raises(ValueError, match="Unknown topology.schedule='merge'"):
    topologies.make("ring", 8, num_rounds=12, schedule="merge")


def test_schedule_python_api_at_chosen_rounds():
  base, dense = topologies.make("ring", 6), topologies.make("complete", 6)
  topology = topologies.scheduled(base, dense, [4, 2])
  assert topology.dense_rounds == (2, 4)
  assert topology.matrix(2) is dense.matrix() and topology.matrix(3) is base.matrix()
