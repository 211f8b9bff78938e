"""Bad input fails with an error that names the bad value and what would be valid."""
import numpy as np
import pytest

import topologies
from topologies import check_mixing_matrix


@pytest.mark.parametrize("name, n, message", [
    ("ring", 2, "'ring' needs num_nodes >= 3, got num_nodes=2"),
    ("star", 2, "'star' needs num_nodes >= 3"),
    ("torus", 13, "'torus' needs num_nodes = rows x cols .* 13 has no such factorisation; try "
                  "num_nodes = 12 or 14"),
    ("grid", 7, "'grid' needs num_nodes = rows x cols"),
    ("hypercube", 12, "'hypercube' needs num_nodes a power of two >= 2, got num_nodes=12. Try 8 "
                      "or 16"),
    ("random_regular", 4, "needs 2 <= degree < num_nodes .* got degree=4, num_nodes=4"),
    ("small_world", 3, "'small_world' needs an even degree"),
])
def test_sizes_the_graph_cannot_have(name, n, message):
  with pytest.raises(ValueError, match=message):
    topologies.make(name, n)


def test_unknown_names_and_options():
  with pytest.raises(ValueError, match=r"Unknown topology.name='rign'; valid: \['complete'"):
    topologies.make("rign", 8)
  with pytest.raises(ValueError, match="Unknown topology.weights='mh'"):
    topologies.make("ring", 8, weights="mh")
  with pytest.raises(ValueError, match=r"Unknown topology option\(s\) \['degre'\]"):
    topologies.make("random_regular", 8, degre=3)
  with pytest.raises(ValueError, match=r"'ring' has no directed form; directed=True works with "
                                       r"\['exponential', 'from_edges', 'random_neighbors'\]"):
    topologies.make("ring", 8, directed=True)
  with pytest.raises(ValueError, match=r"laziness must be in \[0, 1\), got 1.0"):
    topologies.make("ring", 8, laziness=1.0)
  with pytest.raises(ValueError, match="0 < edge_prob <= 1, got 1.5"):
    topologies.make("erdos_renyi", 8, edge_prob=1.5)
  with pytest.raises(ValueError, match="no connected G.N=30, p=0.01. in 1000 draws"):
    topologies.make("erdos_renyi", 30, edge_prob=0.01)


def test_graph_options_it_does_not_use_are_ignored():
  a = topologies.make("ring", 8).matrix()
  b = topologies.make("ring", 8, degree=6, edge_prob=0.3, rewire_prob=0.5, edges_file="x").matrix()
  np.testing.assert_array_equal(a, b)


def test_check_mixing_matrix_names_the_bad_entry():
  W = np.full((4, 4), 0.25)
  check_mixing_matrix(W)
  with pytest.raises(ValueError, match=r"must be square \[N, N\], got shape \(4, 3\)"):
    check_mixing_matrix(W[:, :3])
  bad = W.copy(); bad[1, 2], bad[1, 3] = -0.1, 0.6
  with pytest.raises(ValueError, match=r"negative weights, e.g. W\[1, 2\] = -0.1"):
    check_mixing_matrix(bad)
  bad = W.copy(); bad[2, 0] = 0.15
  with pytest.raises(ValueError, match="row 2 sums to 0.9"):
    check_mixing_matrix(bad)
  bad = W.copy(); bad[0] = [0.5, 0.5, 0, 0]
  with pytest.raises(ValueError, match="column 0 sums to 1.25 .* not doubly stochastic"):
    check_mixing_matrix(bad)
  check_mixing_matrix(bad, doubly_stochastic=False)  # row-stochastic is enough when directed


def write(tmp_path, text, name="edges.txt"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_disconnected_edge_file_names_the_component_count(tmp_path):
  path = write(tmp_path, "0 1\n1 2\n3 4\n")
  with pytest.raises(ValueError, match=r"is disconnected: 3 connected components \(sizes 3, 2, 1\)"):
    topologies.make("from_edges", 6, edges_file=path)


@pytest.mark.parametrize("text, message", [
    ("0 1\n1 2 3 4\n", "line 2: expected 'i j' or 'i j weight', got '1 2 3 4'"),
    ("# ring\n0 1\n\n1 x\n", "line 4: expected integer node ids and a numeric weight"),
    ("0 1\n1 9\n", r"line 2: node 9 out of range for num_nodes=4 \(ids 0..3\)"),
    ("0 1\n1 1\n", "line 2: self-loop 1 1"),
    ("0 1\n1 2\n2 1\n", r"line 3: duplicate edge 2 1 \(first on line 2\)"),
    ("0 1 0.5\n1 2\n", "line 2: every line needs a weight"),
    ("0 1 0.5\n1 2 -0.2\n", "line 2: negative weight -0.2"),
    ("round 0\n0 1\nround 2\n", "line 3: expected 'round 1'"),
    ("# nothing\n", "no edges"),
])
def test_malformed_edge_files_name_the_line(tmp_path, text, message):
  with pytest.raises(ValueError, match=message):
    topologies.make("from_edges", 4, edges_file=write(tmp_path, text))


def test_edge_file_missing_or_not_given(tmp_path):
  with pytest.raises(ValueError, match="needs topology.edges_file"):
    topologies.make("from_edges", 4)
  with pytest.raises(ValueError, match="does not exist"):
    topologies.make("from_edges", 4, edges_file=str(tmp_path / "none.txt"))


def test_edge_file_weights_checked(tmp_path):
  ring = "0 1 0.5\n1 2 0.5\n2 3 0.5\n3 0 0.5\n"
  W = topologies.make("from_edges", 4, edges_file=write(tmp_path, ring)).matrix()
  np.testing.assert_allclose(np.diag(W), 0.0)
  np.testing.assert_allclose(W.sum(0), 1)
  too_heavy = "0 1 0.7\n1 2 0.7\n2 3 0.2\n3 0 0.2\n"
  with pytest.raises(ValueError, match=r"negative weights, e.g. W\[1, 1\] = -0.4"):
    topologies.make("from_edges", 4, edges_file=write(tmp_path, too_heavy))
  self_weights = "0 0 0.5\n0 1 0.25\n1 2 0.5\n2 3 0.5\n3 0 0.5\n"
  with pytest.raises(ValueError, match="row 0 sums to 1.25"):
    topologies.make("from_edges", 4, edges_file=write(tmp_path, self_weights))
  # Row-stochastic but not column-stochastic: accepted only as a directed graph, and says so.
  one_way = "0 1 0.5\n1 2 0.5\n2 3 0.5\n3 0 0.5\n0 2 0.25\n"
  topology = topologies.make("from_edges", 4, edges_file=write(tmp_path, one_way), directed=True)
  np.testing.assert_allclose(topology.matrix().sum(1), 1)
  props = topology.properties()
  assert props["directed"] and props["row_stochastic"] and not props["doubly_stochastic"]
  assert props["weights"] == "from edges_file"
