"""Local training on one node (no node axis; the algorithms vmap it over nodes).

A node's data is its row of the padded shard matrix: `indices [L]` into the device-resident
training set and its true `size` n (its samples are the first n slots of the row). Within a
round, the node reads its shard as a per-client PyTorch `DataLoader(shuffle=True,
drop_last=False)` that is cycled (`itertools.cycle` over re-created epochs) would yield it:

    stream = epoch 0, epoch 1, ...     epoch e = a fresh random order of the n samples, drawn
                                        with key fold_in(node_key, e)
    epoch e is cut into ceil(n / B) batches in order, the last one short (n mod B samples)
    step k reads the k-th batch of the stream

so a local epoch visits every sample exactly once, and K local steps (`local_steps` mode) walk
K consecutive batches, crossing into the next reshuffled epoch as the cycled loader does. In
`local_epochs` mode node i takes E * ceil(n_i / B) steps (exactly E epochs); nodes with fewer
steps than the scan length leave the rest as no-ops. The stream restarts every round (a fresh
loader per round, as in DisPFL's and decentralizepy's trainers); node_key is the round's key of
the node, so rounds differ.

Shapes are static: every batch has B lanes, and the lanes past the end of a short batch are
masked: the loss and its gradient are the mean over the valid samples only (the loss takes a
per-sample 0/1 mask, see `dfl.models.cross_entropy_loss`), as the short batch of a DataLoader.
All of it runs on device, inside jit and vmap, with one `top_k` per node and round
(`batch_stream`).

Full batches (`batch_size=0`): every step reads the node's whole shard, the padded row of L
slots with the first n valid (`full_batch_stream`): the step's gradient is the exact gradient of
the node's loss f_i; an "epoch" is then one step.

Optional per-batch data augmentation: `augment(key, x_B) -> x_B`, applied to each step's
minibatch with the key fold_in(fold_in(node_key, AUGMENT_STREAM), k) (a stream apart from the
shuffling keys).

Models with state or dropout (`dfl.model_state`): when the loss is a `StatefulLoss`, local_sgd
takes the node's model state (BatchNorm statistics) and returns it updated: every step runs the
model in train mode on its minibatch (the lane mask passed to a model that takes one) with the
dropout key fold_in(fold_in(node_key, DROPOUT_STREAM), k), and a masked no-op step keeps the
state as it keeps the parameters.

Deviations from the reference trainers: DisPFL keeps one DataLoader per client for the whole
run (reshuffled every epoch), so its epochs are the same in distribution but not its random
numbers; a round reads at most MAX_EPOCHS = 254 epochs of a shard (local_steps <= 254 when
shards may be as small as one batch). Clipping is optax's clip_by_global_norm,
g * min(1, c / ||g||); torch's clip_grad_norm_ scales by c / (||g|| + 1e-6).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from dfl import model_state as model_state_lib
from dfl.tracing import is_traced

PyTree = object
# gradient(params, x_B, y_B, mask_B) -> (loss, grads): the masked-mean loss at params and the
# gradient the optimizer uses; plain autodiff by default, SAM for DFedSAM (`dfl.sam`).
GradientFn = Callable[[PyTree, jax.Array, jax.Array, jax.Array], tuple[jax.Array, PyTree]]
# augment(key, x_B) -> x_B: a random transformation of one minibatch (e.g. crops and flips).
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]

AUGMENT_STREAM = 2**31 - 3  # fold_in tag of the augmentation keys, apart from the epoch keys
DROPOUT_STREAM = 2**31 - 4  # fold_in tag of the dropout keys (stateful models), likewise
MAX_EPOCHS = 254  # epochs one round may read: sort key exponents e + 1 stay below inf's 255
_PADDING_KEY = 255 * 2**23  # the bit pattern of float32 +inf


class NodeData(NamedTuple):
  """Training data on device. x, y: the whole training set; indices/sizes: per-node shards."""
  x: jax.Array  # [n_train, ...]
  y: jax.Array  # [n_train]
  indices: jax.Array  # [N, L] int32 (one row per node when vmapped)
  sizes: jax.Array  # [N] int32


class BatchStream(NamedTuple):
  """The batches of one node's round: step k reads shard slots `slots[k]` where `mask[k]`."""
  slots: jax.Array  # [K, B] int32 positions in the node's shard row
  mask: jax.Array  # [K, B] bool; False on the padding lanes of an epoch's short last batch
  epoch: jax.Array  # [K] int32 the epoch each step's batch belongs to


