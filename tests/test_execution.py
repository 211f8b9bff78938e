"""Execution strategies (dfl/execution.py) compute what plain vmap computes; the engine neither
recompiles across chunks nor keeps the donated state alive."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl import execution
from dfl.algorithms.dfedavg import dfedavg
from dfl.config_checks import validate_config
from dfl.engine import make_chunk_runner
from dfl.local import NodeData
from dfl.mixing import DenseMixing
from dfl.models import cross_entropy_loss, make_model
from tests.conftest import tiny_config

N = 6


def _setup(model_name: str, hidden=(16,)):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(120, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 10, 120).astype(np.int32)
  indices = np.stack([np.arange(i * 20, (i + 1) * 20) for i in range(N)]).astype(np.int32)
  sizes = np.full(N, 20, np.int32)
  sizes[1] = 13  # an unequal shard
  data = NodeData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(indices), jnp.asarray(sizes))
  model = make_model(model_name, 10, hidden=hidden)
  keys = jax.random.split(jax.random.key(1), N)
  params = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)))["params"])(keys)
  return model, data, params


def _ring(n: int, shift: int = 1) -> np.ndarray:
  W = np.eye(n) / 3
  for i in range(n):
    W[i, (i + shift) % n] += 1 / 3
    W[i, (i - shift) % n] += 1 / 3
  return W.astype(np.float32)


def _run(model, data, params, strategy: str, rounds: int = 2):
  algorithm = dfedavg(cross_entropy_loss(model), lr=0.1, local_steps=3, batch_size=8)
  run_chunk = make_chunk_runner(algorithm, strategy)
  state = algorithm.init(jax.tree.map(jnp.copy, params))
  state, metrics = run_chunk(state, data, jax.random.key(2), jnp.arange(rounds, dtype=jnp.int32),
                             DenseMixing(jnp.asarray(_ring(N))), False)
  return state.params, metrics.loss


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_strategies_match_vmap(model_name):
  model, data, params = _setup(model_name)
  want_params, want_loss = _run(model, data, params, "vmap")
  for strategy in ["map", "chunk:4"]:  # chunk:4 of 6 nodes: one group plus a remainder
    got_params, got_loss = _run(model, data, params, strategy)
    # Batched and unbatched kernels may sum in a different order: float32 rounding only.
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=strategy)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, err_msg=strategy)


def test_node_map_handles_shared_arguments_and_remainders():
  def fn(a, shared, pair):
    return a * shared + pair[0], pair[1].sum()
  a_N = jnp.arange(7.0)
  pair = (jnp.ones(7), jnp.arange(14.0).reshape(7, 2))
  want = jax.vmap(fn, in_axes=(0, None, (0, 0)))(a_N, 2.0, pair)
  for strategy in ["vmap", "map", "chunk:3", "chunk:7", "chunk:100"]:
    got = execution.node_map(fn, in_axes=(0, None, 0), strategy=strategy)(a_N, 2.0, pair)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_auto_picks_cache_sized_groups_on_cpu_and_vmap_on_accelerators():
  def local_fn(model):
    loss = cross_entropy_loss(model)
    return lambda p, x, y: jax.grad(loss)(p, x, y)
  x = jax.ShapeDtypeStruct((32, 8, 8, 1), jnp.float32)
  y = jax.ShapeDtypeStruct((32,), jnp.int32)
  # (model, conv, floats per node): the group is the largest power of two <= 64 whose
  # parameters fit CPU_GROUP_FLOATS; XLA convolutions are looped one node at a time.
  for name, conv, want in [("logreg", "auto", "chunk:64"), ("mlp", "auto", "chunk:16"),
                           ("cnn", "im2col", "chunk:4"), ("cnn", "xla", "map")]:
    model = make_model(name, 10, conv=conv)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"])
    choice, reason = execution.auto_strategy(local_fn(model), (params, x, y), "cpu", 256)
    assert choice == want, (name, conv, reason)
    assert conv != "xla" or "convolution" in reason, reason
    assert execution.auto_strategy(local_fn(model), (params, x, y), "gpu", 256)[0] == "vmap"
  # Shared arguments (the whole training set) do not count; all nodes in one group -> vmap.
  model = make_model("logreg", 10)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"])
  assert execution.auto_strategy(local_fn(model), (params, x, y), "cpu", 16)[0] == "vmap"
  big = {"w": jax.ShapeDtypeStruct((2_000_000,), jnp.float32)}
  assert execution.auto_strategy(lambda p: p["w"].sum(), (big,), "cpu", 16)[0] == "map"


def test_node_map_auto_counts_only_mapped_arguments():
  # 40 floats per node mapped, a 10**7-float shared argument: groups of 64, not a loop.
  execution.chosen.clear()
  def per_node(w, shared):
    return (w * shared[:40]).sum()
  out = execution.node_map(per_node, in_axes=(0, None), strategy="auto")(
      jnp.ones((128, 40)), jnp.ones(10**7))
  assert out.shape == (128,)
  assert execution.chosen["test_node_map_auto_counts_only_mapped_arguments.<locals>.per_node"][0] \
      == "chunk:64"


def test_bad_strategy_and_axes_are_named():
  with pytest.raises(ValueError, match="'chunk:0'"):
    execution.validate_strategy("chunk:0")
  with pytest.raises(ValueError, match="train.execution.*'loop'"):
    validate_config(tiny_config(train__execution="loop"))
  with pytest.raises(ValueError, match="in_axes of 0 or None"):
    execution.node_map(lambda a: a, in_axes=1)(jnp.ones((2, 3)))


def test_chunks_reuse_one_compilation_and_donate_the_state():
  """A time-varying W (stacked per round) is data: the second chunk must hit the cache."""
  model, data, params = _setup("mlp")
  algorithm = dfedavg(cross_entropy_loss(model), lr=0.1, local_steps=2, batch_size=8)
  run_chunk = make_chunk_runner(algorithm)
  state = algorithm.init(params)
  key = jax.random.key(3)
  for chunk in range(3):
    rounds_R = jnp.arange(2 * chunk, 2 * chunk + 2, dtype=jnp.int32)
    W_R = DenseMixing(jnp.asarray(np.stack([_ring(N, 1 + (2 * chunk + r) % 2) for r in range(2)])))
    old_leaf = jax.tree.leaves(state.params)[0]
    state, _ = run_chunk(state, data, key, rounds_R, W_R, True)
    assert old_leaf.is_deleted(), "the input state was not donated"
    assert run_chunk._cache_size() == 1, f"recompiled at chunk {chunk}"
