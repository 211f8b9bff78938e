"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017): the centralized-server reference.

Round t: the server samples m = max(1, round(C * N)) clients uniformly without replacement;
each sampled client k starts from the global model x^t and runs K local SGD steps on its own
data, giving y_k; the server averages them uniformly, x^{t+1} = (1/m) sum_k y_k, and sends x^{t+1}
back. Communication: m downloads + m uploads of the model per round.

Only the m sampled clients are trained (one vmapped computation over the sample, not over all N
nodes). The state keeps the node axis like every other algorithm: each row holds the model that
node last received, which after a round is the global model for all of them.
Symbols -> names: C = client_fraction, K = local_steps, eta = lr.

`aggregation_weights="num_samples"`: x^{t+1} = sum_k (n_k / n) y_k with n_k the sampled client's
shard size and n = sum_k n_k over the sample, McMahan et al.'s weighting as DisPFL's reference
computes it (github.com/rong-dai/DisPFL, fedml_api/standalone/fedavg/fedavg_api.py `_aggregate`);
"uniform" (the default) is the plain mean.

A model with state (BatchNorm statistics, dfl/model_state.py): the state is
`StatefulServerState`, each node's row of `model_state` the statistics it last held. With
`average_stats` (default) the server averages the sampled clients' statistics with the weights
of their models and sends them with the global model (every row the same); with False every
client trains from, and keeps, its own statistics (SiloBN / FedBN-style local statistics).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dfl import model_state as model_state_lib
from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics, node_keys
from dfl.execution import node_map
from dfl.mixing import node_average
from dfl.local import NodeData, make_local_sgd, make_optimizer
from dfl.system import deadline as system_deadline

PyTree = object
AGGREGATION_WEIGHTS = ("uniform", "num_samples")
SAMPLING_STREAM = 2**31 - 1  # fold_in tag of the client-sampling key, apart from node keys


class ServerState(NamedTuple):
  params: PyTree  # [N, ...] every row = the global model x^t


class StatefulServerState(NamedTuple):
  params: PyTree  # [N, ...] every row = the global model x^t
  model_state: PyTree  # [N, ...] each node's model state (all rows equal under average_stats)


def num_sampled(num_nodes: int, client_fraction: float) -> int:
  return max(1, int(round(client_fraction * num_nodes)))


