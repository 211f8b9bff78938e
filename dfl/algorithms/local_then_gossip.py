"""The shared skeleton of gossip algorithms: local steps on every node, then Q gossip steps.

    y_i = LocalUpdate_i(x_i^t)              (K optimizer steps on node i's own data)
    x^{t+1} = W^Q y                          (Q exchanges with the neighbours)

D-PSGD, DFedAvg(M) and DFedSAM(-MGS) are this skeleton with different local updates; each has
its own file that states its equations and builds the pieces.

A model with state (BatchNorm statistics, `dfl.model_state`): the state is
`StatefulGossipState`, the nodes' model states s_i carried beside x_i; the local phase updates
them (train mode), and the gossip steps mix their floating-point leaves with the same W,
s^{t+1} = W^Q s (plain gossip, `mix`, whatever replaces it for the parameters), unless
`average_stats=False`: then each node keeps its own.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dfl import model_state as model_state_lib
from dfl.adversary.runtime import honest_mean
from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics, node_keys
from dfl.execution import node_map
from dfl.mixing import messages_per_step, mix

PyTree = object
# mixer(mixing, params) -> params: ONE gossip step, applied gossip_steps times per round. Plain
# gossip (`mix`) by default; variance-corrected averaging plugs in here and so corrects after
# every exchange.
Mixer = Callable


class GossipState(NamedTuple):
  params: PyTree  # [N, ...] node models x_i
  opt_state: PyTree  # [N, ...] local optimizer state (momentum buffers)


class StatefulGossipState(NamedTuple):
  """GossipState of a model with state (dfl/model_state.py)."""
  params: PyTree  # [N, ...] node models x_i
  opt_state: PyTree  # [N, ...] local optimizer state (momentum buffers)
  model_state: PyTree  # [N, ...] {collection: tree}, e.g. BatchNorm's batch_stats s_i


def mix_model_state(mixing, model_state_N, gossip_steps: int):
  """s <- W^Q s on the floating-point leaves of the nodes' model states (dfl.mixing.mix)."""
  def steps(leaves):
    for _ in range(gossip_steps):
      leaves = mix(mixing, leaves)
    return leaves
  return model_state_lib.mix_floating(steps, model_state_N)


def local_then_gossip(local_sgd: Callable, optimizer: optax.GradientTransformation, *,
                      gossip_steps: int = 1, reset_optimizer: bool = True,
                      lr_decay: float = 1.0, mixer: Mixer | None = None,
                      num_steps_N: jax.Array | None = None,
                      model_state_N: PyTree | None = None,
                      average_stats: bool = True) -> Algorithm:
  """Builds the Algorithm.

  Args:
    local_sgd: one node's local phase, from `dfl.local.make_local_sgd`.
    optimizer: the local optax optimizer (its state is kept per node).
    gossip_steps: Q, gossip exchanges per round (each one counted as communication).
    reset_optimizer: restart the optimizer state (momentum) at every round, as a per-round
      local optimizer does in DFedAvgM; False carries it across rounds (D-PSGD).
    lr_decay: eta_t = eta * lr_decay**t.
    mixer: one gossip step (mixing, params) -> params, replacing plain `mix`, e.g.
      variance-corrected averaging; applied `gossip_steps` times per round.
    num_steps_N: optional per-node step counts (local epochs over unequal shards).
    model_state_N: the nodes' initial model states, for a stateful model (its local_sgd takes
      and returns the model state); the state is then a StatefulGossipState.
    average_stats: mix the model states with W as the parameters (False: each node keeps its
      own).
  """
  mixer = mixer or mix
  if model_state_N is not None:
    return _stateful(local_sgd, optimizer, gossip_steps=gossip_steps,
                     reset_optimizer=reset_optimizer, lr_decay=lr_decay, mixer=mixer,
                     num_steps_N=num_steps_N, model_state_N=model_state_N,
                     average_stats=average_stats)

  def init(params_N):
    return GossipState(params_N, jax.vmap(optimizer.init)(params_N))

  def round_fn(state: GossipState, inputs: RoundInputs):
    n = jax.tree.leaves(state.params)[0].shape[0]
    opt_state = jax.vmap(optimizer.init)(state.params) if reset_optimizer else state.opt_state
    lr_scale = jnp.asarray(lr_decay, jnp.float32) ** inputs.round
    keys = node_keys(inputs.key, n)
    node_data = inputs.data
    in_data = type(node_data)(None, None, 0, 0)  # x, y shared; one shard row per node
    # Lifted over nodes by the execution strategy in force (vmap or a loop over nodes).
    if num_steps_N is None:
      def local_phase(p, o, k, d):
        return local_sgd(p, o, k, d, lr_scale)
      local = node_map(local_phase, in_axes=(0, 0, 0, in_data))
      params, opt_state, loss_N = local(state.params, opt_state, keys, node_data)
    else:
      def local_phase(p, o, k, d, s):
        return local_sgd(p, o, k, d, lr_scale, s)
      local = node_map(local_phase, in_axes=(0, 0, 0, in_data, 0))
      params, opt_state, loss_N = local(state.params, opt_state, keys, node_data, num_steps_N)
    for _ in range(gossip_steps):
      params = mixer(inputs.mixing, params)
    sent_N, received_N = messages_per_step(inputs.mixing)
    # Byzantine nodes (dfl/adversary) are left out of the reported loss.
    metrics = RoundMetrics(loss=honest_mean(loss_N), transfers=sent_N.sum() * gossip_steps,
                           sent_N=sent_N * gossip_steps, received_N=received_N * gossip_steps)
    return GossipState(params, opt_state), metrics

  return Algorithm(init, round_fn)


