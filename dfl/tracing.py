"""Hyperparameters as data: a factory called with a traced value must build the general program.

A batch of runs (dfl/train.py) rebuilds its algorithm inside the compiled program with the
hyperparameters that differ between its runs as traced arrays (as `optax.inject_hyperparams`
rebuilds a transformation with its current hyperparameters). Factories branch on such a value
only through `is_traced`: a Python number keeps today's specialised program (e.g. no momentum
buffer when momentum is 0), a traced one the general form whose arithmetic reduces exactly to
it (momentum 0: v = 0 * v + g = g; weight decay 0: g + 0 * w = g; clip norm inf: g * 1 = g).
Range checks ran on every run's concrete value before; they skip traced values.
"""
from __future__ import annotations

import jax


def is_traced(value) -> bool:
  """True for a value that is an array being traced (a batched hyperparameter)."""
  return isinstance(value, jax.core.Tracer)


def concrete(value) -> bool:
  """True when `value` can be checked on the host (not traced)."""
  return not is_traced(value)
