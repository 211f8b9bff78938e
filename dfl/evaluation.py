"""Vectorised evaluation: the node-averaged model and every node's own model in one jitted call.

The test set is cut into fixed-size batches (padded and masked) and scanned, so memory stays
bounded; local models are evaluated with a vmap over the node axis on a fixed subset of the test
set (`local_examples`, all of it by default when small) instead of a Python loop over nodes.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl import execution
from dfl.mixing import consensus_distance, node_mean


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


def make_evaluator(apply_fn: Callable, x_test: np.ndarray, y_test: np.ndarray, *,
                   batch_size: int = 1000, local_examples: int = 0,
                   execution_strategy: str = "auto") -> Callable:
  """Returns evaluate(params_N) -> dict of scalar device arrays.

  Keys: test_accuracy, test_loss (node-averaged model x̄ on the whole test set),
  test_accuracy_local_mean (mean over nodes of each node's accuracy on the first
  `local_examples` test samples; 0 = all), consensus_distance ((1/N) sum_i ||x_i - x̄||^2).
  """
  full = _batched(x_test, y_test, batch_size)
  n_local = len(y_test) if local_examples <= 0 else min(local_examples, len(y_test))
  local = _batched(x_test[:n_local], y_test[:n_local], max(1, batch_size // 4))

  def totals(params, xb, yb, mb):
    def body(acc, batch):
      x, y, m = batch
      logits = apply_fn({"params": params}, x)
      correct = jnp.sum((jnp.argmax(logits, -1) == y) & m)
      loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * m)
      return (acc[0] + correct, acc[1] + loss), None
    (correct, loss), _ = jax.lax.scan(body, (jnp.int32(0), jnp.float32(0)), (xb, yb, mb))
    n = jnp.sum(mb)
    return correct / n, loss / n

  @jax.jit
  def evaluate(params_N, full, local):
    acc, loss = totals(node_mean(params_N), *full)
    with execution.using(execution_strategy):
      local_acc_N, _ = execution.node_map(totals, in_axes=(0, None, None, None))(params_N, *local)
    return {"test_accuracy": acc, "test_loss": loss,
            "test_accuracy_local_mean": jnp.mean(local_acc_N),
            "consensus_distance": consensus_distance(params_N)}

  return lambda params_N: evaluate(params_N, full, local)
