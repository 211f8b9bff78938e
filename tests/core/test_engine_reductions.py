"""Exact reductions of the engine (DESIGN.md): W = I is independent training, a complete graph
with one local step is centralized SGD, doubly stochastic mixing preserves the node mean."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import topologies
from dfl.algorithms.base import RoundInputs, node_keys
from dfl.algorithms.dfedavg import dfedavg
from dfl.algorithms.dpsgd import dpsgd
from dfl.algorithms.fedavg import fedavg
from dfl.data.partition import pack_shards
from dfl.local import NodeData, batch_stream, make_local_sgd, make_optimizer, shuffled_positions
from dfl.mixing import DenseMixing, SparseMixing, mix, node_mean
from dfl.models import MLP, cross_entropy_loss

N, D, C, B = 4, 6, 3, 5


def _problem(seed=0, unequal=False):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(80, D)).astype(np.float32)
  y = rng.integers(0, C, size=80).astype(np.int32)
  bounds = [0, 10, 30, 45, 80] if unequal else [0, 20, 40, 60, 80]
  shards = [np.arange(bounds[i], bounds[i + 1]) for i in range(N)]
  indices, sizes = pack_shards(shards)
  data = NodeData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(indices), jnp.asarray(sizes))
  model = MLP(hidden=(8,), num_classes=C)
  params = model.init(jax.random.key(1), jnp.zeros((1, D)))["params"]
  params_N = jax.tree.map(lambda p: jnp.broadcast_to(p, (N,) + p.shape), params)
  return model, data, params_N


def _inputs(t, W, data, key=jax.random.key(7)):
  return RoundInputs(jnp.int32(t), jax.random.fold_in(key, t), DenseMixing(jnp.asarray(W, jnp.float32)), data)


def test_identity_mixing_is_independent_local_training():
  model, data, params_N = _problem(unequal=True)
  loss = cross_entropy_loss(model)
  algo = dfedavg(loss, lr=0.1, local_steps=3, batch_size=B)
  state = algo.init(params_N)
  for t in range(3):
    state, _ = jax.jit(algo.round)(state, _inputs(t, np.eye(N), data))

  optimizer = make_optimizer(lr=0.1)
  local_sgd = jax.jit(make_local_sgd(loss, optimizer, local_steps=3, batch_size=B))
  for i in range(N):
    p = jax.tree.map(lambda x: x[i], params_N)
    shard = NodeData(data.x, data.y, data.indices[i], data.sizes[i])
    for t in range(3):
      key = node_keys(jax.random.fold_in(jax.random.key(7), t), N)[i]
      p, _, _ = local_sgd(p, optimizer.init(p), key, shard)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(jax.tree.map(lambda x: x[i], state.params))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _centralized_sgd_rounds(model, data, params, rounds, lr, key):
  """Plain SGD on the union of the nodes' minibatches, rebuilt from the same per-node keys."""
  loss = cross_entropy_loss(model)
  for t in range(rounds):
    keys = node_keys(jax.random.fold_in(key, t), N)
    rows = []
    for i in range(N):
      # Step 0 reads the first B slots of epoch 0's order, drawn with fold_in(node_key, 0).
      order = shuffled_positions(jax.random.fold_in(keys[i], 0), data.sizes[i],
                                 data.indices.shape[1])
      rows.append(data.indices[i][order[:B]])
    rows = jnp.concatenate(rows)
    grads = jax.grad(loss)(params, data.x[rows], data.y[rows])
    params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
  return params