def _stateful(local_sgd: Callable, optimizer, *, gossip_steps: int, reset_optimizer: bool,
              lr_decay: float, mixer: Mixer, num_steps_N, model_state_N,
              average_stats: bool) -> Algorithm:
  """`local_then_gossip` for a model with state: the model states ride along."""
  def init(params_N):
    return StatefulGossipState(params_N, jax.vmap(optimizer.init)(params_N), model_state_N)

  def round_fn(state: StatefulGossipState, inputs: RoundInputs):
    n = jax.tree.leaves(state.params)[0].shape[0]
    opt_state = jax.vmap(optimizer.init)(state.params) if reset_optimizer else state.opt_state
    lr_scale = jnp.asarray(lr_decay, jnp.float32) ** inputs.round
    in_data = type(inputs.data)(None, None, 0, 0)  # x, y shared; one shard row per node
    steps_axis = None if num_steps_N is None else 0

    def local_phase(p, o, k, d, steps, s):
      return local_sgd(p, o, k, d, lr_scale, steps, s)
    local = node_map(local_phase, in_axes=(0, 0, 0, in_data, steps_axis, 0))
    params, opt_state, loss_N, model_state = local(
        state.params, opt_state, node_keys(inputs.key, n), inputs.data, num_steps_N,
        state.model_state)
    for _ in range(gossip_steps):
      params = mixer(inputs.mixing, params)
    if average_stats:
      model_state = mix_model_state(inputs.mixing, model_state, gossip_steps)
    sent_N, received_N = messages_per_step(inputs.mixing)
    metrics = RoundMetrics(loss=honest_mean(loss_N), transfers=sent_N.sum() * gossip_steps,
                           sent_N=sent_N * gossip_steps, received_N=received_N * gossip_steps)
    return StatefulGossipState(params, opt_state, model_state), metrics

  return Algorithm(init, round_fn)


def run_local_phase(local_sgd: Callable, params_N, opt_state_N, keys_N, data, lr_scale,
                    num_steps_N: jax.Array | None = None):
  """Every node's local phase, lifted over nodes: (params, opt_state, loss_N).

  The local phase of `local_then_gossip` for algorithms with a state of their own (CHOCO-SGD,
  push-sum). `lr_scale` is a scalar, or [N] per node (push-sum's 1 / w_i).
  """
  in_data = type(data)(None, None, 0, 0)  # x, y shared; one shard row per node
  scale_axis = 0 if jnp.ndim(lr_scale) else None
  if num_steps_N is None:
    def phase(p, o, k, d, s):
      return local_sgd(p, o, k, d, s)
    return node_map(phase, in_axes=(0, 0, 0, in_data, scale_axis))(
        params_N, opt_state_N, keys_N, data, lr_scale)

  def phase_steps(p, o, k, d, s, steps):
    return local_sgd(p, o, k, d, s, steps)
  return node_map(phase_steps, in_axes=(0, 0, 0, in_data, scale_axis, 0))(
      params_N, opt_state_N, keys_N, data, lr_scale, num_steps_N)
