"""Asynchronous gossip learning: its reduction to synchronous gossip learning, and the event
schedule of nodes with different periods checked tick by tick against the buffers' rule."""
import jax
import jax.numpy as jnp
import numpy as np

from dfl.algorithms.async_gossip import async_gossip, periods_in_ticks
from dfl.algorithms.base import RoundInputs
from dfl.algorithms.gossip import gossip_learning
from dfl.mixing import DenseMixing
from tests.algorithms._tiny import N, ring_W, tiny_problem

BETA = 0.5
KW = dict(lr=0.1, local_steps=2, batch_size=4, self_weight=BETA)


def _flat(params_N):
  return np.concatenate([np.asarray(x).reshape(N, -1) for x in jax.tree.leaves(params_N)], 1)


def _run(algorithm, params_N, data, ticks):
  key, mixing = jax.random.key(7), DenseMixing(jnp.asarray(ring_W(), jnp.float32))
  state, history = algorithm.init(params_N), []
  step = jax.jit(algorithm.round)
  for t in range(ticks):
    state, metrics = step(state, RoundInputs(jnp.int32(t), jax.random.fold_in(key, t), mixing,
                                             data, key))
    history.append((state, metrics))
  return history


def test_equal_periods_one_event_per_tick_is_synchronous_gossip_learning():
  loss_fn, params_N, data = tiny_problem()
  sync = _run(gossip_learning(loss_fn, **KW), params_N, data, 3)
  asyn = _run(async_gossip(loss_fn, num_nodes=N, **KW), params_N, data, 3)
  for (s, _), (a, m) in zip(sync, asyn):
    np.testing.assert_allclose(_flat(a.params), _flat(s.params), rtol=1e-5, atol=1e-6)
    assert np.asarray(m.trained_N).all()
    assert np.asarray(m.sent_N).tolist() == [2] * N  # each node to its two ring neighbours


def test_slow_nodes_fire_every_other_tick_and_buffers_follow_the_rule():
  # Periods [1, 2, 1, 2] ticks on a ring 0-1-2-3-0: nodes 0 and 2 train every tick, 1 and 3 at
  # ticks 0 and 2. At tick 1 only 0 and 2 send: nodes 1 and 3 receive 2 models (their degree)
  # and average; nodes 0 and 2 receive nothing and keep the model they just trained (and sent).
  loss_fn, params_N, data = tiny_problem()
  history = _run(async_gossip(loss_fn, num_nodes=N, period_ticks_N=np.array([1, 2, 1, 2]),
                              **KW), params_N, data, 4)
  fired = [np.asarray(m.trained_N).tolist() for _, m in history]
  assert fired == [[True] * 4, [True, False, True, False]] * 2
  (s0, _), (s1, m1) = history[0], history[1]
  x0, x1 = _flat(s0.params), _flat(s1.params)
  sent_by_0_and_2 = x1[[0, 2]]
  for i in (1, 3):  # both neighbours of 1 and of 3 are nodes 0 and 2
    np.testing.assert_allclose(x1[i], BETA * x0[i] + (1 - BETA) * sent_by_0_and_2.mean(0),
                               rtol=1e-5, atol=1e-6)
  assert np.asarray(s1.count_N).tolist() == [0, 0, 0, 0]
  assert np.asarray(m1.received_N).tolist() == [0, 2, 0, 2]
  assert np.asarray(m1.sent_N).tolist() == [2, 0, 2, 0]


def test_partial_buffer_waits_for_its_degree():
  # Only node 0 fast (period 1), the others period 3: at tick 1 nodes 1 and 3 hold one model
  # each (from node 0) of the two they wait for; they keep their models and buffers.
  loss_fn, params_N, data = tiny_problem()
  history = _run(async_gossip(loss_fn, num_nodes=N, period_ticks_N=np.array([1, 3, 3, 3]),
                              **KW), params_N, data, 2)
  (s0, _), (s1, _) = history
  assert np.asarray(s1.count_N).tolist() == [0, 1, 0, 1]
  np.testing.assert_array_equal(_flat(s1.params)[1:], _flat(s0.params)[1:])
  np.testing.assert_allclose(_flat(s1.buffer)[1], _flat(s1.params)[0], rtol=1e-6)


def test_periods_from_node_seconds():
  p, dt = periods_in_ticks(np.array([0.5, 1.0, 2.0]), 0.0)
  assert dt == 0.5 and p.tolist() == [1, 2, 4]
  p, dt = periods_in_ticks(np.array([0.5, 1.0, 3.0]), 1.0)  # the fastest capped at one tick
  assert dt == 1.0 and p.tolist() == [1, 1, 3]
  assert periods_in_ticks(None, 0.0) == (None, 1.0)
