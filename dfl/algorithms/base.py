"""The algorithm interface: a pair of pure functions, as in optax.

    algorithm.init(params_N) -> state            every leaf with a leading node axis N
    algorithm.round(state, inputs) -> (state, RoundMetrics)

`round` runs inside `jax.lax.scan` under one `jax.jit`, so it must be traceable with every
input traced (the mixing matrix and the round index included). Every state has a `params`
field: the nodes' models `[N, ...]` that evaluation reads.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from dfl.execution import node_map
from dfl.local import NodeData, minibatch_gradient
from dfl.mixing import Mixing
from dfl.tracing import is_traced

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
  # For the simulated clock (dfl/system/clock.py), where not every node trains: [N] bool, the
  # nodes whose local update of this round counts (FedAvg's sample, MoDeST's delivered
  # participants, async_gossip's firing nodes); None: every node. MoDeST also reports its
  # aggregators; the deadline hook (dfl/system/deadline.py) the late nodes.
  trained_N: Any = None
  aggregator_N: Any = None
  late_N: Any = None


class Algorithm(NamedTuple):
  init: Callable[[PyTree], PyTree]
  round: Callable[[PyTree, RoundInputs], tuple[PyTree, RoundMetrics]]


def node_keys(key: jax.Array, num_nodes: int) -> jax.Array:
  """Per-node keys fold_in(round_key, i): derived, never carried, so any round can be replayed."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jax.numpy.arange(num_nodes))


def node_gradients(loss_fn: Callable, *, batch_size: int, weight_decay: float = 0.0,
                   augment: Optional[Callable] = None) -> Callable:
  """gradients(params_N, inputs) -> (loss_N, g_N): every node's loss and gradient (plus
  weight_decay * x) on the first batch of its round stream (`dfl.local.minibatch_gradient`, node
  key fold_in(round_key, i)), lifted over the nodes by the execution strategy in force. The one
  gradient per round of exact diffusion and QGM."""
  def grad(x, key, data):
    loss, g = minibatch_gradient(loss_fn, x, key, data, batch_size=batch_size, augment=augment)
    if is_traced(weight_decay) or weight_decay:
      g = jax.tree.map(lambda gi, xi: gi + weight_decay * xi, g, x)
    return loss, g

  def gradients(params_N, inputs: RoundInputs):
    n = jax.tree.leaves(params_N)[0].shape[0]
    in_data = type(inputs.data)(None, None, 0, 0)  # x, y shared; one shard row per node
    return node_map(grad, in_axes=(0, 0, in_data))(params_N, node_keys(inputs.key, n),
                                                  inputs.data)
  return gradients


def merge_flag(round_index: jax.Array, merge_rounds: Sequence[int]) -> jax.Array:
  """True in a schedule's dense rounds (`merge_rounds`), traced."""
  merge_R = tuple(sorted(set(int(t) for t in merge_rounds)))
  if not merge_R:
    return jnp.bool_(False)
  return jnp.any(round_index == jnp.asarray(merge_R, jnp.int32))


def refuse_unsupported(a, *, one_step: bool, momentum: bool = False) -> None:
  """Checks shared by the gradient methods that run their own update (gradient tracking, exact
  diffusion, QGM) instead of the local optax chain: a field they would ignore is an error, with
  what to do instead (their registry `check`, run before the builder and by config checks).

  Args:
    a: the `algorithm` config section.
    one_step: the method takes one gradient per round (local_steps must be 1 or None).
    momentum: the method reads algorithm.momentum itself.
  """
  name = a.name
  if one_step and a.local_steps not in (None, 1):
    raise ValueError(f"algorithm.name={name!r} takes one gradient step per round, but "
                     f"algorithm.local_steps={a.local_steps}; leave it unset (or 1).")
  if a.local_epochs:
    raise ValueError(f"algorithm.name={name!r} does not support algorithm.local_epochs="
                     f"{a.local_epochs}; leave it 0 and use algorithm.local_steps.")
  if not momentum and a.momentum not in (None, 0.0):
    raise ValueError(f"algorithm.name={name!r} has no local momentum, but algorithm.momentum="
                     f"{a.momentum}; leave it unset.")
  if a.get("clip_norm") is not None:
    raise ValueError(f"algorithm.name={name!r} does not clip gradients, but algorithm.clip_norm="
                     f"{a.clip_norm}; leave it unset.")


def refuse_mixer(name: str, ctx) -> None:
  """The exact methods mix with the plain W: no `BuildContext.mixer` (variance correction)."""
  if ctx.mixer is not None:
    raise ValueError(f"variance_correction.enabled=True rescales the models after gossip, which "
                     f"breaks the exact corrections of algorithm.name={name!r}; disable it.")
