"""Models with state and randomness: BatchNorm statistics carried per node, dropout keys.

The contract a flax module follows to be trained as a stateful or stochastic model:

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x, train: bool = False, mask=None):   # `mask` is optional
        x = nn.Dense(32)(x)
        x = nn.BatchNorm(use_running_average=not train)(x, mask=None if mask is None else
                                                           mask[:, None])
        x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
        return nn.Dense(10)(x)

* A model is stateful when `model.init` returns a collection besides "params" (flax
  BatchNorm's "batch_stats", or any other mutable collection; "intermediates", which `sow`
  fills, is never state) or when its `__call__` takes a `train` argument. Any other model
  (only "params", no `train`) is stateless and is called as `apply({"params": p}, x)`, exactly
  as before this module existed.
* Training calls `apply({"params": p, **model_state}, x, train=True, mutable=[collections],
  rngs={"dropout": key})`; evaluation `apply(..., x, train=False)`, which must be
  deterministic (no dropout, running statistics). `init` is called with train=False.
* `mask`, when `__call__` takes it, is the [B] bool lane mask of the minibatch: False on the
  padding lanes of an epoch's short last batch (`dfl.local`), which hold copies of other
  samples of the node's stream. Passed on to `nn.BatchNorm(...)(x, mask=...)` (broadcast to
  the activation's shape) it keeps those lanes out of the batch statistics, so a short batch
  normalises with, and adds to the running averages, the statistics of its valid samples
  only. A model without `mask` normalises over all B lanes, padding included (its statistics
  then count some samples twice in a short batch; the loss still averages the valid lanes).
* Dropout keys: step k of node i in round t uses fold_in(fold_in(node_key, DROPOUT_STREAM), k),
  node_key = fold_in(fold_in(train_key, t), i) (`dfl.local`), apart from the shuffling and
  augmentation keys: the same seed gives the same masks, nodes and steps get different ones.

State in the algorithms (dpsgd, dfedavg(m), dfedsam(_mgs), fedavg, fedsam): every node carries
its model state next to its parameters (`StatefulGossipState`, `StatefulServerState`), so
checkpoints save and resume it; the other algorithms refuse such a model. The local scan threads
it through every step; a node's masked no-op steps (local epochs over unequal shards) keep it.
With `average_stats` (model.average_stats, default True) gossip mixes the floating-point leaves
of the state with the same W (and the same Q steps) as the parameters, and the FedAvg server
averages them with the parameters' weights; False: every node keeps its own statistics (FedAvg:
each client keeps its own across rounds, as SiloBN / FedBN do). Integer leaves are never mixed.
With average_stats the statistics are sent with every model and counted in its bytes.
DFedSAM / FedSAM: only the unperturbed pass updates the statistics (`dfl.sam`).

Evaluation: each node's own model uses its own state; the node-averaged model uses the node
mean of the states (the mixed statistics under average_stats, else the mean of the unmixed
ones), or, with `eval.recompute_stats_batches` M > 0, BatchNorm statistics re-estimated for
the averaged parameters before it is evaluated (`recompute_batch_stats`), as the single-merge
reference does for its merged model: Raiden-Zhu/ICLR-2026-Grokking-in-Decentralized-Learning,
core/model_runtime.py `reestimate_batch_norm_stats` (reset_running_stats, momentum=None: the
running statistics become the plain mean of the per-batch statistics; dropout off; at most
BN_REESTIMATION_MAX_BATCHES = 32 batches of its training loader, shuffled, of the training batch
size) called from core/evaluation_runtime.py `get_avg_model` on the averaged model.
Here: the first M full batches (of algorithm.batch_size; eval.batch_size when it is 0) of a
seeded permutation of the pooled training shards, the same batches at every evaluation;
every flax `nn.BatchNorm` runs in batch-statistics mode with momentum 0 on each batch (its
running statistics become that batch's statistics exactly) and the M results are averaged;
`nn.Dropout` is the identity meanwhile.

Deviations from the reference: its calibration loader reshuffles at every evaluation, includes
the short last batch and applies the training transform (augmentation); here the batches are
fixed, full and not augmented. torch keeps the unbiased per-batch variance in running_var,
flax the biased one (here too). The reference averages only the learnable parameters of the
merged model and never the statistics before re-estimating them; with re-estimation the
averaged statistics are not used here either. Collections other than "batch_stats" are never
re-estimated; a layer other than nn.BatchNorm that writes "batch_stats" gets the mean of its
one-batch updates.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dfl.mixing import node_average

PyTree = Any

# Collections never carried as state: `sow` fills "intermediates" afresh at every call.
NOT_STATE = ("params", "intermediates")
STATS = "batch_stats"


@dataclasses.dataclass(frozen=True)
class StatefulLoss:
  """The training loss of a stateful model (train mode):

      loss(params, x_B, y_B, mask_B, model_state, key) -> (value, new_model_state)

  value: the masked-mean loss of the minibatch; new_model_state: the model state after this
  forward pass (BatchNorm's running averages updated); key: the step's dropout key.
  `dfl.local.make_local_sgd` recognises it and threads the state through its scan.
  """
  fn: Callable

  def __call__(self, params, x, y, mask, model_state, key):
    return self.fn(params, x, y, mask, model_state, key)


def is_stateful(loss_fn) -> bool:
  return isinstance(loss_fn, StatefulLoss)


def value_and_grad(loss: StatefulLoss) -> Callable:
  """gradient(params, x, y, mask, model_state, key) -> (loss, grads, new_model_state)."""
  vg = jax.value_and_grad(loss.fn, has_aux=True)

  def gradient(params, x, y, mask, model_state, key):
    (value, new_state), grads = vg(params, x, y, mask, model_state, key)
    return value, grads, new_state
  return gradient


class ModelState(NamedTuple):
  """What the algorithms and the evaluator need to know of a stateful model."""
  name: str  # model.name, for messages
  collections: tuple  # the carried collections, e.g. ("batch_stats",); () for dropout only
  takes_mask: bool  # __call__ takes the [B] lane mask
  init_N: PyTree  # the nodes' initial state {collection: tree}, every leaf [N, ...]
  average_stats: bool  # mix the state with W (the server averages it) or keep it per node

  def kind(self) -> str:
    """What makes the model stateful, for messages."""
    if self.collections:
      return f"state ({', '.join(self.collections)})"
    return "a train argument (dropout)"


def takes_argument(model: nn.Module, name: str) -> bool:
  try:
    return name in inspect.signature(model.__call__).parameters
  except (TypeError, ValueError):
    return False


def init_variables(model: nn.Module, key: jax.Array, dummy_x: jax.Array) -> dict:
  """model.init, with train=False for a model whose __call__ takes `train`."""
  if takes_argument(model, "train"):
    return dict(model.init(key, dummy_x, train=False))
  return dict(model.init(key, dummy_x))


def split_variables(variables: dict) -> tuple[PyTree, dict]:
  """(params, model_state): the state is every collection except params and intermediates."""
  return variables["params"], {k: v for k, v in variables.items() if k not in NOT_STATE}


def of_state(state) -> Optional[dict]:
  """The nodes' model states of an algorithm state (None for a stateless model)."""
  return getattr(state, "model_state", None)


def is_stateful_model(model: nn.Module, model_state: dict) -> bool:
  return bool(model_state) or takes_argument(model, "train")


def mix_floating(mix_step: Callable, tree: PyTree) -> PyTree:
  """mix_step applied to the floating-point leaves of a node-axis tree; the others kept."""
  leaves, treedef = jax.tree.flatten(tree)
  floating = [i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.floating)]
  mixed = mix_step([leaves[i] for i in floating])
  for i, x in zip(floating, mixed):
    leaves[i] = x
  return jax.tree.unflatten(treedef, leaves)


