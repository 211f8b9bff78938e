"""python -m topologies: properties, errors, PNG, and the README table."""
import topologies
from topologies.__main__ import main


def test_prints_degree_stats_gap_and_diameter(capsys):
  assert main(["hypercube", "--num-nodes", "16"]) == 0
  out = capsys.readouterr().out
  lines = dict(line.split(None, 1) for line in out.splitlines())
  assert lines["degree_min"] == lines["degree_max"] == "4"
  assert lines["diameter"] == "4"
  assert float(lines["spectral_gap"]) == 0.4


def test_bad_size_is_an_error_message_not_a_traceback(capsys):
  assert main(["torus", "-n", "13"]) == 2
  assert "try num_nodes = 12 or 14" in capsys.readouterr().err


def test_saves_png_of_graph_and_matrix(tmp_path, capsys):
  path = tmp_path / "ring.png"
  assert main(["one_peer_exponential", "-n", "8", "--round", "1", "--save-png", str(path)]) == 0
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_lists_every_topology_with_its_gap(capsys):
  assert main(["--table", "--sizes", "8", "16"]) == 0
  rows = capsys.readouterr().out.splitlines()[2:]
  names = [row.split("|")[1].strip(" `") for row in rows]
  assert names == [n for n in topologies.NAMES if n != "from_edges"]
  ring = next(row for row in rows if row.startswith("| `ring`")).split("|")
  assert float(ring[2]) == round(topologies.make("ring", 8).properties()["spectral_gap"], 4)