@pytest.mark.parametrize("name", ["dpsgd", "dfedavg_one_step", "fedavg_full"])
def test_complete_graph_one_step_is_centralized_sgd(name):
  model, data, params_N = _problem()
  loss = cross_entropy_loss(model)
  algo = {"dpsgd": lambda: dpsgd(loss, lr=0.5, batch_size=B),
          "dfedavg_one_step": lambda: dfedavg(loss, lr=0.5, local_steps=1, batch_size=B),
          "fedavg_full": lambda: fedavg(loss, num_nodes=N, lr=0.5, local_steps=1, batch_size=B,
                                        client_fraction=1.0)}[name]()
  W = topologies.make("complete", N).matrix(0)
  np.testing.assert_allclose(W, np.full((N, N), 1.0 / N))
  state = algo.init(params_N)
  for t in range(3):
    state, _ = jax.jit(algo.round)(state, _inputs(t, W, data))
  expected = _centralized_sgd_rounds(model, data, jax.tree.map(lambda x: x[0], params_N), 3, 0.5,
                                     jax.random.key(7))
  for node in range(N):
    got = jax.tree.map(lambda x: x[node], state.params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_doubly_stochastic_mixing_preserves_node_mean_dense_and_sparse():
  rng = np.random.default_rng(0)
  tree = {"w": jnp.asarray(rng.normal(size=(8, 3, 2)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
  topo = topologies.make("ring", 8)
  W = topo.matrix(0)
  dense = mix(DenseMixing(jnp.asarray(W, jnp.float32)), tree)
  indices, weights = topo.neighbors(0)
  sparse = mix(SparseMixing(jnp.asarray(indices), jnp.asarray(weights, jnp.float32)), tree)
  for out in (dense, sparse):
    for a, b in zip(jax.tree.leaves(node_mean(out)), jax.tree.leaves(node_mean(tree))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(dense), jax.tree.leaves(sparse)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(dense["w"], tree["w"])  # mixing actually did something


def test_local_steps_visit_each_sample_once_per_epoch():
  """7 samples, batch 5, 4 steps = 2 epochs: every sample read exactly twice, once per epoch,
  the short batch of each epoch masked (the old `% size` wrap read some samples 3 times)."""
  stream = batch_stream(jax.random.key(3), jnp.int32(7), 10, batch_size=5, num_steps=4)
  slots, mask = np.asarray(stream.slots), np.asarray(stream.mask)
  assert mask.sum(axis=1).tolist() == [5, 2, 5, 2]
  for epoch in (slice(0, 2), slice(2, 4)):
    assert sorted(slots[epoch][mask[epoch]].tolist()) == list(range(7))
  assert np.bincount(slots[mask], minlength=7).tolist() == [2] * 7


@pytest.mark.parametrize("size,width,count", [(7, 10, 4), (10, 10, 3), (300, 845, 160), (5, 845, 160)])
def test_first_positions_by_top_k_equal_the_full_permutation(size, width, count):
  # The round consumes only the first local_steps*B slots; top_k must return exactly those.
  for seed in range(20):
    key = jax.random.key(seed)
    full = np.asarray(shuffled_positions(key, jnp.int32(size), width))
    first = np.asarray(shuffled_positions(key, jnp.int32(size), width, count))
    np.testing.assert_array_equal(first, full[:count])


def test_node_average_and_consensus_distance_against_float64_numpy():
  from dfl.mixing import consensus_distance, node_average
  rng = np.random.default_rng(3)
  tree = {"w": rng.normal(size=(9, 4, 5)).astype(np.float32),
          "b": rng.normal(size=(9, 5)).astype(np.float32)}
  w_N = rng.dirichlet(np.ones(9))
  for got, expected in (
      (node_mean(tree), {k: v.astype(np.float64).mean(0) for k, v in tree.items()}),
      (node_average(tree, jnp.asarray(w_N, jnp.float32)),
       {k: np.tensordot(w_N, v.astype(np.float64), 1) for k, v in tree.items()})):
    for k in tree:
      assert got[k].shape == tree[k].shape[1:] and got[k].dtype == jnp.float32
      np.testing.assert_allclose(np.asarray(got[k]), expected[k], rtol=1e-5, atol=1e-6)
  distance = sum(np.sum((v.astype(np.float64) - v.astype(np.float64).mean(0)) ** 2)
                 for v in tree.values()) / 9
  np.testing.assert_allclose(float(consensus_distance(tree)), distance, rtol=1e-5)
  assert node_mean({"h": jnp.ones((3, 2), jnp.bfloat16)})["h"].dtype == jnp.bfloat16