def server_average(local_sgd: Callable, *, num_nodes: int, client_fraction: float,
                   lr_decay: float = 1.0, optimizer=None,
                   num_steps_N: Optional[jax.Array] = None,
                   aggregation_weights: str = "uniform", model_state_N=None,
                   average_stats: bool = True) -> Algorithm:
  """FedAvg's round structure for any local update (FedSAM plugs in a SAM local update).

  `num_steps_N`: optional per-node local step counts (local epochs over unequal shards).
  `aggregation_weights`: "uniform" mean of the sampled clients' models, or "num_samples"
  (weights n_k / sum of n over the sample).
  `model_state_N`: the nodes' initial model states, for a model with state (its local_sgd takes
  and returns one); `average_stats`: the server averages them (module docstring).
  """
  if aggregation_weights not in AGGREGATION_WEIGHTS:
    raise ValueError(f"Unknown algorithm.aggregation_weights={aggregation_weights!r}; valid: "
                     f"{list(AGGREGATION_WEIGHTS)}.")
  steps_N = None if num_steps_N is None else jnp.asarray(num_steps_N, jnp.int32)
  m = num_sampled(num_nodes, client_fraction)

  stateful = model_state_N is not None

  def init(params_N):
    if stateful:
      return StatefulServerState(params_N, model_state_N)
    return ServerState(params_N)

  def round_fn(state: ServerState, inputs: RoundInputs):
    clients_M = jax.random.permutation(jax.random.fold_in(inputs.key, SAMPLING_STREAM), num_nodes)[:m]
    global_params = jax.tree.map(lambda x: x[0], state.params)
    data = inputs.data
    sample_data = NodeData(data.x, data.y, data.indices[clients_M], data.sizes[clients_M])
    keys_M = node_keys(inputs.key, num_nodes)[clients_M]
    lr_scale = jnp.asarray(lr_decay, jnp.float32) ** inputs.round

    steps_M = None if steps_N is None else steps_N[clients_M]

    if stateful:
      def train_stateful(key, shard, num_steps, model_state):
        opt_state = optimizer.init(global_params)
        params, _, loss, model_state = local_sgd(global_params, opt_state, key, shard, lr_scale,
                                                 num_steps, model_state)
        return params, loss, model_state
      # Under average_stats every row holds the global statistics; else each client its own.
      states_M = jax.tree.map(lambda s: s[clients_M], state.model_state)
      in_axes = (0, NodeData(None, None, 0, 0), None if steps_M is None else 0, 0)
      trained_M, loss_M, states_M = node_map(train_stateful, in_axes=in_axes)(
          keys_M, sample_data, steps_M, states_M)
    else:
      def train_client(key, shard, num_steps):
        opt_state = optimizer.init(global_params)  # a fresh local optimizer per round
        params, _, loss = local_sgd(global_params, opt_state, key, shard, lr_scale, num_steps)
        return params, loss

      in_axes = (0, NodeData(None, None, 0, 0), None if steps_M is None else 0)
      trained_M, loss_M = node_map(train_client, in_axes=in_axes)(keys_M, sample_data, steps_M)
    # Under a round deadline (dfl/system/deadline.py): late clients left out or used stale.
    trained_M, on_time_M = system_deadline.server_weights(clients_M, trained_M, global_params)
    if aggregation_weights == "uniform" and on_time_M is None:
      p_M = None
    else:
      n_M = (sample_data.sizes.astype(jnp.float32) if aggregation_weights == "num_samples"
             else jnp.ones(m, jnp.float32))
      if on_time_M is not None:
        n_M = n_M * on_time_M
      p_M = n_M / jnp.maximum(jnp.sum(n_M), 1e-30)
    new_global = node_average(trained_M, p_M)  # the mean when p_M is None
    if on_time_M is not None:  # no client on time: the global model stays
      new_global = jax.tree.map(lambda g, x: jnp.where(jnp.sum(n_M) > 0, g, x), new_global,
                                global_params)
    broadcast = lambda g: jnp.broadcast_to(g, (num_nodes,) + g.shape)
    params_N = jax.tree.map(broadcast, new_global)
    sampled_N = jnp.zeros(num_nodes, jnp.int32).at[clients_M].set(1)
    metrics = RoundMetrics(loss=loss_M.mean(), transfers=jnp.int32(2 * m),
                           sent_N=sampled_N, received_N=sampled_N,
                           trained_N=sampled_N.astype(bool))
    if not stateful:
      return ServerState(params_N), metrics
    if average_stats:
      model_state_N = jax.tree.map(broadcast, model_state_lib.weighted_floating(states_M, p_M))
    else:
      model_state_N = jax.tree.map(lambda s, s_M: s.at[clients_M].set(s_M), state.model_state,
                                   states_M)
    return StatefulServerState(params_N, model_state_N), metrics

  return Algorithm(init, round_fn)


def fedavg(loss_fn: Callable, *, num_nodes: int, lr: float, local_steps: int, batch_size: int,
           client_fraction: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0,
           lr_decay: float = 1.0, gradient: Optional[Callable] = None,
           num_steps_N: Optional[jax.Array] = None, clip_norm: Optional[float] = None,
           augment: Optional[Callable] = None, max_epochs: Optional[int] = None,
           aggregation_weights: str = "uniform", model_state_N=None,
           average_stats: bool = True) -> Algorithm:
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             gradient=gradient, augment=augment, max_epochs=max_epochs)
  return server_average(local_sgd, num_nodes=num_nodes, client_fraction=client_fraction,
                        lr_decay=lr_decay, optimizer=optimizer, num_steps_N=num_steps_N,
                        aggregation_weights=aggregation_weights, model_state_N=model_state_N,
                        average_stats=average_stats)


@registry.register("fedavg",
                   supports_model_state=True, hyperparameters=(
    *common.LOCAL_UPDATE, common.CLIENT_FRACTION, common.MOMENTUM, common.AGGREGATION_WEIGHTS))
def build(a, ctx) -> Algorithm:
  return fedavg(ctx.loss_fn, num_nodes=ctx.num_nodes, client_fraction=a.client_fraction,
                momentum=registry.resolved(a, "momentum"),
                aggregation_weights=a.aggregation_weights, **common.local_options(a, ctx))
