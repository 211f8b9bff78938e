"""The training driver end to end: outputs, determinism, clear errors, no recompilation."""
import json
import os
import subprocess
import sys

import pytest

from dfl.experiment import build_experiment
from dfl.train import train_and_evaluate
from tests.conftest import REPO, tiny_config

REQUIRED_KEYS = {"round", "test_accuracy", "test_accuracy_local_mean", "consensus_distance",
                 "train_loss", "comm_bytes", "wall_seconds"}


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_outputs_and_metric_keys(tmp_path):
  summary = train_and_evaluate(tiny_config(), str(tmp_path))
  rows = _metrics(tmp_path)
  assert [r["round"] for r in rows] == [0, 2, 4]
  assert all(REQUIRED_KEYS <= set(r) for r in rows)
  assert rows[-1]["comm_bytes"] > rows[1]["comm_bytes"] > 0
  assert json.load(open(tmp_path / "config.json"))["num_nodes"] == 4
  assert json.load(open(tmp_path / "summary.json"))["final_test_accuracy"] == summary["final_test_accuracy"]


def test_ring_comm_bytes_match_hand_count(tmp_path):
  # Ring of 4: each node sends its model to 2 neighbours per round; 4 rounds.
  exp = build_experiment(tiny_config())
  train_and_evaluate(tiny_config(), str(tmp_path))
  assert _metrics(tmp_path)[-1]["comm_bytes"] == 4 * 2 * 4 * exp.model_bytes


def _strip_time(rows):
  return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]


def test_same_seed_same_metrics_different_seed_different(tmp_path):
  train_and_evaluate(tiny_config(), str(tmp_path / "a"))
  train_and_evaluate(tiny_config(), str(tmp_path / "b"))
  train_and_evaluate(tiny_config(seed=1), str(tmp_path / "c"))
  a, b, c = (_strip_time(_metrics(tmp_path / x)) for x in "abc")
  assert a == b
  assert a != c


@pytest.mark.parametrize("override, message", [
    ({"topology__name": "hexagon"}, "topology.name='hexagon'"),
    ({"algorithm__name": "adamw"}, "algorithm.name='adamw'"),
    ({"data__name": "imagenet"}, "data.name='imagenet'"),
    ({"num_nodes": 1}, "num_nodes must be an integer >= 2"),
    ({"data__alpha": 0.0}, "data.alpha must be > 0"),
    ({"algorithm__lr": -0.1}, "algorithm.lr must be > 0"),
    ({"model__name": "transformer"}, "model.name='transformer'"),
    ({"algorithm__name": "dfedavg", "algorithm__momentum": 0.9}, "dfedavgm"),
])
def test_bad_config_values_fail_clearly(tmp_path, override, message):
  with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
    train_and_evaluate(tiny_config(**override), str(tmp_path))


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.delenv("DFL_DATA_DIR", raising=False)
  with pytest.raises(ValueError, match="DFL_DATA_DIR"):
    train_and_evaluate(tiny_config(data__name="mnist"), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    train_and_evaluate(tiny_config(data__name="mnist", data__dir=str(tmp_path / "nowhere")),
                       str(tmp_path))


def test_no_recompilation_across_chunks(tmp_path):
  config = tiny_config()
  config.train.rounds = 6
  import dfl.train as train_module
  built = []
  original = train_module.build_experiment
  train_module.build_experiment = lambda c, **kw: built.append(original(c, **kw)) or built[-1]
  try:
    train_and_evaluate(config, str(tmp_path))
  finally:
    train_module.build_experiment = original
  assert built[0].run_chunk._cache_size() == 1  # 3 chunks, one compilation


def test_launch_main_on_embedded_digits_reaches_real_accuracy(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "launch.main", "--config", "experiments/configs/default.py",
         "--workdir", str(workdir), "--config.train.rounds=60", "--config.eval.every_rounds=20"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
  assert out.returncode == 0, out.stderr[-2000:]
  assert "final test accuracy of the node-averaged model" in out.stdout
  summary = json.load(open(workdir / "summary.json"))
  assert summary["final_test_accuracy"] > 0.85  # 10 classes: chance is 0.1


def test_launch_main_rejects_misspelt_override(tmp_path):
  cmd = [sys.executable, "-m", "launch.main", "--config", "experiments/configs/default.py",
         "--workdir", str(tmp_path), "--config.algorithm.learning_rate=0.1"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
  assert out.returncode != 0
  assert "learning_rate" in out.stderr


@pytest.mark.slow
def test_mnist_from_shared_data(tmp_path, shared_data_dir):
  config = tiny_config(data__name="mnist", data__dir=str(shared_data_dir), num_nodes=8,
                       data__partition="iid")
  config.model.hidden = (64,)
  config.algorithm.batch_size = 32
  config.algorithm.local_steps = 5
  config.train.rounds = 30
  config.eval.every_rounds = 10
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary["final_test_accuracy"] > 0.85
