"""The algorithm interface: a pair of pure functions, as in optax.

    algorithm.init(params_N) -> state            every leaf with a leading node axis N
    algorithm.round(state, inputs) -> (state, RoundMetrics)

`round` runs inside `jax.lax.scan` under one `jax.jit`, so it must be traceable with every
input traced (the mixing matrix and the round index included). Every state has a `params`
field: the nodes' models `[N, ...]` that evaluation reads.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax

from dfl.local import NodeData
from dfl.mixing import Mixing

PyTree = Any


class RoundInputs(NamedTuple):
  round: jax.Array  # int32 scalar: the global round index t (0-based)
  key: jax.Array  # typed PRNG key of this round: fold_in(sampling_key, t)
  mixing: Mixing  # the communication graph's W for round t
  data: NodeData  # device-resident training data and shards
  # The run's training key, key = fold_in(run_key, round): lets an algorithm derive another
  # round's key (MoDeST computes the candidate list of round t + 1 during round t).
  run_key: Optional[jax.Array] = None


class RoundMetrics(NamedTuple):
  """Per-round figures, reduced on device; the driver accumulates them on the host."""
  loss: jax.Array  # mean local training loss over the nodes that trained
  transfers: jax.Array  # model transfers this round (each message of one full model counts 1)
  sent_N: jax.Array  # [N] models sent by each node this round
  received_N: jax.Array  # [N] models received by each node this round
  control_messages: Any = 0  # small non-model messages this round (MoDeST's sampling probes)
  # Bytes of each of this round's transfers, when a message is not one whole model (a compressed
  # difference, a model with its push-sum weight, two mixed variables): a Python int computed
  # from the leaves' static shapes. None: every transfer is one model (the driver's model bytes).
  # The driver multiplies it by the transfers and sent_N / received_N on the host, in int64.
  message_bytes: Any = None


class Algorithm(NamedTuple):
  init: Callable[[PyTree], PyTree]
  round: Callable[[PyTree, RoundInputs], tuple[PyTree, RoundMetrics]]


def node_keys(key: jax.Array, num_nodes: int) -> jax.Array:
  """Per-node keys fold_in(round_key, i): derived, never carried, so any round can be replayed."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jax.numpy.arange(num_nodes))
