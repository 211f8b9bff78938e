"""The gossip step under attack, and the round context it reads.

`make_gossip_step(rule, attack)` is a `mixer(mixing, params) -> params` for the gossip
algorithms' mixer slot (dfl/algorithms/local_then_gossip.py): in every gossip step the messages
of the Byzantine nodes are replaced by crafted ones (dfl/adversary/attacks.py), then every node
aggregates its own model with what it received (dfl/aggregation/rules.py).

The mixer slot passes only (mixing, params); what else the step needs this round (its key, the
round index t, and which nodes are Byzantine) comes from a context that `with_round_context`
opens around the algorithm's round while it is traced. The Byzantine mask is data in the state
(`AdversaryState.byzantine_N`), not a constant of the program, so seeds with different attackers
share one compiled round (batched seeds, the compilation cache). Keys: step s of round t uses
fold_in(fold_in(round_key, AGGREGATION_STREAM), s), apart from the local-training keys.
"""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dfl.adversary.attacks import AttackOptions, craft_messages
from dfl.aggregation.rules import Rule, aggregate, flatten_nodes

AGGREGATION_STREAM = 2**31 - 5  # fold_in tag of the gossip steps' keys


class _Context(NamedTuple):
  key: Any
  t: Any
  byzantine_N: Any  # [N] bool, or None
  steps: list  # gossip steps traced so far this round (each gets its own key)


_STACK: list[_Context] = []


@contextlib.contextmanager
def round_context(key, t, byzantine_N=None):
  _STACK.append(_Context(key, t, byzantine_N, []))
  try:
    yield
  finally:
    _STACK.pop()


def current() -> Optional[_Context]:
  return _STACK[-1] if _STACK else None


def honest_mean(value_N: jax.Array) -> jax.Array:
  """Mean over the honest nodes of the round being traced (all nodes without an adversary)."""
  ctx = current()
  if ctx is None or ctx.byzantine_N is None:
    return value_N.mean()
  honest_N = ~ctx.byzantine_N.astype(bool)
  return jnp.sum(jnp.where(honest_N, value_N, 0)) / jnp.maximum(jnp.sum(honest_N), 1)


class AdversaryState(NamedTuple):
  inner: Any  # the algorithm's own state
  byzantine_N: jax.Array  # [N] bool

  @property
  def params(self):
    return self.inner.params


def with_round_context(algorithm, byzantine_N: Optional[np.ndarray] = None):
  """The algorithm with the round context open while its round is traced; with a Byzantine
  mask, its state is `AdversaryState(inner, byzantine_N)`."""
  from dfl.algorithms.base import Algorithm
  if byzantine_N is None:
    def plain_round(state, inputs):
      with round_context(inputs.key, inputs.round):
        return algorithm.round(state, inputs)
    return Algorithm(algorithm.init, plain_round)
  mask_N = np.asarray(byzantine_N, bool)

  def init(params_N):
    return AdversaryState(algorithm.init(params_N), jnp.asarray(mask_N))

  def round_fn(state, inputs):
    with round_context(inputs.key, inputs.round, state.byzantine_N):
      inner, metrics = algorithm.round(state.inner, inputs)
    return AdversaryState(inner, state.byzantine_N), metrics
  return Algorithm(init, round_fn)


def make_gossip_step(rule: Rule, attack: Optional[AttackOptions] = None):
  """mixer(mixing, params) -> params: crafted messages in, then the rule on every node."""
  def gossip_step(mixing, params):
    ctx = current()
    if ctx is None:  # called outside a round (a test, a script): no attack, key 0
      return aggregate(rule, mixing, params)
    key = jax.random.fold_in(jax.random.fold_in(ctx.key, AGGREGATION_STREAM), len(ctx.steps))
    ctx.steps.append(None)
    sent = params
    if attack is not None and ctx.byzantine_N is not None:
      x_NxD, unflatten = flatten_nodes(params)
      sent = unflatten(craft_messages(attack, jax.random.fold_in(key, 0), mixing, x_NxD,
                                      ctx.byzantine_N))
    return aggregate(rule, mixing, params, sent, jax.random.fold_in(key, 1), ctx.t)
  return gossip_step
