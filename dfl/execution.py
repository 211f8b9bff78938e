"""How a single-node function is lifted over the node axis: the execution strategy.

Every algorithm writes its local update for one node and lifts it with `node_map(fn, in_axes)`
instead of `jax.vmap`. The result is the same function of the `[N, ...]` state; only the
compiled program differs:

* `vmap`: one batched program over all N nodes; the best on GPU/TPU.
* `map`: `lax.map` over nodes, one node at a time inside the compiled program (no Python, no
  dispatch per node). On XLA:CPU a vmapped matmul with per-node operands is a batched
  dot_general run one small matrix at a time below the unbatched rate, and a vmapped
  convolution with per-node kernels a grouped convolution, several times slower than N plain
  ones; the in-program loop runs each node's kernels at the full unbatched rate.
* `chunk:G`: `lax.map` over groups of G nodes, vmapped inside a group (a middle ground).

`auto` picks per model and backend when the program is traced, and logs the choice
(`auto_strategy`): `vmap` on accelerators, `map` on CPU.
All strategies compute the same function; results agree with `vmap` up to float rounding
(a batched and an unbatched matmul may sum in different orders), see tests/test_execution.py.

The strategy in force is set for a whole traced program with `using(strategy)`
(`dfl.engine.make_chunk_runner(..., execution=...)` does this), default `auto`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from absl import logging

PyTree = Any

STRATEGIES = ("auto", "vmap", "map", "chunk:G")

_strategy: contextvars.ContextVar[str] = contextvars.ContextVar("dfl_execution", default="auto")
# The most recent resolved choice per function name: (strategy, reason). For benchmarks and logs.
chosen: dict[str, tuple[str, str]] = {}


def validate_strategy(strategy: str) -> str:
  """Returns `strategy` if valid, else raises a ValueError naming the valid forms."""
  if strategy in ("auto", "vmap", "map"):
    return strategy
  if strategy.startswith("chunk:"):
    size = strategy.split(":", 1)[1]
    if size.isdigit() and int(size) >= 1:
      return strategy
  raise ValueError(f"Unknown execution strategy {strategy!r}; valid: 'auto', 'vmap', 'map' or "
                   "'chunk:G' with G a positive integer (nodes per vmapped group).")


@contextlib.contextmanager
def using(strategy: str) -> Iterator[None]:
  """Sets the strategy for every `node_map` traced inside the block."""
  token = _strategy.set(validate_strategy(strategy))
  try:
    yield
  finally:
    _strategy.reset(token)


def current() -> str:
  return _strategy.get()


def _split_axes(in_axes, args) -> list:
  """Broadcasts an in_axes prefix (0 or None per subtree) to one entry per leaf of args."""
  if not isinstance(in_axes, (tuple, list)):
    in_axes = (in_axes,) * len(args)
  full = jax.tree.map(lambda ax, sub: jax.tree.map(lambda _: ax, sub), tuple(in_axes), tuple(args),
                      is_leaf=lambda x: x is None)
  axes = jax.tree.leaves(full, is_leaf=lambda x: x is None)
  bad = [a for a in axes if a not in (0, None)]
  if bad:
    raise ValueError(f"node_map supports in_axes of 0 or None only, got {bad[0]!r}.")
  return axes


def _subjaxprs(params: dict) -> Iterator:
  for value in params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      inner = getattr(v, "jaxpr", v)  # ClosedJaxpr -> Jaxpr
      if hasattr(inner, "eqns"):
        yield inner


def _uses_convolution(jaxpr) -> bool:
  """Whether a convolution occurs anywhere in the jaxpr, nested scans and jits included."""
  return any(eqn.primitive.name == "conv_general_dilated"
             or any(_uses_convolution(sub) for sub in _subjaxprs(eqn.params))
             for eqn in jaxpr.eqns)


def auto_strategy(fn: Callable, node_args, backend: str) -> tuple[str, str]:
  """The strategy `auto` resolves to for `fn` on one node's arguments: (strategy, reason).

  Measured on XLA:CPU (experiments/bench.py, README "Performance"): a loop over nodes beats the
  batched program for the MLP, the CNN and even logistic regression, because a vmapped matmul
  with per-node operands becomes a batched dot_general that XLA:CPU runs one small matrix at a
  time below the unbatched rate, and a vmapped convolution a grouped convolution. On GPU/TPU
  the batched program fills the device and wins.
  """
  if backend != "cpu":
    return "vmap", f"backend {backend}: one batched program fills the device"
  jaxpr = jax.make_jaxpr(fn)(*node_args).jaxpr
  if _uses_convolution(jaxpr):
    return "map", "cpu, convolution: vmap would make it a slow grouped convolution"
  return "map", "cpu: unbatched matmuls run at the full rate, batched ones below it"


def node_map(fn: Callable, in_axes=0, *, strategy: str | None = None) -> Callable:
  """Lifts one node's `fn` over the leading node axis of its mapped arguments.

  Args:
    fn: a function of one node's arguments (no node axis).
    in_axes: as in `jax.vmap`, restricted to 0 (mapped over nodes) or None (shared), per
      argument or as a prefix pytree of one argument.
    strategy: overrides the strategy in force (`using`); one of STRATEGIES.

  Returns:
    A function of the node-axis arguments whose every output has a leading node axis.
  """

  def mapped(*args):
    axes = _split_axes(in_axes, args)
    leaves, treedef = jax.tree.flatten(args, is_leaf=lambda x: x is None)
    node_leaves = [x for x, ax in zip(leaves, axes) if ax == 0]
    if not node_leaves:
      raise ValueError("node_map needs at least one argument mapped over nodes (in_axes=0).")
    n = node_leaves[0].shape[0]
    choice = validate_strategy(strategy or current())
    if choice == "auto":
      one = [jax.ShapeDtypeStruct(jnp.shape(x)[1 if ax == 0 else 0:], jnp.result_type(x))
             if x is not None else None for x, ax in zip(leaves, axes)]
      choice, reason = auto_strategy(lambda *ls: fn(*jax.tree.unflatten(treedef, ls)), one,
                                     jax.default_backend())
      name = getattr(fn, "__qualname__", repr(fn))
      if chosen.get(name, (None,))[0] != choice:
        logging.info("dfl.execution: %s over %d nodes -> %s (%s)", name, n, choice, reason)
      chosen[name] = (choice, reason)

    def call(node_leaves_G, vectorised: bool):
      def one(*node_ls):
        it = iter(node_ls)
        ls = [next(it) if ax == 0 else x for x, ax in zip(leaves, axes)]
        return fn(*jax.tree.unflatten(treedef, ls))
      return jax.vmap(one)(*node_leaves_G) if vectorised else one(*node_leaves_G)

    if choice == "vmap":
      return call(node_leaves, True)
    if choice == "map":
      return jax.lax.map(lambda ls: call(ls, False), node_leaves)
    group = min(int(choice.split(":")[1]), n)
    full = n // group * group
    head = [x[:full].reshape((n // group, group) + x.shape[1:]) for x in node_leaves]
    out = jax.lax.map(lambda ls: call(ls, True), head)
    out = jax.tree.map(lambda y: y.reshape((full,) + y.shape[2:]), out)
    if full == n:
      return out
    tail = call([x[full:] for x in node_leaves], True)  # the last n % G nodes, one vmap
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, tail)

  return mapped
