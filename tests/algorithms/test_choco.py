"""CHOCO-SGD (dfl/algorithms/choco.py): identity with gamma = 1 is D-PSGD (the dpsgd code path);
compressed gossip against a numpy loop of the paper's Algorithm 2; bytes per message by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.aggregation.compressors import make_compressor
from dfl.algorithms.base import RoundInputs
from dfl.algorithms.choco import choco
from dfl.algorithms.dpsgd import dpsgd
from dfl.engine import make_chunk_runner
from dfl.mixing import DenseMixing
from tests.algorithms._tiny import N, ring_W, tiny_problem

KEY = jax.random.key(5)


def run(algorithm, params_N, data, W, rounds):
  state = algorithm.init(jax.tree.map(jnp.array, params_N))
  state, metrics = make_chunk_runner(algorithm)(
      state, data, KEY, jnp.arange(rounds, dtype=jnp.int32),
      DenseMixing(jnp.asarray(W, jnp.float32)), False)
  return state, metrics


def different_inits(params_N, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params_N)


@pytest.mark.parametrize("momentum", [0.9])  # carried across rounds, as in D-PSGD
def test_identity_with_unit_consensus_step_is_dpsgd(momentum):
  loss_fn, params_N, data = tiny_problem(sizes=(12, 7, 5, 12))
  params_N = different_inits(params_N)  # x̂ = 0 at the start must not matter
  kw = dict(lr=0.1, batch_size=4, local_steps=2, momentum=momentum)
  got, _ = run(choco(loss_fn, make_compressor("identity"), consensus_step=1.0, **kw),
               params_N, data, ring_W(), 4)
  want, _ = run(dpsgd(loss_fn, **kw), params_N, data, ring_W(), 4)
  for g, w in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  lonely, _ = run(choco(loss_fn, make_compressor("identity"), consensus_step=0.5, **kw),
                  params_N, data, ring_W(), 4)
  assert not np.allclose(jax.tree.leaves(lonely.params)[0], jax.tree.leaves(want.params)[0],
                         atol=1e-3)  # gamma is used


def numpy_choco_gossip(x_NxD, W, gamma, compress, rounds):
  """Algorithm 2 of the paper with no gradient step (CHOCO-Gossip), one flat leaf per node."""
  x, x_hat = x_NxD.astype(np.float64), np.zeros_like(x_NxD, np.float64)
  for _ in range(rounds):
    q = np.stack([compress(x[i] - x_hat[i]) for i in range(len(x))])
    x_hat = x_hat + q
    x = x + gamma * (W @ x_hat - x_hat)
  return x


def numpy_top_k(v, k):
  out = np.zeros_like(v)
  idx = np.argsort(-np.abs(v), kind="stable")[:k]
  out[idx] = v[idx]
  return out


def numpy_sign(v):
  return np.abs(v).sum() / v.size * np.where(v >= 0, 1.0, -1.0)


@pytest.mark.parametrize("name, compress", [
    ("top_k", lambda v: numpy_top_k(v, max(1, int(np.floor(v.size * 0.25 + 1e-9))))),
    ("sign", numpy_sign)])
def test_compressed_gossip_against_a_numpy_loop(name, compress):
  """lr = 0: the rounds are the gossip part alone. Each leaf is compressed on its own."""
  loss_fn, params_N, data = tiny_problem()
  params_N = different_inits(params_N)
  W, gamma, rounds = ring_W(), 0.4, 6
  algorithm = choco(loss_fn, make_compressor(name, ratio=0.25), consensus_step=gamma, lr=0.0,
                    batch_size=4)
  state, _ = run(algorithm, params_N, data, W, rounds)
  for got, x0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(params_N)):
    x0 = np.asarray(x0).reshape(N, -1)
    want = numpy_choco_gossip(x0, W, gamma, compress, rounds)
    np.testing.assert_allclose(np.asarray(got).reshape(N, -1), want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(want, x0, atol=1e-3)  # something moved
    np.testing.assert_allclose(want.mean(0), x0.mean(0), atol=1e-5)  # W doubly: mean kept


def test_compressed_gossip_reaches_the_average():
  loss_fn, params_N, data = tiny_problem()
  params_N = different_inits(params_N)
  algorithm = choco(loss_fn, make_compressor("top_k", ratio=0.25), consensus_step=0.3, lr=0.0,
                    batch_size=4)
  state, _ = run(algorithm, params_N, data, ring_W(), 300)
  for got, x0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(params_N)):
    np.testing.assert_allclose(got, np.broadcast_to(np.mean(x0, 0), got.shape), atol=1e-4)


# One model of the tiny MLP 5-8-3: leaves of 40, 8, 24 and 3 float32 entries (300 bytes).
# Per message: top_k / random_k at 0.1 keep 4 + 1 + 2 + 1 = 8 entries of 4 + 4 bytes; qsgd with
# s = 16 sends 1 + 5 bits per entry and a float32 norm per leaf: (30 + 4) + (6 + 4) + (18 + 4) +
# (3 + 4); sign one bit per entry and a norm: (5 + 4) + (1 + 4) + (3 + 4) + (1 + 4).
MESSAGE_BYTES = {"identity": 300, "top_k": 64, "random_k": 64, "qsgd": 73, "sign": 26}


@pytest.mark.parametrize("name", sorted(MESSAGE_BYTES))
def test_bytes_per_round_by_hand(name):
  loss_fn, params_N, data = tiny_problem()
  algorithm = choco(loss_fn, make_compressor(name, ratio=0.1, levels=16), lr=0.1, batch_size=4)
  state = algorithm.init(params_N)
  key = jax.random.key(0)
  inputs = RoundInputs(jnp.int32(0), key, DenseMixing(jnp.asarray(ring_W(), jnp.float32)), data,
                       key)
  seen = []

  def traced(state, inputs):  # message_bytes is a Python int, known when the round is traced
    state, metrics = algorithm.round(state, inputs)
    seen.append(metrics.message_bytes)
    return state
  jax.eval_shape(traced, state, inputs)
  assert seen == [MESSAGE_BYTES[name]]


def test_bad_consensus_step_names_the_field():
  loss_fn, _, _ = tiny_problem()
  with pytest.raises(ValueError, match="algorithm.consensus_step"):
    choco(loss_fn, make_compressor("identity"), consensus_step=0.0, lr=0.1, batch_size=4)
