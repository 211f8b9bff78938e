"""Compiled execution of rounds: R rounds of an algorithm in one `lax.scan` under one `jit`.

The driver calls `run_chunk` once per evaluation period; nothing but the state, the round
indices and (for time-varying graphs) the stacked mixing operators crosses the host boundary,
and shapes never change from chunk to chunk, so nothing recompiles after the first call.
Keys are derived inside: round t uses fold_in(train_key, t).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax

from dfl import execution as execution_lib
from dfl.algorithms.base import Algorithm, RoundInputs


def scan_rounds(round_fn: Callable, state, data, train_key, rounds_R, mixing,
                per_round_mixing: bool):
  """The rounds `rounds_R` of round_fn(state, RoundInputs) in one `lax.scan`: round t gets
  fold_in(train_key, t) and its mixing operator (the chunk's, or its row of a stacked one)."""
  def body(state, xs):
    t, mixing_t = xs if per_round_mixing else (xs, mixing)
    inputs = RoundInputs(t, jax.random.fold_in(train_key, t), mixing_t, data, train_key)
    return round_fn(state, inputs)
  xs = (rounds_R, mixing) if per_round_mixing else rounds_R
  return jax.lax.scan(body, state, xs)


def make_chunk_runner(algorithm: Algorithm, execution: str = "auto") -> Callable:
  """Returns run_chunk(state, data, train_key, rounds_R, mixing, per_round_mixing).

  execution: how per-node work is lifted over the nodes (`dfl.execution`; "auto" picks per
  model and backend).

  rounds_R: int32 [R] global round indices. mixing: one operator for every round of the chunk
  (static graph) or one per round, stacked on a leading R axis (`per_round_mixing=True`).
  Returns (state, RoundMetrics stacked over R). The input state is donated: updated in place.
  """

  def run_chunk(state, data, train_key, rounds_R, mixing, per_round_mixing):
    with execution_lib.using(execution):  # in force while the rounds are traced
      return scan_rounds(algorithm.round, state, data, train_key, rounds_R, mixing,
                         per_round_mixing)

  execution_lib.validate_strategy(execution)

  return jax.jit(run_chunk, static_argnums=(5,), donate_argnums=(0,))


def make_batch_chunk_runner(round_with: Callable) -> Callable:
  """The chunk runner of a batch of runs (dfl/batching.py): one run's rounds, vmapped over a
  leading run axis S of the state, the shards, the train keys, the per-run values and (when the
  runs' graphs differ) the mixing operators.

  round_with(values, state, inputs) -> (state, RoundMetrics) is one run's round given its
  per-run values (hyperparameters, constants). Returns run(state_S, data_S, train_key_S,
  rounds_R, mixing, per_round_mixing, mixing_per_run, values_S); the state is donated.
  """
  def run(state_S, data_S, train_key_S, rounds_R, mixing, per_round_mixing, mixing_per_run,
          values_S):
    def one_run(state, data, key, mixing, values):
      return scan_rounds(functools.partial(round_with, values), state, data, key, rounds_R,
                         mixing, per_round_mixing)
    in_data = type(data_S)(None, None, 0, 0)  # x, y shared; shards per run
    return jax.vmap(one_run, in_axes=(0, in_data, 0, 0 if mixing_per_run else None, 0))(
        state_S, data_S, train_key_S, mixing, values_S)
  return jax.jit(run, static_argnums=(5, 6), donate_argnums=(0,))
