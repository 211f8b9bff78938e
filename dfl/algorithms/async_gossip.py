"""Asynchronous gossip learning: every node trains and averages on its own clock.

The event schedule of the variance paper's simulator (Tian, Al-Ars, Kitsak, Hofstee, "Vanishing
Variance Problem in Fully Decentralized Neural-Network Systems", arXiv 2404.04616; reference
github.com/twoentartian/DFL_torch, py_src/simulator_common.py `simulation_phase_training` /
`simulation_phase_averaging`, py_src/node.py `check_averaging`, py_src/config_file_util/
default_config.py `get_next_training_time` / `get_average_buffer_size`), simulated in ticks
inside the compiled program: one round of the engine is one tick [t, t + 1).

Per tick t, every node i whose next training event e_i falls in the tick (e_i < t + 1):

  1. trains: y_i = LocalUpdate_i(θ_i) (K optimizer steps on its own data), θ_i <- y_i, and
     schedules its next event e_i <- e_i + p_i u, u ~ U(1 - j, 1 + j) (j = interval_jitter;
     DFL_torch's gossip preset draws the next tick as the last + randint(8, 12));
  2. sends y_i to each of its neighbours, which add it to their buffers (sum and count).

Then every node whose buffer holds at least d_i models (its degree: DFL_torch's buffer size
R * degree with R = 1), from any senders, repeated ones included, averages

    θ_i <- β θ_i + (1 - β) (1 / m_i) Σ_{buffered} y          (m_i models in the buffer)

(DFL_torch's ConservativeModelAverager(β)) and empties its buffer. β = self_weight.

Periods: p_i = T_i / dt ticks, T_i = node i's time for one local phase plus sending its model to
its d_i neighbours (the synchronous clock's per-node formula, dfl/system/clock.py) and dt =
system.tick_seconds (0: the fastest node's T_i, so it fires every tick); without the system
model every p_i = 1 (one event per node and tick). A node fires at most once per tick: an event
due while it is still in the tick runs in the next one, and a node whose T_i is shorter than a
longer tick chosen by system.tick_seconds is slowed to one event per tick (p_i = max(1, T_i/dt)),
a cost bound for very heterogeneous populations that favours the synchronous side. Every node's first event is at tick 0
(DFL_torch's gossip preset).

Reduction: with equal periods of one tick and j = 0 every node trains and averages every tick,
which is synchronous gossip learning (dfl/algorithms/gossip.py) on the same keys.

Deviations from DFL_torch: time is quantised to ticks of dt seconds (events within one tick are
simultaneous: the models sent in a tick are those trained in it, as in DFL_torch's phases);
sending takes no extra tick; the periods follow the system model instead of a fixed 10 +- 2;
the reported loss is the mean over nodes of each node's latest training loss.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics, node_keys
from dfl.hyperparameters import Hyperparameter, require
from dfl.algorithms.local_then_gossip import run_local_phase
from dfl.local import make_local_sgd, make_optimizer
from dfl.mixing import DenseMixing, SparseMixing, messages_per_step, mix

PyTree = object
JITTER_STREAM = 2**31 - 7  # fold_in tag of the event-interval draws, apart from node keys


class AsyncGossipState(NamedTuple):
  params: PyTree  # [N, ...] θ_i
  opt_state: PyTree  # [N, ...] local optimizer state (kept, as on a node that trains on)
  next_event_N: jax.Array  # [N] float32, the tick of each node's next training event
  buffer: PyTree  # [N, ...] sum of the models received since the last average
  count_N: jax.Array  # [N] int32 models in the buffer
  last_loss_N: jax.Array  # [N] each node's latest training loss


def _select(mask_N, new, old):
  def pick(n, o):
    return jnp.where(mask_N.reshape(mask_N.shape + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


def _from_senders(mixing, fire_N):
  """(mixing M with M_ij = [j -> i is an edge and j fires], the edges' count per row)."""
  fire = fire_N.astype(jnp.float32)
  if isinstance(mixing, DenseMixing):
    n = mixing.W.shape[0]
    A_NxN = ((mixing.W != 0) & ~jnp.eye(n, dtype=bool)).astype(jnp.float32)
    M_NxN = A_NxN * fire[None, :]
    return DenseMixing(M_NxN), M_NxN.sum(axis=1)
  idx_NxK = mixing.indices
  self_N1 = jnp.arange(idx_NxK.shape[0], dtype=idx_NxK.dtype)[:, None]
  edge_NxK = ((mixing.weights != 0) & (idx_NxK != self_N1)).astype(jnp.float32)
  w_NxK = edge_NxK * fire[idx_NxK]
  return SparseMixing(idx_NxK, w_NxK), w_NxK.sum(axis=1)


def async_gossip(loss_fn: Callable, *, lr: float, local_steps: int, batch_size: int,
                 period_ticks_N: Optional[np.ndarray] = None, num_nodes: int,
                 self_weight: float = 0.5, interval_jitter: float = 0.0, momentum: float = 0.0,
                 weight_decay: float = 0.0, lr_decay: float = 1.0,
                 clip_norm: Optional[float] = None,
                 augment: Optional[Callable] = None) -> Algorithm:
  """Builds asynchronous gossip learning (module docstring).

  Args:
    period_ticks_N: [N] p_i >= 1, ticks between a node's training events (None: all 1).
    interval_jitter: j in [0, 1), each interval is p_i * U(1 - j, 1 + j).
    lr_decay: eta_t = eta * lr_decay**t, t the tick.
  """
  if not 0.0 <= self_weight < 1.0:
    raise ValueError(f"algorithm.self_weight (β) must be in [0, 1), got {self_weight}.")
  if not 0.0 <= interval_jitter < 1.0:
    raise ValueError(f"algorithm.interval_jitter must be in [0, 1), got {interval_jitter}.")
  period_N = (np.ones(num_nodes) if period_ticks_N is None
              else np.asarray(period_ticks_N, np.float64))
  if period_N.shape != (num_nodes,) or not np.all(period_N >= 1 - 1e-9):
    raise ValueError(f"async_gossip needs one period >= 1 tick per node, got {period_N}; a "
                     "system.tick_seconds longer than the fastest node's period would make it "
                     "fire twice in a tick.")
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             augment=augment)
  beta = float(self_weight)

  def init(params_N):
    n = jax.tree.leaves(params_N)[0].shape[0]
    return AsyncGossipState(params_N, jax.vmap(optimizer.init)(params_N),
                            jnp.zeros(n, jnp.float32), jax.tree.map(jnp.zeros_like, params_N),
                            jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.float32))

  def round_fn(state: AsyncGossipState, inputs: RoundInputs):
    n = state.count_N.shape[0]
    t = inputs.round.astype(jnp.float32)
    fire_N = state.next_event_N < t + 1
    lr_scale = jnp.asarray(lr_decay, jnp.float32) ** inputs.round
    trained, opt_state, loss_N = run_local_phase(local_sgd, state.params, state.opt_state,
                                                 node_keys(inputs.key, n), inputs.data, lr_scale)
    params = _select(fire_N, trained, state.params)
    opt_state = _select(fire_N, opt_state, state.opt_state)
    interval_N = jnp.asarray(period_N, jnp.float32)
    if interval_jitter:
      interval_N = interval_N * jax.random.uniform(
          jax.random.fold_in(inputs.key, JITTER_STREAM), (n,), minval=1 - interval_jitter,
          maxval=1 + interval_jitter)
    next_event_N = jnp.where(fire_N, state.next_event_N + interval_N, state.next_event_N)

    senders, received_N = _from_senders(inputs.mixing, fire_N)
    buffer = jax.tree.map(jnp.add, state.buffer, mix(senders, params))
    count_N = state.count_N + received_N.astype(jnp.int32)
    out_degree_N, degree_N = messages_per_step(inputs.mixing)
    average_N = (count_N >= degree_N) & (count_N > 0)
    scale_N = 1.0 / jnp.maximum(count_N, 1).astype(jnp.float32)

    def merge(x, b):
      s = scale_N.reshape((n,) + (1,) * (x.ndim - 1)).astype(x.dtype)
      return beta * x + (1 - beta) * b * s
    params = _select(average_N, jax.tree.map(merge, params, buffer), params)
    buffer = _select(average_N, jax.tree.map(jnp.zeros_like, buffer), buffer)
    count_N = jnp.where(average_N, 0, count_N)
    last_loss_N = jnp.where(fire_N, loss_N, state.last_loss_N)

    sent_N = jnp.where(fire_N, out_degree_N, 0).astype(jnp.int32)
    metrics = RoundMetrics(loss=last_loss_N.mean(), transfers=sent_N.sum(), sent_N=sent_N,
                           received_N=received_N.astype(jnp.int32), trained_N=fire_N)
    return AsyncGossipState(params, opt_state, next_event_N, buffer, count_N, last_loss_N), metrics

  return Algorithm(init, round_fn)


