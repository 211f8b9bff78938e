"""Batched seeds (dfl/batched.py): one vmapped program gives each seed the metrics of its own run."""
import json
import os

import numpy as np
import pytest

from dfl import train
from dfl.batched import check_same_program, stacked_data, train_and_evaluate_seeds
from dfl.experiment import build_experiment, mixing_operator
from tests.conftest import tiny_config

EXACT = {"round", "comm_transfers", "comm_bytes", "comm_bytes_max_node"}


def read(path):
  return [json.loads(line) for line in open(path)]


def assert_same_metrics(batched, separate):
  assert len(batched) == len(separate)
  for b, s in zip(batched, separate):
    assert set(b) == set(s)
    for key in b:
      if key in EXACT:
        assert b[key] == s[key], (key, b["round"])
      elif key != "wall_seconds" and s[key] is not None:
        # Batched ops may round differently in the last bit of float32; one test sample more or
        # less would move an accuracy by 5e-4, far outside this tolerance.
        assert b[key] == pytest.approx(s[key], rel=1e-5, abs=1e-7), (key, b["round"])


# One static graph shared by the seeds; a time-varying graph drawn per seed (W stacked over seeds
# and rounds) with a final global merge (a chunk boundary and before-merge figures).
@pytest.mark.parametrize("algorithm,graph", [
    ("dfedavg", dict()),
    ("gradient_tracking", dict()),  # a state with a second variable (the correction)
    ("dpsgd", dict(topology__name="random_neighbors", topology__degree=2,
                   topology__schedule="final_merge")),
    # Compressed messages drawn from the node keys of each seed; push-sum weights per seed.
    ("choco", dict(algorithm__compressor="random_k")),
    ("push_sum", dict(topology__name="random_neighbors", topology__degree=1,
                      topology__directed=True, topology__weights="column_uniform"))])
def test_batched_seeds_equal_separate_runs(tmp_path, algorithm, graph):
  config = tiny_config(algorithm__name=algorithm, data__partition="dirichlet", train__rounds=5,
                       **graph)
  seeds = [0, 3]
  summaries = train_and_evaluate_seeds(config, seeds, [str(tmp_path / f"b{s}") for s in seeds])
  for seed, summary in zip(seeds, summaries):
    config.seed = seed
    separate = train.train_and_evaluate(config, str(tmp_path / f"s{seed}"))
    assert_same_metrics(read(tmp_path / f"b{seed}" / "metrics.jsonl"),
                        read(tmp_path / f"s{seed}" / "metrics.jsonl"))
    assert summary["final_test_accuracy"] == pytest.approx(separate["final_test_accuracy"], rel=1e-5)
    assert summary["batched_seeds"] == seeds
    assert set(summary) == set(separate) | {"batched_seeds"}
    assert json.loads((tmp_path / f"b{seed}" / "config.json").read_text())["seed"] == seed


def test_shards_of_each_seed_padded_to_a_common_width():
  exps = [build_experiment(tiny_config(seed=s, data__partition="dirichlet")) for s in (0, 1)]
  assert exps[0].data.indices.shape != exps[1].data.indices.shape  # else this test shows nothing
  data = stacked_data(exps)
  for s, exp in enumerate(exps):
    assert np.array_equal(data.sizes[s], exp.data.sizes)
    width = exp.data.indices.shape[1]
    assert np.array_equal(data.indices[s][:, :width], exp.data.indices)


def test_algorithms_that_differ_between_seeds_are_refused():
  exps = [build_experiment(tiny_config(seed=0)), build_experiment(tiny_config(seed=1, algorithm__lr=0.2))]
  state = exps[0].algorithm.init(exps[0].init_params)
  mixing = mixing_operator(exps[0].topology, 0, sparse=False)
  check_same_program(exps[:1] * 2, state, exps[0].data, mixing)  # same algorithm: accepted
  with pytest.raises(ValueError, match="cannot share one program"):
    check_same_program(exps, state, exps[0].data, mixing)


def test_seeds_and_workdirs_must_match(tmp_path):
  with pytest.raises(ValueError, match="one workdir per distinct seed"):
    train_and_evaluate_seeds(tiny_config(), [0, 0], [str(tmp_path / "a"), str(tmp_path / "b")])


def test_mixing_shared_when_equal_and_stacked_per_seed_otherwise():
  from dfl.batched import _mixing
  ring = [build_experiment(tiny_config(seed=s)) for s in (0, 1)]
  mixing, per_seed = _mixing(ring, range(0, 2), sparse=False)
  assert not per_seed and mixing.W.shape == (4, 4)
  drawn = [build_experiment(tiny_config(seed=s, topology__name="random_neighbors", topology__degree=2))
           for s in (0, 1)]
  mixing, per_seed = _mixing(drawn, range(0, 3), sparse=False)
  assert per_seed and mixing.W.shape == (2, 3, 4, 4)
  assert not np.array_equal(mixing.W[0], mixing.W[1])


def _without_wall(records):
  return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in records]


def test_interrupted_batch_resumes_bit_for_bit_and_a_seed_can_resume_alone(tmp_path, capsys):
  seeds = [0, 3]
  config = tiny_config(train__rounds=6, checkpoint__every_rounds=2, checkpoint__async_save=False)
  whole = [str(tmp_path / f"whole{s}") for s in seeds]
  train_and_evaluate_seeds(config, seeds, whole)

  # A batch that stopped after round 4 (its last checkpoint), then the same command again.
  parts = [str(tmp_path / f"part{s}") for s in seeds]
  config.train.rounds = 4
  train_and_evaluate_seeds(config, seeds, parts)
  assert sorted(os.listdir(os.path.join(parts[1], "checkpoints"))) == ["2", "4"]
  config.train.rounds = 6
  capsys.readouterr()
  summaries = train_and_evaluate_seeds(config, seeds, parts)
  assert "resuming from the checkpoint of round 4" in capsys.readouterr().err
  for w, p in zip(whole, parts):
    assert _without_wall(read(os.path.join(p, "metrics.jsonl"))) == \
        _without_wall(read(os.path.join(w, "metrics.jsonl")))
  assert summaries[1]["final_test_accuracy"] == read(os.path.join(whole[1], "metrics.jsonl"))[-1]["test_accuracy"]

  # Each seed's checkpoint is its separate run's: seed 3 resumes alone from the batch's round 4.
  alone = str(tmp_path / "alone3")
  config.train.rounds = 4
  train_and_evaluate_seeds(config, [0, 3], [str(tmp_path / "x0"), alone])
  config.train.rounds, config.seed = 6, 3
  train.train_and_evaluate(config, alone)
  assert "resuming from the checkpoint of round 4" in capsys.readouterr().err
  assert_same_metrics(read(os.path.join(alone, "metrics.jsonl")), read(os.path.join(whole[1], "metrics.jsonl")))

  # Now seed 3 is at round 6 and seed 0 at round 4: they cannot continue as one batch.
  config.seed = 0
  with pytest.raises(ValueError, match=r"different rounds \[4, 6\]"):
    train_and_evaluate_seeds(config, [0, 3], [str(tmp_path / "x0"), alone])
