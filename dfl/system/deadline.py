"""Round deadlines inside the compiled round: late nodes' updates are dropped or used stale.

`with_deadline(algorithm, ...)` wraps an Algorithm of the local-then-gossip family (dpsgd,
dfedavg(m), dfedsam, gossip) or of FedAvg's server family (fedavg, fedsam). Every round it computes
on device each node's time T_i = c_i + [m_i > 0](l_i + m_i * bytes / b_i) (the clock's formula,
dfl/system/clock.py; m_i the messages node i sends this round: its out-degree in the round's W,
or one upload for a FedAvg client) from per-node figures held in the state (data, not program
constants), and marks late_N = T_i > D. While the inner round is traced a context holds late_N
and the round-start models x^t, which two small hooks read:

  gossip (`deadline_mixer`, in the mixer slot of dfl/algorithms/local_then_gossip.py, first
    gossip step of the round): a late node did not finish its local phase by D, so its y_j is
    replaced by x_j^t, and
      drop:  its neighbours leave it out, their weight on it moving to their own model
             (W'_ij = 0, W'_ii += W_ij for late j != i; rows still sum to 1);
      stale: its neighbours use x_j^t, the model it held at the round start.
    The late node itself mixes x_j^t with its on-time neighbours' models.
  server (`server_weights`, read by dfl/algorithms/fedavg.py): the server averages the on-time
    clients' models (drop; none on time: x^{t+1} = x^t), or uses x^t in place of a late
    client's model (stale).

Offline nodes (system.availability, dfl/system/availability.py; the [R, N] online table is a
program constant read at the round index) are late nodes in drop mode whatever
system.late_updates says: their y_j is x_j^t and their neighbours (or the server) leave them
out. With late_updates=stale and a deadline, late online nodes are still used stale. Without a
deadline (deadline_seconds = 0) only the offline nodes are affected.

`RoundMetrics.late_N` reports the late nodes among those that trained and were online (offline
nodes are not counted late: the clock reports them as `offline_fraction`); the clock turns it into
`dropped_update_fraction`. Who is late depends only on the fixed per-node figures and the
round's graph (and, with system.compute_jitter > 0, the round's compute factors): with fixed
speeds and no jitter the same nodes are late every round.

Deviations: messages are counted as sent even when late (they were, after the deadline), and an
offline node's messages too (sent_N / transfers are the inner algorithm's); a late or offline
node's local optimizer state (momentum with keep_optimizer_state) still advances; an offline
node, like a late one, still mixes its round-start model with its online neighbours' models.
"""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dfl.mixing import DenseMixing, SparseMixing, messages_per_step, mix
from dfl.system.model import compute_factors

GOSSIP_FAMILY = {"dpsgd", "dfedavg", "dfedavgm", "dfedsam", "gossip"}
SERVER_FAMILY = {"fedavg", "fedsam"}
SUPPORTS_DEADLINE = GOSSIP_FAMILY | SERVER_FAMILY


class _Context(NamedTuple):
  late_N: Any  # [N] bool: updates replaced by the round-start model (late or offline)
  dropped_N: Any  # [N] bool: left out of the neighbours' mix / the server's mean; None: none
  start_params: Any
  mode: str
  steps: list  # gossip steps traced so far this round


_STACK: list[_Context] = []


def current() -> Optional[_Context]:
  return _STACK[-1] if _STACK else None


@contextlib.contextmanager
def _deadline_context(late_N, dropped_N, start_params, mode: str):
  _STACK.append(_Context(late_N, dropped_N, start_params, mode, []))
  try:
    yield
  finally:
    _STACK.pop()


class DeadlineState(NamedTuple):
  inner: Any  # the algorithm's own state
  compute_seconds_N: jax.Array  # [N] c_i
  latency_N: jax.Array  # [N] l_i
  bandwidth_N: jax.Array  # [N] b_i, bytes per second

  @property
  def params(self):
    return self.inner.params


def _select(late_N, old, new):
  def pick(o, n):
    mask = late_N.reshape(late_N.shape + (1,) * (n.ndim - 1))
    return jnp.where(mask, o, n)
  return jax.tree.map(pick, old, new)


