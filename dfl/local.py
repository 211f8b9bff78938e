"""Local training on one node (no node axis; the algorithms vmap it over nodes).

A node's data is its row of the padded shard matrix: `indices [L]` into the device-resident
training set and its true `size`. Each round the node draws a fresh random order of its own
samples (a permutation of `[0, size)`, padded slots sorted last) and takes minibatches from it
in sequence, so a local epoch visits every sample once, as a per-client data loader would; all
of it happens on device, inside jit.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

PyTree = object
# gradient(params, x, y) -> (loss, grads); plain autodiff by default, SAM for DFedSAM.
GradientFn = Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, PyTree]]


class NodeData(NamedTuple):
  """Training data on device. x, y: the whole training set; indices/sizes: per-node shards."""
  x: jax.Array  # [n_train, ...]
  y: jax.Array  # [n_train]
  indices: jax.Array  # [N, L] int32 (one row per node when vmapped)
  sizes: jax.Array  # [N] int32


def make_optimizer(*, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                   nesterov: bool = False) -> optax.GradientTransformation:
  """SGD as a local optax chain: torch-style coupled weight decay, optional heavy-ball momentum."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
      optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))


def shuffled_positions(key: jax.Array, size: jax.Array, width: int,
                       count: Optional[int] = None) -> jax.Array:
  """A random permutation of [0, size) in the first `size` slots of a length-`width` array.

  `count` < width returns only its first `count` slots (what a round consumes), by `top_k`
  instead of a full sort: the same slots bit for bit (top_k breaks ties by the lower index, as
  the stable argsort does), ~5x cheaper on CPU for W4's 845-wide shards.
  """
  u = jax.random.uniform(key, (width,))
  sort_keys = jnp.where(jnp.arange(width) < size, u, 2.0)
  if count is None or count >= width:
    return jnp.argsort(sort_keys)
  return jax.lax.top_k(-sort_keys, count)[1]


def make_local_sgd(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                   local_steps: int, batch_size: int,
                   gradient: Optional[GradientFn] = None) -> Callable:
  """Builds local_sgd(params, opt_state, key, data, lr_scale, num_steps) for one node.

  Runs `local_steps` optimizer steps (a static count, the scan length); a node whose own
  `num_steps` is smaller (local epochs over unequal shards) leaves the remaining steps as no-ops.
  `lr_scale` multiplies the update (learning-rate decay across rounds); since the SGD chain is
  linear after the momentum trace, this equals running SGD with lr * lr_scale.
  Returns (params, opt_state, mean loss over the steps taken).
  """
  gradient = gradient or jax.value_and_grad(loss_fn)

  def local_sgd(params, opt_state, key, data: NodeData, lr_scale=1.0, num_steps=None):
    masked = num_steps is not None  # all nodes take all steps unless told otherwise
    # Step k reads slots [k*B, (k+1)*B) mod size: never beyond the first local_steps*B.
    order = shuffled_positions(key, data.sizes, data.indices.shape[-1], local_steps * batch_size)

    def step(carry, k):
      params, opt_state = carry
      slots = order[(k * batch_size + jnp.arange(batch_size)) % data.sizes]
      rows = data.indices[slots]
      loss, grads = gradient(params, data.x[rows], data.y[rows])
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      updates = jax.tree.map(lambda u: u * lr_scale, updates)
      new_params = optax.apply_updates(params, updates)
      if not masked:
        return (new_params, new_opt_state), loss
      active = k < num_steps
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
      return (keep(new_params, params), keep(new_opt_state, opt_state)), jnp.where(active, loss, 0.0)

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jnp.arange(local_steps))
    if not masked:
      return params, opt_state, losses.mean()
    return params, opt_state, losses.sum() / jnp.maximum(num_steps, 1)

  return local_sgd
