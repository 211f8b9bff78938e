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
(`auto_strategy`): `vmap` on accelerators; on CPU `chunk:G` with G from the per-node size
(cache-sized groups), `map` for big models and for XLA convolutions.
All strategies compute the same function; results agree with `vmap` up to float rounding
(a batched and an unbatched matmul may sum in different orders), see tests/test_execution.py.

The strategy in force is set for a whole traced program with `using(strategy)`
(`dfl.engine.make_chunk_runner(..., execution=...)` does this), default `auto`.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
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


# On CPU, `auto` vmaps groups of G nodes inside the in-program loop (`chunk:G`): a group big
# enough to amortise the loop's per-op dispatch, small enough that the group's parameters (and
# their gradients) stay cache-sized: G x floats-per-node <= this budget (4 MiB of f32), G a
# power of two <= 64. Measured (README "Performance", idle, median s/round): MLP 200k params
# chunk:4 0.100 vs map 0.119 vs vmap 0.127; logreg 7.9k params chunk:32 0.063 vs map 0.079 vs
# vmap 0.090; LeNet CNN 1.66M params -> G = 1 = map (3.59 s vs chunk:2 3.67, vmap 4.04).
CPU_GROUP_FLOATS = 2 ** 20
CPU_MAX_GROUP = 64


def _node_floats(node_args) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(node_args)
             if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating))


def auto_strategy(fn: Callable, node_args, backend: str, num_nodes: int = 0,
                  node_floats: int | None = None) -> tuple[str, str]:
  """The strategy `auto` resolves to for `fn` on one node's arguments: (strategy, reason).

  node_floats: floating-point values per node in the arguments mapped over nodes (default:
  all of `node_args`; node_map passes only its mapped arguments, not shared data).

  GPU/TPU: `vmap`, one batched program fills the device. CPU: XLA:CPU runs a vmapped matmul
  with per-node operands as a batched dot_general below the unbatched rate, and pays a fixed
  dispatch cost per op in a loop; a loop over small vmapped groups sits between the two (see
  CPU_GROUP_FLOATS). A convolution (model.conv=xla) is looped one node at a time: vmapped it
  becomes a grouped convolution, slower still.
  """
  if backend != "cpu":
    return "vmap", f"backend {backend}: one batched program fills the device"
  jaxpr = jax.make_jaxpr(fn)(*node_args).jaxpr
  if _uses_convolution(jaxpr):
    return "map", "cpu, convolution: vmap would make it a slow grouped convolution"
  floats = max(_node_floats(node_args) if node_floats is None else node_floats, 1)
  group = 1
  while group * 2 <= CPU_MAX_GROUP and group * 2 * floats <= CPU_GROUP_FLOATS:
    group *= 2
  why = f"cpu: {floats:,} floats per node, groups of {group} stay within {CPU_GROUP_FLOATS:,}"
  if group == 1:
    return "map", why
  if num_nodes and group >= num_nodes:
    return "vmap", why + f" (all {num_nodes} nodes fit one group)"
  return f"chunk:{group}", why


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
      mapped_one = [x for x, ax in zip(one, axes) if ax == 0]
      choice, reason = auto_strategy(lambda *ls: fn(*jax.tree.unflatten(treedef, ls)), one,
                                     jax.default_backend(), n, _node_floats(mapped_one))
      name = getattr(fn, "__qualname__", repr(fn))
      if chosen.get(name, (None,))[0] != choice:
        # Debug level: the choice is an implementation detail (`-v 1` shows it).
        logging.debug("dfl.execution: %s over %d nodes -> %s (%s)", name, n, choice, reason)
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
