"""Every algorithm accepts every topology through the config flag, and the driver reports the
local models before a schedule's final merge next to the merged model."""
import json

import pytest

import topologies
from dfl.algorithms import ALGORITHMS, COLUMN_STOCHASTIC, STATIC_TOPOLOGY_ONLY
from dfl.train import train_and_evaluate
from tests.conftest import tiny_config

EDGES = "# ring of 8 with two chords\n" + "".join(f"{i} {(i + 1) % 8}\n" for i in range(8)) + \
        "0 4\n2 6\n"


@pytest.fixture(scope="module")
def edges_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("edges") / "ring8.txt"
  path.write_text(EDGES)
  return str(path)


@pytest.mark.parametrize("name", topologies.NAMES)
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_runs_on_every_topology(algorithm, name, edges_file, tmp_path):
  config = tiny_config(num_nodes=8, algorithm__name=algorithm, topology__name=name,
                       topology__edges_file=edges_file if name == "from_edges" else "",
                       train__rounds=2, eval__every_rounds=2, eval__local_examples=50)
  if algorithm in COLUMN_STOCHASTIC:  # push-sum mixes with column-stochastic weights
    config.topology.weights = "column_uniform"
  if algorithm in STATIC_TOPOLOGY_ONLY and topologies.make(
      name, 8, edges_file=config.topology.edges_file).time_varying:
    with pytest.raises(ValueError, match=rf"algorithm.name='{algorithm}' .* fixed graph"):
      train_and_evaluate(config, str(tmp_path))
    return
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary["rounds"] == 2 and summary["final_train_loss"] > 0
  assert 0 <= summary["final_test_accuracy"] <= 1


def test_final_merge_reports_local_models_before_and_the_merged_model(tmp_path):
  config = tiny_config(num_nodes=8, topology__name="ring", topology__schedule="final_merge",
                       train__rounds=5, eval__every_rounds=2,
                       eval__local_examples=0)  # local models on the whole test set too
  summary = train_and_evaluate(config, str(tmp_path))
  # The eval cadence 2, 4 gains round 4: the local models right before the merge round.
  assert summary["merge_round"] == 4
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in records] == [0, 2, 4, 5]
  assert summary["before_merge_test_accuracy_local_mean"] != summary["before_merge_test_accuracy"]
  # DFedAvg gossips last, so after the complete-graph round every node holds the average.
  assert summary["final_consensus_distance"] < 1e-8
  assert summary["final_test_accuracy_local_mean"] == pytest.approx(
      summary["final_test_accuracy"], abs=1e-6)


def test_push_sum_refuses_a_row_stochastic_directed_graph(tmp_path):
  config = tiny_config(algorithm__name="push_sum", topology__name="random_pull")
  with pytest.raises(ValueError, match="column-stochastic.*topology.weights='column_uniform'"):
    train_and_evaluate(config, str(tmp_path))


def test_column_weights_are_refused_by_the_other_algorithms(tmp_path):
  config = tiny_config(algorithm__name="dpsgd", topology__weights="column_uniform")
  with pytest.raises(ValueError, match="topology.weights='column_uniform'.*push_sum"):
    train_and_evaluate(config, str(tmp_path))
