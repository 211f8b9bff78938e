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


def test_dense_window_at_a_chosen_round_or_fraction():
  ring = topologies.make("ring", 8).matrix()
  at_round = topologies.make("ring", 8, num_rounds=20, schedule="dense_window",
                             schedule_window=3, schedule_start=5)
  assert at_round.dense_rounds == (5, 6, 7)
  np.testing.assert_array_equal(at_round.matrix(4), ring)
  np.testing.assert_allclose(at_round.matrix(6), np.full((8, 8), 1 / 8), atol=1e-15)
  np.testing.assert_array_equal(at_round.matrix(8), ring)  # the base graph resumes after it
  # truncate_v2's point1 = 0.9 over 20 rounds: progress t / 20 >= 0.9 from t = 18 (not 19,
  # though 0.9 * 20 is 18.000000000000004 in floating point).
  fraction = topologies.make("ring", 8, num_rounds=20, schedule="dense_window",
                             schedule_window=1, schedule_start=0.9)
  assert fraction.dense_rounds == (18,)
  assert topologies.make("ring", 8, num_rounds=20, schedule="dense_window", schedule_window=2,
                         schedule_start=0.25).dense_rounds == (5, 6)
  assert topologies.make("ring", 8, num_rounds=20, schedule="dense_window",
                         schedule_start=0.0).dense_rounds == (0,)
  with pytest.raises(ValueError, match=r"schedule_start=18 puts the dense window at rounds "
                                       r"18..20, past the run's last round 19"):
    topologies.make("ring", 8, num_rounds=20, schedule="dense_window", schedule_window=3,
                    schedule_start=18)
  with pytest.raises(ValueError, match=r"round index \(an integer >= 1\) or a fraction of the "
                                       r"run in \[0, 1\), got 2.5"):
    topologies.make("ring", 8, num_rounds=20, schedule="dense_window", schedule_start=2.5)
  for schedule in ("none", "final_merge"):
    with pytest.raises(ValueError, match=f"schedule_start=3 places a dense window, but "
                                         f"topology.schedule='{schedule}'"):
      topologies.make("ring", 8, num_rounds=20, schedule=schedule, schedule_start=3)


def test_random_pull_pulls_r_peers_on_average_with_uniform_row_weights():
  """r = 0.2 (the paper's figure 1): each node pulls one peer with probability 0.2, else none."""
  n, rounds, r = 10, 2000, 0.2
  topology = topologies.make("random_pull", n, seed=3, expected_degree=r)
  assert topology.time_varying and topology.directed and topology.neighbor_width == 2
  pulls = []
  for t in range(rounds):
    W = topology.matrix(t)
    peers_N = ((W != 0) & ~np.eye(n, dtype=bool)).sum(axis=1)
    assert set(peers_N) <= {0, 1}
    for i in range(n):  # uniform over the node itself and its pulls
      np.testing.assert_allclose(W[i][W[i] != 0], 1 / (1 + peers_N[i]), rtol=1e-12)
      assert W[i, i] > 0
    np.testing.assert_allclose(W.sum(axis=1), 1, rtol=1e-12)
    pulls.append(peers_N)
  pulls = np.array(pulls)
  # mean of 20000 Bernoulli(0.2) draws: sd 0.0028
  assert abs(pulls.mean() - r) < 0.012, pulls.mean()
  assert abs(pulls[:, 0].mean() - r) < 0.04  # every node alike (sd 0.009 over 2000 rounds)
  # Row- but not column-stochastic, accepted without directed=True.
  props = topology.properties()
  assert props["row_stochastic"] and not props["doubly_stochastic"]


@pytest.mark.parametrize("r, whole", [(1.5, 1), (3.0, 3), (0.0, 0)])
def test_random_pull_fractional_and_whole_expected_degrees(r, whole):
  n, rounds = 8, 400
  topology = topologies.make("random_pull", n, seed=0, expected_degree=r)
  peers = np.array([((topology.matrix(t) != 0) & ~np.eye(n, dtype=bool)).sum(axis=1)
                    for t in range(rounds)])
  assert peers.min() >= whole and peers.max() <= int(np.ceil(r))  # floor(r) always, one more maybe
  assert abs(peers.mean() - r) < 0.05
  assert topology.neighbor_width == int(np.ceil(r)) + 1


def test_random_pull_is_a_function_of_seed_and_round():
  a = topologies.make("random_pull", 12, seed=7, expected_degree=1.3)
  b = topologies.make("random_pull", 12, seed=7, expected_degree=1.3)
  for t in (0, 5, 123):
    np.testing.assert_array_equal(a.matrix(t), b.matrix(t))
  np.testing.assert_array_equal(a.matrix(5), a.matrix(5))  # any order of calls: replayable
  assert not np.array_equal(a.matrix(0), a.matrix(1))
  assert not np.array_equal(a.matrix(0), topologies.make("random_pull", 12, seed=8,
                                                         expected_degree=1.3).matrix(0))
  for bad in (-0.1, 11.5):
    with pytest.raises(ValueError, match=rf"'random_pull' needs 0 <= expected_degree <= "
                                         rf"num_nodes - 1 = 11, got expected_degree={bad}"):
      topologies.make("random_pull", 12, expected_degree=bad)
