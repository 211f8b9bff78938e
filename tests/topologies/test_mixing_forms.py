"""The sparse neighbour form and the dense matrix give the same gossip step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import topologies
from dfl.mixing import DenseMixing, SparseMixing, messages_per_step, mix

# Jitted once: W is a traced argument, so each form compiles once per shape.
mix = jax.jit(mix)
messages_per_step = jax.jit(messages_per_step)

CASES = [("ring", {}), ("torus", {}), ("star", {}), ("hypercube", {}), ("erdos_renyi", {}),
         ("small_world", {}), ("exponential", {"directed": True}), ("one_peer_exponential", {}),
         ("random_neighbors", {"num_rounds": 6}),
         ("random_neighbors", {"directed": True, "degree": 2}),
         ("random_pull", {"expected_degree": 1.5}),
         ("random_pull", {"num_rounds": 6, "schedule": "dense_window", "schedule_start": 2}),
         ("ring", {"num_rounds": 6, "schedule": "final_merge"})]


@pytest.mark.parametrize("name, options", CASES)
def test_sparse_and_dense_mixing_agree(name, options):
  topology = topologies.make(name, 16, seed=1, **options)
  tree = {"w": jax.random.normal(jax.random.key(0), (16, 3, 5)),
          "b": jax.random.normal(jax.random.key(1), (16, 7))}
  widths = set()
  for t in range(6):
    dense = DenseMixing(jnp.asarray(topology.matrix(t), jnp.float32))
    indices, weights = topology.neighbors(t)
    widths.add(indices.shape)
    sparse = SparseMixing(jnp.asarray(indices), jnp.asarray(weights, jnp.float32))
    for a, b in zip(jax.tree.leaves(mix(dense, tree)), jax.tree.leaves(mix(sparse, tree))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(messages_per_step(dense), messages_per_step(sparse)):
      np.testing.assert_array_equal(a, b)
  assert widths == {(16, topology.neighbor_width)}  # one shape for every round: no recompiling


def test_doubly_stochastic_mixing_keeps_the_node_mean():
  topology = topologies.make("random_neighbors", 16, seed=2, num_rounds=4)
  x = jax.random.normal(jax.random.key(0), (16, 10))
  for t in range(4):
    x_next = mix(DenseMixing(jnp.asarray(topology.matrix(t), jnp.float32)), x)
    np.testing.assert_allclose(x_next.mean(0), x.mean(0), atol=1e-5)
    x = x_next
