"""Round deadlines: the late nodes' updates, and only theirs, are dropped or used stale.

The expected models are computed apart: every node's local update y_i comes from the same
algorithm run without mixing (W = I), and the round's result is the hand-built
W' (late columns moved onto the diagonal) or W applied in numpy.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.algorithms.base import RoundInputs
from dfl.algorithms.dfedavg import dfedavg
from dfl.algorithms.fedavg import fedavg
from dfl.mixing import DenseMixing, SparseMixing
from dfl.system.deadline import deadline_mixer, with_deadline
from dfl.system.model import SystemModel
from tests.algorithms._tiny import N, ring_W, tiny_problem

K, B, MODEL_BYTES = 2, 4, 1000
# Node 2 computes at 1 sample/s: 8 s > the 5 s deadline; the others at 100/s (0.08 s), and send
# 2 models of 1000 bytes at 1e4 B/s after 0.1 s: 0.38 s. Node 0 is slowed to 6 s by latency.
SPEED = [100.0, 100.0, 1.0, 100.0]
LATENCY = [5.8, 0.1, 0.1, 0.1]
LATE = np.array([True, False, True, False])


def _system(mode):
  return SystemModel(np.asarray(SPEED), np.full(N, 1e4), np.asarray(LATENCY), deadline=5.0,
                     late_updates=mode)


def _flat(params_N):
  return np.concatenate([np.asarray(x).reshape(N, -1) for x in jax.tree.leaves(params_N)], 1)


def _inputs(data, mixing, t=0):
  key = jax.random.key(3)
  return RoundInputs(jnp.int32(t), jax.random.fold_in(key, t), mixing, data, key)


def _local_updates(loss_fn, params_N, data):
  plain = dfedavg(loss_fn, lr=0.1, local_steps=K, batch_size=B)
  state, _ = plain.round(plain.init(params_N), _inputs(data, DenseMixing(jnp.eye(N))))
  return _flat(state.params)


def _perturbed(params_N):
  # Different starting models per node, so that "the round-start model" is visible.
  return jax.tree.map(lambda x: x + 0.01 * jnp.arange(N, dtype=x.dtype).reshape(
      (N,) + (1,) * (x.ndim - 1)), params_N)


@pytest.mark.parametrize("mode", ["drop", "stale"])
@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_gossip_round_replaces_exactly_the_late_updates(mode, form):
  loss_fn, params_N, data = tiny_problem()
  params_N = _perturbed(params_N)
  W = ring_W()
  y = _local_updates(loss_fn, params_N, data)
  x0 = _flat(params_N)
  sent = np.where(LATE[:, None], x0, y)  # late nodes: their round-start model
  if mode == "drop":
    W_used = W.copy()
    for i in range(N):
      for j in range(N):
        if i != j and LATE[j]:
          W_used[i, i] += W_used[i, j]
          W_used[i, j] = 0.0
  else:
    W_used = W
  expected = W_used @ sent

  if form == "dense":
    mixing = DenseMixing(jnp.asarray(W, jnp.float32))
  else:
    idx = np.array([[i, (i - 1) % N, (i + 1) % N] for i in range(N)], np.int32)
    mixing = SparseMixing(jnp.asarray(idx), jnp.full((N, 3), 1 / 3, jnp.float32))
  inner = dfedavg(loss_fn, lr=0.1, local_steps=K, batch_size=B, mixer=deadline_mixer())
  algorithm = with_deadline(inner, "gossip", _system(mode), np.full(N, K * B), MODEL_BYTES)
  state, metrics = algorithm.round(algorithm.init(params_N), _inputs(data, mixing))
  np.testing.assert_allclose(_flat(state.params), expected, rtol=1e-5, atol=1e-6)
  assert np.asarray(metrics.late_N).tolist() == LATE.tolist()


def test_gossip_without_late_nodes_is_the_plain_round():
  loss_fn, params_N, data = tiny_problem()
  system = SystemModel(np.full(N, 100.0), np.full(N, 1e4), np.full(N, 0.1), deadline=50.0)
  mixing = DenseMixing(jnp.asarray(ring_W(), jnp.float32))
  plain = dfedavg(loss_fn, lr=0.1, local_steps=K, batch_size=B)
  timed = with_deadline(dfedavg(loss_fn, lr=0.1, local_steps=K, batch_size=B,
                                mixer=deadline_mixer()), "gossip", system, np.full(N, K * B),
                        MODEL_BYTES)
  a, _ = plain.round(plain.init(params_N), _inputs(data, mixing))
  b, metrics = timed.round(timed.init(params_N), _inputs(data, mixing))
  np.testing.assert_array_equal(_flat(a.params), _flat(b.params))
  assert not np.asarray(metrics.late_N).any()


@pytest.mark.parametrize("mode", ["drop", "stale"])
def test_fedavg_server_averages_the_on_time_clients(mode):
  loss_fn, params_N, data = tiny_problem()
  y = _local_updates(loss_fn, params_N, data)  # every client starts from the global model
  x0 = _flat(params_N)[0]
  # FedAvg's clients send one model: node 0 at 0.08 + 5.8 + 0.1 s and node 2 at 8 s are late.
  if mode == "drop":
    expected = y[~LATE].mean(axis=0)
  else:
    expected = np.where(LATE[:, None], x0[None], y).mean(axis=0)
  inner = fedavg(loss_fn, num_nodes=N, lr=0.1, local_steps=K, batch_size=B, client_fraction=1.0)
  algorithm = with_deadline(inner, "server", _system(mode), np.full(N, K * B), MODEL_BYTES)
  state, metrics = algorithm.round(algorithm.init(params_N), _inputs(data, None))
  np.testing.assert_allclose(_flat(state.params), np.broadcast_to(expected, (N, len(expected))),
                             rtol=1e-5, atol=1e-6)
  assert np.asarray(metrics.late_N).tolist() == LATE.tolist()


def test_fedavg_with_every_client_late_keeps_the_global_model():
  loss_fn, params_N, data = tiny_problem()
  system = SystemModel(np.full(N, 1.0), np.full(N, 1e4), np.full(N, 0.1), deadline=1.0)
  inner = fedavg(loss_fn, num_nodes=N, lr=0.1, local_steps=K, batch_size=B, client_fraction=0.5)
  algorithm = with_deadline(inner, "server", system, np.full(N, K * B), MODEL_BYTES)
  state, metrics = algorithm.round(algorithm.init(params_N), _inputs(data, None))
  np.testing.assert_array_equal(_flat(state.params), _flat(params_N))
  assert np.asarray(metrics.late_N).sum() == 2  # the two sampled clients, no others


def test_jittered_compute_decides_who_is_late_per_round():
  # The factors exp(sigma z - sigma^2/2) recomputed from the round key decide lateness.
  from dfl.system.model import JITTER_STREAM
  loss_fn, params_N, data = tiny_problem()
  sigma, deadline = 1.0, 0.5
  system = SystemModel(np.full(N, 20.0), np.full(N, 1e4), np.full(N, 0.1), deadline=deadline,
                       compute_jitter=sigma)
  inner = dfedavg(loss_fn, lr=0.1, local_steps=K, batch_size=B, mixer=deadline_mixer())
  algorithm = with_deadline(inner, "gossip", system, np.full(N, K * B), MODEL_BYTES)
  state, mixing = algorithm.init(params_N), DenseMixing(jnp.asarray(ring_W(), jnp.float32))
  seen = []
  for t in range(4):
    inputs = _inputs(data, mixing, t)
    state, metrics = algorithm.round(state, inputs)
    z = np.asarray(jax.random.normal(jax.random.fold_in(inputs.key, JITTER_STREAM), (N,)))
    seconds = K * B / 20.0 * np.exp(sigma * z - sigma ** 2 / 2) + 0.1 + 2 * MODEL_BYTES / 1e4
    assert np.asarray(metrics.late_N).tolist() == (seconds > deadline).tolist()
    seen.append(tuple(seconds > deadline))
  assert len(set(seen)) > 1  # who is late changes from round to round
