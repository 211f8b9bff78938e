"""Push-sum gossip / Stochastic Gradient Push (Kempe, Dobra, Gehrke, "Gossip-Based Computation of
Aggregate Information", FOCS 2003; Assran, Loizou, Ballas, Rabbat, "Stochastic Gradient Push
for Distributed Deep Learning", ICML 2019, Algorithm 1).

For directed and time-varying graphs whose mixing matrix P^t is column-stochastic (node j
splits its mass over its out-neighbours and itself: `topology.weights=column_uniform`, or any
doubly stochastic W). Every node keeps a numerator z_i and a push-sum weight w_i (w_i^0 = 1,
z_i^0 = x_i^0); the de-biased model x_i = z_i / w_i is where gradients are taken and what is
evaluated (the state's `params`). Per round t:

    z_i^{t+1/2} = z_i^t - eta_t * grad F_i(x_i^t; xi_i^t)          (K local steps; K = 1: SGP)
    z_i^{t+1} = sum_j p_ij^t z_j^{t+1/2},    w_i^{t+1} = sum_j p_ij^t w_j^t
    x_i^{t+1} = z_i^{t+1} / w_i^{t+1}

Since sum_i w_i^t = N and sum_i z_i^t is kept by every column-stochastic P^t, with no training
the de-biased models converge to the exact average of the initial models on any strongly
connected (over time) directed graph. With a doubly stochastic P, w_i stays 1 and the round is
D-PSGD's x^{t+1} = P x^{t+1/2} (dfl/algorithms/dpsgd.py).

Implementation: the state holds x (de-biased) and w. The local phase runs the usual local
optimizer on x with its update scaled by 1 / w_i, which is the reference's step on the numerator
(z <- z - eta * d, gradients and momentum buffer d computed at x = z / w) written in de-biased
coordinates, exact for every step of a K-step local phase; then z = w * x is mixed with w.
Each node sends, per out-neighbour and round, its numerator and its weight: one model plus one
float32 (`RoundMetrics.message_bytes`).

Reference code: github.com/facebookresearch/stochastic_gradient_push, gossip/distributed.py
(`GossipDataParallel`: `unbias` before the forward pass, `ps_numerator` after the backward pass,
so the optimizer steps the numerator with gradients taken at the de-biased model; `ps_weight`
starts at 1 and is sent with the parameters) and gossip/mixing_manager.py (`UniformMixing`:
1 / (out-peers + 1) to each out-peer and to itself).

Deviations: the reference's optimizer applies weight decay to the numerator z (torch's
p.data is z at the step), here to the de-biased x (z-space step eta * (g + wd * x) instead of
eta * (g + wd * z)); the same when w = 1 or weight decay is 0. The reference overlaps
communication with computation (`overlap=True`, one round of staleness) and its graphs are its
own (NPeerDynamicDirectedExponentialGraph); here every round is synchronous and the graph is the
topology's.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics, node_keys
from dfl.algorithms.local_then_gossip import run_local_phase
from dfl.local import AugmentFn, make_local_sgd, make_optimizer
from dfl.mixing import messages_per_step, mix, tree_bytes

PyTree = object
WEIGHT_BYTES = 4  # the float32 push-sum weight sent with every numerator


class PushSumState(NamedTuple):
  params: PyTree  # [N, ...] de-biased models x_i = z_i / w_i (what evaluation reads)
  weight: jax.Array  # [N] float32 push-sum weights w_i
  opt_state: PyTree  # [N, ...] local optimizer state


def push_sum(loss_fn: Callable, *, lr: float, batch_size: int, local_steps: int = 1,
             momentum: float = 0.0, weight_decay: float = 0.0, lr_decay: float = 1.0,
             num_steps_N: Optional[jax.Array] = None, clip_norm: Optional[float] = None,
             augment: Optional[AugmentFn] = None,
             max_epochs: Optional[int] = None) -> Algorithm:
  """Builds push-sum SGD (SGP); arguments as in `dfl.algorithms.dpsgd.dpsgd`. The mixing
  matrix of every round must be column-stochastic (checked where the topology is built)."""
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             augment=augment, max_epochs=max_epochs)

  def init(params_N):
    n = jax.tree.leaves(params_N)[0].shape[0]
    return PushSumState(params_N, jnp.ones((n,), jnp.float32), jax.vmap(optimizer.init)(params_N))

  def round_fn(state: PushSumState, inputs: RoundInputs):
    n = jax.tree.leaves(state.params)[0].shape[0]
    keys = node_keys(inputs.key, n)
    w_N = state.weight
    lr_scale_N = jnp.asarray(lr_decay, jnp.float32) ** inputs.round / w_N
    x_half, opt_state, loss_N = run_local_phase(local_sgd, state.params, state.opt_state, keys,
                                                inputs.data, lr_scale_N, num_steps_N)
    scale = lambda v_N, x: v_N.reshape((n,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    z_half = jax.tree.map(lambda x: scale(w_N, x) * x, x_half)
    z, w_next = mix(inputs.mixing, (z_half, w_N))
    params = jax.tree.map(lambda x: x / scale(w_next, x), z)
    sent_N, received_N = messages_per_step(inputs.mixing)
    one_node = jax.tree.map(lambda x: x[0], state.params)
    metrics = RoundMetrics(loss=loss_N.mean(), transfers=sent_N.sum(), sent_N=sent_N,
                           received_N=received_N,
                           message_bytes=tree_bytes(one_node) + WEIGHT_BYTES)
    return PushSumState(params, w_next, opt_state), metrics

  return Algorithm(init, round_fn)


@registry.register("push_sum", uses_topology=True, column_stochastic=True,
                   hyperparameters=(*common.local_update(common.ONE_LOCAL_STEP), common.MOMENTUM))
def build(a, ctx) -> Algorithm:
  return push_sum(ctx.loss_fn, momentum=registry.resolved(a, "momentum"),
                  **common.local_options(a, ctx))
