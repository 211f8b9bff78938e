"""A tiny decentralized problem shared by the algorithm tests: 4 nodes, an MLP, random data."""
import jax
import jax.numpy as jnp
import numpy as np

from dfl.local import NodeData
from dfl.models import MLP, cross_entropy_loss

N = 4


def tiny_problem(sizes=(12, 12, 12, 12), seed=0):
  """(loss_fn, params_N, data): equal-init models, shards of the given sizes, 3 classes."""
  rng = np.random.default_rng(seed)
  total = sum(sizes)
  x = rng.normal(size=(total, 5)).astype(np.float32)
  y = rng.integers(0, 3, size=total).astype(np.int32)
  width = max(sizes)
  bounds = np.cumsum((0,) + tuple(sizes))
  indices = np.stack([np.resize(np.arange(bounds[i], bounds[i + 1]), width)
                      for i in range(len(sizes))]).astype(np.int32)
  data = NodeData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(indices),
                  jnp.asarray(np.array(sizes, np.int32)))
  model = MLP((8,), 3)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 5)))["params"]
  params_N = jax.tree.map(lambda p: jnp.broadcast_to(p, (len(sizes),) + p.shape), params)
  return cross_entropy_loss(model), params_N, data


def ring_W(n=N):
  """Metropolis-Hastings weights of a ring: 1/3 to self and each neighbour (doubly stochastic)."""
  W = np.zeros((n, n))
  for i in range(n):
    for j in (i - 1, i, i + 1):
      W[i, j % n] = 1 / 3
  return W
