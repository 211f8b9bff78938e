"""Compiled execution of rounds: R rounds of an algorithm in one `lax.scan` under one `jit`.

The driver calls `run_chunk` once per evaluation period; nothing but the state, the round
indices and (for time-varying graphs) the stacked mixing operators crosses the host boundary,
and shapes never change from chunk to chunk, so nothing recompiles after the first call.
Keys are derived inside: round t uses fold_in(train_key, t).
"""
from __future__ import annotations

from typing import Callable

import jax

from dfl import execution as execution_lib
from dfl.algorithms.base import Algorithm, RoundInputs


def make_chunk_runner(algorithm: Algorithm, execution: str = "auto") -> Callable:
  """Returns run_chunk(state, data, train_key, rounds_R, mixing, per_round_mixing).

  execution: how per-node work is lifted over the nodes (`dfl.execution`; "auto" picks per
  model and backend).

  rounds_R: int32 [R] global round indices. mixing: one operator for every round of the chunk
  (static graph) or one per round, stacked on a leading R axis (`per_round_mixing=True`).
  Returns (state, RoundMetrics stacked over R). The input state is donated: updated in place.
  """

  def run_chunk(state, data, train_key, rounds_R, mixing, per_round_mixing):
    def body(state, xs):
      t, mixing_t = xs if per_round_mixing else (xs, mixing)
      inputs = RoundInputs(t, jax.random.fold_in(train_key, t), mixing_t, data, train_key)
      return algorithm.round(state, inputs)
    xs = (rounds_R, mixing) if per_round_mixing else rounds_R
    with execution_lib.using(execution):  # in force while the rounds are traced
      return jax.lax.scan(body, state, xs)

  execution_lib.validate_strategy(execution)

  return jax.jit(run_chunk, static_argnums=(5,), donate_argnums=(0,))