def make_optimizer(*, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                   nesterov: bool = False,
                   clip_norm: Optional[float] = None) -> optax.GradientTransformation:
  """SGD as a local optax chain, in torch's order (DisPFL's trainers, e.g.
  fedml_api/standalone/dpsgd/my_model_trainer.py: `clip_grad_norm_(params, 10)` after backward,
  then `SGD(momentum, weight_decay).step()`): clip the gradient to global norm `clip_norm`, add
  coupled weight decay wd * w, then the heavy-ball (optionally Nesterov) momentum trace times lr.
  """
  # A traced value (a hyperparameter batched over runs, dfl/tracing.py) keeps every stage; a
  # Python 0 / None leaves it out (no state slot), as a separate run always did.
  clip = ([optax.clip_by_global_norm(clip_norm)] if is_traced(clip_norm) or clip_norm else [])
  decay = is_traced(weight_decay) or weight_decay
  trace = is_traced(momentum) or momentum
  return optax.chain(
      *clip,
      optax.add_decayed_weights(weight_decay) if decay else optax.identity(),
      optax.sgd(lr, momentum=momentum if trace else None, nesterov=nesterov))


def shuffled_positions(key: jax.Array, size: jax.Array, width: int,
                       count: Optional[int] = None) -> jax.Array:
  """A random permutation of [0, size) in the first `size` slots of a length-`width` array.

  The order of uniform(key, (width,)) over the first `size` slots, padded slots last.
  `count` < width returns only its first `count` slots, by `top_k` instead of a full sort: the
  same slots bit for bit (top_k breaks ties by the lower index, as the stable argsort does),
  ~5x cheaper on CPU for W4's 845-wide shards.
  """
  u = jax.random.uniform(key, (width,))
  sort_keys = jnp.where(jnp.arange(width) < size, u, 2.0)
  if count is None or count >= width:
    return jnp.argsort(sort_keys)
  return jax.lax.top_k(-sort_keys, count)[1]


def _uniform_prefix(key: jax.Array, width: int, used: int) -> jax.Array:
  """uniform(key, (width,))[:used], drawing only `used` values where threefry allows it."""
  if not jax.config.jax_threefry_partitionable:
    return jax.random.uniform(key, (width,))[:used]
  return jax.random.uniform(key, (used,))


def full_batch_stream(size: jax.Array, width: int, num_steps: int) -> BatchStream:
  """`num_steps` batches that are each the node's whole shard: the L slots of its row, the first
  n = size valid (batch_size = 0)."""
  slots_KxL = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (num_steps, width))
  mask_KxL = slots_KxL < size
  return BatchStream(slots_KxL, mask_KxL, jnp.arange(num_steps, dtype=jnp.int32))


