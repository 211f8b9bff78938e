"""Vectorised evaluation: the node-averaged model and every node's own model in one jitted call.

The test set is cut into fixed-size batches (padded and masked) and scanned, so memory stays
bounded; local models are evaluated with a vmap over the node axis (`dfl.execution.node_map`)
instead of a Python loop over nodes, each on `local_examples` test samples (0 = all of them):

* `local_subset="per_node"` (the default): node i on its own slice of a fixed permutation of the
  test set, samples (i*m ... i*m + m - 1) mod n_test, with m = min(local_examples,
  ceil(n_test / N)): disjoint slices that together cover the test set at most once, so the
  local models cost at most one more pass over the test set whatever N is, and their mean rests
  on N*m test samples (standard error at most sqrt(0.25 / (N*m)): 0.006 for N = 32, m = 250,
  against up to 0.011 for 2000 samples common to all nodes). m is 10 at N = 1024, 1 at N = 16384.
* `local_subset="shared"`: every node on the same first m samples (the definition before
  issue 20; `eval.local_subset=shared eval.local_examples=2000` gives the old figures).

Everything runs under `dfl.layers.forward_only()` (no gradient is taken here), so convolutions
use the backend's forward convolution (dfl/layers.py).

Optionally (`personal_splits`, `eval.personal_test=True`) every node also has its own test set
drawn with its training label proportions (dfl.data.partition.personal_test_split, after DisPFL's
per-client test split); the two figures the DisPFL / DA-DPFL code reports are computed on them
as it does (`_test_on_all_clients` in fedml_api/standalone/dpsgd/dpsgd_api.py of
github.com/rong-dai/DisPFL): the mean over nodes of each node's accuracy, not the pooled
accuracy. The splits are an index matrix [N, L] into the test set (padded, masked), gathered
inside the jitted scan, and the nodes are lifted with the same node_map as the local models.

A model with state (`stateful`, dfl/model_state.py) is evaluated in eval mode (train=False):
each node's model with its own state, the node-averaged model (and the honest nodes' average)
with the node mean of the states, or, given `calibration_x` (eval.recompute_stats_batches),
with BatchNorm statistics re-estimated for the averaged parameters on those training batches
(`dfl.model_state.recompute_batch_stats`, after the single-merge reference's
`reestimate_batch_norm_stats`).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl import execution
from dfl import layers
from dfl import model_state as model_state_lib
from dfl.mixing import consensus_distance, node_average, node_mean


def squared_distance(tree_a, tree_b) -> jax.Array:
  """||a - b||^2 summed over every leaf (float32 on device)."""
  return sum(jnp.sum(jnp.square(a - jnp.asarray(b, a.dtype)))
             for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)))


def _batched(x: np.ndarray, y: np.ndarray, batch_size: int):
  """Pads to a multiple of batch_size; returns x [B, b, ...], y [B, b], mask [B, b]."""
  n = len(y)
  batch_size = min(batch_size, n)
  nb = -(-n // batch_size)
  pad = nb * batch_size - n
  xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
  yp = np.concatenate([y, np.zeros(pad, y.dtype)])
  mask = np.arange(nb * batch_size) < n
  shape = lambda a: a.reshape((nb, batch_size) + a.shape[1:])
  return jnp.asarray(shape(xp)), jnp.asarray(shape(yp)), jnp.asarray(shape(mask))


def _personal_batches(splits: list[np.ndarray], batch_size: int):
  """Index and mask arrays [N, B, b] of the per-node test splits, padded to B*b columns."""
  width = max(len(s) for s in splits)
  batch_size = max(1, min(batch_size, width))
  nb = -(-width // batch_size)
  idx_NxL = np.zeros((len(splits), nb * batch_size), np.int32)
  mask_NxL = np.zeros((len(splits), nb * batch_size), bool)
  for i, s in enumerate(splits):
    idx_NxL[i, :len(s)], mask_NxL[i, :len(s)] = s, True
  shape = lambda a: a.reshape(len(splits), nb, batch_size)
  return jnp.asarray(shape(idx_NxL)), jnp.asarray(shape(mask_NxL))


LOCAL_SUBSETS = ("per_node", "shared")


def per_node_examples(num_nodes: int, local_examples: int, n_test: int) -> int:
  """m: test samples of each node under local_subset=per_node (module docstring)."""
  return max(1, min(local_examples, -(-n_test // num_nodes)))


def per_node_slices(num_nodes: int, m: int, permutation_n: jax.Array,
                    batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Index and mask arrays [N, B, b] (B*b >= m): node i's samples are
  permutation[(i*m + j) mod n], j < m; padded slots are masked."""
  n = permutation_n.shape[0]
  nb = -(-m // batch_size)
  j = jnp.arange(nb * batch_size)
  position_NxL = (jnp.arange(num_nodes)[:, None] * m + jnp.minimum(j, m - 1)[None, :]) % n
  shape = lambda a: a.reshape(num_nodes, nb, batch_size)
  return (shape(permutation_n[position_NxL]),
          shape(jnp.broadcast_to(j < m, (num_nodes, nb * batch_size))))


def make_evaluator(apply_fn: Callable, x_test: np.ndarray, y_test: np.ndarray, *,
                   batch_size: int = 1000, local_examples: int = 0,
                   local_subset: str = "per_node", execution_strategy: str = "auto",
                   personal_splits: Optional[list[np.ndarray]] = None,
                   regression: bool = False, optimum=None, stateful: bool = False,
                   calibration_x: Optional[np.ndarray] = None) -> Callable:
  """Returns evaluate(params_N, honest_N=None, model_state_N=None) -> dict of scalar device
  arrays. `stateful`: the model takes `train` and its state (model_state_N, every node's
  {collection: tree}); `calibration_x` [M, B, ...]: training batches that re-estimate the
  averaged model's BatchNorm statistics before it is evaluated (module docstring).

  `regression` (a one-output model with float targets, e.g. least squares): no accuracy keys;
  test_loss is (1/2) mean (f(x) - y)^2 of x̄ on the test set, test_loss_local_mean the mean
  over nodes of each node's own, consensus_distance as below. `optimum` (a params pytree
  without the node axis, the global minimizer x*, dfl/optimum.py) adds distance_to_optimum
  ||x̄ - x*||^2 and distance_to_optimum_local_mean (1/N) sum_i ||x_i - x*||^2, either way.

  Keys: test_accuracy, test_loss (node-averaged model x̄ on the whole test set),
  test_accuracy_local_mean (mean over nodes of each node's accuracy on its `local_examples`
  test samples, `local_subset` says which; 0 = all), consensus_distance
  ((1/N) sum_i ||x_i - x̄||^2).
  With a node mask `honest_N` ([N] bool, passed to evaluate; dfl/adversary) also the same
  figures over the honest nodes only: test_accuracy_honest (their average model),
  test_accuracy_honest_local_mean and consensus_distance_honest.
  With `personal_splits` (one index array into the test set per node) also
  test_accuracy_personal ((1/N) sum_i acc(x_i on split i), DisPFL's person_test_acc) and
  test_accuracy_personal_global ((1/N) sum_i acc(x̄ on split i), its global_test_acc).
  """
  if local_subset not in LOCAL_SUBSETS:
    raise ValueError(f"Unknown eval.local_subset={local_subset!r}; valid: {list(LOCAL_SUBSETS)}.")
  full = _batched(x_test, y_test, batch_size)
  n_test = len(y_test)
  n_local = n_test if local_examples <= 0 else min(local_examples, n_test)
  local_batch = lambda m: max(1, min(batch_size // 4, m))
  # Every node on all samples is the shared form (one set, no gather).
  per_node = local_subset == "per_node" and n_local < n_test
  local = None if per_node else _batched(x_test[:n_local], y_test[:n_local], local_batch(n_local))
  # A fixed permutation (not the run's seed): runs with different seeds test the same slices.
  permutation = jnp.asarray(np.random.default_rng(0).permutation(n_test).astype(np.int32))
  personal = (None if personal_splits is None else
              _personal_batches(personal_splits, max(1, batch_size // 4)))

  calibration = None if calibration_x is None else jnp.asarray(calibration_x)

  def averaged_state(params, model_state_N, w_N=None):
    """The state of an averaged model: the (w-weighted) node mean, then re-estimated."""
    if model_state_N is None:
      return None
    model_state = model_state_lib.weighted_floating(model_state_N, w_N)
    if calibration is None:
      return model_state
    return model_state_lib.recompute_batch_stats(apply_fn, params, model_state, calibration)

  def accumulate(params, model_state, batches, get_batch):
    """(accuracy, mean loss) over the scanned `batches`; get_batch(batch) -> (x, y, mask)."""
    def body(acc, batch):
      x, y, m = get_batch(batch)
      out = model_state_lib.eval_apply(apply_fn, params, model_state, x)
      if regression:
        correct = jnp.int32(0)
        loss = jnp.sum(0.5 * jnp.square(out[..., 0] - y) * m)
      else:
        correct = jnp.sum((jnp.argmax(out, -1) == y) & m)
        loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(out, y) * m)
      return (acc[0] + correct, acc[1] + loss, acc[2] + jnp.sum(m)), None
    (correct, loss, n), _ = jax.lax.scan(body, (jnp.int32(0), jnp.float32(0), jnp.int32(0)),
                                         batches)
    return correct / n, loss / n

  def totals(params, model_state, xb, yb, mb):
    return accumulate(params, model_state, (xb, yb, mb), lambda batch: batch)

  def gathered_totals(params, model_state, idx_Bxb, mask_Bxb, x_nxF, y_n):
    # Rows gathered batch by batch from a 2-D view, not all [B, b, H, W, C] at once: W4's
    # per-node evaluation (256 nodes x 250 samples, lax.map) took 126 instead of 156 ms.
    def get_batch(batch):
      idx_b, mask_b = batch
      return (x_nxF[idx_b].reshape((idx_b.shape[0],) + x_test.shape[1:]), y_n[idx_b], mask_b)
    return accumulate(params, model_state, (idx_Bxb, mask_Bxb), get_batch)

  @jax.jit
  def evaluate(params_N, full, local, personal, honest_N, model_state_N):
    with layers.forward_only():
      return figures_of(params_N, full, local, personal, honest_N, model_state_N)

  def figures_of(params_N, full, local, personal, honest_N, model_state_N):
    if stateful and model_state_N is None:
      raise ValueError("A model with state is evaluated with its model_state_N.")
    state_axis = None if model_state_N is None else 0
    mean_params = node_mean(params_N)
    mean_state = averaged_state(mean_params, model_state_N)
    acc, loss = totals(mean_params, mean_state, *full)
    # The full set's padded batches, flattened, are the test set that indices point into.
    x_flat = full[0].reshape(full[0].shape[0] * full[0].shape[1], -1)
    y_flat = full[1].reshape(-1)
    with execution.using(execution_strategy):
      if local is None:  # per_node
        num_nodes = jax.tree.leaves(params_N)[0].shape[0]
        m = per_node_examples(num_nodes, n_local, n_test)
        local_acc_N, local_loss_N = execution.node_map(
            gathered_totals, in_axes=(0, state_axis, 0, 0, None, None))(
                params_N, model_state_N,
                *per_node_slices(num_nodes, m, permutation, local_batch(m)), x_flat, y_flat)
      else:
        local_acc_N, local_loss_N = execution.node_map(
            totals, in_axes=(0, state_axis, None, None, None))(params_N, model_state_N, *local)
    if regression:
      figures = {"test_loss": loss, "test_loss_local_mean": jnp.mean(local_loss_N),
                 "consensus_distance": consensus_distance(params_N)}
    else:
      figures = {"test_accuracy": acc, "test_loss": loss,
                 "test_accuracy_local_mean": jnp.mean(local_acc_N),
                 "consensus_distance": consensus_distance(params_N)}
    if optimum is not None:
      figures["distance_to_optimum"] = squared_distance(mean_params, optimum)
      figures["distance_to_optimum_local_mean"] = jnp.mean(jax.vmap(
          lambda p: squared_distance(p, optimum))(params_N))
    if honest_N is not None:
      h_N = honest_N.astype(jnp.float32)
      count = jnp.sum(h_N)
      honest_mean = node_average(params_N, h_N / count)
      honest_state = averaged_state(honest_mean, model_state_N, h_N / count)
      figures["test_accuracy_honest"], _ = totals(honest_mean, honest_state, *full)
      figures["test_accuracy_honest_local_mean"] = jnp.sum(h_N * local_acc_N) / count
      figures["consensus_distance_honest"] = sum(
          jnp.sum(h_N.reshape((-1,) + (1,) * (x.ndim - 1)) * (x - m) ** 2)
          for x, m in zip(jax.tree.leaves(params_N), jax.tree.leaves(honest_mean))) / count
    if personal is not None:
      with execution.using(execution_strategy):
        own_N, _ = execution.node_map(
            gathered_totals, in_axes=(0, state_axis, 0, 0, None, None))(
                params_N, model_state_N, *personal, x_flat, y_flat)
        global_N, _ = execution.node_map(
            gathered_totals, in_axes=(None, None, 0, 0, None, None))(
                mean_params, mean_state, *personal, x_flat, y_flat)
      figures["test_accuracy_personal"] = jnp.mean(own_N)
      figures["test_accuracy_personal_global"] = jnp.mean(global_N)
    return figures

  return lambda params_N, honest_N=None, model_state_N=None: evaluate(
      params_N, full, local, personal, honest_N, model_state_N)
