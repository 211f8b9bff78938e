"""A user's own model, data and algorithm by import path or as Python objects; natural
partitions (dfl/imports.py, dfl/models.py, dfl/data/__init__.py, dfl/train.py)."""
import json
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from dfl.data import load_dataset
from dfl.data.partition import partition
from dfl.errors import UserError
from dfl.experiment import build_experiment
from dfl.train import train_and_evaluate
from tests.conftest import REPO, tiny_config

USER_PACKAGE = {
    "__init__.py": "",
    "nets.py": """
        import flax.linen as nn

        class Wide(nn.Module):
          width: int = 3
          num_classes: int = 10

          @nn.compact
          def __call__(self, x):
            return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1))))

        def factory(depth):  # a factory without num_classes: it must not be passed one
          return nn.Sequential([nn.Dense(5) for _ in range(depth)])
        """,
    "data.py": """
        import numpy as np

        def load(n=120, owners=4):
          rng = np.random.default_rng(0)
          y = rng.integers(0, 3, n)
          x = (y[:, None] + 0.1 * rng.normal(size=(n, 6))).astype(np.float32)
          return {"x_train": x, "y_train": y, "x_test": x[:30], "y_test": y[:30],
                  "node_ids_train": 10 * (np.arange(n) % owners)}

        def missing_labels():
          return {"x_train": np.zeros((4, 2)), "x_test": np.zeros((4, 2)), "y_test": np.zeros(4, int)}
        """,
    "rules.py": """
        import jax.numpy as jnp

        def weighted_mean(key, x_KxD, w_K, valid_K, t):  # plain gossip, written out by hand
          w_K = jnp.where(valid_K, w_K, 0.0)
          return (w_K[:, None] * x_KxD).sum(0) / w_K.sum()

        def keep_own(key, x_KxD, w_K, valid_K, t):  # ignores what it received
          return x_KxD[0]
        """,
    "algos.py": """
        from typing import Any, NamedTuple

        import jax.numpy as jnp
        from dfl.algorithms import Algorithm, RoundMetrics

        class State(NamedTuple):
          params: Any

        def frozen(algorithm_config, ctx):  # never changes the models: final = initial
          def round_fn(state, inputs):
            zero = jnp.zeros(ctx.num_nodes, jnp.int32)
            return state, RoundMetrics(jnp.float32(1.0), jnp.int32(0), zero, zero)
          return Algorithm(State, round_fn)
        """,
}


@pytest.fixture
def user_package(tmp_path, monkeypatch):
  root = tmp_path / "site"
  (root / "userpkg").mkdir(parents=True)
  for name, text in USER_PACKAGE.items():
    (root / "userpkg" / name).write_text(textwrap.dedent(text))
  monkeypatch.syspath_prepend(str(root))
  return root


def _params_per_node(exp):
  return sum(x[0].size for x in jax.tree.leaves(exp.init_params))


def test_model_and_data_by_import_path_with_kwargs(user_package):
  config = tiny_config(model__name="userpkg.nets:Wide", data__name="userpkg.data:load",
                       data__partition="natural")
  config.model.kwargs.width = 7
  config.data.kwargs.owners = 4
  exp = build_experiment(config)
  # 6 inputs -> 7 -> 3 classes (num_classes from the labels, passed since Wide takes it).
  assert _params_per_node(exp) == 6 * 7 + 7 + 7 * 3 + 3
  assert exp.dataset.num_classes == 3


def test_natural_partition_gives_each_node_its_owners_samples():
  ids = np.array([5, 5, 2, 9, 2, 5])
  shards = partition(np.zeros(6, int), 3, "natural", seed=0, node_ids=ids)
  assert [s.tolist() for s in shards] == [[2, 4], [0, 1, 5], [3]]  # ids 2, 5, 9 in order
  with pytest.raises(ValueError, match="3 distinct nodes but num_nodes=4; set num_nodes=3"):
    partition(np.zeros(6, int), 4, "natural", seed=0, node_ids=ids)
  with pytest.raises(ValueError, match="needs a dataset that names"):
    partition(np.zeros(6, int), 3, "natural", seed=0)


def test_natural_partition_through_the_config(user_package):
  config = tiny_config(num_nodes=4, data__name="userpkg.data:load", data__partition="natural")
  exp = build_experiment(config)
  owner = 10 * (np.arange(120) % 4)
  for node, shard in enumerate(exp.shards):
    assert set(owner[shard]) == {10 * node} and len(shard) == 30


def test_factory_without_num_classes_gets_only_its_kwargs(user_package):
  from dfl.models import make_model
  model = make_model("userpkg.nets:factory", 10, {"depth": 2})
  assert len(model.layers) == 2


