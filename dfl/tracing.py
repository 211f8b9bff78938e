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


class SectionOverlay:
  """A read-only view of a config section with some fields replaced, e.g. by traced values
  (`dfl.experiment.with_overrides`); `replaced` holds them."""

  def __init__(self, section, replaced: dict):
    self._section, self.replaced = section, replaced

  def __getattr__(self, field):
    if field in self.replaced:
      return self.replaced[field]
    return getattr(self._section, field)

  def get(self, field, default=None):
    return self.replaced[field] if field in self.replaced else self._section.get(field, default)

  def __contains__(self, field):
    return field in self.replaced or field in self._section


def has_traced(section) -> bool:
  """True for a section some of whose fields are traced: its checks ran on the run's concrete
  values already, and cannot run on tracers."""
  return isinstance(section, SectionOverlay) and any(map(is_traced, section.replaced.values()))
