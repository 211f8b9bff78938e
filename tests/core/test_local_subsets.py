"""eval.local_subset=per_node against numpy: node i's slice of the permuted test set, capped at
ceil(n_test / N) samples, wrapping around when N * m > n_test (the evaluator, no training)."""
import jax
import numpy as np
import pytest

from dfl.evaluation import make_evaluator
from dfl.models import MLP


def _numpy_accuracy(params, x, y):
  h = x.reshape(len(x), -1).astype(np.float64)
  names = sorted(params, key=lambda k: int(k.split("_")[1]))
  for i, k in enumerate(names):
    h = h @ np.asarray(params[k]["kernel"], np.float64) + np.asarray(params[k]["bias"], np.float64)
    if i < len(names) - 1:
      h = np.maximum(h, 0)
  return np.mean(np.argmax(h, -1) == y)


@pytest.mark.parametrize("n_nodes,local_examples", [(7, 20), (3, 5)])
def test_per_node_slices_are_the_documented_samples(n_nodes, local_examples):
  rng = np.random.default_rng(1)
  n_test = 50
  x = rng.normal(size=(n_test, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 3, n_test).astype(np.int32)
  model = MLP(hidden=(6,), num_classes=3)
  keys = jax.random.split(jax.random.PRNGKey(0), n_nodes)
  params_N = jax.vmap(lambda k: model.init(k, x[:1])["params"])(keys)
  evaluate = make_evaluator(model.apply, x, y, batch_size=12,
                            local_examples=local_examples, local_subset="per_node")
  got = float(evaluate(params_N)["test_accuracy_local_mean"])

  m = min(local_examples, -(-n_test // n_nodes))  # (7, 20): 8 each, 56 > 50 wraps around
  permutation = np.random.default_rng(0).permutation(n_test)
  expected = np.mean([
      _numpy_accuracy(jax.tree.map(lambda a: np.asarray(a[i]), params_N),
                      x[permutation[(i * m + np.arange(m)) % n_test]],
                      y[permutation[(i * m + np.arange(m)) % n_test]])
      for i in range(n_nodes)])
  assert abs(got - expected) < 1e-6
  shared = make_evaluator(model.apply, x, y, batch_size=12,
                          local_examples=local_examples, local_subset="shared")
  first_k = np.mean([_numpy_accuracy(jax.tree.map(lambda a: np.asarray(a[i]), params_N),
                                     x[:local_examples], y[:local_examples])
                     for i in range(n_nodes)])
  assert abs(float(shared(params_N)["test_accuracy_local_mean"]) - first_k) < 1e-6


def test_unknown_local_subset_is_named():
  with pytest.raises(ValueError, match="eval.local_subset='random'.*per_node"):
    make_evaluator(lambda p, x: x, np.zeros((4, 2), np.float32), np.zeros(4, np.int32),
                   local_subset="random")