@pytest.mark.parametrize("path,message", [
    ("nopkg.nets:Wide", "cannot import module 'nopkg.nets'"),
    ("userpkg.nets:Narrow", "module 'userpkg.nets' has no attribute 'Narrow'"),
    ("userpkg.nets:", "is not an import path"),
])
def test_a_bad_import_path_names_what_failed(user_package, path, message):
  with pytest.raises(UserError, match=re.escape(message)):
    build_experiment(tiny_config(model__name=path))


def test_bad_user_data_and_kwargs_for_builtins_are_refused(user_package):
  with pytest.raises(UserError, match=re.escape("lacks ['y_train']")):
    load_dataset("userpkg.data:missing_labels")
  config = tiny_config()
  config.model.kwargs.width = 3
  with pytest.raises(UserError, match="model.kwargs=.*built-in model.name='mlp'"):
    build_experiment(config)
  with pytest.raises(UserError, match="Unknown model.name='nets'"):
    build_experiment(tiny_config(model__name="nets"))


def test_an_algorithm_by_import_path_is_the_one_that_runs(user_package, tmp_path):
  summary = train_and_evaluate(tiny_config(algorithm__name="userpkg.algos:frozen"),
                               str(tmp_path))
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert records[0]["round"] == 0 and records[-1]["round"] == 4
  # The frozen algorithm never moves the models: every evaluation sees the initial ones.
  assert {r["test_accuracy"] for r in records} == {records[0]["test_accuracy"]}
  assert summary["final_train_loss"] == 1.0


def test_an_aggregation_rule_by_import_path_runs_in_the_gossip_step(user_package, tmp_path):
  own = train_and_evaluate(tiny_config(aggregation__rule="userpkg.rules:weighted_mean"),
                           str(tmp_path / "own"))
  plain = train_and_evaluate(tiny_config(), str(tmp_path / "plain"))  # dfl.mixing.mix
  assert own["final_test_accuracy"] == pytest.approx(plain["final_test_accuracy"], abs=1e-6)
  assert own["final_consensus_distance"] == pytest.approx(plain["final_consensus_distance"],
                                                          rel=1e-4)
  # The named rule is the one applied: one that ignores its neighbours never mixes the models.
  alone = train_and_evaluate(tiny_config(aggregation__rule="userpkg.rules:keep_own"),
                             str(tmp_path / "alone"))
  assert alone["final_consensus_distance"] > 2 * plain["final_consensus_distance"]
  with pytest.raises(UserError, match="has no attribute 'nope'"):
    build_experiment(tiny_config(aggregation__rule="userpkg.rules:nope"))


def test_python_objects_from_a_notebook_and_their_resume(tmp_path):
  sys.path.insert(0, str(REPO))
  from experiments.bring_your_own import TinyNet, blobs
  config = tiny_config(num_nodes=8, data__partition="natural", train__rounds=4)
  data = blobs(per_node=20)
  first = train_and_evaluate(config, str(tmp_path), model=TinyNet(width=8, num_classes=4),
                             dataset=data)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["name"] == "object:TinyNet"
  assert saved["data"]["name"].startswith("object:")
  config.train.rounds = 6  # the same objects again: resumes from round 4
  second = train_and_evaluate(config, str(tmp_path), model=TinyNet(width=8, num_classes=4),
                              dataset=data)
  assert second["rounds"] == 6 and first["rounds"] == 4
  with pytest.raises(UserError, match="flax.linen.Module"):
    train_and_evaluate(config, str(tmp_path / "x"), model="TinyNet")


def _readme_commands():
  """The launch.main command of the README's "Bring your own" section, as written there."""
  text = (REPO / "README.md").read_text()
  section = text[text.index("## Bring your own"):]
  start = section.index("```bash") + len("```bash")
  block = section[start:section.index("```", start)]
  return [c for c in block.replace("\\\n", " ").splitlines() if c.strip().startswith("python")]


@pytest.mark.slow
def test_the_readme_example_runs_verbatim(tmp_path):
  commands = _readme_commands()
  assert any("launch.main" in c for c in commands)
  for command in commands:
    command = command.replace("runs/byo", str(tmp_path / "byo"))  # the only change: where
    done = subprocess.run(command.replace("python ", f"{sys.executable} ", 1), shell=True,
                          cwd=REPO, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final test accuracy" in done.stdout


@pytest.mark.slow
def test_a_sweep_hands_model_kwargs_to_every_run(tmp_path):
  command = [sys.executable, "-m", "launch.sweep", "--config", "experiments/configs/default.py",
             "--root", str(tmp_path), "--config.model.name=experiments.bring_your_own:TinyNet",
             "--config.model.kwargs.width=5", "--config.train.rounds=2",
             "--config.eval.every_rounds=2", "--config.num_nodes=4", "--sweep",
             "algorithm.lr=0.05,0.1"]
  done = subprocess.run(command, cwd=REPO, text=True, capture_output=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  configs = [json.loads(p.read_text()) for p in tmp_path.glob("*/config.json")]
  assert len(configs) == 2 and all(c["model"]["kwargs"] == {"width": 5} for c in configs)