def weighted_floating(tree_N: PyTree, w_N: Optional[jax.Array] = None) -> PyTree:
  """sum_i w_i x_i of the floating leaves (the node mean when w_N is None; no node axis left);
  integer leaves: node 0's."""
  def one(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x[0]
    return node_average(x, w_N)
  return jax.tree.map(one, tree_N)


def make_train_loss(model: nn.Module, per_sample_loss: Callable, *, collections: tuple,
                    takes_mask: bool, masked_mean: Callable,
                    penalty: Optional[Callable] = None) -> StatefulLoss:
  """The StatefulLoss of `model`: per_sample_loss(out_B, y_B) averaged by masked_mean over the
  valid lanes, plus penalty(params) when given."""
  def fn(params, x, y, mask, model_state, key):
    kwargs = {"mask": mask > 0} if takes_mask and mask is not None else {}
    out, updated = model.apply({"params": params, **model_state}, x, train=True,
                               mutable=list(collections), rngs={"dropout": key}, **kwargs)
    value = masked_mean(per_sample_loss(out, y), mask)
    if penalty is not None:
      value = value + penalty(params)
    return value, {c: updated[c] for c in collections}
  return StatefulLoss(fn)


def eval_apply(apply_fn: Callable, params, model_state, x):
  """The model's deterministic forward pass; model_state None: a stateless model."""
  if model_state is None:
    return apply_fn({"params": params}, x)
  return apply_fn({"params": params, **model_state}, x, train=False)


def _calibration_interceptor(next_fun, args, kwargs, context):
  """BatchNorm keeps exactly the statistics of the batch it sees; dropout is the identity."""
  if context.method_name == "__call__":
    if isinstance(context.module, nn.Dropout):
      return args[0]
    if isinstance(context.module, nn.BatchNorm):
      # momentum * old + (1 - momentum) * batch with momentum 0: the batch's statistics.
      object.__setattr__(context.module, "momentum", 0.0)
  return next_fun(*args, **kwargs)


def recompute_batch_stats(apply_fn: Callable, params, model_state: dict,
                          x_MxB: jax.Array) -> dict:
  """model_state with "batch_stats" re-estimated for `params` on the M calibration batches:
  the mean over batches of each BatchNorm layer's batch mean and (biased) batch variance,
  computed in train mode with dropout off (module docstring)."""
  if STATS not in model_state:
    return model_state
  key = jax.random.key(0)  # for a custom dropout that draws from "dropout" (nn.Dropout: off)

  def batch_stats(x_B):
    with nn.intercept_methods(_calibration_interceptor):
      _, updated = apply_fn({"params": params, **model_state}, x_B, train=True,
                            mutable=[STATS], rngs={"dropout": key})
    return updated[STATS]

  stats_M = jax.lax.map(batch_stats, x_MxB)
  return {**model_state, STATS: jax.tree.map(lambda s: jnp.mean(s, axis=0), stats_M)}


def calibration_batches(x_train: np.ndarray, shards: list, *, num_batches: int,
                        batch_size: int, seed: int) -> np.ndarray:
  """[M', B', ...]: the first M' = min(M, n // B') full batches (at least one) of a seeded
  permutation of the pooled shards' n samples, B' = min(B, n)."""
  pooled = np.unique(np.concatenate([np.asarray(s) for s in shards]))
  order = np.random.default_rng(seed).permutation(pooled)
  b = max(1, min(batch_size, len(order)))
  m = max(1, min(num_batches, len(order) // b))
  return np.asarray(x_train)[order[:m * b]].reshape((m, b) + np.shape(x_train)[1:])
