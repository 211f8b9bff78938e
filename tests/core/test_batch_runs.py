"""A batch of runs as one program (dfl/batching.py, dfl/train.py train_and_evaluate_batch): each
run of a batch writes the metrics of its separate run.

Which comparisons are bit for bit: with S > 1 the round is vmapped over runs, and XLA may sum a
batched product in another order, so metrics are compared to float32 tolerance (rel 1e-5; one
test sample more or less would move an accuracy by ~3e-3). Counts (rounds, transfers, bytes) are
exact. Resuming a batch is bit for bit against the uninterrupted batch (the same program).
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from dfl import checkpoint, train
from dfl.batching import (IncompatibleRuns, RunBatch, compatible_groups, stacked_data,
                          varying_hyperparameters)
from dfl.experiment import build_experiment
from tests.conftest import tiny_config

EXACT = {"round", "comm_transfers", "comm_bytes", "comm_bytes_max_node", "comm_control_messages"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        assert b[key] == pytest.approx(s[key], rel=1e-5, abs=1e-7), (key, b["round"])


def run_batch(configs, root, name="b", **options):
  workdirs = [str(root / f"{name}{i}") for i in range(len(configs))]
  return train.train_and_evaluate_batch(configs, workdirs, **options), workdirs


def assert_batch_equals_separate_runs(configs, tmp_path):
  outcomes, workdirs = run_batch(configs, tmp_path)
  for i, (config, outcome) in enumerate(zip(configs, outcomes)):
    assert isinstance(outcome, dict), outcome
    separate = train.train_and_evaluate(config, str(tmp_path / f"s{i}"))
    assert_same_metrics(read(os.path.join(workdirs[i], "metrics.jsonl")),
                        read(tmp_path / f"s{i}" / "metrics.jsonl"))
    assert set(outcome) == set(separate)
    assert json.loads(open(os.path.join(workdirs[i], "config.json")).read()) == \
        json.loads((tmp_path / f"s{i}" / "config.json").read_text())


# Every algorithm with the batchable hyperparameters it reads, two runs apart in each of them (and
# in their seeds). momentum None is the algorithm's default.
CASES = {
    "dpsgd": [dict(algorithm__lr=0.05, algorithm__momentum=0.3, algorithm__clip_norm=1.0,
                   algorithm__weight_decay=0.0),
              dict(algorithm__lr=0.1, algorithm__momentum=0.5, algorithm__clip_norm=0.5,
                   algorithm__weight_decay=1e-3)],
    "dfedavg": [dict(algorithm__lr=0.05, algorithm__lr_decay=1.0),
                dict(algorithm__lr=0.2, algorithm__lr_decay=0.9)],
    "dfedavgm": [dict(algorithm__momentum=None), dict(algorithm__momentum=0.5)],
    "dfedsam": [dict(algorithm__rho=0.0), dict(algorithm__rho=0.1, algorithm__lr=0.2)],
    "dfedsam_mgs": [dict(algorithm__rho=0.05), dict(algorithm__rho=0.01)],
    "fedavg": [dict(algorithm__lr=0.1, algorithm__client_fraction=0.5, algorithm__momentum=0.2),
               dict(algorithm__lr=0.3, algorithm__client_fraction=0.5, algorithm__momentum=0.5)],
    "fedsam": [dict(algorithm__rho=0.0, algorithm__client_fraction=0.5),
               dict(algorithm__rho=0.1, algorithm__client_fraction=0.5)],
    "gossip": [dict(algorithm__self_weight=0.5), dict(algorithm__self_weight=0.2,
                                                      algorithm__lr=0.05)],
    "modest": [dict(algorithm__sample_size=3, algorithm__success_fraction=1.0),
               dict(algorithm__sample_size=3, algorithm__success_fraction=0.67)],
    "gradient_tracking": [dict(algorithm__lr=0.05), dict(algorithm__lr=0.1,
                                                         algorithm__weight_decay=1e-3)],
    "exact_diffusion": [dict(algorithm__lr=0.05), dict(algorithm__lr=0.1)],
    "qgm": [dict(algorithm__momentum=None), dict(algorithm__momentum=0.5, algorithm__lr=0.05)],
    "choco": [dict(algorithm__lr=0.05, algorithm__momentum=0.2),
              dict(algorithm__lr=0.1, algorithm__momentum=0.5)],
    "push_sum": [dict(algorithm__lr=0.05), dict(algorithm__lr=0.1)],
    "variance_correction": [
        dict(variance_correction__enabled=True, variance_correction__target="conservative",
             variance_correction__beta=0.5, variance_correction__strength=1.0),
        dict(variance_correction__enabled=True, variance_correction__target="conservative",
             variance_correction__beta=0.2, variance_correction__strength=0.5)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_batchable_hyperparameter_of_every_algorithm(case, tmp_path):
  algorithm = "dfedavg" if case == "variance_correction" else case
  configs = [tiny_config(algorithm__name=algorithm, seed=seed, **values)
             for seed, values in enumerate(CASES[case])]
  varying = varying_hyperparameters(configs)
  assert varying, "the two runs must differ in a batchable value, else this test shows nothing"
  exps = [build_experiment(c) for c in configs]
  assert compatible_groups(exps) == [[0, 1]]  # one program
  assert_batch_equals_separate_runs(configs, tmp_path)


def test_momentum_or_clipping_off_and_on_run_in_separate_batches(tmp_path):
  """Their optimizer states differ in structure (a buffer, a stage), and each run's checkpoint
  must restore into its separate run."""
  configs = [tiny_config(algorithm__name="dpsgd", algorithm__momentum=m, algorithm__clip_norm=c)
             for m, c in ((0.0, None), (0.5, None), (0.9, None), (0.5, 1.0))]
  exps = [build_experiment(c) for c in configs]
  assert compatible_groups(exps) == [[0], [1, 2], [3]]
  with pytest.raises(IncompatibleRuns, match="algorithm.momentum is off"):
    varying_hyperparameters(configs[:2])
  assert_batch_equals_separate_runs(configs, tmp_path)


def test_data_and_graph_settings_are_per_run_data(tmp_path):
  """data.alpha, the partition method and the graph (dense W) vary inside one program; shards
  padded to the widest run."""
  configs = [tiny_config(data__partition="dirichlet", data__alpha=0.1, topology__name="ring"),
             tiny_config(data__partition="iid", topology__name="complete", seed=1),
             tiny_config(data__partition="dirichlet", data__alpha=1.0,
                         topology__name="random_neighbors", topology__degree=2)]
  exps = [build_experiment(c) for c in configs]
  assert len({e.data.indices.shape[1] for e in exps}) > 1  # else padding is not exercised
  data = stacked_data(exps)
  for s, exp in enumerate(exps):
    width = exp.data.indices.shape[1]
    assert np.array_equal(data.indices[s][:, :width], exp.data.indices)
  assert compatible_groups(exps) == [[0, 1, 2]]
  assert_batch_equals_separate_runs(configs, tmp_path)


def test_runs_that_differ_in_structure_go_to_separate_batches(tmp_path):
  configs = [tiny_config(algorithm__lr=0.1), tiny_config(algorithm__local_steps=3),
             tiny_config(algorithm__lr=0.3), tiny_config(algorithm__name="gossip"),
             tiny_config(algorithm__name="dpsgd", algorithm__lr=0.2)]
  exps = [build_experiment(c) for c in configs]
  assert compatible_groups(exps) == [[0, 2], [1], [3], [4]]
  with pytest.raises(IncompatibleRuns, match="different round program"):
    RunBatch(exps[:2])._program(*_first_chunk(RunBatch(exps[:2])))
  outcomes, workdirs = run_batch(configs, tmp_path)
  assert all(isinstance(o, dict) for o in outcomes)
  separate = train.train_and_evaluate(configs[1], str(tmp_path / "alone"))
  assert_same_metrics(read(os.path.join(workdirs[1], "metrics.jsonl")),
                      read(tmp_path / "alone" / "metrics.jsonl"))
  assert outcomes[1]["final_test_accuracy"] == separate["final_test_accuracy"]  # S = 1: bitwise


def _first_chunk(batch):
  state = batch.stack([e.algorithm.init(e.init_params) for e in batch.exps])
  return (state, *batch.mixing_for(0, 1))


def test_a_diverging_run_stops_alone_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
  # Least squares (L = 1) with lr = 6 grows geometrically: finite for some chunks, then inf.
  common = dict(train__rounds=40, eval__every_rounds=4, checkpoint__every_rounds=4,
                checkpoint__async_save=False, data__name="least_squares", model__name="linear",
                algorithm__batch_size=0, eval__local_examples=0, data__seed=3)
  bad = tiny_config(algorithm__lr=6.0, **common)
  good = tiny_config(algorithm__lr=0.05, seed=1, **common)
  outcomes, workdirs = run_batch([bad, good], tmp_path)
  assert isinstance(outcomes[0], checkpoint.Diverged), outcomes[0]
  message = str(outcomes[0])
  assert "Training diverged in" in message and "the last good checkpoint (round" in message
  last_good = int(message.split("the last good checkpoint (round ")[1].split(")")[0])
  assert 0 < last_good < 40
  assert f"run {workdirs[0]} stopped: Training diverged" in capsys.readouterr().err
  assert max(int(d) for d in os.listdir(os.path.join(workdirs[0], "checkpoints"))) == last_good
  assert not os.path.exists(os.path.join(workdirs[0], "summary.json"))
  assert read(os.path.join(workdirs[0], "metrics.jsonl"))[-1]["round"] == last_good
  # The other run of the batch finished as it would have alone.
  assert isinstance(outcomes[1], dict)
  train.train_and_evaluate(good, str(tmp_path / "alone"))
  assert_same_metrics(read(os.path.join(workdirs[1], "metrics.jsonl")),
                      read(tmp_path / "alone" / "metrics.jsonl"))


def _without_wall(records):
  return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in records]


def _launch(tmp_path, runs_file, signal_at=None):
  env = dict(os.environ, PYTHONPATH=REPO)
  if signal_at:
    env[checkpoint.TEST_SIGNAL_ENV] = signal_at
  return subprocess.run(
      [sys.executable, "-m", "launch.main", "--config", "experiments/configs/default.py",
       f"--runs={runs_file}", "--config.num_nodes=4", "--config.model.hidden=(16,)",
       "--config.algorithm.local_steps=2", "--config.algorithm.batch_size=8",
       "--config.train.rounds=6", "--config.eval.every_rounds=2", "--config.eval.local_examples=100",
       "--config.checkpoint.every_rounds=2", "--config.checkpoint.async_save=False"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("kill", ["SIGKILL:4:saving", "SIGTERM:2:evaluated"])
def test_killed_batch_resumes_bit_for_bit(kill, tmp_path):
  def runs_file(name):
    runs = [{"workdir": str(tmp_path / name / f"lr={lr}"),
             "overrides": [["algorithm.lr", str(lr)], ["seed", str(seed)]]}
            for seed, lr in enumerate((0.05, 0.2))]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(runs))
    return path, [r["workdir"] for r in runs]
  whole_file, whole = runs_file("whole")
  done = _launch(tmp_path, whole_file)
  assert done.returncode == 0, done.stderr[-3000:]
  part_file, parts = runs_file("part")
  stopped = _launch(tmp_path, part_file, signal_at=kill)
  name = kill.split(":")[0]
  assert stopped.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM), stopped.stderr[-2000:]
  if name == "SIGTERM":
    assert "Stopped by SIGTERM after round 2 of 6" in stopped.stderr
  assert not any(os.path.exists(os.path.join(p, "summary.json")) for p in parts)
  resumed = _launch(tmp_path, part_file)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert resumed.stderr.count("resuming from the checkpoint of round") == 2
  for w, p in zip(whole, parts):
    assert _without_wall(read(os.path.join(p, "metrics.jsonl"))) == \
        _without_wall(read(os.path.join(w, "metrics.jsonl")))


def test_runs_resumed_at_different_rounds_continue_in_separate_batches(tmp_path, capsys):
  config = tiny_config(train__rounds=6, checkpoint__every_rounds=2, checkpoint__async_save=False)
  other = tiny_config(train__rounds=6, checkpoint__every_rounds=2, checkpoint__async_save=False,
                      algorithm__lr=0.2)
  short = [c.copy_and_resolve_references() for c in (config, other)]
  short[0].train.rounds, short[1].train.rounds = 2, 4
  run_batch(short[:1], tmp_path, "r")  # r0 at round 2
  train.train_and_evaluate(short[1], str(tmp_path / "r1"))  # r1 at round 4
  outcomes, workdirs = run_batch([config, other], tmp_path, "r")
  assert all(isinstance(o, dict) for o in outcomes)
  train.train_and_evaluate(other, str(tmp_path / "alone"))
  assert _without_wall(read(os.path.join(workdirs[1], "metrics.jsonl"))) == \
      _without_wall(read(tmp_path / "alone" / "metrics.jsonl"))


def test_bad_batches_are_refused(tmp_path):
  with pytest.raises(ValueError, match="one workdir per config"):
    train.train_and_evaluate_batch([tiny_config()], [])
  with pytest.raises(ValueError, match="distinct workdir"):
    train.train_and_evaluate_batch([tiny_config(), tiny_config()], [str(tmp_path)] * 2)
  # A run whose build fails is reported; the other runs.
  bad = tiny_config(data__name="mnist", data__dir=str(tmp_path / "nowhere"))
  outcomes, _ = run_batch([bad, tiny_config()], tmp_path)
  assert isinstance(outcomes[0], Exception) and "nowhere" in str(outcomes[0])
  assert isinstance(outcomes[1], dict)


def test_max_batch_caps_a_batch(tmp_path, capsys):
  configs = [tiny_config(algorithm__lr=lr) for lr in (0.05, 0.1, 0.2)]
  outcomes, _ = run_batch(configs, tmp_path, max_batch=2)
  assert all(isinstance(o, dict) for o in outcomes)
  err = capsys.readouterr().err
  assert "x2 runs" in err and "dfedavg/ring:" in err  # a batch of 2, then the third alone