def drop_late(mixing, late_N):
  """W with the late nodes' columns (off the diagonal) moved onto each row's own weight."""
  late_N = late_N.astype(bool)
  if isinstance(mixing, DenseMixing):
    W = mixing.W
    n = W.shape[0]
    off_NxN = ~jnp.eye(n, dtype=bool)
    removed_NxN = jnp.where(off_NxN & late_N[None, :], W, 0)
    return DenseMixing(W - removed_NxN + jnp.diag(removed_NxN.sum(axis=1)))
  idx_NxK, w_NxK = mixing.indices, mixing.weights
  n = idx_NxK.shape[0]
  self_N1 = jnp.arange(n, dtype=idx_NxK.dtype)[:, None]
  removed_NxK = jnp.where(late_N[idx_NxK] & (idx_NxK != self_N1), w_NxK, 0)
  return SparseMixing(jnp.concatenate([self_N1, idx_NxK], axis=1),
                      jnp.concatenate([removed_NxK.sum(axis=1, keepdims=True),
                                       w_NxK - removed_NxK], axis=1))


def deadline_mixer(inner=None):
  """A mixer(mixing, params) for the gossip family: in a round under a deadline, its first step
  mixes the round-start models of the late nodes (module docstring), then applies `inner`."""
  inner = inner or mix

  def step(mixing, params):
    ctx = current()
    if ctx is None or ctx.steps:
      return inner(mixing, params)
    ctx.steps.append(None)
    params = _select(ctx.late_N, ctx.start_params, params)
    if ctx.dropped_N is not None:
      mixing = drop_late(mixing, ctx.dropped_N)
    return inner(mixing, params)
  return step


def server_weights(clients_M, trained_M, start_model):
  """(models_M, weights_M or None) for the server's mean under a deadline: None outside one.
  drop: weights 1 for on-time clients, 0 for late ones; stale: late clients' models replaced by
  the round-start model x^t, equal weights."""
  ctx = current()
  if ctx is None:
    return trained_M, None
  late_M = ctx.late_N[clients_M]
  if ctx.mode == "stale":
    start_M = jax.tree.map(lambda g, y: jnp.broadcast_to(g, y.shape), start_model, trained_M)
    trained_M = _select(late_M, start_M, trained_M)
  if ctx.dropped_N is None:
    return trained_M, None
  return trained_M, (~ctx.dropped_N[clients_M]).astype(jnp.float32)


def with_deadline(algorithm, kind: str, system, samples_N: np.ndarray, model_bytes: int):
  """The algorithm under system.deadline_seconds and system.availability (its online table);
  `kind` is "gossip" or "server"."""
  from dfl.algorithms.base import Algorithm
  deadline, mode = float(system.deadline), system.late_updates
  online_RxN = system.online_RxN
  compute_N = np.asarray(samples_N, np.float64) / system.samples_per_second_N

  def init(params_N):
    return DeadlineState(algorithm.init(params_N), jnp.asarray(compute_N, jnp.float32),
                         jnp.asarray(system.latency_N, jnp.float32),
                         jnp.asarray(system.bandwidth_N, jnp.float32))

  def round_fn(state: DeadlineState, inputs):
    n = state.compute_seconds_N.shape[0]
    if kind == "gossip":
      sent_N = messages_per_step(inputs.mixing)[0].astype(jnp.float32)
    else:
      sent_N = jnp.ones(n, jnp.float32)
    compute_N = state.compute_seconds_N
    if system.compute_jitter > 0:  # this round's factors (the clock draws the same)
      compute_N = compute_N * compute_factors(inputs.key, n, system.compute_jitter)
    seconds_N = compute_N + jnp.where(
        sent_N > 0, state.latency_N + sent_N * float(model_bytes) / state.bandwidth_N, 0.0)
    late_N = seconds_N > deadline if deadline > 0 else jnp.zeros(n, bool)
    replaced_N, offline_N = late_N, None
    if online_RxN is not None:  # this round's row of the host-computed table
      offline_N = ~jnp.asarray(online_RxN)[inputs.round]
      replaced_N = late_N | offline_N
      late_N = late_N & ~offline_N
    dropped_N = replaced_N if mode == "drop" else offline_N
    with _deadline_context(replaced_N, dropped_N, state.inner.params, mode):
      inner, metrics = algorithm.round(state.inner, inputs)
    trained_N = metrics.trained_N
    late_N = late_N if trained_N is None else late_N & trained_N.astype(bool)
    return (DeadlineState(inner, state.compute_seconds_N, state.latency_N, state.bandwidth_N),
            metrics._replace(late_N=late_N))
  return Algorithm(init, round_fn)