def batch_stream(key: jax.Array, size: jax.Array, width: int, *, batch_size: int,
                 num_steps: int, max_epochs: Optional[int] = None) -> BatchStream:
  """The first `num_steps` batches of one node's round stream (module docstring).

  batch_size = 0 is the full-batch stream (`full_batch_stream`; `key` is not used).

  Epoch e's order is `shuffled_positions(fold_in(key, e), size, width)`: the n valid slots
  sorted by u_e = uniform(fold_in(key, e), (width,)), ties by slot. All epochs come from ONE
  `top_k` over integer keys (e + 1) * 2^23 + u_e * 2^23 (exact: u has 23 random bits), so the
  sorted keys are epoch 0's order, then epoch 1's, ...: the stream itself. Step k reads stream
  positions e*n + j*B + [0, B) (e = k // ceil(n/B), j = k mod ceil(n/B)), all below K*B, so
  only the K*B smallest keys are needed. Epoch e >= 1 is reached only when
  n <= B * floor((K-1) / e), so only that many leading slots of it are keyed.

  Args:
    key: the node's key of the round; epoch e is shuffled with fold_in(key, e).
    size: n, the node's number of samples (traced).
    width: L, the padded width of the shard row (static).
    batch_size: B; 0: every batch is the whole shard.
    num_steps: K, the number of batches (static).
    max_epochs: a bound on the epochs any step that counts reads (local_epochs mode: E);
      None: K, always enough. Steps past the bound (masked no-ops) read arbitrary slots.
  """
  if batch_size == 0:
    return full_batch_stream(size, width, num_steps)
  b, k_steps = batch_size, num_steps
  epochs = min(k_steps, max_epochs or k_steps)
  if epochs > MAX_EPOCHS:  # (e + 1) * 2^23 + rank must stay below the padding key
    raise ValueError(f"A round reads at most {MAX_EPOCHS} epochs of a shard, but local_steps="
                     f"{k_steps} (max_epochs={max_epochs}) may read {epochs}; use fewer local "
                     f"steps or local_epochs.")
  sort_keys, slots = [], []
  for e in range(epochs):
    used = width if e == 0 else min(width, b * ((k_steps - 1) // e))
    u = _uniform_prefix(jax.random.fold_in(key, e), width, used)
    ranks = (u * 2.0**23).astype(jnp.int32) + (e + 1) * 2**23  # u = m * 2^-23 exactly
    sort_keys.append(jnp.where(jnp.arange(used) < size, ranks, _PADDING_KEY))
    slots.append(jnp.arange(used, dtype=jnp.int32))
  # As float32 bit patterns (exponent e + 1: normal, positive, ordered as the integers; the
  # padding key is +inf), for XLA's fast float top_k.
  sort_keys = jax.lax.bitcast_convert_type(jnp.concatenate(sort_keys), jnp.float32)
  slots = jnp.concatenate(slots)
  count = min(sort_keys.shape[0], k_steps * b)
  if count < sort_keys.shape[0]:
    order = jax.lax.top_k(-sort_keys, count)[1]  # ties: lower index first, as a stable sort
  else:
    order = jnp.argsort(sort_keys, stable=True)
  stream = slots[order]

  batches = jnp.maximum((size + b - 1) // b, 1)  # ceil(n / B); >= 1 keeps k // batches defined
  k_K = jnp.arange(k_steps)
  epoch_K = (k_K // batches).astype(jnp.int32)
  pos_KxB = (k_K % batches)[:, None] * b + jnp.arange(b)[None, :]
  mask_KxB = pos_KxB < size
  index_KxB = jnp.minimum(epoch_K[:, None] * size + pos_KxB, count - 1)
  return BatchStream(stream[index_KxB], mask_KxB, epoch_K)


def make_local_sgd(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                   local_steps: int, batch_size: int,
                   gradient: Optional[GradientFn] = None,
                   augment: Optional[AugmentFn] = None,
                   max_epochs: Optional[int] = None) -> Callable:
  """Builds local_sgd(params, opt_state, key, data, lr_scale, num_steps) for one node, or
  local_sgd(params, opt_state, key, data, lr_scale, num_steps, model_state) for a stateful
  loss (`dfl.model_state.StatefulLoss`), which returns the updated model state fourth.

  Runs `local_steps` optimizer steps (a static count, the scan length) over the node's batch
  stream (module docstring); a node whose own `num_steps` is smaller (local epochs over unequal
  shards) leaves the remaining steps as no-ops. `lr_scale` multiplies the update
  (learning-rate decay across rounds); since the SGD chain is linear after the momentum trace,
  this equals running SGD with lr * lr_scale.

  Args:
    loss_fn: loss(params, x_B, y_B, mask_B) -> mean loss over the lanes where mask_B is 1.
    optimizer: the local optax chain (`make_optimizer`).
    local_steps: K, the scan length.
    batch_size: B; 0: full batches (every step uses the node's whole shard).
    gradient: replaces jax.value_and_grad(loss_fn), e.g. `dfl.sam.sam_gradient`; for a
      stateful loss gradient(params, x, y, mask, model_state, key) -> (loss, grads,
      new_model_state), default `dfl.model_state.value_and_grad`.
    augment: optional augment(key, x_B) -> x_B applied to every step's minibatch.
    max_epochs: bound on the epochs a round reads (`batch_stream`); E in local_epochs mode.

  Returns (params, opt_state, mean loss over the steps taken), and the model state last for a
  stateful loss.
  """
  stateful = model_state_lib.is_stateful(loss_fn)
  if stateful:
    gradient = gradient or model_state_lib.value_and_grad(loss_fn)
  else:
    gradient = gradient or jax.value_and_grad(loss_fn)

  def local_sgd(params, opt_state, key, data: NodeData, lr_scale=1.0, num_steps=None,
                model_state=None):
    masked = num_steps is not None  # all nodes take all steps unless told otherwise
    stream = batch_stream(key, data.sizes, data.indices.shape[-1], batch_size=batch_size,
                          num_steps=local_steps, max_epochs=max_epochs)
    augment_key = jax.random.fold_in(key, AUGMENT_STREAM)
    dropout_key = jax.random.fold_in(key, DROPOUT_STREAM)

    def step(carry, xs):
      params, opt_state = carry[:2]
      k, slots_B, mask_B = xs
      rows_B = data.indices[slots_B]
      x_B = data.x[rows_B]
      if augment is not None:
        x_B = augment(jax.random.fold_in(augment_key, k), x_B)
      if stateful:
        loss, grads, new_model_state = gradient(params, x_B, data.y[rows_B],
                                                mask_B.astype(jnp.float32), carry[2],
                                                jax.random.fold_in(dropout_key, k))
      else:
        loss, grads = gradient(params, x_B, data.y[rows_B], mask_B.astype(jnp.float32))
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      updates = jax.tree.map(lambda u: u * lr_scale, updates)
      new_params = optax.apply_updates(params, updates)
      new = (new_params, new_opt_state) + ((new_model_state,) if stateful else ())
      if not masked:
        return new, loss
      active = k < num_steps
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
      return keep(new, carry), jnp.where(active, loss, 0.0)

    xs = (jnp.arange(local_steps), stream.slots, stream.mask)
    carry = (params, opt_state) + ((model_state,) if stateful else ())
    carry, losses = jax.lax.scan(step, carry, xs)
    loss = losses.mean() if not masked else losses.sum() / jnp.maximum(num_steps, 1)
    return carry[:2] + (loss,) + carry[2:]

  return local_sgd


def minibatch_gradient(loss_fn: Callable, params: PyTree, key: jax.Array, data: NodeData, *,
                       batch_size: int, step: int = 0, augment: Optional[AugmentFn] = None,
                       gradient: Optional[GradientFn] = None) -> tuple[jax.Array, PyTree]:
  """(loss, grads) of one node on batch `step` of its round stream, as local SGD reads it.

  For algorithms that need a stochastic gradient at a given point rather than a local SGD
  phase (gradient tracking, exact diffusion, quasi-global momentum): the batch is the one
  `make_local_sgd`'s step `step` would read with the same node key (the same `batch_stream`,
  the same augmentation key), so batch_size = 0 gives the exact gradient of the node's loss.

  Args:
    loss_fn: loss(params, x_B, y_B, mask_B), the masked mean over the batch.
    params: the point, one node's parameters (no node axis).
    key: the node's key of the round.
    data: the node's data (its shard row `indices [L]`, `sizes` scalar).
    batch_size: B; 0: the whole shard.
    step: which batch of the stream (static).
    augment: optional augment(key, x_B) -> x_B.
    gradient: replaces jax.value_and_grad(loss_fn).
  """
  gradient = gradient or jax.value_and_grad(loss_fn)
  stream = batch_stream(key, data.sizes, data.indices.shape[-1], batch_size=batch_size,
                        num_steps=step + 1)
  rows_B = data.indices[stream.slots[step]]
  x_B = data.x[rows_B]
  if augment is not None:
    x_B = augment(jax.random.fold_in(jax.random.fold_in(key, AUGMENT_STREAM), step), x_B)
  return gradient(params, x_B, data.y[rows_B], stream.mask[step].astype(jnp.float32))
