"""Local epochs: node i takes E * ceil(n_i / B) steps, the shorter nodes masked inside one scan."""
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from dfl.algorithms import local_work
from dfl.algorithms.base import RoundInputs, node_keys
from dfl.algorithms.dfedavg import dfedavg
from dfl.local import NodeData, make_local_sgd, make_optimizer
from dfl.mixing import DenseMixing
from tests.algorithms._tiny import N, tiny_problem


def test_local_work_counts_steps_per_node():
  a = config_dict.ConfigDict({"local_steps": 5, "local_epochs": 2, "batch_size": 4})
  k, steps_N, epochs = local_work(a, np.array([12, 7, 5, 12]))
  assert k == 6 and steps_N.tolist() == [6, 4, 4, 6] and epochs == 2
  k, steps_N, epochs = local_work(a, np.array([8, 8, 8, 8]))
  assert k == 4 and steps_N is None and epochs == 2  # equal shards: no masking
  a.local_epochs = 0
  assert local_work(a, np.array([12, 7])) == (5, None, None)
  a.local_steps = None  # the algorithm's default
  assert local_work(a, np.array([12, 7])) == (5, None, None)
  assert local_work(a, np.array([12, 7]), default_steps=1) == (1, None, None)


def test_masked_nodes_equal_their_own_unmasked_runs():
  sizes, batch, lr = (12, 7, 5, 12), 4, 0.1
  loss_fn, params_N, data = tiny_problem(sizes=sizes)
  steps_N = np.array([3, 2, 2, 3], np.int32)  # one epoch each
  algorithm = dfedavg(loss_fn, lr=lr, local_steps=3, batch_size=batch, momentum=0.5,
                      num_steps_N=jnp.asarray(steps_N))
  key = jax.random.key(5)
  state, metrics = jax.jit(algorithm.round)(
      algorithm.init(params_N), RoundInputs(jnp.int32(0), key, DenseMixing(jnp.eye(N)), data))
  optimizer = make_optimizer(lr=lr, momentum=0.5)
  keys = node_keys(key, N)
  for i in range(N):
    own = make_local_sgd(loss_fn, optimizer, local_steps=int(steps_N[i]), batch_size=batch)
    p = jax.tree.map(lambda x: x[i], params_N)
    shard = NodeData(data.x, data.y, data.indices[i], data.sizes[i])
    want, _, _ = jax.jit(own)(p, optimizer.init(p), keys[i], shard)
    for got, w in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(got[i]), np.asarray(w), rtol=1e-6, atol=1e-7)
  assert np.isfinite(float(metrics.loss))