def periods_in_ticks(node_seconds_N: Optional[np.ndarray], tick_seconds: float) -> tuple:
  """(p_N, dt): p_i = max(1, T_i / dt) with dt = tick_seconds, or the fastest T_i when 0 (then no
  node is capped); without a system model (None) every period is one tick of one (unit)
  second. A node faster than the tick fires once per tick: it is slowed to the tick."""
  if node_seconds_N is None:
    return None, 1.0
  seconds_N = np.asarray(node_seconds_N, np.float64)
  dt = float(tick_seconds) or float(seconds_N.min())
  if dt <= 0:
    raise ValueError("async_gossip needs node periods > 0 seconds; the system model gives a "
                     f"fastest node period of {seconds_N.min()} s.")
  return np.maximum(seconds_N / dt, 1.0), dt


INTERVAL_JITTER = Hyperparameter(
    "interval_jitter", 0.0, doc="relative jitter of each node's training interval",
    check=lambda a: require(isinstance(a.interval_jitter, (int, float)) and
                            0 <= a.interval_jitter < 1,
                            f"algorithm.interval_jitter must be in [0, 1), got "
                            f"{a.interval_jitter!r}."))
SELF_WEIGHT = Hyperparameter(
    "self_weight", 0.5, doc="beta, the weight on the own model",
    check=lambda a: require(0 <= a.self_weight < 1, f"algorithm.self_weight must be in [0, 1) "
                            f"for async_gossip, got {a.self_weight}."))


