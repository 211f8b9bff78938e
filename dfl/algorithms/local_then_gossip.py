"""The shared skeleton of gossip algorithms: local steps on every node, then Q gossip steps.

    y_i = LocalUpdate_i(x_i^t)              (K optimizer steps on node i's own data)
    x^{t+1} = W^Q y                          (Q exchanges with the neighbours)

D-PSGD, DFedAvg(M) and DFedSAM(-MGS) are this skeleton with different local updates; each has
its own file that states its equations and builds the pieces.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

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


def local_then_gossip(local_sgd: Callable, optimizer: optax.GradientTransformation, *,
                      gossip_steps: int = 1, reset_optimizer: bool = True,
                      lr_decay: float = 1.0, mixer: Mixer | None = None,
                      num_steps_N: jax.Array | None = None) -> Algorithm:
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
  """
  mixer = mixer or mix

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
