"""The headline figures of metrics.jsonl against a numpy computation from the checkpointed models.

A tiny run (4 nodes with independent initialisations on a lazy ring, so node 0 is not the average)
writes metrics.jsonl and its final checkpoint; the per-node parameters are read back, averaged
in numpy, and the MLP's forward pass is done with numpy matmuls. `test_accuracy` must be the
node-averaged model's accuracy (not node 0's), `test_accuracy_local_mean` the mean of the nodes'
own accuracies on their eval.local_examples test samples (per_node: node i on samples
(i*m + j) mod n of the test set permuted by numpy's default_rng(0), m = min(k, ceil(n / N));
shared: the first k),
`consensus_distance`
(1/N) sum_i ||x_i - x̄||^2, and the per-node split figures (eval.personal_test) the means over
nodes on each node's own split.
"""
import json

import jax
import numpy as np
import pytest

from dfl.checkpoint import RunCheckpoints
from dfl.experiment import build_experiment
from dfl.train import train_and_evaluate
from tests.conftest import tiny_config


def _mlp_logits(params: dict, x: np.ndarray) -> np.ndarray:
  """MLP(hidden) forward in float64: flatten, Dense + relu per hidden layer, a final Dense."""
  layers = sorted(params, key=lambda name: int(name.split("_")[1]))  # Dense_0, Dense_1, ...
  h = x.reshape(len(x), -1).astype(np.float64)
  for i, name in enumerate(layers):
    h = h @ params[name]["kernel"].astype(np.float64) + params[name]["bias"].astype(np.float64)
    if i < len(layers) - 1:
      h = np.maximum(h, 0.0)
  return h


def _accuracy(params, x, y) -> float:
  return float(np.mean(np.argmax(_mlp_logits(params, x), -1) == y))


def _local_rows(subset: str, node: int, k: int, n_test: int, n: int) -> np.ndarray:
  if subset == "shared":
    return np.arange(k)
  m = min(k, -(-n_test // n))  # the slices cover the test set at most once
  permutation = np.random.default_rng(0).permutation(n_test)
  return permutation[[(node * m + j) % n_test for j in range(m)]]


@pytest.mark.parametrize("subset", ["per_node", "shared"])
def test_metrics_are_the_averaged_model_and_the_nodes_own(tmp_path, subset):
  # Lazy gossip (W = 0.1 W_ring + 0.9 I) keeps the nodes apart, so node 0 is far from the average.
  config = tiny_config(model__same_init=False, eval__personal_test=True, topology__laziness=0.9,
                       algorithm__local_steps=5, eval__local_subset=subset,
                       eval__local_examples=80)  # 4 x 80 <= the 359 test samples: disjoint
  train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    final = [json.loads(line) for line in f][-1]
  assert final["round"] == config.train.rounds

  exp = build_experiment(config)
  checkpoints = RunCheckpoints(str(tmp_path), max_to_keep=3, async_save=False)
  restored = checkpoints.restore(exp.algorithm.init(exp.init_params), lambda meta: None)
  checkpoints.close()
  assert restored.round == config.train.rounds
  params_N = jax.tree.map(lambda a: np.asarray(a, np.float64), restored.state.params)
  n = config.num_nodes
  node = lambda i: jax.tree.map(lambda a: a[i], params_N)
  average = jax.tree.map(lambda a: a.mean(0), params_N)
  x, y = exp.dataset.x_test, exp.dataset.y_test

  # float32 on device vs float64 here: allow one test sample whose argmax flips on a near-tie.
  one = 1.0 / len(y)
  acc_average, acc_node0 = _accuracy(average, x, y), _accuracy(node(0), x, y)
  assert abs(final["test_accuracy"] - acc_average) <= one + 1e-6
  assert abs(acc_node0 - acc_average) > 3 * one  # the check can tell node 0 from the average

  k = config.eval.local_examples
  rows = [_local_rows(subset, i, k, len(y), n) for i in range(n)]
  if subset == "per_node":  # disjoint slices, k each while N * k <= n_test
    assert n * k <= len(y) and len(np.unique(np.concatenate(rows))) == n * k
  local = [_accuracy(node(i), x[r], y[r]) for i, r in enumerate(rows)]
  assert abs(final["test_accuracy_local_mean"] - np.mean(local)) <= 1.0 / (k * n) + 1e-6
  assert max(local) - min(local) > 0.02  # the nodes' models do differ

  distance = sum(np.sum((a - a.mean(0)) ** 2) for a in jax.tree.leaves(params_N)) / n
  assert distance > 0
  np.testing.assert_allclose(final["consensus_distance"], distance, rtol=1e-4)

  splits = exp.personal_splits
  own = [_accuracy(node(i), x[s], y[s]) for i, s in enumerate(splits)]
  on_average = [_accuracy(average, x[s], y[s]) for s in splits]
  slack = 1.0 / (n * min(len(s) for s in splits)) + 1e-6
  assert abs(final["test_accuracy_personal"] - np.mean(own)) <= slack
  assert abs(final["test_accuracy_personal_global"] - np.mean(on_average)) <= slack