# Buffers of the neighbours' models: a fixed graph (no time-varying topology, no schedule).
@registry.register("async_gossip", uses_topology=True, static_topology_only=True,
                   hyperparameters=(
    common.LR, common.LR_DECAY, common.LOCAL_STEPS, common.BATCH_SIZE, common.WEIGHT_DECAY,
    common.CLIP_NORM, common.MOMENTUM, SELF_WEIGHT, INTERVAL_JITTER))
def build(a, ctx) -> Algorithm:
  """The registry's builder (K = local_steps, default 5; self_weight = β)."""
  if ctx.mixer is not None:
    raise ValueError("algorithm.name='async_gossip' averages its own buffers; "
                     "variance_correction, aggregation rules and adversaries are not supported.")
  if ctx.merge_rounds:
    raise ValueError("algorithm.name='async_gossip' has no synchronous merge rounds; leave "
                     "topology.schedule='none'.")
  periods_N, _ = periods_in_ticks(ctx.node_seconds, ctx.tick_seconds)
  return async_gossip(ctx.loss_fn, lr=a.lr, local_steps=registry.resolved(a, "local_steps"),
                      batch_size=a.batch_size,
                      period_ticks_N=periods_N, num_nodes=ctx.num_nodes,
                      self_weight=a.self_weight, interval_jitter=a.interval_jitter,
                      momentum=registry.resolved(a, "momentum"),
                      weight_decay=a.weight_decay, lr_decay=a.lr_decay,
                      clip_norm=a.get("clip_norm"), augment=ctx.augment)
